"""Property-based tests (hypothesis) of what reads user input: config files with `--set` overrides, the `train`
command's error reporting, and corpus files.

Each property says what must hold for *any* input of its kind: a correct result, or the project's UserError with
a one-line message; never another exception. The number of cases each property tries is a named constant below
(`pytest tests/test_fuzz.py --hypothesis-show-statistics` prints what ran); generation is derandomized and no
example database is written, so every run tries the same cases.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import random
import re
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import yaml
from helpers import ERROR_PREFIX, LOG_LINE, make_toy_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from seq2seq import builders
from seq2seq.cli import EXIT_USER_ERROR, main
from seq2seq.config import Config, load_config, save_config
from seq2seq.data import parallel_chunks, read_parallel_files, weighted_epoch
from seq2seq.errors import UserError
from seq2seq.textfiles import count_lines, iter_lines, sample_lines

# Cases tried per property (the reliability table cites these).
CONFIG_FILE_EXAMPLES = 400
SET_OVERRIDE_EXAMPLES = 300
USABLE_CONFIG_EXAMPLES = 300
CLI_TRAIN_EXAMPLES = 150
CORPUS_FILE_EXAMPLES = 400
UTF8_TEXT_EXAMPLES = 200
GZIP_CORPUS_EXAMPLES = 200
PARALLEL_FILES_EXAMPLES = 200
SAMPLE_LINES_EXAMPLES = 100

# Even without an example database Hypothesis caches Unicode tables and constants mined from the source in
# ./.hypothesis: keep them out of the repository (in one place, so later runs reuse them).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "seq2seq-hypothesis")

FUZZ = settings(
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository
    derandomize=True,  # the same cases on every run
    suppress_health_check=[HealthCheck.too_slow],
)

MAX_MESSAGE_CHARS = 1000  # an error a person reads on one terminal line or so


def assert_one_line_message(error: BaseException) -> str:
    """A UserError's message: not empty, one line (no line break of any kind, no control character), bounded."""
    assert isinstance(error, UserError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message.strip(), "empty message"
    assert message.isprintable(), f"not one printable line: {message!r}"
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters: {message[:200]!r}..."
    return message


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for the module: every case overwrites the same few files."""
    return tmp_path_factory.mktemp("fuzz")


# --- config files ---------------------------------------------------------------------------------------------

QUICKSTART = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml").read_text())
TOY = make_toy_config(Path("/nonexistent/fuzz"), {"train": "toy/train", "dev": "toy/dev"})
RICH = {  # the branches the other two leave out: weighted corpora, sampling, multihead options, EMA, a moved key
    "data": {"train": [{"prefix": "a/train", "weight": 0.5}, "b/train"], "dev": None},
    "tokenizer": {"model_type": "bpe", "sampling": {"alpha": 0.1, "nbest": -1}},
    "model": {"attention": {"type": "multihead", "heads": 4}, "embedding_size": 256, "tie_embeddings": True},
    "train": {"max_steps": 10, "schedule": {"type": "linear"}, "ema_decay": 0.999, "max_output_ratio": 2.0},
    "decode": {"sample": True, "top_k": 5, "top_p": 0.9},
}
VALID_CONFIGS = [QUICKSTART, TOY, RICH, {"train": {"max_time": "90s"}}]

# Values written as YAML text that yaml.safe_dump never produces: tags, malformed typed scalars, impossible dates,
# integers too long for str(), anchors and aliases (recursive, undefined, a bounded "billion laughs"), deep nesting.


def alias_bomb(levels: int) -> str:
    """A "billion laughs" flow list: its last item expands to 10**levels ones, in about 50 x levels bytes."""
    items = ["&l1 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    items += [f"&l{level} [{', '.join([f'*l{level - 1}'] * 10)}]" for level in range(2, levels + 1)]
    return "[" + ", ".join(items) + "]"


RAW_YAML_VALUES = [
    "!!python/object:os.system",
    "!!python/object/apply:os.system ['true']",
    "!!python/name:builtins.print",
    "!!int 'x'",
    "!!int ''",
    "!!int '0x'",
    "!!int '0b'",
    "!!int '_'",
    "!!int '1:2:x'",
    "!!float ''",
    "!!float '.'",
    "!!float '1:x'",
    "!!bool 'x'",
    "!!timestamp 'x'",
    "!!timestamp '2001-13-01'",
    "2001-02-30",
    "2001-12-14t21:59:43.10-99:00",
    "!!binary '@@@'",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [a, b]",
    "!!str [a]",
    "!!map [a]",
    "!!null 'x'",
    "!custom 1",
    "9" * 5000,
    "-" + "9" * 5000,
    "0x" + "f" * 5000,
    "1.0e99999",
    "&a [*a]",
    "&m {x: *m}",
    "*undefined",
    alias_bomb(7),  # 10**7 ones from 350 bytes
    "[" * 1200 + "]" * 1200,
    "{a: " * 1200 + "1" + "}" * 1200,
    "{a: 1, a: 2}",
    "{? [a, b] : 1}",
    "{<<: 1}",
    "'unterminated",
    "[1, 2",
    ": :",
    "\t",
    "%YAML 1.1",
]
PLACEHOLDER = "RAWVALUE{}X"  # a plain scalar in the dumped YAML, replaced by RAW_YAML_VALUES[i]

SPECIAL_STRINGS = ["", " ", "nan", ".nan", ".inf", "-.inf", "1e-3", "1e400", "0", "-1", "8m", "0s", "2h", "1e3s", "~",
                   "null", "yes", "off", "additive", "multihead", "none", "bpe", "word", "cpu", "fp16", "linear",
                   "plateau", "sgd", "a/train", "\x00", "\ufeff", "a\nb", "\u2028", "\x85", "é"]  # fmt: skip
C_TYPE_LIMITS = [2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**31) - 1, -(2**63) - 1]  # int32, int64
INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30, 10**100]

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INTERESTING_INTS),
    st.integers(),
    st.floats(),  # NaN, inf, -inf, -0.0, subnormals included
    st.text(max_size=20),
    st.sampled_from(SPECIAL_STRINGS),
    st.sampled_from([PLACEHOLDER.format(i) for i in range(len(RAW_YAML_VALUES))]),
)
yaml_keys = st.one_of(st.text(max_size=12), st.sampled_from(["train", "model", "type", "max_steps", "a\nb", "\x85"]),
                      st.integers(-2, 2), st.none(), st.booleans())  # fmt: skip
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(yaml_keys, children, max_size=4),
    max_leaves=12,
)


def key_paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path of the nested mappings in `node`: ("train",), ("train", "schedule", "type"), ..."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from key_paths(value, (*prefix, key))


def parent_of(document: dict, path: tuple) -> dict:
    node = document
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def mutated_configs(draw) -> Any:
    """A valid config with up to four keys replaced by a random value, deleted, or joined by an unknown key."""
    document = copy.deepcopy(draw(st.sampled_from(VALID_CONFIGS)))
    for _ in range(draw(st.integers(0, 4))):
        paths = list(key_paths(document))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = parent_of(document, path)
        action = draw(st.sampled_from(["replace", "replace", "small number", "delete", "unknown key"]))
        if action == "replace":
            parent[path[-1]] = draw(yaml_values)
        elif action == "small number":  # near the range limits, so validation goes past the type checks
            parent[path[-1]] = draw(st.integers(-2, 9) | st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.5]))
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(yaml_keys)] = draw(yaml_values)
    return document


def dump_yaml(document: Any, flow: bool | None = False, allow_unicode: bool = True) -> str:
    """`document` as YAML text, each placeholder replaced by its raw YAML value."""
    text = yaml.safe_dump(
        document, default_flow_style=flow, allow_unicode=allow_unicode, sort_keys=False, width=1 << 20
    )
    return re.sub(r"RAWVALUE(\d+)X", lambda match: RAW_YAML_VALUES[int(match.group(1))], text)


BYTE_SPLICES = [b"\x00", b"\xff", b"\xc3", b"\x80\x80", b"\xef\xbb\xbf", b"\r", b"\t", b"\x1b", b"\xed\xa0\x80"]


@st.composite
def config_file_bytes(draw) -> bytes:
    """A config file: a mutated valid config or any YAML value, sometimes broken as text (cut short, spliced) or as
    bytes (a BOM, UTF-16, NUL, invalid UTF-8)."""
    document = draw(st.one_of(mutated_configs(), mutated_configs(), mutated_configs(), yaml_values))
    text = dump_yaml(document, flow=draw(st.sampled_from([False, True, None])), allow_unicode=draw(st.booleans()))
    damage = draw(st.sampled_from(["none"] * 6 + ["cut", "splice text", "any text"]))
    if damage == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "splice text":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=5) | st.sampled_from(RAW_YAML_VALUES)) + text[at:]
    elif damage == "any text":
        text = draw(st.text(max_size=60))
    data = text.encode(draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16"])))
    if draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BYTE_SPLICES)) + data[at:]
    return data


KNOWN_KEYS = sorted({".".join(map(str, path)) for config in VALID_CONFIGS for path in key_paths(config)})


def flow_yaml(value: Any) -> str:
    """A value as one line of YAML, as a user would type it after `--set key=`."""
    return dump_yaml(value, flow=True).removesuffix("\n").removesuffix("\n...").strip()


PLAUSIBLE_VALUES = [0, 1, 2, 8, 64, 0.5, 0.999, 1.5, True, False, None, "additive", "multihead", "bpe", "word", "cpu",
                    "linear", "plateau", "adamw", "bf16", "8m", "data/x", [0.9, 0.98], {"type": "dot"}]  # fmt: skip
plausible_assignments = st.builds(
    "{}={}".format, st.sampled_from(KNOWN_KEYS), st.sampled_from(PLAUSIBLE_VALUES).map(flow_yaml)
)
odd_assignments = st.builds(
    "{}={}".format,
    st.one_of(st.sampled_from(KNOWN_KEYS), st.sampled_from(KNOWN_KEYS).map(lambda k: k + ".x"),
              st.text(max_size=15), st.sampled_from(["", ".", "..", "train.", ".train", "a\nb.c", "\x85"])),
    st.one_of(yaml_values.map(flow_yaml), st.text(max_size=20), st.sampled_from(RAW_YAML_VALUES)),
)  # fmt: skip
set_assignments = st.one_of(  # half of them plausible, so that the loader gets past the first one
    plausible_assignments,
    plausible_assignments,
    odd_assignments,
    st.text(max_size=20),  # text: mostly no "="
)


def load_or_error(path: Path, overrides: list[str]) -> Config | str:
    """The loaded config, or the one-line message of the UserError it raised (any other exception propagates)."""
    try:
        config = load_config(path, overrides)
    except UserError as error:
        event("refused: " + re.sub(r"'.*", "", str(error).removeprefix(f"config file {path} "))[:30])
        return assert_one_line_message(error)
    assert isinstance(config, Config)
    event("loaded")
    return config


@settings(FUZZ, max_examples=CONFIG_FILE_EXAMPLES)
@given(data=config_file_bytes(), overrides=st.lists(set_assignments, max_size=2))
def test_a_config_file_loads_or_is_one_line_error(workdir: Path, data: bytes, overrides: list[str]):
    """Any file bytes and `--set` overrides: load_config returns a Config or raises a UserError with one line."""
    path = workdir / "config.yaml"
    path.write_bytes(data)
    load_or_error(path, overrides)


@settings(FUZZ, max_examples=SET_OVERRIDE_EXAMPLES)
@given(document=st.sampled_from(VALID_CONFIGS), overrides=st.lists(set_assignments, min_size=1, max_size=4))
def test_set_overrides_on_a_valid_config_load_or_are_one_line_error(workdir: Path, document: dict, overrides):
    """Any `--set` strings on a valid config: a Config or a one-line UserError."""
    path = workdir / "valid.yaml"
    path.write_text(dump_yaml(document), encoding="utf-8")
    load_or_error(path, overrides)


# The numbers training hands to Python, numpy and torch (seeds, threads, the optimizer, the schedule) and the
# run's length, which the linear schedule divides by; each with values of its type, at and past the limits.
any_int = st.integers(-3, 3) | st.sampled_from(INTERESTING_INTS) | st.sampled_from(C_TYPE_LIMITS)
any_float = st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, 1.0, 1e-300, 5e-324, 1e300])
TRAINING_NUMBERS = {
    "train.seed": any_int,
    "train.threads": any_int,
    "train.max_steps": any_int,
    "train.schedule.warmup_steps": any_int,
    "train.lr": any_float,
    "train.weight_decay": any_float,
    "train.schedule.min_lr": any_float,
    "train.schedule.decay_factor": any_float,
    "train.adam_betas": st.lists(st.floats(-1, 2) | st.sampled_from([0, 1, 0.9, 0.999]), min_size=2, max_size=2),
    "train.optimizer": st.sampled_from(["adam", "adamw", "sgd"]),
}


def with_values(document: dict, assignments: list[tuple[str, Any]]) -> dict:
    """A copy of `document` with each dotted key set to its value (sections created as needed)."""
    document = copy.deepcopy(document)
    for dotted, value in assignments:
        *sections, key = dotted.split(".")
        node = document
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return document


number_assignments = st.lists(
    st.sampled_from(sorted(TRAINING_NUMBERS)).flatmap(lambda key: st.tuples(st.just(key), TRAINING_NUMBERS[key])),
    min_size=1,
    max_size=2,
)


def assert_usable_by_training(config: Config, path: Path) -> None:
    """Training's set-up takes the config's numbers (seeds, thread count, optimizer, schedule), and the copy it saves
    in the run directory (config.yaml) loads back the same."""
    with torch.random.fork_rng(devices=[]):  # builders.set_seed: Python's and torch's generators
        state = random.getstate()
        try:
            builders.set_seed(config.train.seed)
        finally:
            random.setstate(state)
    weighted_epoch([3, 2], [0.5, 1.5], config.train.seed, 0)  # numpy draws the shares of several corpora
    # train.py gives train.threads to torch.set_num_threads, which takes a C int (not called: it is process-wide).
    assert 0 <= config.train.threads < 2**31, config.train.threads
    builders.create_optimizer(config, torch.nn.Linear(2, 2))  # it uses parameters() only
    schedule = builders.create_schedule(config)
    assert all(0 <= schedule.lr(step) < float("inf") for step in (1, 2, 10**6))
    save_config(config, path)
    assert load_config(path) == config


@settings(FUZZ, max_examples=USABLE_CONFIG_EXAMPLES)
@given(
    document=st.sampled_from(VALID_CONFIGS),
    assignments=number_assignments,
    more=st.one_of(st.none(), mutated_configs()),
)
def test_a_config_that_loads_is_usable_by_training(workdir: Path, document: dict, assignments, more):
    """A config that loads (here: valid ones with numbers changed, and mutated ones) is accepted by what training
    builds from it (seeds, optimizer, schedule, thread count) and saves and loads back identically."""
    path = workdir / "numbers.yaml"
    for candidate in (with_values(document, assignments), more):
        if candidate is None:
            continue
        path.write_text(dump_yaml(candidate), encoding="utf-8")
        loaded = load_or_error(path, [])
        if isinstance(loaded, Config):
            assert_usable_by_training(loaded, workdir / "saved.yaml")


def run_cli(argv: list[str]) -> tuple[int, str, str, list[Config]]:
    """seq2seq.cli.main(argv) in this process with training replaced by a stub: (status, stdout, stderr, configs
    the stub was given)."""
    trained: list[Config] = []

    def fake_train(config: Config, **kwargs) -> dict:
        trained.append(config)
        return {"interrupted": False}

    fake_module = types.ModuleType("seq2seq.train")
    fake_module.train = fake_train
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(sys.modules, {"seq2seq.train": fake_module}),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        status = main(argv)
    return status, out.getvalue(), err.getvalue(), trained


@settings(FUZZ, max_examples=CLI_TRAIN_EXAMPLES)
@given(data=config_file_bytes(), overrides=st.lists(set_assignments, max_size=2))
def test_seq2seq_train_reports_a_bad_config_in_one_line(workdir: Path, data: bytes, overrides: list[str]):
    """`seq2seq train CONFIG --set ...` (in process, training stubbed): a config that loads reaches training and
    exits 0; any other ends with exit status 2 and one `seq2seq: error: ` line on stderr (after log lines, if any),
    never a traceback."""
    path = workdir / "cli.yaml"
    path.write_bytes(data)
    status, out, err, trained = run_cli(["train", str(path), *(f"--set={item}" for item in overrides)])
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert all(LOG_LINE.match(line) for line in lines[:-1]), err
    event(f"exit status {status}")
    if trained:
        assert status == 0 and len(trained) == 1 and not any(ERROR_PREFIX in line for line in lines), err
    else:
        assert status == EXIT_USER_ERROR, (status, err)
        assert lines and lines[-1].startswith(ERROR_PREFIX), err
        assert lines[-1][len(ERROR_PREFIX) :].strip() and lines[-1].isprintable(), err


# --- corpus files ---------------------------------------------------------------------------------------------

TRICKY_CHARACTERS = ["\r", "\x00", "\ufeff", "\x85", "\u2028", "\x0b", "\x0c", "\x1c", "é", "€", "\U0001f600", " "]
line_texts = st.text(
    alphabet=st.sampled_from(TRICKY_CHARACTERS) | st.characters(exclude_categories=("Cs",), exclude_characters="\n"),
    max_size=10,
)
ENCODINGS = ["utf-8", "utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le"]


@st.composite
def corpus_bytes(draw) -> bytes:
    """A corpus file: lines in some encoding with mixed LF / CRLF / CR / CR CR LF endings and maybe no final
    newline, sometimes with bytes spliced in (NUL, invalid UTF-8, a BOM), or just random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=120))
    lines = draw(st.lists(line_texts, max_size=8))
    endings = draw(
        st.lists(st.sampled_from(["\n", "\n", "\r\n", "\r", "\r\r\n"]), min_size=len(lines), max_size=len(lines))
    )
    text = "".join(line + ending for line, ending in zip(lines, endings))
    if lines and draw(st.booleans()):
        text = text.removesuffix(endings[-1])  # no final newline
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(BYTE_SPLICES + [b"\n", b"\r\n"])) + data[at:]
    return data


def reference_read(data: bytes) -> list[str] | tuple[int, int]:
    """What seq2seq.textfiles.iter_lines promises for a file's bytes: lines end at LF; the CRs before it (CRLF, or
    the CR CR LF of a file converted twice) and at the end of the last line are dropped; a lone CR inside a line
    stays (count_lines agrees); a UTF-8 BOM starting the file is dropped; the text must be UTF-8, else
    (line number, byte in that line) of the first invalid byte."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # a final LF ends the last line; it does not start another
    lines = []
    for number, raw in enumerate(pieces, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return number, error.start + 1
        lines.append(text.rstrip("\r").removeprefix("\ufeff" if number == 1 else ""))
    return lines


def read_or_error(path: Path) -> list[str] | UserError:
    try:
        lines = list(iter_lines(path))
    except UserError as error:
        assert_one_line_message(error)
        event("not UTF-8" if "not valid UTF-8" in str(error) else "cannot read")
        return error
    event("read")
    return lines


def assert_read_as_documented(path: Path, data: bytes) -> None:
    """iter_lines(path) gives the reference lines, or the documented error naming the file, line and byte;
    count_lines agrees with it whatever the bytes."""
    expected = reference_read(data)
    result = read_or_error(path)
    if isinstance(expected, tuple):
        number, byte = expected
        assert isinstance(result, UserError), result
        assert str(result) == f"{path}, line {number}: not valid UTF-8 (byte {byte}); convert the file to UTF-8"
    else:
        assert result == expected
    assert count_lines(path) == data.count(b"\n") + (not data.endswith(b"\n") and data != b"")


@settings(FUZZ, max_examples=CORPUS_FILE_EXAMPLES)
@given(data=corpus_bytes())
def test_a_corpus_file_reads_as_documented(workdir: Path, data: bytes):
    """Any bytes: the documented lines (endings and a leading BOM dropped), or a one-line UserError naming the file,
    the line and the byte that is not UTF-8; count_lines counts the same lines."""
    path = workdir / "corpus.es"
    path.write_bytes(data)
    assert_read_as_documented(path, data)


@settings(FUZZ, max_examples=UTF8_TEXT_EXAMPLES)
@given(
    lines=st.lists(line_texts, max_size=8),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    bom=st.booleans(),
)
def test_utf8_lines_read_back(workdir: Path, lines: list[str], crlf: bool, final_newline: bool, bom: bool):
    """Lines written as UTF-8 (LF or CRLF, with or without a BOM or a final newline) read back as written, less
    trailing CRs (a CR ending a line reads as a line ending) and a BOM starting the first line."""
    ending = "\r\n" if crlf else "\n"
    text = ending.join(lines) + (ending if final_newline and lines else "")
    path = workdir / "text.en"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    expected = [line.rstrip("\r") for line in lines]
    if lines and lines[-1] == "" and not final_newline:
        expected.pop()  # nothing marks an empty last line without its newline: "a\n" is one line
    if bom and not text:
        expected = [""]  # a file of just a BOM: one empty line (count_lines agrees)
    elif expected and not bom:
        expected[0] = expected[0].removeprefix("\ufeff")  # a first line that starts with U+FEFF starts with a BOM
    assert list(iter_lines(path)) == expected
    assert count_lines(path) == len(expected)


@settings(FUZZ, max_examples=GZIP_CORPUS_EXAMPLES)
@given(data=corpus_bytes(), damage=st.sampled_from(["none", "flip", "cut", "append"]), where=st.floats(0, 1),
       bit=st.integers(0, 7))  # fmt: skip
def test_a_gzip_corpus_reads_like_the_plain_file_or_is_one_line_error(workdir, data, damage, where, bit):
    """A .gz corpus, intact or damaged (a flipped bit, cut short, garbage after it): the plain file's lines and
    count, or a one-line UserError naming it ('cannot read', or 'not valid UTF-8' when damaged data decodes to
    bytes that are not UTF-8 before the end's CRC check); never a zlib or gzip exception."""
    packed = bytearray(gzip.compress(data, mtime=0))
    at = int(where * (len(packed) - 1))
    if damage == "flip":
        packed[at] ^= 1 << bit
    elif damage == "cut":
        packed = packed[:at]
    elif damage == "append":
        packed += b"garbage"
    path = workdir / "corpus.es.gz"
    path.write_bytes(bytes(packed))
    if damage == "none":
        assert_read_as_documented(path, data)
        return
    if not packed:
        data = b""  # gzip reads an empty file as no data, like an empty plain file
    plain = workdir / "plain.es"
    plain.write_bytes(data)
    result, expected = read_or_error(path), read_or_error(plain)
    if isinstance(result, UserError) and str(result).startswith(f"cannot read {path}"):
        assert re.fullmatch(rf"cannot read {re.escape(str(path))} \(after line \d+\): .+", str(result))
    elif isinstance(result, UserError):  # not UTF-8: the plain file's, or damage decoded before the CRC check
        assert re.match(rf"{re.escape(str(path))}, line \d+: not valid UTF-8 \(byte \d+\)", str(result))
    else:
        assert result == expected
    try:
        counted = count_lines(path)
    except UserError as error:
        assert str(error).startswith(f"cannot read {path}: ") and assert_one_line_message(error)
    else:
        assert counted == count_lines(plain)


@settings(FUZZ, max_examples=PARALLEL_FILES_EXAMPLES)
@given(src=corpus_bytes(), tgt=corpus_bytes(), chunk=st.integers(1, 4))
def test_parallel_files_read_aligned_or_one_line_error(workdir: Path, src: bytes, tgt: bytes, chunk: int):
    """Two files: read_parallel_files gives both sides' documented lines when their counts match, else a one-line
    'misaligned' UserError naming both files and counts (or the first unreadable file's error); parallel_chunks,
    streaming in chunks, gives the same lines or an error of the same kind."""
    src_path, tgt_path = workdir / "pair.es", workdir / "pair.en"
    src_path.write_bytes(src)
    tgt_path.write_bytes(tgt)
    src_lines, tgt_lines = reference_read(src), reference_read(tgt)
    try:
        result: Any = read_parallel_files(src_path, tgt_path)
    except UserError as error:
        result = assert_one_line_message(error)
    streamed: Any = ([], [])
    try:
        for src_chunk, tgt_chunk in parallel_chunks(src_path, tgt_path, size=chunk):
            streamed[0].extend(src_chunk)
            streamed[1].extend(tgt_chunk)
    except UserError as error:
        streamed = assert_one_line_message(error)
    if isinstance(src_lines, tuple):
        assert result.startswith(f"{src_path}, line {src_lines[0]}: not valid UTF-8")
    elif isinstance(tgt_lines, tuple):
        assert result.startswith(f"{tgt_path}, line {tgt_lines[0]}: not valid UTF-8")
    elif len(src_lines) != len(tgt_lines):
        misaligned = f"misaligned corpus: {src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}"
        assert result.startswith(misaligned) and streamed.startswith(misaligned)
    else:
        assert result == streamed == (src_lines, tgt_lines)
    if isinstance(streamed, str):
        assert str(src_path) in streamed or str(tgt_path) in streamed
    else:
        assert result == streamed


@settings(FUZZ, max_examples=SAMPLE_LINES_EXAMPLES)
@given(first=corpus_bytes(), second=corpus_bytes(), limit=st.integers(1, 6), seed=st.integers(0, 3))
def test_sample_lines_draws_non_blank_lines(workdir: Path, first: bytes, second: bytes, limit: int, seed: int):
    """sample_lines over two files: min(limit, non-blank lines) distinct draws of their non-blank documented lines,
    the same for the same seed, or the one-line error of a file that is not UTF-8."""
    paths = [workdir / "sample.es", workdir / "sample.en"]
    paths[0].write_bytes(first)
    paths[1].write_bytes(second)
    expected = [reference_read(first), reference_read(second)]
    try:
        sample = sample_lines(paths, limit, seed)
    except UserError as error:
        message = assert_one_line_message(error)
        bad = next(path for path, lines in zip(paths, expected) if isinstance(lines, tuple))
        assert message.startswith(f"{bad}, line ")
        return
    pool = [line for lines in expected for line in lines if line.strip()]  # type: ignore[union-attr]
    assert len(sample) == min(limit, len(pool))
    remaining = list(pool)
    for line in sample:
        remaining.remove(line)  # each draw is a distinct line of the pool
    assert sample_lines(paths, limit, seed) == sample
