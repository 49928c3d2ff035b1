"""Run Joey NMT 2.3.0 with the two patches it needs beside current torch and sentencepiece.

    <joey-venv>/bin/python scripts/bench/joey_wrapper.py train config.yaml --skip-test

- sentencepiece 0.2 dropped `SentencePieceProcessor.SetVocabulary`, which Joey calls while
  loading data; it only restricts sampling to a vocabulary, and the benchmark's Joey vocabulary
  file holds exactly the model's pieces, so a no-op stand-in changes nothing.
- torch 2.13 rejects `ReduceLROnPlateau(verbose=...)`, which Joey passes: the argument is dropped.
"""

import runpy
import sys

import sentencepiece
from torch.optim import lr_scheduler

if not hasattr(sentencepiece.SentencePieceProcessor, "SetVocabulary"):
    sentencepiece.SentencePieceProcessor.SetVocabulary = lambda self, vocabulary: None

_plateau_init = lr_scheduler.ReduceLROnPlateau.__init__


def _plateau_init_without_verbose(self, *args, verbose=None, **kwargs):
    _plateau_init(self, *args, **kwargs)


lr_scheduler.ReduceLROnPlateau.__init__ = _plateau_init_without_verbose

if __name__ == "__main__":
    sys.argv = ["joeynmt", *sys.argv[1:]]
    runpy.run_module("joeynmt", run_name="__main__", alter_sys=True)
