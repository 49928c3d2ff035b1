"""The code paths that only a GPU takes, tested as far as a CPU allows, and on a GPU when there is one.

The GRU hands over to `GRU._forward_fused` (nn.GRU's own implementation: cuDNN on a GPU) when its
input is on CUDA, and additive attention scores with the plain [B, Tq, Ts, H] formula there. Both
run on CPU tensors too, so the first sections hold them to exactly what the CPU branches compute,
in float64. Then come the other device-dependent branches (autocast on CUDA, the nccl/CUDA process
set-up, the CUDA random state in checkpoints), driven on CPU with stand-ins for the CUDA calls.

The tests named `test_gpu_*` need a CUDA GPU and are skipped without one: the CUDA branches against
the CPU branches on the same weights (float32, TF32 off), training on CUDA, resuming it, and decoding
on CUDA against decoding on CPU.

Four differences found this way (h0 in another dtype, an empty sentence, cuDNN's float16 autocast, cuDNN's
unsaved dropout state between layers) are fixed in GRU._forward_fused and tested here.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import make_toy_config, regularised_toy_config, two_process_config, write_toy_corpus

from seq2seq import builders, distributed
from seq2seq import device as device_module
from seq2seq.attention import AdditiveAttention, masked_softmax
from seq2seq.checkpoint import load_checkpoint, load_trained, read_training
from seq2seq.config import DecodeConfig, config_from_dict
from seq2seq.data import collate
from seq2seq.device import autocast, check_precision
from seq2seq.distributed import ProcessGroup
from seq2seq.errors import UserError
from seq2seq.gru import GRU
from seq2seq.rundir import read_records
from seq2seq.search import decode_lines
from seq2seq.train import prepared_run, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (nccl)")

# --- the GRU: the fused (nn.GRU / cuDNN) branch against the CPU branch ------------------------------------

INPUT, HIDDEN, STEPS = 5, 7, 6
LENGTHS = torch.tensor([4, 6, 1, 3])  # unsorted; one sentence of full length (6) and one of length 1


def make_gru(layers: int, bidirectional: bool, dropout: float = 0.0, dtype: torch.dtype = torch.float64) -> GRU:
    torch.manual_seed(0)
    return GRU(INPUT, HIDDEN, num_layers=layers, bidirectional=bidirectional, dropout=dropout).to(dtype)


def gru_inputs(
    module: GRU, with_h0: bool, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, T, I] and, if asked for, h0 [L*D, B, H], both leaves that want gradients."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(LENGTHS), STEPS, INPUT, generator=generator, dtype=dtype).requires_grad_()
    if not with_h0:
        return x, None
    layers = module.num_layers * (2 if module.bidirectional else 1)
    return x, torch.randn(layers, len(LENGTHS), HIDDEN, generator=generator, dtype=dtype).requires_grad_()


def differentiate(outputs, final, leaves: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Gradients of a fixed random weighting of outputs and final states w.r.t. `leaves` (on the CPU)."""
    generator = torch.Generator().manual_seed(2)

    def weigh(t: torch.Tensor) -> torch.Tensor:
        return (t * torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)).sum()

    return tuple(g.cpu() for g in torch.autograd.grad(weigh(outputs) + weigh(final), leaves))


def leaves_of(module: torch.nn.Module, *tensors: torch.Tensor | None) -> tuple[list[torch.Tensor], list[str]]:
    """The input tensors given and every parameter, with names for the failure messages."""
    given = [(name, t) for name, t in zip(("x", "h0"), tensors) if t is not None]
    named = given + list(module.named_parameters())
    return [t for _, t in named], [name for name, _ in named]


def assert_same_values_and_gradients(module: GRU, branches, x, h0) -> None:
    """`branches` maps a name to a callable (x, h0) -> (outputs, final); all of them must agree with the first."""
    leaves, names = leaves_of(module, x, h0)
    results = {}
    for branch, run in branches.items():
        outputs, final = run(x, h0)
        results[branch] = (outputs, final, differentiate(outputs, final, leaves))
    (first, (outputs, final, grads)), *others = results.items()
    for branch, (other_outputs, other_final, other_grads) in others:
        torch.testing.assert_close(other_outputs, outputs, msg=f"outputs: {branch} vs {first}")
        torch.testing.assert_close(other_final, final, msg=f"final states: {branch} vs {first}")
        for name, grad, other_grad in zip(names, grads, other_grads):
            torch.testing.assert_close(other_grad, grad, msg=f"gradient of {name}: {branch} vs {first}")


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["lengths", "no-lengths"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
def test_fused_branch_equals_the_cpu_branch(layers: int, bidirectional: bool, lengths, with_h0: bool):
    """Outputs, final states and the gradients w.r.t. x, h0 and every weight, in float64."""
    dropout = 0.3 if layers > 1 else 0.0  # (nn.GRU warns of dropout without a layer after)
    module = make_gru(layers, bidirectional, dropout=dropout)  # eval mode: dropout off in both branches
    module.eval()
    x, h0 = gru_inputs(module, with_h0)
    branches = {
        "cpu": lambda x, h0: module(x, h0, lengths),
        "fused": lambda x, h0: module._forward_fused(x, h0, lengths),
    }
    assert_same_values_and_gradients(module, branches, x, h0)


@pytest.mark.parametrize("branch", ["cpu", "fused"])
def test_both_branches_give_zeros_past_each_length_and_the_last_real_state(branch: str):
    """The conventions callers rely on, whichever branch ran: padding outputs are exactly 0, nothing flows
    into padding inputs, and the final state is the one at the last real token (position 0 backwards)."""
    module = make_gru(2, True)
    x, h0 = gru_inputs(module, True)
    run = module.forward if branch == "cpu" else module._forward_fused
    outputs, final = run(x, h0, LENGTHS)
    assert outputs.shape == (len(LENGTHS), STEPS, 2 * HIDDEN) and final.shape == (4, len(LENGTHS), HIDDEN)
    for row, length in enumerate(LENGTHS.tolist()):
        assert torch.all(outputs[row, length:] == 0), f"row {row}: padding outputs must be exactly 0"
        torch.testing.assert_close(final[-2, row], outputs[row, length - 1, :HIDDEN])  # last layer, forwards
        torch.testing.assert_close(final[-1, row], outputs[row, 0, HIDDEN:])  # last layer, backwards
    (grad_x,) = torch.autograd.grad(outputs.sum() + final.sum(), [x])
    for row, length in enumerate(LENGTHS.tolist()):
        assert torch.all(grad_x[row, length:] == 0), f"row {row}: padding inputs must get no gradient"
        assert grad_x[row, :length].abs().sum() > 0


def test_both_branches_pad_to_the_input_length_when_every_sentence_is_shorter():
    """pad_packed_sequence's total_length: outputs keep the input's T even when max(lengths) < T."""
    module = make_gru(1, True)
    x, h0 = gru_inputs(module, True)
    shorter = torch.tensor([2, 4, 1, 3])
    branches = {
        "cpu": lambda x, h0: module(x, h0, shorter),
        "fused": lambda x, h0: module._forward_fused(x, h0, shorter),
    }
    assert_same_values_and_gradients(module, branches, x, h0)
    outputs, _ = module._forward_fused(x, h0, shorter)
    assert outputs.shape[1] == STEPS and torch.all(outputs[:, 4:] == 0)


@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["lengths", "no-lengths"])
def test_both_branches_drop_out_between_layers_only(lengths):
    """With dropout 1 in training mode both branches zero the first layer's output before the second layer
    (a mask either branch draws from its own random stream could not be compared; this one is certain)."""
    dropped = make_gru(2, True, dropout=1.0).train()
    x, h0 = gru_inputs(dropped, True)
    branches = {
        "cpu": lambda x, h0: dropped(x, h0, lengths),
        "fused": lambda x, h0: dropped._forward_fused(x, h0, lengths),
    }
    assert_same_values_and_gradients(dropped, branches, x, h0)
    kept = make_gru(2, True, dropout=0.0).train()  # the same weights (same seed), nothing dropped
    outputs, _ = dropped(x, h0, lengths)
    assert not torch.allclose(outputs, kept(x, h0, lengths)[0]), "dropout 1 must change the second layer's output"
    # The second layer saw only zeros: its output does not depend on x at all.
    (grad_x,) = torch.autograd.grad(dropped._forward_fused(x, h0, lengths)[0].sum(), [x], allow_unused=True)
    assert grad_x is None or torch.all(grad_x == 0)


def test_fused_branch_lifts_an_initial_state_of_another_dtype_like_the_cpu_branch():
    module = make_gru(1, True)
    x, h0 = gru_inputs(module, True)
    assert h0 is not None
    low = h0.detach().float()
    expected_outputs, expected_final = module(x, low, LENGTHS)
    assert expected_final.dtype == torch.float64  # the CPU branch: the state in the weights' precision
    outputs, final = module._forward_fused(x, low, LENGTHS)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(final, expected_final)


def test_fused_branch_draws_dropout_between_layers_like_the_cpu_branch():
    """Both branches draw the masks between layers from torch's generator (which checkpoints save), in the same
    order: with the same seed they give the same outputs, so a resumed run draws the masks it would have drawn."""
    module = make_gru(2, True, dropout=0.5).train()
    x, h0 = gru_inputs(module, True)
    torch.manual_seed(3)
    expected_outputs, expected_final = module(x, h0, LENGTHS)
    torch.manual_seed(3)
    outputs, final = module._forward_fused(x, h0, LENGTHS)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(final, expected_final)


def test_fused_branch_under_autocast_keeps_the_state_in_the_weights_dtype():
    module = make_gru(1, True, dtype=torch.float32)
    x = torch.randn(len(LENGTHS), STEPS, INPUT)
    expected_outputs, expected_final = module._forward_fused(x, None, LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, final = module._forward_fused(x, None, LENGTHS)
    assert outputs.dtype == final.dtype == torch.float32
    torch.testing.assert_close(outputs, expected_outputs)  # the recurrence itself ran in float32
    torch.testing.assert_close(final, expected_final)


def test_fused_branch_accepts_an_empty_sentence_like_the_cpu_branch():
    module = make_gru(1, True)
    x, h0 = gru_inputs(module, True)
    assert h0 is not None
    lengths = torch.tensor([4, 0, 1, 6])
    expected_outputs, expected_final = module(x, h0, lengths)
    torch.testing.assert_close(expected_final[:, 1], h0[:, 1])  # the CPU branch: the state never moved
    assert torch.all(expected_outputs[1] == 0)
    outputs, final = module._forward_fused(x, h0, lengths)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(final, expected_final)


class OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: drives the `if x.is_cuda:` branches on a CPU."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def test_gru_hands_over_to_the_fused_branch_exactly_for_cuda_inputs(monkeypatch):
    calls = []

    def fused(self, x, h0, lengths):
        calls.append((x, h0, lengths))
        return "fused"

    monkeypatch.setattr(GRU, "_forward_fused", fused)
    module = make_gru(1, True)
    x, h0 = gru_inputs(module, True)
    on_cuda = x.detach().as_subclass(OnCuda)
    assert module(on_cuda, h0, LENGTHS) == "fused"
    assert len(calls) == 1 and calls[0][0] is on_cuda and calls[0][1] is h0 and calls[0][2] is LENGTHS
    outputs, _ = module(x, h0, LENGTHS)  # a CPU tensor stays on the CPU branch
    assert isinstance(outputs, torch.Tensor) and len(calls) == 1


# --- additive attention: the plain (GPU) formula against the step-by-step CPU one ---------------------------

QUERY_SIZE, KEY_SIZE = 8, 6  # different sizes: a transposed projection would not even run
SOURCE_LENGTHS = [5, 2, 1]


def make_additive(dtype: torch.dtype = torch.float64) -> AdditiveAttention:
    torch.manual_seed(0)
    return AdditiveAttention(QUERY_SIZE, KEY_SIZE).to(dtype)


def attention_inputs(query_length: int, dtype: torch.dtype = torch.float64):
    """query [B, Tq, Hq], encoder states [B, Ts, Hk] (zeros on padding), mask [B, Ts]; inputs want gradients."""
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(max(SOURCE_LENGTHS))[None, :] < torch.tensor(SOURCE_LENGTHS)[:, None]
    states = torch.randn(len(SOURCE_LENGTHS), max(SOURCE_LENGTHS), KEY_SIZE, generator=generator, dtype=dtype)
    query = torch.randn(len(SOURCE_LENGTHS), query_length, QUERY_SIZE, generator=generator, dtype=dtype)
    return query.requires_grad_(), (states * mask[..., None]).requires_grad_(), mask


@pytest.mark.parametrize("query_length", [1, 4], ids=["decoding-step", "whole-target"])
def test_plain_and_stepwise_scores_agree_in_values_and_gradients(query_length: int):
    module = make_additive()
    query, states, mask = attention_inputs(query_length)
    leaves, names = leaves_of(module, query, states)
    results = []
    for formula in (module.plain_scores, module.stepwise_scores):
        scores = formula(module.query_layer(query), module.precompute(states))
        # What the scores feed: the masked softmax (padding gets no weight) and a weighted sum.
        weights = masked_softmax(scores, mask)
        results.append((scores, weights, differentiate(scores, torch.bmm(weights, states), leaves)))
    (plain, plain_weights, plain_grads), (stepwise, stepwise_weights, stepwise_grads) = results
    assert plain.shape == (len(SOURCE_LENGTHS), query_length, max(SOURCE_LENGTHS))
    torch.testing.assert_close(stepwise, plain)
    torch.testing.assert_close(stepwise_weights, plain_weights)
    for name, plain_grad, stepwise_grad in zip(names, plain_grads, stepwise_grads):
        torch.testing.assert_close(stepwise_grad, plain_grad, msg=f"gradient of {name}")
        assert plain_grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize("query_length", [1, 3], ids=["decoding-step", "whole-target"])
@pytest.mark.parametrize("formula", ["plain_scores", "stepwise_scores"])
def test_gradcheck_of_each_formula(query_length: int, formula: str):
    """Numerical against analytical gradients w.r.t. the projected query, the keys and the energy vector v.
    (The masked softmax after the scores computes in float32, too coarse for gradcheck, and is shared.)"""
    module = make_additive()
    query, states, _ = attention_inputs(query_length)
    projected = module.query_layer(query).detach().requires_grad_()
    keys = module.precompute(states).detach().requires_grad_()
    v = module.energy_layer.weight.detach().clone().requires_grad_()
    del module.energy_layer.weight  # v becomes a plain tensor that gradcheck varies too

    def scores(projected: torch.Tensor, keys: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        module.energy_layer.weight = v
        return getattr(module, formula)(projected, keys)

    assert torch.autograd.gradcheck(scores, (projected, keys, v))


def test_additive_attention_takes_the_plain_formula_exactly_for_cuda_queries(monkeypatch):
    """Through the module itself: a CUDA query gets the plain formula, a CPU one the stepwise formula,
    and the context and weights come out the same."""
    module = make_additive()
    taken = []
    for formula in ("plain_scores", "stepwise_scores"):
        original = getattr(module, formula)
        monkeypatch.setattr(module, formula, lambda p, k, f=formula, o=original: taken.append(f) or o(p, k))
    query, states, mask = attention_inputs(4)
    keys = module.precompute(states)
    context, weights = module(query, keys, states, mask)
    assert taken == ["stepwise_scores"]
    cuda_context, cuda_weights = module(query.as_subclass(OnCuda), keys, states, mask)
    assert taken == ["stepwise_scores", "plain_scores"]
    torch.testing.assert_close(cuda_context.as_subclass(torch.Tensor), context)
    torch.testing.assert_close(cuda_weights.as_subclass(torch.Tensor), weights)
    assert torch.all(weights[~mask[:, None, :].expand_as(weights)] == 0)


# --- the other device-dependent branches, with stand-ins for the CUDA calls ----------------------------------


@pytest.fixture
def no_native_bf16(monkeypatch):
    """A CPU without bf16 arithmetic, so that a refusal meant for CPUs would show."""
    monkeypatch.setattr(device_module, "native_bf16", lambda: False)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_cuda_asks_for_the_cuda_autocast_whatever_the_cpu(no_native_bf16, precision: str, dtype):
    check_precision(torch.device("cuda"), precision, "train.precision")  # a GPU does bf16: never refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU torch warns that it disables this autocast
        context = autocast(torch.device("cuda", 0), precision)
    assert context.device == "cuda" and context.fast_dtype == dtype


def test_init_distributed_on_cuda_pins_each_process_to_its_gpu_and_uses_nccl(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    pinned, joined = [], []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "_attempt_store", lambda world_size: ("store", 3))
    monkeypatch.setattr(
        torch.distributed,
        "init_process_group",
        lambda backend, store, rank, world_size: joined.append((backend, store, rank, world_size)),
    )
    group, device = distributed.init_distributed(torch.device("cuda"))
    assert pinned == [1]
    assert device == torch.device("cuda", 1)
    assert joined == [("nccl", "store", 1, 2)]
    assert group == ProcessGroup(world_size=2, rank=1, local_rank=1, attempt=3)

    joined.clear()
    group, device = distributed.init_distributed(torch.device("cpu"))  # the same launch on CPUs: gloo
    assert device == torch.device("cpu") and joined == [("gloo", "store", 1, 2)] and pinned == [1]


def test_init_distributed_on_cuda_refuses_a_process_without_its_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("pinned to a GPU that is not there"))
    with pytest.raises(UserError, match=r"^process 3 wants GPU 3 but only 2 are visible: lower"):
        distributed.init_distributed(torch.device("cuda"))


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_collectives_move_their_tensors_to_the_gpu_for_nccl_only(monkeypatch, backend: str):
    moved, reduced = [], []

    def to_gpu(self, *args, **kwargs):  # stands for Tensor.cuda: a copy, as the real one makes
        moved.append(self.clone())
        return moved[-1]

    def all_reduce(tensor, op):
        reduced.append((tensor, op))
        tensor.mul_(2)  # as if another process had the same values

    monkeypatch.setattr(torch.Tensor, "cuda", to_gpu)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: backend)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    group = ProcessGroup(world_size=2, rank=0)
    assert distributed.max_over_processes(group, 3) == 6
    assert distributed.sum_over_processes(group, [1.5, 2.0]) == [3.0, 4.0]
    assert [op for _, op in reduced] == [torch.distributed.ReduceOp.MAX, torch.distributed.ReduceOp.SUM]
    if backend == "nccl":  # nccl reduces GPU tensors only: what all_reduce got is what .cuda() gave
        assert len(moved) == 2 and all(tensor is given for (tensor, _), given in zip(reduced, moved))
    else:
        assert moved == []
    assert reduced[0][0].dtype == torch.int32 and reduced[1][0].dtype == torch.float64


@pytest.mark.parametrize(("device", "ids"), [(torch.device("cuda", 1), [1]), (torch.device("cpu"), None)])
def test_ddp_wraps_the_model_on_this_process_gpu(monkeypatch, device: torch.device, ids):
    wrapped = []
    monkeypatch.setattr(
        torch.nn.parallel, "DistributedDataParallel", lambda model, device_ids: wrapped.append(device_ids) or model
    )
    model = torch.nn.Linear(2, 2)
    assert builders.wrap_for_processes(model, ProcessGroup(world_size=2, rank=1), device, seed=5) is model
    assert wrapped == [ids]
    assert torch.initial_seed() == 6  # the seed plus the rank: different dropout per process


def test_checkpoints_carry_each_process_cuda_random_state_back_to_its_gpu(toy_config, monkeypatch):
    """train.py saves torch.cuda.get_rng_state per process on CUDA; builders.restore_training gives each
    process its own back on CUDA only. The CUDA calls are stand-ins; the checkpoint round trip is real."""
    toy_config["train"].update(max_steps=2, validate_every=2)
    cuda_state = torch.arange(16, dtype=torch.uint8)  # what a GPU's generator state looks like: bytes
    asked, restored = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    with prepared_run(config_from_dict(toy_config)) as trainer:
        trainer.run()
        assert asked == [] and "cuda" not in load_checkpoint(trainer.run_dir.last)["rng"]  # on the CPU: none
        trainer.device = torch.device("cuda", 0)  # the save point of a run on a GPU
        trainer._save_point(validate=False)
        assert asked == [torch.device("cuda", 0)]
        resumed = read_training(trainer.run_dir.last)
        assert len(resumed.rng["cuda"]) == 1 and torch.equal(resumed.rng["cuda"][0], cuda_state)

        def restore(rng: dict, group: ProcessGroup, device: torch.device) -> None:
            state = replace(resumed.state, world_size=group.world_size)
            checkpoint = replace(resumed, rng=rng, state=state)
            builders.restore_training(
                checkpoint, trainer.model, None, trainer.optimizer, trainer.schedule, group, device, trainer.run_dir
            )

        restore(resumed.rng, ProcessGroup(), torch.device("cuda", 0))
        assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state)
        assert restored[0][1] == torch.device("cuda", 0)
        restore(resumed.rng, ProcessGroup(), torch.device("cpu"))  # a GPU run resumed on a CPU: nothing to restore
        cpu_only = {key: value for key, value in resumed.rng.items() if key != "cuda"}
        restore(cpu_only, ProcessGroup(), torch.device("cuda", 0))  # a CPU run resumed on a GPU: none saved
        assert len(restored) == 1
        # Two processes: each takes its own rank's state.
        rank_states = [torch.zeros(16, dtype=torch.uint8), torch.full((16,), 7, dtype=torch.uint8)]
        two = {**resumed.rng, "torch": resumed.rng["torch"] * 2, "cuda": rank_states}
        restore(two, ProcessGroup(world_size=2, rank=1, local_rank=1), torch.device("cuda", 1))
        assert len(restored) == 2 and torch.equal(restored[1][0], rank_states[1])
        assert restored[1][1] == torch.device("cuda", 1)


def test_cpu_resume_with_dropout_between_gru_layers_equals_an_uninterrupted_run(tmp_path: Path):
    """The reference for the GPU test below: on a CPU the inter-layer dropout draws from torch's generator,
    which checkpoints restore, so a two-layer run resumes exactly."""
    corpus = write_toy_corpus(tmp_path)
    whole, halves = _whole_and_resumed_runs(tmp_path, corpus, "cpu")
    for name, tensor in whole.items():
        assert torch.equal(halves[name], tensor), name


def _whole_and_resumed_runs(tmp_path: Path, corpus: dict, device: str, layers: int = 2) -> tuple[dict, dict]:
    """Final weights of an 8-update run, and of the same run stopped after 4 updates and resumed."""

    def config(run: str, max_steps: int):
        data = regularised_toy_config(tmp_path, corpus, f"{run}-{device}-{layers}", max_steps)
        data["model"].update(encoder_layers=layers, decoder_layers=layers, dropout=0.3)
        data["train"]["device"] = device
        return config_from_dict(data)

    train(config("whole", 8))
    train(config("halves", 4))
    train(config("halves", 8), resume=True)
    weights = [
        torch.load(tmp_path / f"{run}-{device}-{layers}" / "last.pt", map_location="cpu", weights_only=True)["model"]
        for run in ("whole", "halves")
    ]
    return weights[0], weights[1]


# --- on a GPU ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_tf32():
    """cuDNN's RNNs use TF32 (10-bit mantissas) by default on recent GPUs: off, so float32 comparisons are fair.
    (cuBLAS matmuls already default to full float32.)"""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}  # float32 on two devices: rounding differs, a wrong formula is far off


@needs_cuda
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["lengths", "no-lengths"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
def test_gpu_gru_cuda_branch_equals_the_cpu_branch(no_tf32, layers: int, bidirectional: bool, lengths, with_h0):
    cpu = make_gru(layers, bidirectional, dropout=0.3 if layers > 1 else 0.0, dtype=torch.float32).eval()
    gpu = copy.deepcopy(cpu).cuda()
    x, h0 = gru_inputs(cpu, with_h0, torch.float32)
    cpu_leaves, names = leaves_of(cpu, x, h0)
    outputs, final = cpu(x, h0, lengths)
    expected_grads = differentiate(outputs, final, cpu_leaves)
    x_gpu = x.detach().cuda().requires_grad_()
    h0_gpu = h0.detach().cuda().requires_grad_() if h0 is not None else None
    gpu_leaves, _ = leaves_of(gpu, x_gpu, h0_gpu)
    gpu_outputs, gpu_final = gpu(x_gpu, h0_gpu, lengths.cuda() if lengths is not None else None)
    assert gpu_outputs.is_cuda and gpu_final.is_cuda
    torch.testing.assert_close(gpu_outputs.cpu(), outputs, **FLOAT32)
    torch.testing.assert_close(gpu_final.cpu(), final, **FLOAT32)
    if lengths is not None:
        for row, length in enumerate(lengths.tolist()):
            assert torch.all(gpu_outputs[row, length:] == 0)
    for name, expected, grad in zip(names, expected_grads, differentiate(gpu_outputs, gpu_final, gpu_leaves)):
        torch.testing.assert_close(grad, expected, **FLOAT32, msg=f"gradient of {name}")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gru_under_autocast_keeps_the_state_in_float32_like_the_cpu_branch(dtype: torch.dtype):
    gru = make_gru(1, True, dtype=torch.float32).cuda()
    x = torch.randn(len(LENGTHS), STEPS, INPUT, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        outputs, final = gru(x, None, LENGTHS.cuda())
    assert outputs.dtype == torch.float32 and final.dtype == torch.float32


@needs_cuda
@pytest.mark.parametrize("query_length", [1, 4], ids=["decoding-step", "whole-target"])
def test_gpu_additive_attention_on_cuda_equals_the_cpu(no_tf32, query_length: int):
    cpu = make_additive(torch.float32)
    gpu = copy.deepcopy(cpu).cuda()
    query, states, mask = attention_inputs(query_length, torch.float32)
    results = []
    for module, device in ((cpu, "cpu"), (gpu, "cuda")):
        q, s = query.detach().to(device).requires_grad_(), states.detach().to(device).requires_grad_()
        context, weights = module(q, module.precompute(s), s, mask.to(device))
        leaves, names = leaves_of(module, q, s)
        results.append((context.cpu(), weights.cpu(), differentiate(context, weights, leaves)))
    (context, weights, grads), (gpu_context, gpu_weights, gpu_grads) = results
    torch.testing.assert_close(gpu_context, context, **FLOAT32)
    torch.testing.assert_close(gpu_weights, weights, **FLOAT32)
    assert torch.all(gpu_weights[~mask[:, None, :].expand_as(gpu_weights)] == 0)
    for name, grad, gpu_grad in zip(names, grads, gpu_grads):
        torch.testing.assert_close(gpu_grad, grad, **FLOAT32, msg=f"gradient of {name}")


def _cuda_toy_config(tmp_path: Path, **train) -> dict:
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"].update(device="cuda", **train)
    return config


@needs_cuda
def test_gpu_tiny_training_on_cuda_learns_and_translates_like_on_the_cpu(tmp_path: Path, no_tf32):
    config = _cuda_toy_config(tmp_path, max_steps=80, validate_every=40)
    summary = train(config_from_dict(config))
    run_dir = Path(config["train"]["run_dir"])
    assert summary["steps"] == 80 and summary["skipped_updates"] == 0
    assert summary["best_dev_bleu"] >= 90
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert len(last["rng"]["cuda"]) == 1 and last["rng"]["cuda"][0].dtype == torch.uint8
    sources = Path(f"{config['data']['dev']}.es").read_text().splitlines()
    texts = {}
    for device in ("cuda", "cpu"):  # the checkpoint of a GPU run decodes on either
        trained = load_trained(run_dir / "best.pt", device)
        assert next(trained.model.parameters()).device.type == device
        found = decode_lines(trained.model, trained.tokenizer, sources, torch.device(device), DecodeConfig(beam=5))
        texts[device] = [trained.tokenizer.decode_tgt(best[0].ids) for best in found]
    assert texts["cuda"] == texts["cpu"]


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_mixed_precision_training_on_cuda(tmp_path: Path, precision: str):
    config = _cuda_toy_config(tmp_path, max_steps=30, validate_every=30, precision=precision)
    summary = train(config_from_dict(config))
    losses = [record["train_loss"] for record in read_records(Path(config["train"]["run_dir"]) / "progress.jsonl")]
    assert summary["steps"] == 30 and losses[-1] < losses[0]
    if precision == "bf16":  # fp16's GradScaler may skip a few first updates while it finds its scale
        assert summary["skipped_updates"] == 0


@needs_cuda
def test_gpu_gru_weights_stay_one_cudnn_buffer_through_the_moving_average_and_a_resume(tmp_path: Path):
    """nn.GRU warns 'not part of single contiguous chunk of memory' (and copies its weights at every call)
    when its parameters stop sharing cuDNN's flat buffer, as a careless copy or load can make them."""
    config = _cuda_toy_config(tmp_path, max_steps=4, validate_every=2, ema_decay=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config_from_dict(config))
        config["train"]["max_steps"] = 6
        train(config_from_dict(config), resume=True)
    chunked = [str(w.message) for w in caught if "contiguous chunk of memory" in str(w.message)]
    assert chunked == []


@needs_cuda
@pytest.mark.parametrize(
    "layers",
    [
        1,
        2,
    ],
)
def test_gpu_resume_on_cuda_equals_an_uninterrupted_run(tmp_path: Path, layers: int):
    corpus = write_toy_corpus(tmp_path)
    whole, halves = _whole_and_resumed_runs(tmp_path, corpus, "cuda", layers)
    for name, tensor in whole.items():  # a tolerance: CUDA kernels need not sum in a fixed order
        torch.testing.assert_close(halves[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@needs_cuda
@pytest.mark.parametrize(
    "options",
    [DecodeConfig(beam=1), DecodeConfig(beam=5), DecodeConfig(sample=True, n_best=3, seed=4)],
    ids=["greedy", "beam", "sampling"],
)
def test_gpu_decoding_on_cuda_equals_decoding_on_the_cpu(toy_model, corpus, no_tf32, options: DecodeConfig):
    sources, _ = corpus
    results = {}
    for device in ("cpu", "cuda"):
        trained = load_trained(toy_model["checkpoint"], device)
        results[device] = decode_lines(trained.model, trained.tokenizer, sources, torch.device(device), options)
    for line, (on_cpu, on_gpu) in enumerate(zip(results["cpu"], results["cuda"])):
        assert [h.ids for h in on_gpu] == [h.ids for h in on_cpu], f"line {line}"
        for cpu_hypothesis, gpu_hypothesis in zip(on_cpu, on_gpu):
            assert gpu_hypothesis.score == pytest.approx(cpu_hypothesis.score, rel=1e-4, abs=1e-4)
            torch.testing.assert_close(gpu_hypothesis.attention.cpu(), cpu_hypothesis.attention, **FLOAT32)


@needs_cuda
def test_gpu_bf16_decoding_on_cuda_gives_the_fp32_translations(toy_model, corpus):
    sources, _ = corpus
    trained = load_trained(toy_model["checkpoint"], "cuda")
    texts = {}
    for precision in ("fp32", "bf16"):
        options = DecodeConfig(beam=5, precision=precision)
        found = decode_lines(trained.model, trained.tokenizer, sources, torch.device("cuda"), options)
        assert all(torch.isfinite(torch.tensor(best[0].score)) for best in found)
        texts[precision] = [trained.tokenizer.decode_tgt(best[0].ids) for best in found]
    assert texts["bf16"] == texts["fp32"]


@needs_cuda
def test_gpu_batches_move_to_cuda_unchanged():
    pairs = [(torch.tensor([5, 6, 7, 2]), torch.tensor([8, 2])), (torch.tensor([9, 2]), torch.tensor([10, 11, 12, 2]))]
    batch = collate(pairs)
    moved = batch.to(torch.device("cuda"))  # non_blocking copies from pageable memory
    for name in ("src", "src_lengths", "tgt_in", "tgt_out"):
        tensor = getattr(moved, name)
        assert tensor.is_cuda and torch.equal(tensor.cpu(), getattr(batch, name)), name


@needs_two_gpus
@pytest.mark.slow
def test_gpu_two_nccl_processes_match_one_process_with_the_same_global_batch(tmp_path: Path):
    from test_distributed import run_torchrun

    config = two_process_config(tmp_path, "ddp")
    config["train"]["device"] = "cuda"
    run_torchrun(config, tmp_path / "ddp.yaml")
    single = two_process_config(tmp_path, "single")
    single["train"].update(device="cuda", accumulate_batches=2)
    train(config_from_dict(single))
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6
    ddp = torch.load(tmp_path / "ddp" / "last.pt", map_location="cpu", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", map_location="cpu", weights_only=True)
    assert len(ddp["rng"]["cuda"]) == 2  # one CUDA generator state per process
    for name, tensor in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
