"""The CPU GRU (seq2seq.gru) must compute exactly what nn.GRU computes, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.gru import GRU, reverse_within_lengths

LENGTHS = torch.tensor([6, 3, 1, 5])


def _pair(layers: int, bidirectional: bool) -> tuple[GRU, nn.GRU]:
    torch.manual_seed(0)
    ours = GRU(5, 7, num_layers=layers, bidirectional=bidirectional).double()
    reference = nn.GRU(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=True).double()
    reference.load_state_dict(ours.state_dict())  # same parameter names: checkpoints load either way
    return ours, reference


def _inputs(layers: int, bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 6, 5, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(layers * (2 if bidirectional else 1), 4, 7, dtype=torch.double, requires_grad=True)
    return x, h0


def _gradients(outputs, final, inputs, module):
    generator = torch.Generator().manual_seed(1)  # (randn_like would follow each tensor's memory layout)
    weigh = lambda t: (t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum()
    loss = weigh(outputs) + weigh(final)
    return torch.autograd.grad(loss, [*inputs, *module.parameters()])


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_nn_gru_with_lengths(layers: int, bidirectional: bool):
    ours, reference = _pair(layers, bidirectional)
    x, h0 = _inputs(layers, bidirectional)
    outputs, final = ours(x, h0, LENGTHS)
    packed = pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    packed_outputs, reference_final = reference(packed, h0)
    reference_outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=x.size(1))
    torch.testing.assert_close(outputs, reference_outputs)
    torch.testing.assert_close(final, reference_final)
    for ours_grad, reference_grad in zip(
        _gradients(outputs, final, (x, h0), ours), _gradients(reference_outputs, reference_final, (x, h0), reference)
    ):
        torch.testing.assert_close(ours_grad, reference_grad)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_nn_gru_without_lengths(layers: int, bidirectional: bool):
    ours, reference = _pair(layers, bidirectional)
    x, h0 = _inputs(layers, bidirectional)
    outputs, final = ours(x, h0)
    reference_outputs, reference_final = reference(x, h0)
    torch.testing.assert_close(outputs, reference_outputs)
    torch.testing.assert_close(final, reference_final)
    for ours_grad, reference_grad in zip(
        _gradients(outputs, final, (x, h0), ours), _gradients(reference_outputs, reference_final, (x, h0), reference)
    ):
        torch.testing.assert_close(ours_grad, reference_grad)


def test_outputs_are_zero_past_each_length_and_padding_does_not_leak():
    ours, _ = _pair(1, True)
    x, h0 = _inputs(1, True)
    outputs, final = ours(x, h0, LENGTHS)
    for row, length in enumerate(LENGTHS.tolist()):
        assert torch.all(outputs[row, length:] == 0)
    noisy = x.detach().clone()
    for row, length in enumerate(LENGTHS.tolist()):
        noisy[row, length:] = 100.0  # garbage on padding must change nothing
    noisy_outputs, noisy_final = ours(noisy, h0, LENGTHS)
    torch.testing.assert_close(noisy_outputs, outputs)
    torch.testing.assert_close(noisy_final, final)


def test_gradcheck_of_the_recurrence():
    ours, _ = _pair(1, True)
    x, h0 = _inputs(1, True)
    assert torch.autograd.gradcheck(lambda x, h0: ours(x, h0, LENGTHS)[0], (x, h0))


def test_bf16_autocast_keeps_the_state_in_fp32_and_stays_close():
    ours, _ = _pair(1, True)
    ours = ours.float()
    x = torch.randn(4, 6, 5)
    reference, _ = ours(x, None, LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, final = ours(x, None, LENGTHS)
        outputs.sum().backward()
    assert outputs.dtype == torch.float32 and final.dtype == torch.float32
    torch.testing.assert_close(outputs, reference, atol=0.05, rtol=0.05)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a low-precision initial state is lifted too
        outputs, final = ours(x, torch.zeros(2, 4, 7, dtype=torch.bfloat16), LENGTHS)
    assert outputs.dtype == torch.float32 and final.dtype == torch.float32


def test_under_autocast_the_recurrent_weight_is_cast_once_per_pass_not_once_per_step():
    """bf16 training cast W_hh at every step (autocast's weight cache misses a view made in an autograd function):
    the casts of [H, 3H]- and [3H, H]-shaped tensors must not grow with the number of steps."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountWeightCasts(TorchDispatchMode):
        def __init__(self, shapes):
            super().__init__()
            self.shapes, self.casts = shapes, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) in self.shapes:
                self.casts += 1
            return func(*args, **(kwargs or {}))

    gru = GRU(5, 7).float()
    shapes = {(7, 21), (21, 7)}
    counts = []
    for steps in (3, 12):
        x = torch.randn(4, steps, 5)
        with CountWeightCasts(shapes) as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, _ = gru(x)
            outputs.sum().backward()
        counts.append(counter.casts)
    assert counts[0] == counts[1] and counts[0] <= 3, counts


def test_reverse_within_lengths_reverses_real_steps_and_is_its_own_inverse():
    x = torch.arange(4 * 6).view(4, 6)
    reversed_x = reverse_within_lengths(x, LENGTHS)
    assert reversed_x[1].tolist() == [8, 7, 6, 9, 10, 11]  # length 3: padding stays in place
    assert reversed_x[2].tolist() == x[2].tolist()  # length 1
    assert torch.equal(reverse_within_lengths(reversed_x, LENGTHS), x)
