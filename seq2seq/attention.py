"""Attention modules behind one interface, each registered by name with its own options.

Every module maps a query `[B, Tq, Hq]` and the encoder states (keys = values, `[B, Ts, Hk]`)
to a context `[B, Tq, Hk]` and weights `[B, Tq, Ts]`. `mask` `[B, Ts]` is True on real tokens;
weights sum to 1 over real tokens and are exactly 0 on padding.

A variant implements `score`; the base class masks, normalises and takes the weighted sum.
Work that depends only on the source (key projections) happens in `precompute`, once per
sentence, and its result is passed back in as `keys` on every decoder step.

Adding a variant: write one subclass and register it with its options dataclass,
`@register("name", options=NameOptions)`; `check` tells whether the options fit the model sizes.
The config (`model.attention: {type: name, option: value}`) is validated against that dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from seq2seq.errors import UserError


@dataclass
class NoOptions:
    """A variant without options of its own."""


ATTENTION_TYPES: dict[str, type[Attention]] = {}


def register(name: str, options: type = NoOptions) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: make an attention variant available as `model.attention.type: name`."""

    def add(cls: type[Attention]) -> type[Attention]:
        cls.name, cls.options_type = name, options
        ATTENTION_TYPES[name] = cls
        return cls

    return add


class Attention(nn.Module):
    """Base class: masked softmax over `score(query, keys)` and a weighted sum of values."""

    name: ClassVar[str] = ""
    options_type: ClassVar[type] = NoOptions

    def __init__(self, query_size: int, key_size: int, options: Any = None):
        super().__init__()
        self.query_size = query_size
        self.key_size = key_size

    @classmethod
    def check(cls, options: Any, query_size: int, key_size: int) -> None:
        """Raise a UserError if `options` do not fit a decoder state of `query_size` and keys of `key_size`."""

    def precompute(self, keys: Tensor) -> Tensor:
        """Source-only work, done once per sentence. keys: [B, Ts, Hk] -> [B, Ts, *]."""
        return keys

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unnormalised scores [B, Tq, Ts] for query [B, Tq, Hq] and precomputed keys."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context [B, Tq, Hk] and weights [B, Tq, Ts]; `keys` must come from `precompute`."""
        weights = masked_softmax(self.score(query, keys), mask)  # [B, Tq, Ts]
        return torch.bmm(weights, values), weights


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis of scores [B, Tq, Ts], giving padding (mask False) weight 0."""
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(scores.dtype)


@register("none")
class NoAttention(Attention):
    """No attention: the context is the same fixed summary (mean of encoder states) at every step.

    This is the classic encoder-decoder of Cho et al. (2014), whose decoder sees one fixed-size
    vector of the source; the weights are uniform over real tokens and ignore the query.
    """

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return query.new_zeros(query.size(0), query.size(1), keys.size(1))


@register("dot")
class DotAttention(Attention):
    """Luong dot: score = q . k (needs query and key of the same size)."""

    @classmethod
    def check(cls, options: Any, query_size: int, key_size: int) -> None:
        _check_same_size(cls.name, query_size, key_size)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("scaled_dot")
class ScaledDotAttention(DotAttention):
    """Scaled dot product (Vaswani et al.): score = q . k / sqrt(H) (the same size check as dot)."""

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return super().score(query, keys) / math.sqrt(self.key_size)


@register("general")
class GeneralAttention(Attention):
    """Luong general (bilinear): score = q . (W k); W k is precomputed."""

    def __init__(self, query_size: int, key_size: int, options: Any = None):
        super().__init__(query_size, key_size)
        self.key_layer = nn.Linear(key_size, query_size, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_layer(keys)  # [B, Ts, Hq]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("additive")
class AdditiveAttention(Attention):
    """Bahdanau additive (concat/MLP): score = v . tanh(W q + U k); U k is precomputed."""

    def __init__(self, query_size: int, key_size: int, options: Any = None):
        super().__init__(query_size, key_size)
        self.key_layer = nn.Linear(key_size, query_size, bias=False)
        self.query_layer = nn.Linear(query_size, query_size, bias=False)
        self.energy_layer = nn.Linear(query_size, 1, bias=False)

    def precompute(self, keys: Tensor) -> Tensor:
        return self.key_layer(keys)  # [B, Ts, Hq]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        projected = self.query_layer(query)  # [B, Tq, Hq]
        if query.is_cuda:  # a GPU takes the [B, Tq, Ts, Hq] tensor in its stride
            return self.plain_scores(projected, keys)
        return self.stepwise_scores(projected, keys)

    def plain_scores(self, projected: Tensor, keys: Tensor) -> Tensor:
        """The GPU's formula: v . tanh(W q + U k) through one [B, Tq, Ts, Hq] tensor (runs on any device)."""
        hidden = torch.tanh(projected[:, :, None, :] + keys[:, None, :, :])  # [B, Tq, Ts, Hq]
        return self.energy_layer(hidden).squeeze(-1)  # [B, Tq, Ts]

    def stepwise_scores(self, projected: Tensor, keys: Tensor) -> Tensor:
        """The CPU's formula: the same scores one query step at a time (`AdditiveScores`)."""
        return AdditiveScores.apply(projected, keys, self.energy_layer.weight[0])


class AdditiveScores(torch.autograd.Function):
    """scores[b, t, s] = v . tanh(q[b, t] + k[b, s]), one query step at a time, for the CPU.

    The plain expression builds [B, Tq, Ts, H] tensors (hundreds of MB per batch) several times
    over and spent a third of a training step there. This computes the same scores one query step
    at a time in a reused buffer that stays in cache, stores nothing of that size for the backward
    pass (it recomputes the step instead), and uses tanh(x) = 2 sigmoid(2x) - 1, because torch's
    CPU sigmoid is about 6x faster than its tanh.
    """

    @staticmethod
    def forward(ctx, query: Tensor, keys: Tensor, v: Tensor) -> Tensor:
        query2 = 2 * query  # [B, Tq, H]
        scores = query.new_empty(query.size(0), query.size(1), keys.size(1))  # [B, Tq, Ts]
        buffer = torch.empty_like(keys)  # [B, Ts, H]
        for t in range(query.size(1)):
            sigmoid = torch.add(query2[:, t, None, :], keys, alpha=2, out=buffer).sigmoid_()  # sigmoid(2 (q + k))
            scores[:, t] = sigmoid @ v
        ctx.save_for_backward(query2, keys, v)
        return scores.mul_(2).sub_(v.sum())  # v . (2 sigmoid - 1) = v . tanh

    @staticmethod
    def backward(ctx, grad_scores: Tensor):
        query2, keys, v = ctx.saved_tensors
        grad_query, grad_keys = torch.empty_like(query2), torch.zeros_like(keys)
        grad_v_sigmoid = torch.zeros_like(v)  # sum of grad_scores * sigmoid, over b, t, s
        buffer = torch.empty_like(keys)  # [B, Ts, H]
        four_v = 4 * v
        for t in range(query2.size(1)):
            sigmoid = torch.add(query2[:, t, None, :], keys, alpha=2, out=buffer).sigmoid_()
            grad = grad_scores[:, t, :, None]  # [B, Ts, 1]
            grad_v_sigmoid += (grad * sigmoid).sum(dim=(0, 1))
            # d tanh(x)/dx = 1 - tanh^2 = 4 sigmoid (1 - sigmoid), with the sigmoid of 2x
            grad_hidden = torch.addcmul(sigmoid, sigmoid, sigmoid, value=-1).mul_(grad).mul_(four_v)  # [B, Ts, H]
            grad_query[:, t] = grad_hidden.sum(dim=1)
            grad_keys += grad_hidden
        grad_v = 2 * grad_v_sigmoid - grad_scores.sum()
        return grad_query, grad_keys, grad_v


@dataclass
class LocationOptions:
    """Options of `location` attention."""

    max_source_length: int = 128  # source positions it can score; later positions get no attention


@register("location", options=LocationOptions)
class LocationAttention(Attention):
    """Luong location-based: score = W q, one learned score per source position (from the query alone)."""

    def __init__(self, query_size: int, key_size: int, options: LocationOptions):
        super().__init__(query_size, key_size)
        self.max_source_length = options.max_source_length
        self.position_layer = nn.Linear(query_size, options.max_source_length)

    @classmethod
    def check(cls, options: LocationOptions, query_size: int, key_size: int) -> None:
        if options.max_source_length < 1:
            raise UserError(
                f"config key 'model.attention.max_source_length' must be greater than 0, got {options.max_source_length}"
            )

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        source_length = keys.size(1)
        scores = self.position_layer(query)[:, :, :source_length]  # [B, Tq, min(Ts, max)]
        if source_length > self.max_source_length:  # positions it has no weights for get none
            beyond = scores.new_full((*scores.shape[:2], source_length - self.max_source_length), float("-inf"))
            scores = torch.cat([scores, beyond], dim=-1)
        return scores


@dataclass
class MultiHeadOptions:
    """Options of `multihead` attention."""

    heads: int = 4  # must divide the encoder state size (2 x model.encoder_hidden_size)


@register("multihead", options=MultiHeadOptions)
class MultiHeadAttention(Attention):
    """Scaled dot-product attention in several heads over projected GRU states.

    Each head attends with its own projections; the heads' contexts are concatenated and projected
    back to the key size. The returned weights are the heads' average (for display and alignment).
    """

    def __init__(self, query_size: int, key_size: int, options: MultiHeadOptions):
        super().__init__(query_size, key_size)
        self.check(options, query_size, key_size)
        self.heads = options.heads
        self.head_size = key_size // options.heads
        self.query_layer = nn.Linear(query_size, key_size, bias=False)
        self.key_layer = nn.Linear(key_size, key_size, bias=False)
        self.value_layer = nn.Linear(key_size, key_size, bias=False)
        self.output_layer = nn.Linear(key_size, key_size, bias=False)

    @classmethod
    def check(cls, options: MultiHeadOptions, query_size: int, key_size: int) -> None:
        if options.heads < 1:
            raise UserError(f"config key 'model.attention.heads' must be greater than 0, got {options.heads}")
        if key_size % options.heads:
            raise UserError(
                f"'multihead' attention needs 2 x model.encoder_hidden_size ({key_size}) divisible by "
                f"model.attention.heads ({options.heads})"
            )

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape  # [B, T, Hk] -> [B * heads, T, head_size]
        x = x.view(batch, length, self.heads, self.head_size).transpose(1, 2)
        return x.reshape(batch * self.heads, length, self.head_size)

    def precompute(self, keys: Tensor) -> Tensor:
        # Keys and values both depend on the source only: project them once, stacked on the last axis.
        return torch.cat([self.key_layer(keys), self.value_layer(keys)], dim=-1)  # [B, Ts, 2 Hk]

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, query_length, _ = query.shape
        proj_keys, proj_values = keys.split(self.key_size, dim=-1)
        q = self._split(self.query_layer(query))  # [B*h, Tq, d]
        k, v = self._split(proj_keys), self._split(proj_values)  # [B*h, Ts, d]
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.head_size)  # [B*h, Tq, Ts]
        head_mask = mask.repeat_interleave(self.heads, dim=0)  # [B*h, Ts]
        weights = masked_softmax(scores, head_mask)
        context = torch.bmm(weights, v)  # [B*h, Tq, d]
        context = context.view(batch, self.heads, query_length, self.head_size).transpose(1, 2)
        context = self.output_layer(context.reshape(batch, query_length, self.key_size))
        mean_weights = weights.view(batch, self.heads, query_length, -1).mean(dim=1)  # [B, Tq, Ts]
        return context, mean_weights


def _check_same_size(name: str, query_size: int, key_size: int) -> None:
    if query_size != key_size:
        raise UserError(
            f"'{name}' attention compares decoder and encoder states directly: set "
            f"model.decoder_hidden_size ({query_size}) to 2 x model.encoder_hidden_size "
            f"({key_size}), or use 'general' or 'additive'"
        )


def build_attention(type_name: str, options: Any, query_size: int, key_size: int) -> Attention:
    """Instantiate the registered variant `type_name` with its options."""
    variant = ATTENTION_TYPES[type_name]
    if not isinstance(options, variant.options_type):
        raise TypeError(f"'{type_name}' attention takes {variant.options_type.__name__}, got {type(options).__name__}")
    return variant(query_size, key_size, options)
