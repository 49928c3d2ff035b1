"""Command line: `seq2seq train|info ...`. Parses arguments and calls library functions only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from seq2seq.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _TqdmHandler(logging.Handler):
    """Log lines that do not break tqdm progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(verbose: bool = False) -> None:
    """Console logging for the `seq2seq` package."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    package = logging.getLogger("seq2seq")
    package.handlers = [handler]
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.propagate = False


def _train(args: argparse.Namespace) -> int:
    from seq2seq.config import load_config
    from seq2seq.train import train

    config = load_config(args.config, args.set or [])
    summary = train(config, resume=args.resume, force=args.force)
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


def _info(args: argparse.Namespace) -> int:
    from seq2seq.checkpoint import load_checkpoint

    payload = load_checkpoint(args.checkpoint)
    shown = {key: payload.get(key) for key in ("format_version", "step", "best_bleu", "run", "config")}
    print(json.dumps(shown, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="seq2seq", description="GRU encoder-decoder NMT with pluggable attention")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in train.run_dir from last.pt")
    train.add_argument("--force", action="store_true", help="overwrite or resume a run directory whatever it holds")
    train.set_defaults(func=_train)

    info = commands.add_parser("info", help="show what a checkpoint records (versions, command, config, data)")
    info.add_argument("checkpoint")
    info.set_defaults(func=_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run a subcommand; user errors print one line and return status 2."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"seq2seq: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("seq2seq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
