"""`python -m seq2seq` (also what torchrun runs)."""

import sys

from seq2seq.cli import main

sys.exit(main())
