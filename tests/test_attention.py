"""Every registered attention variant honours the contract in seq2seq/attention.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from seq2seq.attention import ATTENTION_TYPES, DotAttention, LocationOptions, register
from seq2seq.config import ConfigError, config_from_dict
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq

SIZE = 16  # query size == key size, so that dot and scaled_dot apply too
LENGTHS = [5, 3, 1]  # different source lengths: rows 1 and 2 have padding
# Variants whose weights, by design, ignore the query: it gets no gradient from them.
QUERY_INDEPENDENT = {"none"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    variant = ATTENTION_TYPES[name]
    options = LocationOptions(max_source_length=8) if name == "location" else variant.options_type()
    return variant(SIZE, SIZE, options)


def inputs(query_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query [B, Tq, H], encoder states [B, Ts, H] (zeros on padding, as the encoder gives), mask [B, Ts]."""
    generator = torch.Generator().manual_seed(1)
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    states = torch.randn(len(LENGTHS), max(LENGTHS), SIZE, generator=generator) * mask[..., None]
    query = torch.randn(len(LENGTHS), query_length, SIZE, generator=generator)
    return query.requires_grad_(), states.requires_grad_(), mask


def attend(module, query, states, mask):
    return module(query, module.precompute(states), states, mask)


@pytest.fixture(params=sorted(ATTENTION_TYPES))
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("query_length", [1, 4])
def test_shapes_and_masked_weights(name: str, query_length: int):
    module = build(name)
    query, states, mask = inputs(query_length)
    context, weights = attend(module, query, states, mask)
    assert context.shape == (len(LENGTHS), query_length, SIZE)
    assert weights.shape == (len(LENGTHS), query_length, max(LENGTHS))
    assert torch.all(weights[~mask[:, None, :].expand_as(weights)] == 0), "padding must get exactly 0 weight"
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(LENGTHS), query_length))
    assert torch.isfinite(context).all()


@pytest.mark.parametrize("query_length", [1, 4])
def test_gradients_reach_inputs_and_every_parameter(name: str, query_length: int):
    module = build(name)
    query, states, mask = inputs(query_length)
    context, weights = attend(module, query, states, mask)
    (context.pow(2).sum() + (weights * torch.arange(weights.size(-1))).sum()).backward()
    assert states.grad is not None and states.grad[mask].abs().sum() > 0
    assert torch.all(states.grad[~mask] == 0), "padding positions must not influence the output"
    if name not in QUERY_INDEPENDENT:
        assert query.grad is not None and query.grad.abs().sum() > 0
    for parameter_name, parameter in module.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient for {parameter_name}"


def test_padding_values_do_not_change_the_output(name: str):
    module = build(name)
    query, states, mask = inputs(3)
    noisy = states.detach() + torch.randn_like(states) * (~mask[..., None])
    context, weights = attend(module, query, states, mask)
    noisy_context, noisy_weights = attend(module, query, noisy, mask)
    torch.testing.assert_close(noisy_context, context)
    torch.testing.assert_close(noisy_weights, weights)


def test_query_steps_are_independent(name: str):
    """Attending for all steps at once (the decoder's fast path) equals attending step by step."""
    module = build(name)
    query, states, mask = inputs(4)
    context, weights = attend(module, query, states, mask)
    for t in range(query.size(1)):
        step_context, step_weights = attend(module, query[:, t : t + 1], states, mask)
        torch.testing.assert_close(step_context, context[:, t : t + 1])
        torch.testing.assert_close(step_weights, weights[:, t : t + 1])


def test_location_attention_gives_no_weight_beyond_its_maximum_length():
    module = ATTENTION_TYPES["location"](SIZE, SIZE, LocationOptions(max_source_length=3))
    states, mask = torch.randn(2, 6, SIZE), torch.ones(2, 6, dtype=torch.bool)
    _, weights = attend(module, torch.randn(2, 2, SIZE), states, mask)
    assert torch.all(weights[..., 3:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2))


def model_config(attention: str, encoder_hidden: int = 32, decoder_hidden: int = 64, **options) -> dict:
    """A whole config dict whose model has this attention (and options) and these sizes."""
    return {
        "train": {"max_steps": 1},
        "model": {
            "encoder_hidden_size": encoder_hidden,
            "decoder_hidden_size": decoder_hidden,
            "attention": {"type": attention, **options},
        },
    }


def test_every_registered_type_with_fitting_sizes_is_accepted(name: str):
    config = config_from_dict(model_config(name))  # 2 x 32 == 64: fits dot too
    assert isinstance(config.model.attention.options, ATTENTION_TYPES[name].options_type)


@pytest.mark.parametrize("attention", ["dot", "scaled_dot"])
def test_dot_with_mismatched_sizes_is_refused(attention: str):
    with pytest.raises(UserError, match=r"model\.decoder_hidden_size \(48\).*2 x model\.encoder_hidden_size \(64\)"):
        config_from_dict(model_config(attention, decoder_hidden=48))


def test_an_unknown_type_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"model\.attention\.type.*additive.*'bahdanau'"):
        config_from_dict(model_config("bahdanau"))


def test_indivisible_heads_are_refused():
    with pytest.raises(UserError, match=r"\(64\) divisible by model\.attention\.heads \(5\)"):
        config_from_dict(model_config("multihead", heads=5))


def test_additive_cpu_scores_equal_the_plain_formula_values_and_gradients():
    """The chunked sigmoid-based CPU path computes v . tanh(W q + U k) and its exact gradients."""
    torch.manual_seed(0)
    attention = ATTENTION_TYPES["additive"](8, 6).double()
    query = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
    states = torch.randn(3, 4, 6, dtype=torch.double, requires_grad=True)
    scores = attention.score(query, attention.precompute(states))
    keys = attention.precompute(states)
    hidden = torch.tanh(attention.query_layer(query)[:, :, None, :] + keys[:, None, :, :])
    plain = attention.energy_layer(hidden).squeeze(-1)
    torch.testing.assert_close(scores, plain)
    weights = torch.randn_like(scores)
    inputs = [query, states, *attention.parameters()]
    for ours, reference in zip(
        torch.autograd.grad((scores * weights).sum(), inputs), torch.autograd.grad((plain * weights).sum(), inputs)
    ):
        torch.testing.assert_close(ours, reference)
    assert torch.autograd.gradcheck(lambda q, s: attention.score(q, attention.precompute(s)), (query, states))


# --- the registry ---------------------------------------------------------------------------------


@dataclass
class ScaledOptions:
    """Options of the test variant."""

    factor: float = 2.0


@pytest.fixture
def registered_variant():
    """A variant registered for one test, then removed again."""

    @register("test_scaled", options=ScaledOptions)
    class ScaledVariant(DotAttention):
        def __init__(self, query_size: int, key_size: int, options: ScaledOptions):
            super().__init__(query_size, key_size)
            self.factor = options.factor

        def score(self, query: Tensor, keys: Tensor) -> Tensor:
            return super().score(query, keys) * self.factor

    yield ScaledVariant
    del ATTENTION_TYPES["test_scaled"]


def test_a_registered_variant_is_one_class_selected_and_validated_by_name(registered_variant, tiny_config: dict):
    tiny_config["model"].update(encoder_hidden_size=32, decoder_hidden_size=64)
    tiny_config["model"]["attention"] = {"type": "test_scaled", "factor": 3.0}
    config = config_from_dict(tiny_config)
    model = Seq2Seq(config.model, 50, 50)
    assert isinstance(model.decoder.attention, registered_variant) and model.decoder.attention.factor == 3.0
    tiny_config["model"]["decoder_hidden_size"] = 32  # the dot check it inherits: sizes must match
    with pytest.raises(UserError, match="'test_scaled' attention compares decoder and encoder states directly"):
        config_from_dict(tiny_config)
    tiny_config["model"]["decoder_hidden_size"] = 64
    tiny_config["model"]["attention"] = {"type": "test_scaled", "factr": 3.0}
    with pytest.raises(
        UserError, match=r"unknown config key 'model.attention.factr' \(did you mean 'model.attention.factor'\?\)"
    ):
        config_from_dict(tiny_config)
