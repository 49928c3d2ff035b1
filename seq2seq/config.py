"""Typed configuration: dataclasses with defaults, loaded from YAML and validated.

Every default lives here and nowhere else, except each attention variant's options, which live
with the variant in seq2seq/attention.py and are validated here against the chosen variant.
Unknown keys, wrong types and impossible values raise `ConfigError` with the key's dotted path
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seq2seq.attention import ATTENTION_TYPES
from seq2seq.errors import UserError

log = logging.getLogger(__name__)


class ConfigError(UserError):
    """A config file or override that cannot be used as written."""


@dataclass
class TrainCorpus:
    """One training corpus of several: its file prefix and its share of each epoch."""

    prefix: str = ""
    weight: float = 1.0  # pairs per epoch = weight x the corpus's pairs (below 1 subsamples, above 1 repeats)


@dataclass
class DataConfig:
    """Where the parallel text lives and how it is filtered."""

    src_lang: str = "es"
    tgt_lang: str = "en"
    # A prefix (reads data/train.es and data/train.en, or .gz), or a list of corpora: prefixes or {prefix, weight}.
    train: str | list[str | TrainCorpus] = "data/train"
    dev: str | None = "data/dev"
    test: str | None = "data/test"
    max_src_length: int = 100  # in pieces; longer training pairs are skipped and counted
    max_tgt_length: int = 100
    cache_dir: str = ".cache/seq2seq"  # encoded corpora and SentencePiece models, keyed by content
    num_workers: int = 0  # DataLoader worker processes (0: in the training process; 1 with tokenizer.sampling)
    prepare_workers: int = 0  # processes encoding the corpus once (0: one per core above 20 MB, else 1)


SAMPLING_MODEL_TYPES = ("unigram", "bpe")  # word and char models have one segmentation only


@dataclass
class SamplingConfig:
    """Subword regularisation: each epoch draws a new segmentation of every training pair.

    Unigram models sample from SentencePiece's lattice (Kudo 2018); BPE models drop merges (BPE-dropout,
    Provilkov et al. 2020) with probability `alpha`. Dev, test and decoding stay deterministic.
    """

    alpha: float = 0.1  # unigram: smoothing (smaller: more varied); bpe: probability of dropping a merge
    nbest: int = -1  # unigram: sample from the n best segmentations (-1: from all); unused by bpe


@dataclass
class TokenizerConfig:
    """SentencePiece settings; trained on the training split only."""

    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    joint: bool = True  # one model for both languages (else one per side, each vocab_size)
    character_coverage: float = 1.0
    input_sentence_size: int = 1_000_000  # sentences sampled for training SentencePiece
    sampling: SamplingConfig | None = None  # subword regularisation of the training pairs (null: off)


@dataclass
class AttentionConfig:
    """Which attention variant to use (a name in seq2seq.attention.ATTENTION_TYPES) and its own options.

    In YAML the options sit beside the type: `attention: {type: multihead, heads: 4}`.
    """

    type: str = "additive"
    options: Any = None  # the variant's options dataclass; None: its defaults

    def __post_init__(self) -> None:
        variant = ATTENTION_TYPES.get(self.type)
        if variant is not None and self.options is None:
            self.options = variant.options_type()


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
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights and SentencePiece model(s)
    ema_decay: float | None = None  # keep an exponential moving average of the weights (e.g. 0.999); null: off
    tensorboard: bool = False  # write TensorBoard event files to <run_dir>/tensorboard


@dataclass
class DecodeConfig:
    """How to decode: validation (greedy), `evaluate`, `translate` and the Python API read these defaults."""

    beam: int = 5  # beam size; 1: greedy search
    alpha: float = 1.0  # GNMT length penalty ((5 + length) / 6) ** alpha; 0: none
    max_output_ratio: float = 1.5  # outputs stop at this x source length + 5 pieces
    batch_tokens: int = 4000  # padded source tokens per decoding batch (divided by the beam size or samples)
    max_src_length: int | None = 250  # longer inputs are truncated, with a warning (null: never)
    n_best: int = 1  # hypotheses returned per sentence (the beam is at least this wide; samples when sampling)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls to bfloat16
    coverage_penalty: float = 0.0  # GNMT coverage penalty beta for beam search; 0: none
    sample: bool = False  # draw n_best samples per sentence instead of searching (beam, alpha, coverage ignored)
    temperature: float = 1.0  # sampling: divides the log-probabilities (< 1 sharper, > 1 flatter)
    top_k: int = 0  # sampling: only from the k most probable pieces; 0: all
    top_p: float = 1.0  # sampling: only from the smallest set of pieces with this much probability (nucleus)
    seed: int = 1  # sampling: the same seed gives the same samples, whatever the batch


@dataclass
class Config:
    """A whole experiment."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


@dataclass
class ServeLimits:
    """What one request may ask of `seq2seq serve` (each a flag of the same name): beyond them the answer is
    413 (sizes), 422 (options) or 503 (a full queue), naming the limit."""

    max_sentences: int = 64  # sentences (or pairs) per request
    max_chars: int = 2000  # characters per sentence
    max_body_bytes: int = 1_000_000  # the request body
    max_beam: int = 16  # beam and n_best
    max_request_output_ratio: float = 4.0  # the largest max_output_ratio a request may set
    max_attention_matrices: int = 64  # with attention: sentences x hypotheses per request
    max_queued: int = 256  # requests waiting for a batch; more are told to come back (503)
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others

    def check(self) -> None:
        """Every limit must be a positive finite number (the wait may be 0)."""
        for name, value in dataclasses.asdict(self).items():
            if not math.isfinite(value) or value < 0 or (value == 0 and name != "max_wait_ms"):
                raise UserError(f"{flag(name)} must be a positive number, got {value!r}")


# --- building dataclasses from plain dicts, with checks -------------------------------------

UNION_TYPES = (typing.Union, types.UnionType)  # Optional[int] and int | None

INT_LIMIT = 2**63  # integers in a config fit int64 (numpy, torch), print, and save back to YAML
MAX_THREADS = 2**31 - 1  # torch.set_num_threads takes a C int


class _Shown(reprlib.Repr):
    """repr() cut short for messages: a long string, a deep or recursive list, an alias bomb or an integer too
    long to print (sys.get_int_max_str_digits) stay one short line."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring, self.maxother, self.maxlong, self.maxlevel = 80, 80, 40, 3

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:
            return f"<an integer of {x.bit_length()} bits>"


SHOWN_CHARS = 100


def _show(value: Any) -> str:
    """A value (or a key) as a message shows it: its repr, on one line, at most SHOWN_CHARS characters; a string's
    invisible or line-breaking characters escaped ('a\\nb', 'n\\ufeffame')."""
    text = _Shown().repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _plain(text: str) -> str:
    """A name as written when it is a short printable string, else shown as a repr."""
    return text if text.isprintable() and len(text) <= 80 else _show(text)


# Keys that moved: old dotted path -> new one. A config using the old one still loads, with a warning.
MOVED_KEYS = {"train.max_output_ratio": "decode.max_output_ratio"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = " or null" if type(None) in typing.get_args(tp) else ""
        return " or ".join(_type_name(a) for a in args) + nullable
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list (each " + _type_name(typing.get_args(tp)[0]) + ")"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is AttentionConfig:
        return _build_attention(value, path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a mapping of options, got {_show(value)}")
        return _build(tp, value, path)  # type: ignore[arg-type]
    if origin in UNION_TYPES:
        return _convert_union(value, tp, path)
    if origin is list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"config key '{path}' must be a non-empty list, got {_show(value)}")
        return [_convert(v, typing.get_args(tp)[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {_show(value)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {_show(value)}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        return _convert_float(value, path)
    if tp in (int, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {_show(value)}")
    if tp is int and not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(f"config key '{path}' must be an integer between -2**63 and 2**63, got {_show(value)}")
    return value


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    """The first alternative of `tp` that takes `value`; a mapping or a list goes straight to the alternative of
    that shape, so that a mistake inside it is reported with its own key."""
    if value is None and type(None) in typing.get_args(tp):
        return None
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if float in inner and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{path}' must be a finite number, got {_show(value)}")
    for alternative in inner:
        is_list = typing.get_origin(alternative) is list
        if (isinstance(value, dict) and dataclasses.is_dataclass(alternative)) or (isinstance(value, list) and is_list):
            return _convert(value, alternative, path)
    for alternative in inner:
        try:
            return _convert(value, alternative, path)
        except ConfigError:
            pass
    raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {_show(value)}")


def _convert_float(value: Any, path: str) -> float:
    """A finite number; YAML reads "1e-3" (no dot) as a string and 3 as an int."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"config key '{path}' must be a number, got {_show(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"config key '{path}' must be a finite number, got {_show(value)}")
    return float(number)


def _build(cls: type, data: dict, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with the closest valid one."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(_unknown_key_message(full, str(key), names, path))
        values[key] = _convert(value, hints[key], full)
    return cls(**values)


def _unknown_key_message(full: str, key: str, names: list[str], path: str, valid: list[str] | None = None) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f" (did you mean '{path + '.' if path else ''}{close[0]}'?)" if close else ""
    return f"unknown config key {_show(full)}{hint}; valid keys here: {', '.join(valid or names)}"


def _build_attention(value: Any, path: str) -> AttentionConfig:
    """`{type: name, option: value, ...}`: the type, then the options that variant declares.

    An option of another variant is an error, except at that variant's default: configs written
    before options moved to their variants listed every option, so those are dropped with a warning.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{path}' must be a mapping of options, got {_show(value)}")
    name = value.get("type", AttentionConfig.type)
    if not isinstance(name, str) or name not in ATTENTION_TYPES:
        raise ConfigError(f"config key '{path}.type' must be one of {', '.join(ATTENTION_TYPES)}, got {_show(name)}")
    names = _field_names(ATTENTION_TYPES[name].options_type)
    own, foreign = {}, []
    for key, option in value.items():
        owner = _owner_of(str(key))
        if key == "type" or key in names:
            own[key] = option
        elif owner is None:
            raise ConfigError(_unknown_key_message(f"{path}.{key}", str(key), ["type", *names], path))
        elif option == getattr(ATTENTION_TYPES[owner].options_type(), key):
            log.warning("config key '%s.%s' is an option of %s attention, not of '%s': ignored", path, key, owner, name)
        else:
            foreign.append(f"'{path}.{key}' ({owner})")
    if foreign:
        raise ConfigError(
            f"config key(s) {', '.join(foreign)} belong to other attention variants, not to '{name}': "
            f"remove them{_valid_options(name, names)}"
        )
    options = _build(ATTENTION_TYPES[name].options_type, {k: v for k, v in own.items() if k != "type"}, path)
    return AttentionConfig(type=name, options=options)


def _owner_of(key: str) -> str | None:
    """The attention variant that declares option `key`, if any."""
    return next((n for n, cls in ATTENTION_TYPES.items() if key in _field_names(cls.options_type)), None)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _valid_options(name: str, names: list[str]) -> str:
    return f" ('{name}' takes {', '.join(names)})" if names else f" ('{name}' takes no options)"


def parse_duration(text: str, key: str = "train.max_time") -> float:
    """Seconds in a duration such as '90', '90s', '8m', '1.5h'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"config key '{key}' must be a duration like '90s', '8m' or '2h', got {_show(text)}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600}[unit]


# --- value rules: each dotted key with what it must be --------------------------------------------

POSITIVE = (
    "tokenizer.vocab_size",
    "tokenizer.input_sentence_size",
    "model.embedding_size",
    "model.encoder_hidden_size",
    "model.decoder_hidden_size",
    "model.encoder_layers",
    "model.decoder_layers",
    "data.max_src_length",
    "data.max_tgt_length",
    "train.batch_tokens",
    "train.accumulate_batches",
    "train.validate_every",
    "train.log_every",
    "train.lr",
    # null allowed:
    "train.max_steps",
    "train.max_epochs",
    "train.early_stopping_patience",
    "train.clip_grad_norm",
    "train.validate_max_sentences",
)
NON_NEGATIVE = (
    "train.keep_checkpoints",
    "train.threads",
    "train.weight_decay",
    "train.schedule.warmup_steps",
    "train.schedule.patience",
    "train.schedule.min_lr",
    "data.num_workers",
    "data.prepare_workers",
)
FRACTIONS = ("model.dropout", "train.label_smoothing", "train.schedule.decay_factor")  # in [0, 1)


def _value(config: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


def _check_ranges(config: Config) -> None:
    """Numbers that must be positive, non-negative or a fraction."""
    for key in POSITIVE:
        value = _value(config, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}' must be greater than 0, got {value!r}")
    for key in NON_NEGATIVE:
        if _value(config, key) < 0:
            raise ConfigError(f"config key '{key}' must be 0 or more, got {_value(config, key)!r}")
    for key in FRACTIONS:
        if not 0 <= _value(config, key) < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {_value(config, key)!r}")
    if config.train.threads > MAX_THREADS:
        raise ConfigError(f"config key 'train.threads' must be at most {MAX_THREADS}, got {config.train.threads}")
    if not all(0 <= beta < 1 for beta in config.train.adam_betas):
        raise ConfigError(
            f"config key 'train.adam_betas' must be two numbers in [0, 1), got {list(config.train.adam_betas)}"
        )
    if not 0 < config.tokenizer.character_coverage <= 1:
        raise ConfigError("config key 'tokenizer.character_coverage' must be in (0, 1]")
    if config.tokenizer.vocab_size < 8:
        raise ConfigError("config key 'tokenizer.vocab_size' must be at least 8 (4 special pieces + text)")


def train_corpora(data: DataConfig) -> list[TrainCorpus]:
    """The training corpora of `data.train`: one prefix (weight 1) or the configured list."""
    entries = [data.train] if isinstance(data.train, str) else data.train
    return [TrainCorpus(entry) if isinstance(entry, str) else entry for entry in entries]


def _check_training_corpora(data: DataConfig) -> None:
    """Each corpus has a prefix, a positive weight, and appears once."""
    seen: set[str] = set()
    for index, corpus in enumerate(train_corpora(data)):
        key = "data.train" if isinstance(data.train, str) else f"data.train[{index}]"
        if not corpus.prefix.strip():
            raise ConfigError(f"config key '{key}' needs a prefix (e.g. data/train for data/train.es + .en)")
        if corpus.weight <= 0:
            raise ConfigError(
                f"config key '{key}.weight' must be greater than 0, got {corpus.weight!r} (remove the corpus instead)"
            )
        if corpus.prefix in seen:
            raise ConfigError(
                f"config key '{key}': corpus {_plain(corpus.prefix)} is listed twice (give it one weight)"
            )
        seen.add(corpus.prefix)


def _check_sampling(tokenizer: TokenizerConfig) -> None:
    """Subword sampling exists for unigram (lattice sampling) and BPE (BPE-dropout) models only."""
    sampling = tokenizer.sampling
    if sampling is None:
        return
    if tokenizer.model_type not in SAMPLING_MODEL_TYPES:
        raise ConfigError(
            f"config key 'tokenizer.sampling' needs tokenizer.model_type unigram or bpe, not {tokenizer.model_type!r}"
        )
    if tokenizer.model_type == "bpe" and not 0 < sampling.alpha < 1:
        raise ConfigError(
            f"config key 'tokenizer.sampling.alpha' is BPE-dropout's probability: it must be in (0, 1), "
            f"got {sampling.alpha!r}"
        )
    if sampling.alpha <= 0:
        raise ConfigError(f"config key 'tokenizer.sampling.alpha' must be greater than 0, got {sampling.alpha!r}")
    if tokenizer.model_type == "unigram" and (sampling.nbest in (0, 1) or sampling.nbest < -1):
        raise ConfigError(
            "config key 'tokenizer.sampling.nbest' must be -1 (sample from all segmentations) or 2 or more, "
            f"got {sampling.nbest!r}"
        )


def _check_consistency(config: Config) -> None:
    """Settings that only make sense together."""
    train = config.train
    if train.max_time is not None:
        parse_duration(train.max_time)
    if train.schedule.type == "linear" and train.max_steps is None:
        raise ConfigError("config key 'train.schedule.type: linear' decays to train.max_steps: set train.max_steps")
    if train.max_steps is None and train.max_epochs is None and train.max_time is None:
        raise ConfigError("the run has no end: set train.max_steps, train.max_epochs or train.max_time")
    if config.data.src_lang == config.data.tgt_lang:
        raise ConfigError("config keys 'data.src_lang' and 'data.tgt_lang' must differ (they name the files)")
    if train.early_stopping_patience is not None and not config.data.dev:
        raise ConfigError("config key 'train.early_stopping_patience' needs a dev set: set 'data.dev'")
    if train.schedule.type == "plateau" and not config.data.dev:
        raise ConfigError("config key 'train.schedule.type: plateau' needs a dev set: set 'data.dev'")
    if train.ema_decay is not None and not 0 < train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must be in (0, 1), e.g. 0.999, got {train.ema_decay!r}")
    if train.init_from is not None and not train.init_from.strip():
        raise ConfigError("config key 'train.init_from' must name a checkpoint file (or be null)")
    _check_training_corpora(config.data)
    _check_sampling(config.tokenizer)
    model = config.model
    if model.tie_embeddings and model.embedding_size != model.decoder_hidden_size:
        raise ConfigError(
            "config key 'model.tie_embeddings' needs model.embedding_size == model.decoder_hidden_size "
            f"(got {model.embedding_size} and {model.decoder_hidden_size})"
        )
    attention = ATTENTION_TYPES[model.attention.type]
    attention.check(model.attention.options, model.decoder_hidden_size, 2 * model.encoder_hidden_size)


def decode_choices(field_name: str) -> list[Any]:
    """The allowed values of a DecodeConfig field typed as a choice (e.g. precision)."""
    return list(typing.get_args(typing.get_type_hints(DecodeConfig)[field_name]))


def config_key(field_name: str) -> str:
    """How messages name a decoding option read from a config."""
    return f"config key 'decode.{field_name}'"


def flag(field_name: str) -> str:
    """The command-line flag of a decoding option: --max-src-length for max_src_length."""
    return "--" + field_name.replace("_", "-")


def option_name(field_name: str) -> str:
    """How messages name a decoding option given to a command or the Python API."""
    return f"decoding option {field_name} ({flag(field_name)})"


def check_decode(decode: DecodeConfig, name: typing.Callable[[str], str] = config_key) -> None:
    """Reject impossible decoding options; `name` says how to call a field in the message."""
    for field_name in ("beam", "max_output_ratio", "batch_tokens", "n_best"):
        value = getattr(decode, field_name)
        if value <= 0:
            raise ConfigError(f"{name(field_name)} must be greater than 0, got {value!r}")
    for field_name in ("alpha", "coverage_penalty", "top_k", "seed"):
        if getattr(decode, field_name) < 0:
            raise ConfigError(f"{name(field_name)} must be 0 or more, got {getattr(decode, field_name)!r}")
    if decode.temperature <= 0:
        raise ConfigError(f"{name('temperature')} must be greater than 0, got {decode.temperature!r}")
    if not 0 < decode.top_p <= 1:
        raise ConfigError(f"{name('top_p')} must be in (0, 1], got {decode.top_p!r}")
    if decode.max_src_length is not None and decode.max_src_length < 2:
        raise ConfigError(
            f"{name('max_src_length')} must be at least 2 (a piece and the end), got {decode.max_src_length!r}"
        )
    if decode.precision not in ("fp32", "bf16"):
        raise ConfigError(f"{name('precision')} must be 'fp32' or 'bf16', got {decode.precision!r}")


def decode_with(
    base: DecodeConfig,
    overrides: typing.Mapping[str, Any] | DecodeConfig | None,
    warn_unused: bool = True,
    name: typing.Callable[[str], str] = option_name,
) -> DecodeConfig:
    """`base` (a checkpoint's decode section, say) with `overrides` applied (None values are ignored), checked.

    `overrides` may also be a whole DecodeConfig, which then replaces `base`. With `warn_unused`, options the
    resulting decoding does not use are named in a warning. `name` says how messages call an option (the
    command line's flags by default; the server's JSON fields).
    """
    if isinstance(overrides, DecodeConfig):
        check_decode(overrides, name)
        return overrides
    overrides = overrides or {}
    hints = typing.get_type_hints(DecodeConfig)
    values = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown decoding option {_show(key)}{hint}; valid options: {', '.join(hints)}")
        try:
            values[key] = _convert(value, hints[key], key)
        except ConfigError as exc:  # the same reason, naming the option as the caller knows it
            raise ConfigError(str(exc).replace(f"config key '{key}'", name(key), 1)) from None
    decode = dataclasses.replace(base, **values)
    check_decode(decode, name)
    if warn_unused:
        _warn_unused(decode, list(values))
    return decode


SEARCH_ONLY = ("beam", "alpha", "coverage_penalty")
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "seed")


def _warn_unused(decode: DecodeConfig, given: list[str]) -> None:
    """A warning for decoding options given that this kind of decoding does not use."""
    if decode.sample:
        unused = [flag(key) for key in given if key in SEARCH_ONLY]
        reason = "ignored when sampling (--sample)"
    else:
        unused = [flag(key) for key in given if key in SAMPLING_ONLY]
        reason = "only used when sampling (--sample): ignored"
        if "coverage_penalty" in given and max(decode.beam, decode.n_best) == 1:
            unused.append("--coverage-penalty")
            reason = "not used by this decoding (sampling options need --sample, the coverage penalty --beam > 1)"
    if unused:
        log.warning("%s %s", ", ".join(unused), reason)


def migrate_keys(data: dict, where: str | None = None) -> dict:
    """A copy of a plain config dict with every moved key at its new place (a warning naming `where`, if given)."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for old, new in MOVED_KEYS.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if isinstance(section, dict) and old_key in section:
            new_section, new_key = new.split(".")
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                value = section.pop(old_key)
                if new_key in target and target[new_key] != value:
                    raise ConfigError(
                        f"config keys '{old}' and '{new}' are the same option with two values: keep '{new}'"
                    )
                target[new_key] = value
                if where is not None:
                    log.warning("%s: config key '%s' is now '%s'; please rename it", where, old, new)
    return data


def config_from_dict(data: dict | None, where: str = "config") -> Config:
    """Build and validate a Config from a plain (YAML-loaded) dict."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"a config must be a mapping of sections (data, tokenizer, model, train, decode), got {_show(data)}"
        )
    config = _build(Config, migrate_keys(data, where))
    _check_ranges(config)
    _check_consistency(config)
    check_decode(config.decode)
    return config


# What yaml.safe_load raises besides YAMLError: its converters fail on malformed typed scalars (!!int 'x', a 30th
# of February, an integer of more than 4300 digits) with ValueError, IndexError, KeyError, AttributeError or
# TypeError, and a very deep nesting exhausts its recursion.
YAML_VALUE_ERRORS = (ValueError, LookupError, AttributeError, TypeError, RecursionError)


def _yaml_reason(exc: BaseException) -> str:
    """Why a YAML value cannot be read, in a few words on one line."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    lines = str(exc).strip().splitlines()
    return _plain(lines[0][:100]) if lines else exc.__class__.__name__


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` to a plain config dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.path=value, got {_show(assignment)}")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {_plain(path)}: {_show(key)} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except (yaml.YAMLError, *YAML_VALUE_ERRORS) as exc:
        raise ConfigError(f"--set {_plain(path)}: cannot read value {_show(raw)} ({exc.__class__.__name__})") from None


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
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except YAML_VALUE_ERRORS as exc:
        raise ConfigError(f"config file {path} holds a value YAML cannot read ({_yaml_reason(exc)}): fix it") from None
    return data if data is not None else {}


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config file, apply `--set` overrides, and validate the result."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data, tokenizer, model, train, decode)")
    for assignment in overrides:
        apply_override(data, assignment)
    return config_from_dict(data, where=str(path))


def config_to_dict(config: Any) -> Any:
    """The config as plain values (tuples become lists), for YAML, JSON and checkpoints.

    An attention section is flattened back to `{type: name, option: value, ...}`.
    """
    if isinstance(config, AttentionConfig):
        return {"type": config.type, **config_to_dict(config.options)}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
