"""Every registered attention variant honours the contract in seq2seq/attention.py."""

from __future__ import annotations

import pytest
import torch

from seq2seq.attention import ATTENTION_TYPES, check_attention_config
from seq2seq.config import AttentionConfig, ModelConfig
from seq2seq.errors import UserError

SIZE = 16  # query size == key size, so that dot and scaled_dot apply too
LENGTHS = [5, 3, 1]  # different source lengths: rows 1 and 2 have padding
# Variants whose weights, by design, ignore the query: it gets no gradient from them.
QUERY_INDEPENDENT = {"none"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ATTENTION_TYPES[name](SIZE, SIZE, heads=4, max_source_length=8)


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
    module = ATTENTION_TYPES["location"](SIZE, SIZE, max_source_length=3)
    states, mask = torch.randn(2, 6, SIZE), torch.ones(2, 6, dtype=torch.bool)
    _, weights = attend(module, torch.randn(2, 2, SIZE), states, mask)
    assert torch.all(weights[..., 3:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2))


def model_config(attention: str, encoder_hidden: int = 32, decoder_hidden: int = 64, heads: int = 4) -> ModelConfig:
    return ModelConfig(
        encoder_hidden_size=encoder_hidden,
        decoder_hidden_size=decoder_hidden,
        attention=AttentionConfig(type=attention, heads=heads),
    )


def test_check_attention_config_accepts_every_registered_type_with_fitting_sizes(name: str):
    check_attention_config(model_config(name))  # 2 x 32 == 64: fits dot too


@pytest.mark.parametrize("attention", ["dot", "scaled_dot"])
def test_check_attention_config_rejects_dot_with_mismatched_sizes(attention: str):
    with pytest.raises(UserError, match=r"model\.decoder_hidden_size \(48\).*2 x model\.encoder_hidden_size \(64\)"):
        check_attention_config(model_config(attention, decoder_hidden=48))


def test_check_attention_config_rejects_unknown_type():
    with pytest.raises(UserError, match=r"model\.attention\.type.*additive.*'bahdanau'"):
        check_attention_config(model_config("bahdanau"))


def test_check_attention_config_rejects_indivisible_heads():
    with pytest.raises(UserError, match=r"\(64\) divisible by model\.attention\.heads \(5\)"):
        check_attention_config(model_config("multihead", heads=5))


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
