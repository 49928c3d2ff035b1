"""Run OpenNMT-py 3.5.1's `onmt_train` or `onmt_translate` with what the benchmark needs beside torch 2.13.

    <opennmt-venv>/bin/python scripts/bench/opennmt_wrapper.py train -config run.yaml
    <opennmt-venv>/bin/python scripts/bench/opennmt_wrapper.py translate -model m.pt -src in.txt ...
    <opennmt-venv>/bin/python scripts/bench/opennmt_wrapper.py versions    # OpenNMT-py's and torch's

- SIGINT ends training with a checkpoint: onmt_train has no handler of its own (a KeyboardInterrupt
  would end it without saving), so the wrapper's handler only raises a flag, the trainer finishes the
  update it is in, and the wrapper saves that update's weights through OpenNMT's own model saver
  (model_step_N.pt, as at a normal end) and logs "Budget spent after step N".
- The wrapper logs "First training batch ready" when the trainer receives its first batch, after
  OpenNMT has read and tokenized its first bucket: the benchmark's budget starts there, as Joey's
  starts at "EPOCH 1" after its data loading.
- `onmt.transforms` imports every transform module, and four of them import packages at module level
  that only they use: spacy (terminology), fasttext (clean), rapidfuzz (fuzzymatch) and ahocorasick
  (terminology, inlinetags). The benchmark uses the sentencepiece and filtertoolong transforms only, so
  where such a package is not installed it is replaced by an empty stand-in module (whose attributes
  raise ImportError when used) instead of installing spaCy and its dozens of dependencies.
- torch >= 2.6 loads checkpoints with weights_only=True by default, and OpenNMT's checkpoints hold
  its options (an argparse Namespace) and vocabularies: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set
  (the benchmark's own checkpoints, nobody else's, are loaded).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import types

TRANSFORM_ONLY_PACKAGES = ("spacy", "fasttext", "rapidfuzz", "ahocorasick")


class _Missing:
    """What a stand-in module hands out: an error as soon as it is used."""

    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ImportError(f"{self._name} is not installed in the benchmark's OpenNMT environment")

    def __getattr__(self, attribute: str):
        return _missing_attribute(self._name, attribute)


def _missing_attribute(owner: str, attribute: str) -> _Missing:
    if attribute.startswith("__"):  # introspection (inspect, pickle) must see an ordinary object
        raise AttributeError(attribute)
    return _Missing(f"{owner}.{attribute}")


def stand_in_for_missing_packages() -> None:
    """Empty modules for the transform-only imports that are not installed."""
    for name in TRANSFORM_ONLY_PACKAGES:
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.__getattr__ = lambda attribute, name=name: _missing_attribute(name, attribute)
            sys.modules[name] = module


class _BudgetSpent(Exception):
    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def save_on_interrupt() -> None:
    """SIGINT stops training after the current update and saves its weights."""
    from onmt.trainer import Trainer
    from onmt.utils.logging import logger

    interrupted = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    report, train, accumulate = Trainer._maybe_report_training, Trainer.train, Trainer._gradient_accumulation

    def report_then_stop(self, step, *args, **kwargs):
        stats = report(self, step, *args, **kwargs)  # called once per update, after it
        if interrupted:
            raise _BudgetSpent(step)
        return stats

    def accumulate_first(self, *args, **kwargs):
        if not getattr(self, "_first_batch_logged", False):
            self._first_batch_logged = True
            logger.info("First training batch ready")
        return accumulate(self, *args, **kwargs)

    def train_until_interrupted(self, *args, **kwargs):
        try:
            return train(self, *args, **kwargs)
        except _BudgetSpent as spent:
            logger.info("Budget spent after step %d", spent.step)
            if self.model_saver is not None:
                self.model_saver.save(spent.step, moving_average=self.moving_average)
            return None

    Trainer._maybe_report_training = report_then_stop
    Trainer._gradient_accumulation = accumulate_first
    Trainer.train = train_until_interrupted


def main() -> None:
    """`train ARGS` runs onmt_train, `translate ARGS` onmt_translate; `versions` checks that both import."""
    command, arguments = sys.argv[1], sys.argv[2:]
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    stand_in_for_missing_packages()
    sys.argv = [f"onmt_{command}", *arguments]
    if command == "train":
        save_on_interrupt()
        from onmt.bin.train import main as run
    elif command == "translate":
        from onmt.bin.translate import main as run
    elif command == "versions":
        import onmt.bin.train
        import onmt.bin.translate
        import torch

        print(onmt.__version__, torch.__version__)
        return
    else:
        raise SystemExit(f"unknown command {command!r}: train or translate")
    run()


if __name__ == "__main__":
    main()
