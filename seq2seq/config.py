"""Typed configuration: dataclasses with defaults, loaded from YAML and validated.

Every default lives here and nowhere else. Unknown keys, wrong types and impossible values raise
`ConfigError` with the key's dotted path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.errors import UserError


class ConfigError(UserError):
    """A config file or override that cannot be used as written."""


@dataclass
class DataConfig:
    """Where the parallel text lives and how it is filtered."""

    src_lang: str = "es"
    tgt_lang: str = "en"
    train: str = "data/train"  # prefix: reads data/train.es and data/train.en (or .gz)
    dev: str | None = "data/dev"
    test: str | None = "data/test"
    max_src_length: int = 100  # in pieces; longer training pairs are skipped and counted
    max_tgt_length: int = 100
    cache_dir: str = ".cache/seq2seq"  # encoded corpora and SentencePiece models, keyed by content
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    prepare_workers: int = 0  # processes encoding the corpus once (0: one per core above 20 MB, else 1)


@dataclass
class TokenizerConfig:
    """SentencePiece settings; trained on the training split only."""

    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    joint: bool = True  # one model for both languages (else one per side, each vocab_size)
    character_coverage: float = 1.0
    input_sentence_size: int = 1_000_000  # sentences sampled for training SentencePiece


@dataclass
class AttentionConfig:
    """Which attention module to use (see seq2seq.attention.ATTENTION_TYPES)."""

    type: str = "additive"
    heads: int = 4  # multihead only
    max_source_length: int = 128  # location only: the longest source it can attend over


@dataclass
class ModelConfig:
    """Sizes of the encoder-decoder."""

    embedding_size: int = 256
    encoder_hidden_size: int = 256  # per direction: encoder states are 2 x this wide
    encoder_layers: int = 1
    decoder_hidden_size: int = 256
    decoder_layers: int = 1
    dropout: float = 0.2
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    input_feeding: bool = False  # Luong input feeding: slower (sequential), sometimes better
    tie_embeddings: bool = False  # share target embeddings and output layer (needs equal sizes)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule."""

    type: Literal["constant", "plateau", "inverse_sqrt", "linear"] = "inverse_sqrt"
    warmup_steps: int = 500  # linear warm-up from 0 (all types)
    decay_factor: float = 0.5  # plateau: multiply lr by this when dev BLEU stops improving
    patience: int = 2  # plateau: validations without improvement before decaying
    min_lr: float = 1.0e-5


@dataclass
class TrainConfig:
    """Optimisation, validation, stopping and checkpoints."""

    run_dir: str = "runs/default"
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # CPU threads for torch (0: torch's default)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype for training and validation
    batch_tokens: int = 4000  # padded target tokens per batch (source is bucketed alike)
    accumulate_batches: int = 1  # batches whose gradients make one update (a larger effective batch)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.98)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip_grad_norm: float | None = 1.0  # null: no clipping
    label_smoothing: float = 0.1
    max_steps: int | None = None
    max_epochs: int | None = None
    max_time: str | None = None  # wall clock, e.g. "90s", "8m", "2h" (null: unlimited)
    validate_every: int = 1000  # steps
    validate_max_sentences: int | None = None  # null: the whole dev set
    early_stopping_patience: int | None = None  # validations without a better dev BLEU
    keep_checkpoints: int = 2  # step checkpoints kept besides best.pt and last.pt
    log_every: int = 50  # steps between log lines
    max_output_ratio: float = 1.5  # decoding stops after this x source length (+5) pieces


@dataclass
class Config:
    """A whole experiment."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --- building dataclasses from plain dicts, with checks -------------------------------------

UNION_TYPES = (typing.Union, types.UnionType)  # Optional[int] and int | None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a mapping of options, got {value!r}")
        return _build(tp, value, path)
    if origin in UNION_TYPES:
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        try:
            return _convert(value, inner[0], path)
        except ConfigError:
            raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {value!r}") from None
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {value!r}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with the closest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{path + '.' if path else ''}{close[0]}'?)" if close else ""
            valid = ", ".join(names)
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {valid}")
        values[key] = _convert(value, hints[key], full)
    return cls(**values)


def parse_duration(text: str, key: str = "train.max_time") -> float:
    """Seconds in a duration such as '90', '90s', '8m', '1.5h'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"config key '{key}' must be a duration like '90s', '8m' or '2h', got {text!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


def _validate(config: Config) -> None:
    """Reject values that are well-typed but impossible."""
    positive = {
        "tokenizer.vocab_size": config.tokenizer.vocab_size,
        "model.embedding_size": config.model.embedding_size,
        "model.encoder_hidden_size": config.model.encoder_hidden_size,
        "model.decoder_hidden_size": config.model.decoder_hidden_size,
        "model.encoder_layers": config.model.encoder_layers,
        "model.decoder_layers": config.model.decoder_layers,
        "model.attention.heads": config.model.attention.heads,
        "model.attention.max_source_length": config.model.attention.max_source_length,
        "data.max_src_length": config.data.max_src_length,
        "data.max_tgt_length": config.data.max_tgt_length,
        "train.batch_tokens": config.train.batch_tokens,
        "train.accumulate_batches": config.train.accumulate_batches,
        "train.validate_every": config.train.validate_every,
        "train.log_every": config.train.log_every,
        "train.lr": config.train.lr,
        "train.max_output_ratio": config.train.max_output_ratio,
        "tokenizer.input_sentence_size": config.tokenizer.input_sentence_size,
    }
    optional_positive = {
        "train.max_steps": config.train.max_steps,
        "train.max_epochs": config.train.max_epochs,
        "train.early_stopping_patience": config.train.early_stopping_patience,
        "train.clip_grad_norm": config.train.clip_grad_norm,
        "train.validate_max_sentences": config.train.validate_max_sentences,
    }
    for key, value in {**positive, **{k: v for k, v in optional_positive.items() if v is not None}}.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be greater than 0, got {value!r}")
    non_negative = {
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "train.threads": config.train.threads,
        "train.weight_decay": config.train.weight_decay,
        "train.schedule.warmup_steps": config.train.schedule.warmup_steps,
        "train.schedule.patience": config.train.schedule.patience,
        "train.schedule.min_lr": config.train.schedule.min_lr,
        "data.num_workers": config.data.num_workers,
        "data.prepare_workers": config.data.prepare_workers,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must be 0 or more, got {value!r}")
    for key, value in {
        "model.dropout": config.model.dropout,
        "train.label_smoothing": config.train.label_smoothing,
        "train.schedule.decay_factor": config.train.schedule.decay_factor,
    }.items():
        if not 0 <= value < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value!r}")
    if not 0 < config.tokenizer.character_coverage <= 1:
        raise ConfigError("config key 'tokenizer.character_coverage' must be in (0, 1]")
    if config.tokenizer.vocab_size < 8:
        raise ConfigError("config key 'tokenizer.vocab_size' must be at least 8 (4 special pieces + text)")
    if config.train.max_time is not None:
        parse_duration(config.train.max_time)
    if config.train.schedule.type == "linear" and config.train.max_steps is None:
        raise ConfigError("config key 'train.schedule.type: linear' decays to train.max_steps: set train.max_steps")
    if config.train.max_steps is None and config.train.max_epochs is None and config.train.max_time is None:
        raise ConfigError("the run has no end: set train.max_steps, train.max_epochs or train.max_time")
    if config.data.src_lang == config.data.tgt_lang:
        raise ConfigError("config keys 'data.src_lang' and 'data.tgt_lang' must differ (they name the files)")
    if config.train.early_stopping_patience is not None and not config.data.dev:
        raise ConfigError("config key 'train.early_stopping_patience' needs a dev set: set 'data.dev'")
    if config.train.schedule.type == "plateau" and not config.data.dev:
        raise ConfigError("config key 'train.schedule.type: plateau' needs a dev set: set 'data.dev'")
    if config.model.tie_embeddings and config.model.embedding_size != config.model.decoder_hidden_size:
        raise ConfigError(
            "config key 'model.tie_embeddings' needs model.embedding_size == model.decoder_hidden_size "
            f"(got {config.model.embedding_size} and {config.model.decoder_hidden_size})"
        )
    # Attention options are checked where the modules are built, against the registry.
    from seq2seq.attention import check_attention_config

    check_attention_config(config.model)


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from a plain (YAML-loaded) dict."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections (data, tokenizer, model, train), got {data!r}")
    config = _build(Config, data)
    _validate(config)
    return config


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` to a plain config dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.path=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {path}: '{key}' is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {path}: cannot read value {raw!r} ({exc.__class__.__name__})") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML file into a dict, with one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (give the path to a YAML file, e.g. configs/quickstart.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    return data if data is not None else {}


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Load a YAML config file, apply `--set` overrides, and validate the result."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, tokenizer, model, train)")
    for assignment in overrides:
        apply_override(data, assignment)
    return config_from_dict(data)


def config_to_dict(config: Config) -> dict:
    """The config as plain values (tuples become lists), for YAML, JSON and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
