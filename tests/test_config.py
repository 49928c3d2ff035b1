"""Config loading: every mistake gives a ConfigError naming the key and what is allowed."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import yaml
from helpers import write_yaml

from seq2seq.attention import LocationOptions, MultiHeadOptions
from seq2seq.config import (
    AttentionConfig,
    Config,
    ConfigError,
    DecodeConfig,
    SamplingConfig,
    TrainCorpus,
    config_from_dict,
    config_to_dict,
    decode_with,
    load_config,
    parse_duration,
    save_config,
    train_corpora,
)
from seq2seq.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BASE = {"train": {"max_steps": 10}}  # the smallest valid config: a run needs an end


def with_value(dotted: str, value) -> dict:
    """BASE with one extra `dotted` key set to `value`."""
    data = copy.deepcopy(BASE)
    *sections, key = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[key] = value
    return data


def test_defaults_plus_an_end_are_valid():
    config = config_from_dict(BASE)
    assert isinstance(config, Config)
    assert config.train.max_steps == 10
    assert config.model.attention.type == "additive"


def test_ConfigError_is_a_UserError():
    assert issubclass(ConfigError, UserError)


@pytest.mark.parametrize(
    "dotted, suggestion",
    [
        ("train.lrr", "train.lr"),
        ("model.embeding_size", "model.embedding_size"),
        ("model.attention.typ", "model.attention.type"),
        ("tokenizer.vocab", "tokenizer.vocab_size"),
    ],
)
def test_unknown_key_names_its_path_and_the_closest_valid_key(dotted: str, suggestion: str):
    with pytest.raises(ConfigError) as error:
        config_from_dict(with_value(dotted, 1))
    message = str(error.value)
    assert f"'{dotted}'" in message
    assert f"did you mean '{suggestion}'" in message


def test_unknown_top_level_section_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' \(did you mean 'train'\?\)"):
        config_from_dict({"trian": {}, **BASE})


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError) as error:
        config_from_dict(with_value("model.zzzzzz", 1))
    message = str(error.value)
    assert "'model.zzzzzz'" in message and "did you mean" not in message
    assert "embedding_size" in message and "decoder_layers" in message


@pytest.mark.parametrize(
    "dotted, value, allowed",
    [
        ("model.embedding_size", "big", "an integer"),
        ("model.embedding_size", 3.5, "an integer"),
        ("model.encoder_layers", True, "an integer"),  # YAML booleans are not numbers here
        ("train.lr", "fast", "a number"),
        ("tokenizer.joint", "yes please", "true or false"),
        ("data.src_lang", 7, "a string"),
        ("train.max_epochs", "ten", "an integer"),
        ("train.adam_betas", [0.9], "a list of a number, a number"),
        ("model.attention", "additive", "a mapping of options"),
    ],
)
def test_wrong_type_names_the_key_and_what_is_allowed(dotted: str, value, allowed: str):
    with pytest.raises(ConfigError) as error:
        config_from_dict(with_value(dotted, value))
    message = str(error.value)
    assert f"'{dotted}'" in message
    assert allowed in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "dotted, value, choice",
    [
        ("tokenizer.model_type", "wordpiece", "'unigram'"),
        ("train.optimizer", "adagrad", "'adamw'"),
        ("train.device", "tpu", "'cuda'"),
        ("train.schedule.type", "cosine", "'inverse_sqrt'"),
    ],
)
def test_literal_keys_list_their_choices(dotted: str, value: str, choice: str):
    with pytest.raises(ConfigError, match=rf"'{dotted}' must be one of .*{choice}.*got '{value}'"):
        config_from_dict(with_value(dotted, value))


def test_literal_keys_accept_each_choice():
    for optimizer in ("adam", "adamw", "sgd"):
        assert config_from_dict(with_value("train.optimizer", optimizer)).train.optimizer == optimizer


def test_loose_yaml_numbers_are_accepted_as_floats():
    config = config_from_dict({"train": {"max_steps": 10, "lr": "1e-3", "clip_grad_norm": 5, "adam_betas": [0, 0.98]}})
    assert config.train.lr == pytest.approx(1e-3)
    assert isinstance(config.train.clip_grad_norm, float)
    assert config.train.adam_betas == (0.0, 0.98)


@pytest.mark.parametrize(
    "dotted, value, expected",
    [
        ("model.embedding_size", -8, "greater than 0"),
        ("model.encoder_hidden_size", 0, "greater than 0"),
        ("tokenizer.vocab_size", 0, "greater than 0"),
        ("tokenizer.vocab_size", 5, "at least 8"),
        ("train.lr", -0.1, "greater than 0"),
        ("train.max_steps", 0, "greater than 0"),
        ("train.keep_checkpoints", -1, "0 or more"),
        ("model.dropout", 1.5, r"in \[0, 1\)"),
        ("model.dropout", -0.1, r"in \[0, 1\)"),
        ("train.label_smoothing", 1.0, r"in \[0, 1\)"),
        ("tokenizer.character_coverage", 0.0, r"in \(0, 1\]"),
        ("train.max_time", "soon", "duration"),
    ],
)
def test_impossible_values_are_rejected(dotted: str, value, expected: str):
    with pytest.raises(ConfigError, match=rf"'{dotted}'.*{expected}"):
        config_from_dict(with_value(dotted, value))


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="has no end"):
        config_from_dict({})
    with pytest.raises(ConfigError, match="'data.src_lang' and 'data.tgt_lang' must differ"):
        config_from_dict({**BASE, "data": {"src_lang": "en", "tgt_lang": "en"}})
    with pytest.raises(ConfigError, match="tie_embeddings"):
        config_from_dict({**BASE, "model": {"tie_embeddings": True, "embedding_size": 32, "decoder_hidden_size": 64}})
    with pytest.raises(ConfigError, match="needs a dev set"):
        config_from_dict({"train": {"max_steps": 10, "early_stopping_patience": 2}, "data": {"dev": None}})
    with pytest.raises(ConfigError, match="set train.max_steps"):
        config_from_dict({"train": {"max_epochs": 1, "schedule": {"type": "linear"}}})


def test_attention_options_are_checked_when_the_config_is_validated():
    bad_dot = {**BASE, "model": {"encoder_hidden_size": 32, "decoder_hidden_size": 48, "attention": {"type": "dot"}}}
    with pytest.raises(UserError, match="'dot' attention"):
        config_from_dict(bad_dot)


def test_a_config_that_is_not_a_mapping_is_rejected(tmp_path: Path):
    with pytest.raises(ConfigError, match="mapping of sections"):
        config_from_dict([1, 2])
    with pytest.raises(ConfigError, match=r"config file .*list\.yaml must hold a mapping"):
        load_config(write_yaml(tmp_path / "list.yaml", [1, 2]))


def test_overrides_are_applied_and_checked(tmp_path: Path):
    path = write_yaml(tmp_path / "config.yaml", BASE)
    config = load_config(path, ["train.lr=0.01", "model.attention.type=dot", "model.decoder_hidden_size=512"])
    assert config.train.lr == 0.01
    assert config.model.attention.type == "dot"
    assert config.train.max_steps == 10  # untouched keys keep the file's value
    assert config_from_dict(BASE).train.lr != 0.01  # the default differs, so the override did something

    with pytest.raises(ConfigError, match=r"did you mean 'train\.lr'"):
        load_config(path, ["train.lrr=0.01"])
    with pytest.raises(ConfigError, match=r"'model\.embedding_size' must be an integer, got 'big'"):
        load_config(path, ["model.embedding_size=big"])
    with pytest.raises(ConfigError, match=r"'model\.dropout' must be in \[0, 1\)"):
        load_config(path, ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"'max_steps' is not a section"):
        load_config(path, ["train.max_steps.value=1"])


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  max_steps: 10\n  lr: [0.1, 0.2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "not valid YAML" in message and "line" in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere\.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_non_utf8_config_file(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: año\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_saved_config_loads_back_identically(tmp_path: Path):
    config = config_from_dict({"train": {"max_steps": 10, "lr": 0.003}, "model": {"attention": {"type": "general"}}})
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("8m", 480), ("1.5h", 5400), (" 2h ", 7200), (".5m", 30)],
)
def test_parse_duration(text: str, seconds: float):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "8 minutes", "-5s", "1d", "h"])
def test_parse_duration_rejects_bad_text(text: str):
    with pytest.raises(ConfigError, match=r"'train\.max_time' must be a duration like"):
        parse_duration(text)


def test_max_time_in_a_config_is_parsed():
    assert config_from_dict({"train": {"max_time": "8m"}}).train.max_time == "8m"


# --- the decode section and per-variant attention options ---------------------------------------


def test_decode_section_defaults_and_overrides(tmp_path: Path, tiny_config: dict):
    assert config_from_dict(tiny_config).decode == DecodeConfig()
    tiny_config["decode"] = {"beam": 3, "alpha": 0.6, "max_src_length": None, "precision": "bf16"}
    decode = config_from_dict(tiny_config).decode
    assert (decode.beam, decode.alpha, decode.max_src_length, decode.precision) == (3, 0.6, None, "bf16")
    assert decode.batch_tokens == DecodeConfig().batch_tokens


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        ({"beam": 0}, "config key 'decode.beam' must be greater than 0, got 0"),
        ({"alpha": -1}, "config key 'decode.alpha' must be 0 or more, got -1.0"),
        ({"max_src_length": 1}, "config key 'decode.max_src_length' must be at least 2"),
        ({"precision": "fp16"}, "config key 'decode.precision' must be one of 'fp32', 'bf16', got 'fp16'"),
        ({"max_output_ratio": float("inf")}, "config key 'decode.max_output_ratio' must be a finite number"),
        ({"beem": 2}, "unknown config key 'decode.beem' (did you mean 'decode.beam'?)"),
    ],
)
def test_bad_decode_values_are_one_clear_error(tiny_config: dict, decode: dict, message: str):
    tiny_config["decode"] = decode
    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny_config)
    assert message in str(error.value)


def test_decoding_options_given_to_a_command_name_the_flag():
    assert decode_with(DecodeConfig(alpha=0.5), {"beam": 2, "alpha": None}) == DecodeConfig(beam=2, alpha=0.5)
    with pytest.raises(ConfigError, match=r"decoding option beam \(--beam\) must be greater than 0, got 0"):
        decode_with(DecodeConfig(), {"beam": 0})
    with pytest.raises(ConfigError, match=r"decoding option n_best \(--n-best\) must be an integer, got 'two'"):
        decode_with(DecodeConfig(), {"n_best": "two"})
    with pytest.raises(ConfigError, match=r"unknown decoding option 'beem' \(did you mean 'beam'\?\)"):
        decode_with(DecodeConfig(), {"beem": 2})


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_number_that_is_not_finite_is_refused(tiny_config: dict, value: str):
    tiny_config["train"]["lr"] = yaml.safe_load(value)
    with pytest.raises(ConfigError, match=r"config key 'train.lr' must be a finite number"):
        config_from_dict(tiny_config)


def test_a_moved_key_still_loads_at_its_new_place_with_a_warning(tiny_config: dict, caplog):
    tiny_config["train"]["max_output_ratio"] = 2.0
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        config = config_from_dict(tiny_config, where="my.yaml")
    assert config.decode.max_output_ratio == 2.0
    assert "my.yaml: config key 'train.max_output_ratio' is now 'decode.max_output_ratio'" in caplog.text


def test_each_attention_variant_takes_its_own_options(tiny_config: dict):
    tiny_config["model"]["attention"] = {"type": "multihead", "heads": 8}
    config = config_from_dict(tiny_config)
    assert config.model.attention.options.heads == 8
    assert config_to_dict(config)["model"]["attention"] == {"type": "multihead", "heads": 8}
    assert config_from_dict(config_to_dict(config)) == config
    tiny_config["model"]["attention"] = {"type": "location"}
    assert config_to_dict(config_from_dict(tiny_config))["model"]["attention"] == {
        "type": "location",
        "max_source_length": 128,
    }


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (
            {"type": "additive", "heads": 8},
            (
                "config key(s) 'model.attention.heads' (multihead) belong to other attention variants, not to "
                "'additive': remove them ('additive' takes no options)"
            ),
        ),
        (
            {"type": "multihead", "max_source_length": 50, "heads": 2},
            (
                "config key(s) 'model.attention.max_source_length' (location) belong to other attention variants, not "
                "to 'multihead': remove them ('multihead' takes heads)"
            ),
        ),
        ({"type": ["additive"]}, "config key 'model.attention.type' must be one of none, dot"),
        (
            {"type": "multihead", "hedas": 2},
            "unknown config key 'model.attention.hedas' (did you mean 'model.attention.heads'?)",
        ),
        ({"type": "multihead", "heads": 0}, "config key 'model.attention.heads' must be greater than 0, got 0"),
        (
            {"type": "multihead", "heads": 5},
            "needs 2 x model.encoder_hidden_size (64) divisible by model.attention.heads (5)",
        ),
        ({"type": "multihead", "heads": "four"}, "config key 'model.attention.heads' must be an integer, got 'four'"),
        ({"type": "location", "max_source_length": -3}, "'model.attention.max_source_length' must be greater than 0"),
        ({"type": "cosine"}, "config key 'model.attention.type' must be one of none, dot, scaled_dot"),
    ],
)
def test_attention_options_are_checked_against_the_chosen_variant(tiny_config: dict, attention: dict, message: str):
    tiny_config["model"]["attention"] = attention
    with pytest.raises(UserError) as error:
        config_from_dict(tiny_config)
    assert message in str(error.value)


def test_options_of_other_variants_at_their_defaults_are_ignored_with_a_warning(tiny_config: dict, caplog):
    """Configs written before options moved to their variants listed every option at its default."""
    tiny_config["model"]["attention"] = {"type": "additive", "heads": 4, "max_source_length": 128}
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        config = config_from_dict(tiny_config)
    assert config_to_dict(config)["model"]["attention"] == {"type": "additive"}
    assert "config key 'model.attention.heads' is an option of multihead attention, not of 'additive': ignored" in (
        caplog.text
    )


def test_a_moved_key_given_twice_with_different_values_is_an_error(tiny_config: dict):
    tiny_config["train"]["max_output_ratio"] = 2.0
    tiny_config["decode"] = {"max_output_ratio": 3.0}
    with pytest.raises(ConfigError, match="'train.max_output_ratio' and 'decode.max_output_ratio' are the same option"):
        config_from_dict(tiny_config)


def test_an_attention_config_built_in_python_gets_its_variants_default_options():
    assert AttentionConfig(type="multihead").options == MultiHeadOptions()
    assert AttentionConfig(type="location").options == LocationOptions()


def test_a_whole_decode_config_can_replace_the_checkpoints():
    assert decode_with(DecodeConfig(beam=3), DecodeConfig(beam=1, n_best=1)) == DecodeConfig(beam=1)
    with pytest.raises(ConfigError, match=r"decoding option beam \(--beam\) must be greater than 0"):
        decode_with(DecodeConfig(), DecodeConfig(beam=0))


# --- several training corpora, fine-tuning, subword sampling, EMA and TensorBoard -------------------------


@pytest.mark.parametrize(
    "train, expected",
    [
        ("data/train", [TrainCorpus("data/train", 1.0)]),
        (["a", "b"], [TrainCorpus("a", 1.0), TrainCorpus("b", 1.0)]),
        (["a", {"prefix": "b", "weight": 2}], [TrainCorpus("a", 1.0), TrainCorpus("b", 2.0)]),
        ([{"prefix": "a"}], [TrainCorpus("a", 1.0)]),
        (
            [{"prefix": "a", "weight": "0.5"}, {"prefix": "b", "weight": 2.5}],
            [TrainCorpus("a", 0.5), TrainCorpus("b", 2.5)],
        ),
    ],
    ids=["prefix", "prefixes", "mixed", "mapping", "fractions"],
)
def test_data_train_takes_a_prefix_or_a_list_of_weighted_corpora(tmp_path: Path, train, expected: list):
    config = config_from_dict(with_value("data.train", train))
    assert train_corpora(config.data) == expected
    assert all(isinstance(corpus.weight, float) for corpus in train_corpora(config.data))
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "train, message",
    [
        ([], "config key 'data.train' must be a non-empty list, got []"),
        ("", "config key 'data.train' needs a prefix"),
        (["a", {"weight": 2}], "config key 'data.train[1]' needs a prefix"),
        (["a", " "], "config key 'data.train[1]' needs a prefix"),
        (["a", {"prefix": "b", "weight": 0}], "config key 'data.train[1].weight' must be greater than 0, got 0.0"),
        ([{"prefix": "a", "weight": -1}], "config key 'data.train[0].weight' must be greater than 0, got -1.0"),
        (["a", {"prefix": "b", "weight": float("nan")}], "config key 'data.train[1].weight' must be a finite number"),
        (["a", {"prefix": "b", "weight": float("inf")}], "config key 'data.train[1].weight' must be a finite number"),
        (["a", {"prefix": "b", "weight": "heavy"}], "config key 'data.train[1].weight' must be a number, got 'heavy'"),
        (["a", {"prefix": "a", "weight": 2}], "config key 'data.train[1]': corpus a is listed twice"),
        (
            ["a", {"prefix": "b", "wieght": 2}],
            "unknown config key 'data.train[1].wieght' (did you mean 'data.train[1].weight'?)",
        ),
        ([5], "config key 'data.train[0]' must be a string or a mapping, got 5"),
        (None, "config key 'data.train' must be a string or a list"),
    ],
    ids=[
        "empty-list",
        "empty-prefix",
        "no-prefix",
        "blank-prefix",
        "zero-weight",
        "negative-weight",
        "nan-weight",
        "inf-weight",
        "word-weight",
        "twice",
        "misspelt-key",
        "number",
        "null",
    ],
)
def test_bad_training_corpora_are_one_clear_error(train, message: str):
    with pytest.raises(ConfigError) as error:
        config_from_dict(with_value("data.train", train))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "tokenizer, expected",
    [
        ({"sampling": {}}, SamplingConfig(alpha=0.1, nbest=-1)),
        ({"sampling": {"alpha": 2, "nbest": 2}}, SamplingConfig(alpha=2.0, nbest=2)),  # unigram: any alpha > 0
        ({"model_type": "bpe", "sampling": {"alpha": 0.1}}, SamplingConfig(alpha=0.1)),
        ({"sampling": None}, None),
    ],
)
def test_subword_sampling_settings(tokenizer: dict, expected):
    assert config_from_dict({**BASE, "tokenizer": tokenizer}).tokenizer.sampling == expected


@pytest.mark.parametrize(
    "tokenizer, message",
    [
        ({"sampling": {"alpha": 0}}, "config key 'tokenizer.sampling.alpha' must be greater than 0, got 0.0"),
        ({"sampling": {"alpha": -1}}, "config key 'tokenizer.sampling.alpha' must be greater than 0, got -1.0"),
        ({"sampling": {"alpha": float("inf")}}, "config key 'tokenizer.sampling.alpha' must be a finite number"),
        ({"sampling": {"alpha": float("nan")}}, "config key 'tokenizer.sampling.alpha' must be a finite number"),
        (
            {"model_type": "bpe", "sampling": {"alpha": 1}},
            "config key 'tokenizer.sampling.alpha' is BPE-dropout's probability: it must be in (0, 1), got 1.0",
        ),
        ({"model_type": "bpe", "sampling": {"alpha": 0}}, "config key 'tokenizer.sampling.alpha' is BPE-dropout's"),
        ({"sampling": {"nbest": 0}}, "config key 'tokenizer.sampling.nbest' must be -1 (sample from all"),
        ({"sampling": {"nbest": 1}}, "config key 'tokenizer.sampling.nbest' must be -1 (sample from all"),
        ({"sampling": {"nbest": -2}}, "config key 'tokenizer.sampling.nbest' must be -1 (sample from all"),
        (
            {"model_type": "word", "sampling": {}},
            "config key 'tokenizer.sampling' needs tokenizer.model_type unigram or bpe, not 'word'",
        ),
        ({"model_type": "char", "sampling": {}}, "config key 'tokenizer.sampling' needs tokenizer.model_type"),
        ({"sampling": {"alhpa": 0.1}}, "unknown config key 'tokenizer.sampling.alhpa' (did you mean"),
        ({"sampling": 0.1}, "config key 'tokenizer.sampling' must be a mapping or null, got 0.1"),
    ],
)
def test_impossible_subword_sampling_is_refused(tokenizer: dict, message: str):
    with pytest.raises(ConfigError) as error:
        config_from_dict({**BASE, "tokenizer": tokenizer})
    assert message in str(error.value)


@pytest.mark.parametrize("value", [0.999, 0.5, "0.99", None])
def test_ema_decay_takes_a_fraction_or_null(value):
    expected = None if value is None else float(value)
    assert config_from_dict(with_value("train.ema_decay", value)).train.ema_decay == expected


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.5, float("nan"), float("inf"), True, "slow"])
def test_ema_decay_outside_0_to_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"^config key 'train\.ema_decay' must be"):
        config_from_dict(with_value("train.ema_decay", value))


def test_init_from_names_a_checkpoint_or_is_null():
    assert config_from_dict(with_value("train.init_from", "runs/x/best.pt")).train.init_from == "runs/x/best.pt"
    assert config_from_dict(BASE).train.init_from is None
    for blank in ("", "  "):
        with pytest.raises(
            ConfigError, match=r"config key 'train\.init_from' must name a checkpoint file \(or be null\)"
        ):
            config_from_dict(with_value("train.init_from", blank))
    with pytest.raises(ConfigError, match=r"config key 'train\.init_from' must be a string or null, got 3"):
        config_from_dict(with_value("train.init_from", 3))


def test_tensorboard_is_true_or_false():
    assert config_from_dict(with_value("train.tensorboard", True)).train.tensorboard is True
    assert config_from_dict(BASE).train.tensorboard is False
    for value in ("yes", 1, None):
        with pytest.raises(ConfigError, match=rf"config key 'train\.tensorboard' must be true or false, got {value!r}"):
            config_from_dict(with_value("train.tensorboard", value))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads(path: Path):
    assert isinstance(load_config(path), Config)


def test_configs_are_shipped():
    assert len(list(CONFIGS.glob("*.yaml"))) >= 3


# --- found by fuzzing (tests/test_fuzz.py) ---------------------------------------------------------------------

LAUGHS = (
    "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "
    + ", ".join(  # an alias bomb: 10**8 ones in 400 bytes
        f"&{name} [{', '.join([f'*{previous}'] * 10)}]" for previous, name in zip("abcdefg", "bcdefgh")
    )
    + "]"
)


@pytest.mark.parametrize(
    "value",
    ["!!int 'x'", "!!int ''", "!!float ''", "!!bool 'x'", "!!timestamp 'x'", "2001-02-30", "9" * 5000, "[" * 2000],
    ids=["int", "empty-int", "empty-float", "bool", "timestamp", "february-30", "5000-digits", "too-deep"],
)
def test_a_yaml_value_pyyaml_cannot_convert_is_a_config_error(tmp_path: Path, value: str):
    """PyYAML's converters raise ValueError, IndexError, KeyError or AttributeError, and deep nesting RecursionError;
    they were tracebacks, in the file and in --set alike."""
    path = tmp_path / "config.yaml"
    path.write_text(f"name: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml (holds a value YAML cannot read|is not valid YAML)") as error:
        load_config(path)
    assert str(error.value).isprintable() and len(str(error.value)) < 300
    path.write_text("train: {max_steps: 10}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^--set name: cannot read value .+ \(\w+Error\)$"):
        load_config(path, [f"name={value}"])


@pytest.mark.parametrize(
    "text, shown",
    [
        ('"a\\nb": 1', r"unknown config key 'a\\nb'"),  # was a message of two lines
        ('"n\\ufeffame": x', r"unknown config key 'n\\ufeffame' \(did you mean 'name'\?\)"),  # was 'name' ... 'name'
        ('data: {train: ["a\\u2028b", "a\\u2028b"]}', r"corpus 'a\\u2028b' is listed twice"),
        (f"name: {LAUGHS}", r"config key 'name' must be a string, got \[\[1, 1, 1, 1, 1, 1, \.\.\.\], "),
    ],
    ids=["newline", "bom", "line-separator", "alias-bomb"],
)
def test_messages_show_keys_and_values_escaped_and_short(tmp_path: Path, text: str, shown: str):
    """A key or value with a line break or an invisible character is shown escaped; a huge value (an alias bomb of
    10**8 elements made a message of gigabytes) is cut short."""
    path = tmp_path / "config.yaml"
    path.write_text(f"train: {{max_steps: 10}}\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=shown) as error:
        load_config(path)
    assert str(error.value).isprintable() and len(str(error.value)) < 300


def test_a_set_path_with_a_line_break_is_shown_escaped(tmp_path: Path):
    path = write_yaml(tmp_path / "config.yaml", BASE)
    with pytest.raises(ConfigError, match=r"^--set 'train\\nmax_steps\.x': 'train\\nmax_steps' is not a section$"):
        load_config(path, ["train\nmax_steps=1", "train\nmax_steps.x=2"])


@pytest.mark.parametrize("value", [2**63, -(2**63), 16**5000], ids=["2**63", "-2**63", "5000-hex-digits"])
def test_an_integer_beyond_int64_is_refused(tmp_path: Path, value: int):
    """Integers past int64 overflowed numpy and torch; one of more than 4300 digits could not even be printed."""
    path = tmp_path / "config.yaml"
    path.write_text(f"train: {{max_steps: 10, seed: {hex(value)}}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'train\.seed' must be an integer between -2\*\*63 and 2\*\*63, got ") as e:
        load_config(path)
    assert len(str(e.value)) < 200


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("train.threads", 2**31, r"'train\.threads' must be at most 2147483647, got 2147483648"),  # a C int
        ("train.adam_betas", [0.9, 1.0], r"'train\.adam_betas' must be two numbers in \[0, 1\), got \[0\.9, 1\.0\]"),
        ("train.adam_betas", [-0.1, 0.9], r"'train\.adam_betas' must be two numbers in \[0, 1\)"),
    ],
)
def test_values_training_would_crash_on_are_refused(dotted: str, value, message: str):
    """Loaded, then a traceback from numpy, torch.set_num_threads or torch.optim.Adam when training started."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(with_value(dotted, value))


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path, monkeypatch):
    path = write_yaml(tmp_path / "config.yaml", BASE)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)  # chmod 000 does not stop root, who runs the CI
    with pytest.raises(ConfigError, match=r"^cannot read config file .*config\.yaml: Permission denied$"):
        load_config(path)
