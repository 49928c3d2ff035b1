"""The command line's contract: every bad input gives one 'seq2seq: error:' line and status 2, with no
traceback (in-process and in a child process); `train` and `info` as commands."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import (
    LOG_LINE,
    NOT_A_CHECKPOINT,
    assert_subprocess_one_line_error,
    one_line_error,
    random_bytes,
    run_seq2seq,
    write_config,
    write_lines,
)

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.cli import main
from seq2seq.config import config_from_dict, config_to_dict
from seq2seq.rundir import read_records

# --- bad inputs through the command line --------------------------------------------------------------
#
# Each case builds the arguments from tmp_path and the tiny config (200 real pairs) and names the
# substrings the one error line must hold ({tmp} stands for tmp_path). CLI_ERRORS below
# already covers: unknown key, wrong type, model.dropout=1.5 (via --set), missing config file,
# misaligned training corpus, an existing run without --resume, --resume with no run, `info` on a text file.


def train_args(tmp_path: Path, config: dict, *extra: str) -> list[str]:
    return ["train", write_config(tmp_path, config), *extra]


def setting(key: str, value) -> Callable[[Path, dict], list[str]]:
    """A case that sets the dotted config `key` to `value` (sections created as needed)."""

    def make(tmp_path: Path, config: dict) -> list[str]:
        *sections, last = key.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
        return train_args(tmp_path, config)

    return make


def overrides(*assignments: str) -> Callable[[Path, dict], list[str]]:
    """A case that passes `--set` assignments on the command line."""
    return lambda tmp_path, config: train_args(tmp_path, config, *(a for s in assignments for a in ("--set", s)))


def corpus_file(config: dict, split: str, lang: str) -> Path:
    return Path(f"{config['data'][split]}.{lang}")


def missing_training_prefix(tmp_path: Path, config: dict) -> list[str]:
    config["data"]["train"] = str(tmp_path / "nowhere" / "train")
    return train_args(tmp_path, config)


def missing_target_side(tmp_path: Path, config: dict) -> list[str]:
    corpus_file(config, "train", "en").unlink()
    return train_args(tmp_path, config)


def misaligned_dev(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "dev", "en")
    write_lines(path, path.read_text(encoding="utf-8").splitlines()[:-1])
    return train_args(tmp_path, config)


def invalid_utf8_line_7(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "en")
    lines = path.read_bytes().split(b"\n")
    lines[6] = "café olé".encode("latin-1")  # é is one byte in Latin-1: byte 4 of the line
    path.write_bytes(b"\n".join(lines))
    return train_args(tmp_path, config)


def invalid_utf8_in_gzip(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "es")
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"\xff\xfe broken"
    Path(f"{path}.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    path.unlink()
    return train_args(tmp_path, config)


def not_gzip(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "en")
    path.rename(f"{path}.gz")  # plain text under a .gz name
    return train_args(tmp_path, config)


def all_lines_empty(tmp_path: Path, config: dict) -> list[str]:
    for lang in ("es", "en"):
        write_lines(corpus_file(config, "train", lang), [""] * 20)
    return train_args(tmp_path, config)


def source_side_empty(tmp_path: Path, config: dict) -> list[str]:
    write_lines(corpus_file(config, "train", "es"), ["   "] * 200)
    return train_args(tmp_path, config)


def tiny_corpus_huge_vocabulary(tmp_path: Path, config: dict) -> list[str]:
    for lang in ("es", "en"):
        path = corpus_file(config, "train", lang)
        write_lines(path, path.read_text(encoding="utf-8").splitlines()[:20])
    config["tokenizer"]["vocab_size"] = 50000
    return train_args(tmp_path, config)


def early_stopping_without_dev(tmp_path: Path, config: dict) -> list[str]:
    config["data"]["dev"] = None
    config["train"]["early_stopping_patience"] = 2
    return train_args(tmp_path, config)


def raw_config(text: str | bytes) -> Callable[[Path, dict], list[str]]:
    def make(tmp_path: Path, config: dict) -> list[str]:
        path = tmp_path / "bad.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return ["train", str(path)]

    return make


def resume_another_configs_run(tmp_path: Path, config: dict) -> list[str]:
    other = config_from_dict({**config, "train": {**config["train"], "lr": 0.5}})
    save_checkpoint({"config": config_to_dict(other), "step": 3}, Path(config["train"]["run_dir"]) / "last.pt")
    return train_args(tmp_path, config, "--resume")


def checkpoint_file(kind: str) -> Callable[[Path, dict], list[str]]:
    """`seq2seq info` on a file that is not a usable checkpoint."""

    def make(tmp_path: Path, config: dict) -> list[str]:
        path = tmp_path / f"{kind}.pt"
        if kind.startswith("random-"):
            generator = torch.Generator().manual_seed(int(kind.split("-")[1]))
            path.write_bytes(torch.randint(0, 256, (5000,), generator=generator).byte().numpy().tobytes())
        elif kind == "truncated":
            save_checkpoint({"model": {"w": torch.randn(3000)}, "step": 1}, path)
            path.write_bytes(path.read_bytes()[:6000])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "foreign":
            torch.save({"state_dict": {"layer.weight": torch.ones(2, 2)}, "epoch": 3}, path)
        return ["info", str(path)]

    return make


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")

# case -> (arguments, substrings of the error line, whether log lines may come before it: the corpus
# is read, and its errors found, after the run has started logging)
BAD_INPUTS: dict[str, tuple[Callable[[Path, dict], list[str]], list[str], bool]] = {
    # corpora
    "missing training file": (missing_training_prefix, ["corpus file not found: {tmp}/nowhere/train.es"], True),
    "missing target side": (missing_target_side, ["corpus file not found: {tmp}/corpus/train.en"], True),
    "misaligned dev set": (
        misaligned_dev,
        ["misaligned corpus: {tmp}/corpus/dev.es has 20 lines but {tmp}/corpus/dev.en has 19"],
        True,
    ),
    "invalid UTF-8": (invalid_utf8_line_7, ["{tmp}/corpus/train.en, line 7: not valid UTF-8 (byte 4)"], True),
    "invalid UTF-8 in gzip": (
        invalid_utf8_in_gzip,
        ["{tmp}/corpus/train.es.gz, line 3: not valid UTF-8 (byte 1)"],
        True,
    ),
    "not gzip": (not_gzip, ["cannot read {tmp}/corpus/train.en.gz"], True),
    "all pairs too long": (
        setting("data.max_src_length", 2),
        ["no training pairs left after filtering {tmp}/corpus/train.es / {tmp}/corpus/train.en", "data.max_src_length"],
        True,
    ),
    "all lines empty": (
        all_lines_empty,
        ["{tmp}/corpus/train.es", "hold(s) no non-empty lines: nothing to train SentencePiece on"],
        True,
    ),
    "source side empty": (source_side_empty, ["no training pairs left after filtering {tmp}/corpus/train.es"], True),
    "batch_tokens below longest pair": (
        setting("train.batch_tokens", 10),
        ["train.batch_tokens (10) is smaller"],
        True,
    ),
    "vocabulary too large for corpus": (
        tiny_corpus_huge_vocabulary,
        ["tokenizer.vocab_size 50000 is too large for this corpus", "lower tokenizer.vocab_size"],
        True,
    ),
    "vocabulary too small for the alphabet": (
        setting("tokenizer.vocab_size", 8),
        ["tokenizer.vocab_size 8", "raise tokenizer.vocab_size"],
        True,
    ),
    # config values
    "unknown section": (setting("trian.lr", 0.1), ["unknown config key 'trian' (did you mean 'train'?)"], False),
    "unknown nested key": (
        setting("model.attention.typ", "dot"),
        ["unknown config key 'model.attention.typ' (did you mean 'model.attention.type'?)"],
        False,
    ),
    "section not a mapping": (setting("model", 5), ["config key 'model' must be a mapping of options, got 5"], False),
    "bool for an integer": (
        setting("train.max_steps", True),
        ["config key 'train.max_steps' must be an integer or null, got True"],
        False,
    ),
    "negative size": (
        setting("model.embedding_size", -5),
        ["config key 'model.embedding_size' must be greater than 0, got -5"],
        False,
    ),
    "dropout 1.5 in the file": (
        setting("model.dropout", 1.5),
        ["config key 'model.dropout' must be in [0, 1), got 1.5"],
        False,
    ),
    "adam_betas of one number": (
        setting("train.adam_betas", [0.9]),
        ["config key 'train.adam_betas' must be a list"],
        False,
    ),
    "max_time not a duration": (
        setting("train.max_time", "soon"),
        ["config key 'train.max_time' must be a duration"],
        False,
    ),
    "no end": (setting("train.max_steps", None), ["the run has no end: set train.max_steps"], False),
    "same languages": (setting("data.tgt_lang", "es"), ["'data.src_lang' and 'data.tgt_lang' must differ"], False),
    "unknown attention": (
        setting("model.attention.type", "magic"),
        ["config key 'model.attention.type' must be one of"],
        False,
    ),
    "tied sizes differ": (setting("model.tie_embeddings", True), ["model.tie_embeddings", "(got 32 and 64)"], False),
    "early stopping without dev": (
        early_stopping_without_dev,
        ["config key 'train.early_stopping_patience' needs a dev set: set 'data.dev'"],
        False,
    ),
    "cuda without a GPU": (
        overrides("train.device=cuda"),
        ["train.device is 'cuda' but no CUDA GPU is visible"],
        False,
    ),
    # config files and --set
    "YAML syntax error": (
        raw_config("train:\n  lr: 0.1\n  max_steps: [4\n"),
        ["config file {tmp}/bad.yaml is not valid YAML at line"],
        False,
    ),
    "config not a mapping": (
        raw_config("- train\n- model\n"),
        ["config file {tmp}/bad.yaml must hold a mapping"],
        False,
    ),
    "config not UTF-8": (raw_config(b"name: caf\xe9\n"), ["config file {tmp}/bad.yaml is not UTF-8 text"], False),
    "--set without =": (overrides("train.lr"), ["--set expects key.path=value, got 'train.lr'"], False),
    "--set unknown key": (overrides("train.nope=1"), ["unknown config key 'train.nope'"], False),
    "--set through a value": (
        overrides("train.max_steps.x=1"),
        ["--set train.max_steps.x: 'max_steps' is not a section"],
        False,
    ),
    "--set unreadable value": (overrides("train.lr=[0.1"), ["--set train.lr: cannot read value '[0.1'"], False),
    # run directories
    "resume another config's run": (
        resume_another_configs_run,
        ["{tmp}/run holds a run of a different config", "--force"],
        False,
    ),
    # evaluate and info
    "evaluate --beam 0": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--beam", "0"],
        ["decoding option beam (--beam) must be greater than 0, got 0"],
        False,
    ),
    "evaluate --alpha -1": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--alpha", "-1"],
        ["decoding option alpha (--alpha) must be 0 or more"],
        False,
    ),
    "evaluate a missing checkpoint": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt")],
        ["checkpoint not found: {tmp}/best.pt"],
        False,
    ),
    "evaluate on cuda without a GPU": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--device", "cuda"],
        ["no CUDA GPU is visible", "--device"],
        False,
    ),
    # Random bytes: most give an UnpicklingError; seed 3 a KeyError, seed 12 an IndexError, seed 110 a torch warning.
    **{
        f"info on random bytes (seed {seed})": (
            checkpoint_file(f"random-{seed}"),
            [f"{{tmp}}/random-{seed}.pt is not a ", " checkpoint (truncated", "corrupt"],
            False,
        )
        for seed in (0, 3, 12, 110)
    },
    "info on a truncated checkpoint": (
        checkpoint_file("truncated"),
        ["{tmp}/truncated.pt is not a readable checkpoint (truncated or corrupt"],
        False,
    ),
    "info on an empty file": (checkpoint_file("empty"), ["{tmp}/empty.pt is not a readable checkpoint"], False),
    "info on another program's file": (
        checkpoint_file("foreign"),
        ["{tmp}/foreign.pt is not a seq2seq checkpoint (it was written by another program)"],
        False,
    ),
    "info on a directory": (lambda tmp_path, config: ["info", str(tmp_path)], ["{tmp} is a directory"], False),
}
GPU_CASES = {"cuda without a GPU", "evaluate on cuda without a GPU"}


IN_A_SUBPROCESS = {"info on random bytes (seed 110)"}  # pytest would catch the Python warning in-process


def bad_input_param(case: str):
    marks = [NO_GPU] if case in GPU_CASES else []
    if case in IN_A_SUBPROCESS:
        marks.append(pytest.mark.slow)
    return pytest.param(case, marks=marks)


@pytest.mark.parametrize("case", [bad_input_param(c) for c in sorted(BAD_INPUTS)])
def test_bad_input_exits_2_with_one_error_line(tmp_path: Path, tiny_config, capfd, case: str):
    make_args, expected, late = BAD_INPUTS[case]
    args = make_args(tmp_path, tiny_config)
    if case in IN_A_SUBPROCESS:
        result = run_seq2seq(*args)
        status, out, err = result.returncode, result.stdout, result.stderr
    else:
        status = main(args)  # an exception escaping main() would be a traceback
        captured = capfd.readouterr()  # file descriptors: SentencePiece's C++ output counts too
        out, err = captured.out, captured.err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("seq2seq: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    before = lines[:-1]
    assert all(LOG_LINE.match(line) for line in before) if late else before == [], err
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path)) in errors[0]
    assert out == ""
    assert not (tmp_path / "run" / "best.pt").exists()


# --- more bad inputs, and the train and info commands ----------------------------------------


def misaligned(tmp_path: Path, config: dict) -> list[str]:
    write_lines(Path(f"{config['data']['train']}.en"), ["only one line"])
    return ["train", write_config(tmp_path, config)]


def existing_run(tmp_path: Path, config: dict) -> list[str]:
    save_checkpoint({"step": 3}, Path(config["train"]["run_dir"]) / "last.pt")
    return ["train", write_config(tmp_path, config)]


def unknown_key(tmp_path: Path, config: dict) -> list[str]:
    config["train"]["lrr"] = 0.01
    return ["train", write_config(tmp_path, config)]


def wrong_type(tmp_path: Path, config: dict) -> list[str]:
    config["model"]["embedding_size"] = "big"
    return ["train", write_config(tmp_path, config)]


CLI_ERRORS = {
    "unknown key": (unknown_key, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    "wrong type": (wrong_type, "config key 'model.embedding_size' must be an integer, got 'big'"),
    "bad --set": (
        lambda tmp_path, config: ["train", write_config(tmp_path, config), "--set", "model.dropout=1.5"],
        "config key 'model.dropout' must be in [0, 1), got 1.5",
    ),
    "missing config file": (
        lambda tmp_path, config: ["train", str(tmp_path / "nope.yaml")],
        "config file not found: {tmp}/nope.yaml (give the path to a YAML file, e.g. configs/quickstart.yaml)",
    ),
    "misaligned corpus": (misaligned, "misaligned corpus: "),
    "existing run": (existing_run, "{tmp}/run already holds a run: add --resume"),
    "nothing to resume": (
        lambda tmp_path, config: ["train", write_config(tmp_path, config), "--resume"],
        "nothing to resume",
    ),
    "info on a bad file": (
        lambda tmp_path, config: ["info", config["data"]["train"] + ".es"],
        "{tmp}/corpus/train.es is not a seq2seq checkpoint (truncated, corrupt or another format)",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path: Path, tiny_config, capsys, case: str):
    make_args, expected = CLI_ERRORS[case]
    args = make_args(tmp_path, tiny_config)
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seq2seq: error: ")
    assert expected.replace("{tmp}", str(tmp_path)) in lines[0]
    assert captured.out == ""
    assert not (Path(tiny_config["train"]["run_dir"]) / "best.pt").exists()


def test_cli_trains_and_logs(tmp_path: Path, toy_config, capsys):
    toy_config["train"].update(max_steps=4, validate_every=2)
    config = write_config(tmp_path, toy_config)
    assert main(["train", config]) == 0
    run_dir = Path(toy_config["train"]["run_dir"])
    log = (run_dir / "train.log").read_text()
    assert "Validation at step 2" in log and "Validation at step 4" in log and "Finished" in log
    assert "Finished" in capsys.readouterr().err  # the console log

    assert main(["train", config]) == 2  # the run exists ...
    assert main(["train", config, "--force", "--set", "train.max_steps=2"]) == 0  # ... --force starts over
    assert [m["step"] for m in read_records(run_dir / "metrics.jsonl")] == [2]
    assert main(["train", config, "--resume", "--set", "train.max_steps=4"]) == 0
    assert [m["step"] for m in read_records(run_dir / "metrics.jsonl")] == [2, 4]


def test_cli_info_shows_a_checkpoint(toy_model, capsys):
    assert main(["info", str(toy_model["run_dir"] / "best.pt")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["step"] == toy_model["summary"]["best_step"]
    assert shown["best_bleu"] == toy_model["summary"]["best_dev_bleu"]
    assert shown["config"]["model"]["embedding_size"] == 32
    assert shown["run"]["versions"]["torch"] == torch.__version__


@pytest.mark.slow
def test_cli_subprocess_user_error_has_no_traceback(tmp_path: Path, tiny_config):
    config = write_config(tmp_path, {**tiny_config, "model": {**tiny_config["model"], "hiden": 3}})
    result = run_seq2seq("train", config, cwd=tmp_path)
    error = assert_subprocess_one_line_error(result)
    assert error.startswith("seq2seq: error: unknown config key 'model.hiden'")


# --- bad checkpoints given to translate and evaluate ----------------------------------------


def truncated(tmp_path: Path, toy_model) -> Path:
    data = toy_model["checkpoint"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def missing_weights(tmp_path: Path, toy_model) -> Path:
    payload = load_checkpoint(toy_model["checkpoint"])
    del payload["model"]["decoder.output.weight"]
    path = tmp_path / "incomplete.pt"
    save_checkpoint({k: v for k, v in payload.items() if k not in ("kind", "format_version")}, path)
    return path


BAD_CHECKPOINTS = {
    "random bytes 0": (lambda tmp_path, toy_model: random_bytes(tmp_path, 0), NOT_A_CHECKPOINT),
    "random bytes 1": (lambda tmp_path, toy_model: random_bytes(tmp_path, 1), NOT_A_CHECKPOINT),
    "random bytes 3": (lambda tmp_path, toy_model: random_bytes(tmp_path, 3), NOT_A_CHECKPOINT),
    "truncated": (truncated, r"is not a readable checkpoint \(truncated or corrupt: .+\)$"),
    "missing weights": (
        missing_weights,
        r"is not a complete seq2seq checkpoint \(.*state_dict.*\)$",
    ),
    "a directory": (
        lambda tmp_path, toy_model: tmp_path,
        r"is a directory: give a checkpoint file such as .*best\.pt$",
    ),
}


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_cli_bad_checkpoint_is_one_line_exit_2(toy_model, tmp_path: Path, capsys, case: str, command: str):
    make, expected = BAD_CHECKPOINTS[case]
    path = make(tmp_path, toy_model)
    source = write_lines(tmp_path / "in.es", ["uno dos"])
    extra = ["--input", str(source)] if command == "translate" else ["--src", str(source), "--ref", str(source)]
    assert main([command, str(path), *extra]) == 2
    message = one_line_error(capsys)
    assert message.startswith(f"seq2seq: error: {path} ") and re.search(expected, message), message


@pytest.mark.parametrize("seed", [2, 20])  # IndexError, KeyError
def test_cli_random_bytes_that_upset_the_unpickler_are_one_line_exit_2(tmp_path: Path, capsys, seed: int):
    path = random_bytes(tmp_path, seed)
    source = write_lines(tmp_path / "in.es", ["uno dos"])
    assert main(["translate", str(path), "--input", str(source)]) == 2
    message = one_line_error(capsys)
    assert re.fullmatch(
        rf"seq2seq: error: {re.escape(str(path))} is not a readable checkpoint \(truncated or corrupt: .+\)", message
    )


@pytest.mark.slow
def test_corrupt_checkpoint_in_a_subprocess_has_no_traceback(tmp_path: Path):
    path = random_bytes(tmp_path)
    write_lines(tmp_path / "in.es", ["uno dos tres"])
    result = run_seq2seq("translate", str(path), "--input", "in.es", cwd=tmp_path)
    error = assert_subprocess_one_line_error(result)
    assert re.fullmatch(rf"seq2seq: error: {re.escape(str(path))} {NOT_A_CHECKPOINT}", error), error
