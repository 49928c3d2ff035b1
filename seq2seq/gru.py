"""A GRU for CPU training whose backward pass computes each weight gradient in one matmul.

`torch.nn.GRU` on CPU runs a C++ loop over time steps, and autograd records every step: its
backward computes the recurrent weight's gradient step by step (a small matmul, a zero fill and
an add per step). On the quickstart model that bookkeeping was a third of a training step.
This module keeps `nn.GRU`'s parameters, names and initialisation (checkpoints load either way)
and, on CPU, runs its own recurrence:

    gates_x = x W_ih^T + b_ih                 all time steps in one matmul
    for t:  gates_h = h W_hh^T + b_hh
            r = sigmoid(gx_r + gh_r)    z = sigmoid(gx_z + gh_z)
            n = tanh(gx_n + r * gh_n)   h = n + z (h - n)

with a hand-written backward (`GRURecurrence`) that walks back through time computing only the
per-step gradients it must, then forms dW_hh = sum_t dgates_h[t]^T h[t-1] as one matmul over
all steps; dW_ih likewise falls out of autograd as one matmul over the input projection.

Variable lengths (the encoder's padded batches) are handled without packing: a step beyond a
sentence's end leaves its state unchanged, so the final state is the state at the last real
token, and the backward direction reads each sentence reversed within its own length.
On CUDA, cuDNN's fused kernels are faster than any Python loop, so `forward` hands over to torch's
GRU kernel there (`_forward_fused`), one layer at a time so that it computes what the CPU path does:
the state in full precision under autocast, dropout between layers from torch's generator, empty
sentences allowed. tests/test_gpu_path.py checks the two paths against each other on the CPU.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


class GRURecurrence(torch.autograd.Function):
    """The time loop of one GRU direction, time-major, with a backward that batches dW_hh.

    Inputs: gates_x [T, B, 3H] (input projections, b_ih included), h0 [B, H], w_hh [3H, H],
    b_hh [3H], keep [T, B, 1] (1.0 on real steps, 0.0 past a sentence's end) or None.
    Output: states [T, B, H], the state after every step (padding steps repeat the last one).
    """

    @staticmethod
    def forward(ctx, gates_x: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, keep: Tensor | None) -> Tensor:
        steps, hidden = gates_x.size(0), h0.size(1)
        states = gates_x.new_empty(steps, *h0.shape)  # [T, B, H]
        training = any(ctx.needs_input_grad)
        saved = gates_x.new_empty(4, steps, *h0.shape) if training else None  # r, z, n, gh_n for backward
        ctx.autocast = _autocast_state(gates_x.device.type)
        # Under autocast the recurrent weight is cast once here, not at every step (autocast's weight cache
        # does not see a transposed view made inside an autograd function: 136 casts a step on the quickstart).
        w_hh_t, b_hh_cast = _matmul_operand(w_hh.t(), ctx.autocast), _matmul_operand(b_hh, ctx.autocast)
        h = h0
        for t in range(steps):
            gates_h = torch.addmm(b_hh_cast, h, w_hh_t).to(gates_x.dtype)  # [B, 3H]
            gx_r, gx_z, gx_n = gates_x[t].split(hidden, dim=1)
            gh_r, gh_z, gh_n = gates_h.split(hidden, dim=1)
            r = torch.sigmoid(gx_r + gh_r)
            z = torch.sigmoid(gx_z + gh_z)
            n = torch.tanh(gx_n + r * gh_n)
            new_h = n + z * (h - n)
            if keep is not None:  # past a sentence's end the state stays as it was
                new_h = h + keep[t] * (new_h - h)
            states[t] = new_h
            if saved is not None:  # training
                saved[0, t], saved[1, t], saved[2, t], saved[3, t] = r, z, n, gh_n
            h = new_h
        ctx.save_for_backward(states, h0, w_hh, keep, saved)
        return states

    @staticmethod
    def backward(ctx, grad_states: Tensor):
        states, h0, w_hh, keep, saved = ctx.saved_tensors
        r_all, z_all, n_all, gh_n_all = saved
        steps, hidden = states.size(0), states.size(2)
        previous = torch.cat([h0[None], states[:-1]])  # [T, B, H]: the state each step started from
        grad_gates_x = states.new_empty(steps, states.size(1), 3 * hidden)  # [T, B, 3H]
        grad_gates_h = torch.empty_like(grad_gates_x)
        grad_h = torch.zeros_like(h0)  # gradient flowing back into the state after step t
        w_hh_step = _matmul_operand(w_hh, ctx.autocast)  # cast once, not at every step
        with torch.autocast(states.device.type, **ctx.autocast):
            for t in reversed(range(steps)):
                grad_h = grad_h + grad_states[t]
                if keep is not None:
                    grad_carried = grad_h * (1.0 - keep[t])  # what a padding step passes straight through
                    grad_h = grad_h * keep[t]
                r, z, n, gh_n, h = r_all[t], z_all[t], n_all[t], gh_n_all[t], previous[t]
                grad_n = grad_h * (1.0 - z) * (1.0 - n * n)  # through h = n + z (h - n) and tanh
                grad_z = grad_h * (h - n) * z * (1.0 - z)
                grad_r = grad_n * gh_n * r * (1.0 - r)
                grad_gates_x[t] = torch.cat([grad_r, grad_z, grad_n], dim=1)
                grad_gates_h[t] = torch.cat([grad_r, grad_z, grad_n * r], dim=1)
                grad_h = grad_h * z + torch.mm(grad_gates_h[t], w_hh_step).to(grad_h.dtype)
                if keep is not None:
                    grad_h = grad_h + grad_carried
            # The recurrent weight's gradient over all steps at once: [3H, T*B] @ [T*B, H].
            grad_w_hh = torch.mm(grad_gates_h.flatten(0, 1).t(), previous.flatten(0, 1)).to(w_hh.dtype)
        grad_b_hh = grad_gates_h.sum(dim=(0, 1)).to(w_hh.dtype)
        return grad_gates_x, grad_h, grad_w_hh, grad_b_hh, None


def _autocast_state(device_type: str) -> dict:
    """The autocast settings in force, to apply again in the backward pass."""
    if not torch.is_autocast_enabled(device_type):
        return {"enabled": False}
    return {"enabled": True, "dtype": torch.get_autocast_dtype(device_type)}


def _matmul_operand(weight: Tensor, autocast: dict) -> Tensor:
    """`weight` in the dtype autocast would give it in a matmul (itself when autocast is off)."""
    return weight.to(autocast["dtype"]) if autocast["enabled"] else weight


def reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of x [B, T, ...] within its length, leaving padding in place (an involution)."""
    steps = torch.arange(x.size(1), device=x.device)[None, :]  # [1, T]
    lengths = lengths.to(x.device)[:, None]  # [B, 1]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, T]
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class GRU(nn.GRU):
    """`nn.GRU` (batch-first) with a faster CPU training path and lengths instead of packing.

    forward(x [B, T, I], h0 [L*D, B, H] or None, lengths [B] or None) ->
        outputs [B, T, D*H] (zeros past each length), final states [L*D, B, H].
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout,
        )

    def forward(  # type: ignore[override]  # nn.GRU takes no lengths; this one stops each sentence at its own
        self, x: Tensor, h0: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if x.is_cuda:
            return self._forward_fused(x, h0, lengths)
        directions = 2 if self.bidirectional else 1
        state_dtype = cast(Tensor, self.weight_hh_l0).dtype  # under autocast only the matmuls run in low precision
        if h0 is None:
            h0 = x.new_zeros(self.num_layers * directions, x.size(0), self.hidden_size, dtype=state_dtype)
        h0 = h0.to(state_dtype)
        keep = None
        if lengths is not None:  # [T, B, 1]: 1.0 on real steps
            steps = torch.arange(x.size(1), device=x.device)
            keep = (steps[:, None] < lengths.to(x.device)[None, :]).to(torch.float32)[:, :, None]
        finals, layer_input = [], x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out = self._run_direction(layer_input, h0[index], index, direction == 1, keep, lengths)
                outputs.append(out)
                # Past its end a sentence's state is carried unchanged, so the last position holds the
                # forward direction's final state; the backward direction ends at position 0.
                finals.append(out[:, 0] if direction == 1 else out[:, -1])
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        if keep is not None:
            layer_input = layer_input * keep.transpose(0, 1).to(layer_input.dtype)  # zeros past each length
        return layer_input, torch.stack(finals)

    def _run_direction(self, x: Tensor, h0: Tensor, index: int, reverse: bool, keep, lengths) -> Tensor:
        """States [B, T, H] of one direction of one layer (in the input's order)."""
        suffix = f"_l{index // (2 if self.bidirectional else 1)}" + ("_reverse" if reverse else "")
        w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
        b_ih, b_hh = getattr(self, "bias_ih" + suffix), getattr(self, "bias_hh" + suffix)
        if reverse:
            x = reverse_within_lengths(x, lengths) if lengths is not None else x.flip(1)
        gates_x = F.linear(x, w_ih, b_ih).transpose(0, 1).contiguous()  # [T, B, 3H]: every step in one matmul
        gates_x = gates_x.to(h0.dtype)  # autocast: matmuls in low precision, the state in full precision
        states = GRURecurrence.apply(gates_x, h0, w_hh, b_hh, keep).transpose(0, 1)  # [B, T, H]
        if reverse:
            states = reverse_within_lengths(states, lengths) if lengths is not None else states.flip(1)
        return states

    def _forward_fused(self, x: Tensor, h0: Tensor | None, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """nn.GRU's own kernels (cuDNN on a GPU), computing what the CPU path computes.

        - The recurrence runs in the weights' dtype even under autocast (cuDNN's autocast wrapper would run
          it in float16, even under bf16 autocast, where no gradient scaler guards it).
        - Dropout between layers is drawn by F.dropout from torch's generator (one call per layer), which checkpoints save;
          cuDNN's own dropout state is not saved, so a resumed run would draw other masks.
        - An empty sentence (length 0) keeps h0 and has zero outputs; packing would refuse it.
        """
        directions = 2 if self.bidirectional else 1
        dtype = cast(Tensor, self.weight_hh_l0).dtype
        if h0 is None:
            h0 = x.new_zeros(self.num_layers * directions, x.size(0), self.hidden_size, dtype=dtype)
        h0 = h0.to(dtype)
        if x.is_cuda:  # a copy or a loaded state (the moving average, a resume) leaves cuDNN's flat buffer
            self.flatten_parameters()  # one buffer again (a no-op when it already is)
        with torch.autocast(x.device.type, enabled=False):
            if self.num_layers == 1 or not (self.training and self.dropout > 0):
                return self._fused_layers(x.to(dtype), h0, self._flat_weights, lengths, self.num_layers)
            return self._fused_layer_by_layer(x.to(dtype), h0, lengths)

    def _fused_layer_by_layer(self, x: Tensor, h0: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Training with dropout between layers: one kernel call per layer, F.dropout between them."""
        directions = 2 if self.bidirectional else 1
        finals, layer_input = [], x
        with warnings.catch_warnings():
            # One layer's weights are a slice of cuDNN's flat buffer, so cuDNN copies them into a buffer of
            # their own at each call and warns: a small price for masks that a resumed run draws again.
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
            for layer in range(self.num_layers):
                if layer > 0:
                    layer_input = F.dropout(layer_input, self.dropout, self.training)
                weights = self._flat_weights[layer * 4 * directions : (layer + 1) * 4 * directions]
                hx = h0[layer * directions : (layer + 1) * directions]  # [D, B, H]
                layer_input, final = self._fused_layers(layer_input, hx, weights, lengths, 1)
                finals.append(final)
        return layer_input, torch.cat(finals)

    def _fused_layers(
        self, x: Tensor, hx: Tensor, weights: list, lengths: Tensor | None, layers: int
    ) -> tuple[Tensor, Tensor]:
        """`layers` layers through torch's GRU kernel, no dropout: outputs [B, T, D*H] (zeros past each length),
        finals [layers*D, B, H]."""
        gru = torch._VF.gru  # the kernel behind nn.GRU (cuDNN on a GPU)
        # cuDNN keeps what its backward pass needs only in training mode: ask for it whenever gradients flow
        # (the CPU path differentiates in eval mode too). Dropout is applied outside, so p is 0 here.
        train = self.training or torch.is_grad_enabled()
        if lengths is None:
            outputs, final = gru(x, hx, weights, True, layers, 0.0, train, self.bidirectional, True)
            return outputs, final
        lengths = lengths.to(x.device)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        sorted_hx = hx.index_select(1, cast(Tensor, packed.sorted_indices))
        data, final = gru(
            packed.data, packed.batch_sizes, sorted_hx, weights, True, layers, 0.0, train, self.bidirectional
        )
        final = final.index_select(1, cast(Tensor, packed.unsorted_indices))
        packed_out = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        real = lengths > 0  # [B]: an empty sentence keeps h0 and has no outputs
        outputs = outputs * real[:, None, None].to(outputs.dtype)
        final = torch.where(real[None, :, None], final, hx)
        return outputs, final
