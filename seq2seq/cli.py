"""Command line: `seq2seq train|evaluate|translate|score|serve|average|compare|align|info ...`. Parses arguments and calls library functions only."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    if args.init_from is not None:
        config.train.init_from = args.init_from  # as if train.init_from said it (the run's config.yaml does)
    summary = train(config, resume=args.resume, force=args.force, argv=["seq2seq", *args.argv])
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


SEARCH_OPTIONS = (
    "beam",
    "alpha",
    "coverage_penalty",
    "max_output_ratio",
    "batch_tokens",
    "max_src_length",
    "precision",
)
SAMPLING_OPTIONS = ("sample", "temperature", "top_k", "top_p", "seed")
DECODE_HELP = {
    "beam": "beam size, 1 = greedy",
    "alpha": "GNMT length penalty exponent, 0 = none",
    "coverage_penalty": "GNMT coverage penalty beta for beam search, 0 = none",
    "max_output_ratio": "output length limit x source length + 5",
    "batch_tokens": "source tokens per decoding batch",
    "max_src_length": "longer inputs are truncated (pieces), with a warning",
    "precision": "bf16: autocast matmuls to bfloat16 (on the 2-core reference CPU: beam search ~30%% faster, "
    "greedy the same)",
    "n_best": "the N best translations with their scores (with --sample: N samples)",
    "sample": "sample translations instead of searching (--n-best samples per sentence)",
    "temperature": "sampling temperature (< 1 sharper, > 1 flatter)",
    "top_k": "sample from the K most probable pieces only, 0 = all",
    "top_p": "sample from the smallest set of pieces with this probability (nucleus), 1 = all",
    "seed": "sampling seed: the same seed gives the same samples, whatever the batch",
}


def _decode_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options given on the command line (the rest come from the checkpoint's decode section)."""
    from seq2seq.config import DecodeConfig, decode_with

    overrides = {name: getattr(args, name) for name in DECODE_HELP if getattr(args, name, None) is not None}
    decode_with(DecodeConfig(), overrides, warn_unused=False)  # a bad flag fails before any checkpoint is read
    return overrides


def _evaluate(args: argparse.Namespace) -> int:
    from seq2seq.evaluate import evaluate

    decode = _decode_overrides(args)
    report = evaluate(
        args.checkpoint,
        args.split,
        args.src,
        args.ref,
        decode,
        args.output,
        args.report,
        args.device,
        args.weights,
        args.quantize,
    )
    print(report["bleu_text"])
    print(f"  signature: {report['bleu_signature']}")
    print(report["chrf_text"])
    print(f"  signature: {report['chrf_signature']}")
    print(
        f"{report['test_set']['sentences']} sentences in {report['seconds']:.1f} s "
        f"({report['sentences_per_s']:.1f} sentences/s); hypotheses: {report['hypotheses']}; report: {report['report']}"
    )
    return 0


def _translate(args: argparse.Namespace) -> int:
    from seq2seq.translate import Translator, interactive, translate_batch

    translator = Translator(args.checkpoint, _decode_overrides(args), args.device, args.weights, args.quantize)
    if args.input is None and sys.stdin.isatty():
        png_dir = Path(args.attention_png) if args.attention_png else None
        interactive(translator, show_attention=not args.no_attention, attention_png=png_dir)
        return 0
    with contextlib.ExitStack() as files:
        try:
            source = (
                files.enter_context(open(args.input, encoding="utf-8-sig", newline="\n")) if args.input else sys.stdin
            )
            sink = files.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else sys.stdout
            alignment = files.enter_context(open(args.alignment, "w", encoding="utf-8")) if args.alignment else None
        except OSError as exc:
            raise UserError(f"cannot open {exc.filename}: {exc.strerror}") from None
        try:
            translate_batch(translator, source, sink, alignment)
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{args.input or 'standard input'} is not UTF-8 text (byte {exc.start + 1} of a line)"
            ) from None
    return 0


def _score(args: argparse.Namespace) -> int:
    from seq2seq.data import read_parallel_files
    from seq2seq.score import write_scores
    from seq2seq.translate import Translator

    decode = _decode_overrides(args)
    sources, targets = read_parallel_files(Path(args.src), Path(args.tgt), what="input")
    translator = Translator(args.checkpoint, decode, args.device, args.weights)
    with contextlib.ExitStack() as files:
        try:  # opened before scoring: a bad path fails at once
            sink = files.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else sys.stdout
        except OSError as exc:
            raise UserError(f"cannot open {exc.filename}: {exc.strerror}") from None
        quiet = None if len(sources) > 50 else True
        with tqdm(total=len(sources), unit="sent", desc="scoring", disable=quiet, file=sys.stderr) as bar:
            results = translator.score(sources, targets, progress=bar)
        write_scores(results, sink, args.format, args.per_piece)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import dataclasses

    from seq2seq.config import ServeLimits

    try:
        from seq2seq.server import serve
    except ImportError as exc:
        raise UserError(f"seq2seq serve needs FastAPI and uvicorn ({exc}): pip install -e '.[serve]'") from None
    from seq2seq.translate import Translator

    limits = ServeLimits(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ServeLimits)})
    limits.check()
    api_key = _api_key(args.api_key, os.environ.get("SEQ2SEQ_API_KEY"))
    translator = Translator(args.checkpoint, _decode_overrides(args), args.device, args.weights, args.quantize)
    serve(translator, args.host, args.port, limits, api_key, access_log=not args.no_access_log)
    return 0


def _api_key(flag_value: str | None, environment: str | None) -> str | None:
    """The key from --api-key, else SEQ2SEQ_API_KEY, else None; an empty one (an unset shell variable, say)
    would leave the server open when protection was asked for, so it is an error, as is whitespace."""
    for name, value in (("--api-key", flag_value), ("SEQ2SEQ_API_KEY", environment)):
        if value is None:
            continue
        if not value:
            raise UserError(f"{name} is empty (an unset variable?): give a key, or leave it out to serve without one")
        if any(character.isspace() for character in value):
            raise UserError(f"{name} contains whitespace (a newline from a file?): a key is one word")
        return value
    return None


def _average(args: argparse.Namespace) -> int:
    from seq2seq.checkpoint import average_checkpoints
    from seq2seq.rundir import RunDir

    paths = list(args.checkpoints)
    if args.last:
        if len(paths) != 1:
            raise UserError("with --last N, give one run directory")
        paths = [str(p) for p in RunDir(paths[0]).newest_step_checkpoints(args.last)]
    result = average_checkpoints(paths, args.output)
    print(f"averaged {result['averaged']} checkpoints into {result['output']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from seq2seq.compare import compare
    from seq2seq.config import load_config

    base = load_config(args.config, args.set or [])
    variants = [v.strip() for v in args.attention.split(",") if v.strip()]
    output = Path(args.output or f"reports/compare-{base.name}")
    compare(base, variants, args.budget, output, beam=args.beam, heatmaps=args.heatmaps, force=args.force)
    print(f"report: {output / 'report.md'}")
    return 0


def _align(args: argparse.Namespace) -> int:
    from seq2seq.align import force_align

    result = force_align(args.checkpoint, args.src, args.tgt, args.output, args.device)
    print(
        f"{result['sentences']} sentences aligned: {result['alignments']} (Pharaoh i-j), {result['weights']} (weights)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from seq2seq.checkpoint import describe, load_checkpoint

    print(json.dumps(describe(load_checkpoint(args.checkpoint)), indent=2))
    return 0


def _add_checkpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="+", help="checkpoint file(s); several decode as an ensemble")
    parser.add_argument(
        "--weights", type=float, nargs="+", help="ensemble weights, one per checkpoint (default: equal)"
    )


def _add_decode_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Decoding flags for DecodeConfig fields `names`; each defaults to the checkpoint's `decode` section."""
    from seq2seq.config import DecodeConfig, decode_choices, flag

    default = DecodeConfig()
    for name in names:
        text = f"{DECODE_HELP[name]} (default: the checkpoint's decode.{name}, else {getattr(default, name)})"
        if name == "sample":
            parser.add_argument(flag(name), action="store_true", default=None, help=text)
        elif name == "precision":
            parser.add_argument(flag(name), choices=decode_choices(name), help=text)
        else:
            value_type = int if name == "max_src_length" else type(getattr(default, name))
            parser.add_argument(flag(name), type=value_type, help=text)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _add_quantize(parser: argparse.ArgumentParser) -> None:
    """--quantize, for the commands that decode (seq2seq/quantize.py)."""
    from seq2seq.quantize import QUANTIZE_MODES

    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default=QUANTIZE_MODES[0],
        help="int8: dynamic int8 quantization of the linear layers and GRUs for decoding on the CPU (faster; "
        "scores move slightly, so a translation can change); CPU only, with --precision fp32 (default: none)",
    )


def _add_train(commands: Any) -> None:
    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    train.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in train.run_dir from last.pt")
    train.add_argument("--force", action="store_true", help="overwrite or resume a run directory whatever it holds")
    train.add_argument(
        "--init-from",
        metavar="CKPT",
        help="fine-tune: start from this checkpoint's weights and SentencePiece model(s) (train.init_from)",
    )
    train.set_defaults(func=_train)


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="BLEU and chrF of checkpoint(s) on a test set")
    _add_checkpoints(evaluate)
    evaluate.add_argument(
        "--split", choices=["test", "dev"], default="test", help="the config's set to use (default test)"
    )
    evaluate.add_argument("--src", help="source file (instead of --split)")
    evaluate.add_argument("--ref", help="reference file (with --src)")
    evaluate.add_argument("--output", help="hypotheses file (default: beside the checkpoint)")
    evaluate.add_argument("--report", help="JSON report (default: the hypotheses file with .json)")
    _add_decode_arguments(evaluate, SEARCH_OPTIONS + SAMPLING_OPTIONS)
    _add_quantize(evaluate)
    evaluate.set_defaults(func=_evaluate)


def _add_translate(commands: Any) -> None:
    translate = commands.add_parser("translate", help="translate interactively, or a file / stdin in batch")
    _add_checkpoints(translate)
    translate.add_argument("--input", "-i", help="file to translate (default: stdin; a terminal gives the prompt)")
    translate.add_argument("--output", "-o", help="where to write translations (default: stdout)")
    translate.add_argument("--alignment", help="write word alignments (Pharaoh i-j, from attention) to this file")
    translate.add_argument("--attention-png", metavar="DIR", help="interactive: save each attention heatmap as a PNG")
    translate.add_argument("--no-attention", action="store_true", help="interactive: do not print the heatmap")
    _add_decode_arguments(translate, SEARCH_OPTIONS + ("n_best",) + SAMPLING_OPTIONS)
    _add_quantize(translate)
    translate.set_defaults(func=_translate)


def _add_score(commands: Any) -> None:
    score = commands.add_parser("score", help="log-probabilities of given translations (forced decoding)")
    _add_checkpoints(score)
    score.add_argument("--src", required=True, help="source sentences")
    score.add_argument("--tgt", required=True, help="their translations (one per line)")
    score.add_argument("--output", "-o", help="where to write the scores (default: stdout)")
    score.add_argument("--per-piece", action="store_true", help="also each target piece's log-probability")
    score.add_argument("--format", choices=["tsv", "jsonl"], default="tsv", help="TSV (default) or JSON lines")
    _add_decode_arguments(score, ("batch_tokens",))
    score.set_defaults(func=_score)


SERVE_LIMIT_HELP = {
    "max_sentences": "sentences per request",
    "max_chars": "characters per sentence",
    "max_body_bytes": "bytes per request body",
    "max_beam": "beam size and n-best a request may ask for",
    "max_request_output_ratio": "the largest max_output_ratio a request may ask for",
    "max_attention_matrices": "with attention: sentences x hypotheses per request",
    "max_queued": "requests waiting for a batch; more get 503 and Retry-After",
    "max_wait_ms": "how long the first request of a batch waits for others",
}


def _add_serve(commands: Any) -> None:
    from seq2seq.config import ServeLimits, flag

    limits = ServeLimits()
    serve = commands.add_parser("serve", help="serve checkpoint(s): a JSON API and a web page with the attention")
    _add_checkpoints(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)")
    serve.add_argument(
        "--api-key",
        help="protect the /v1 endpoints with this Bearer key (or set SEQ2SEQ_API_KEY, which ps does not show)",
    )
    serve.add_argument("--no-access-log", action="store_true", help="do not log each request")
    for name, text in SERVE_LIMIT_HELP.items():
        default = getattr(limits, name)
        serve.add_argument(flag(name), type=type(default), default=default, help=f"{text} (default {default})")
    _add_decode_arguments(serve, SEARCH_OPTIONS + ("n_best",) + SAMPLING_OPTIONS)
    _add_quantize(serve)
    serve.set_defaults(func=_serve)


def _add_average(commands: Any) -> None:
    average = commands.add_parser("average", help="average the weights of several checkpoints of one run")
    average.add_argument("checkpoints", nargs="+", help="checkpoint files, or one run directory with --last")
    average.add_argument("--last", type=int, help="average the N newest step-*.pt of the run directory")
    average.add_argument("--output", "-o", required=True, help="the averaged checkpoint to write")
    average.set_defaults(func=_average)


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser("compare", help="train and compare attention variants, everything else equal")
    compare.add_argument("config", help="base YAML config, e.g. configs/attention-compare.yaml")
    compare.add_argument("--attention", default="none,dot,general,additive", help="comma-separated variants")
    compare.add_argument("--budget", default="20m", help="per variant: wall clock ('20m', '1h') or updates ('2000')")
    compare.add_argument("--output", help="report directory (default reports/compare-<config name>)")
    compare.add_argument("--beam", type=int, default=1, help="test decoding beam size (default 1: greedy)")
    compare.add_argument("--heatmaps", type=int, default=3, help="test sentences to draw attention heatmaps for")
    compare.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a base config value")
    compare.add_argument("--force", action="store_true", help="overwrite earlier runs in the report directory")
    compare.set_defaults(func=_compare)


def _add_align(commands: Any) -> None:
    align = commands.add_parser("align", help="word alignments from attention for given translations")
    align.add_argument("checkpoint")
    align.add_argument("--src", required=True, help="source sentences")
    align.add_argument("--tgt", required=True, help="their translations (one per line)")
    align.add_argument("--output", "-o", required=True, help="output prefix: writes PREFIX.align and PREFIX.npz")
    align.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    align.set_defaults(func=_align)


def _add_info(commands: Any) -> None:
    info = commands.add_parser("info", help="show what a checkpoint records (versions, command, config, data)")
    info.add_argument("checkpoint")
    info.set_defaults(func=_info)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="seq2seq", description="GRU encoder-decoder NMT with pluggable attention")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_evaluate,
        _add_translate,
        _add_score,
        _add_serve,
        _add_average,
        _add_compare,
        _add_align,
        _add_info,
    ):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and return status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in checkpoints
    setup_logging(args.verbose)
    try:
        status = args.func(args)
    except UserError as exc:
        print(f"seq2seq: error: {exc}", file=sys.stderr)
        status = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("seq2seq: interrupted", file=sys.stderr)
        status = EXIT_INTERRUPTED
    if "WORLD_SIZE" in os.environ:  # launched by torchrun: end the process here (see leave_launched_process)
        from seq2seq.distributed import leave_launched_process

        return leave_launched_process(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
