"""Shared by the thin wrappers in scripts/: run one `seq2seq` subcommand from a checkout, installed or not."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seq2seq.cli import main


def run(command: str) -> None:
    """Exit with `seq2seq COMMAND ARGS...`'s status."""
    sys.exit(main([command, *sys.argv[1:]]))
