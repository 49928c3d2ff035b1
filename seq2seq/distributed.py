"""Several processes with torchrun: PyTorch's DistributedDataParallel, gloo on CPU, nccl on CUDA.

`torchrun --nproc_per_node N -m seq2seq train CONFIG` starts N copies of the trainer; torchrun sets
WORLD_SIZE, RANK and LOCAL_RANK, which `init_distributed` reads. With one process (plain
`seq2seq train`) every helper here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seq2seq.errors import UserError


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the training processes."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    attempt: int = 0  # 0, then 1, 2, ... each time torchrun restarts the processes (--max-restarts)

    @property
    def is_main(self) -> bool:
        """Only the main process logs, validates and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group torchrun describes (if any); returns it and this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ProcessGroup(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are visible: "
                "lower --nproc_per_node"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store, attempt = _attempt_store(world_size)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        return ProcessGroup(world_size, rank, local_rank, attempt), device
    return ProcessGroup(world_size, rank, local_rank), device


def _attempt_store(world_size: int) -> tuple[dist.Store, int]:
    """The launcher's key-value store, under a prefix of its own for this attempt, and the attempt's number.

    After `torchrun --max-restarts` restarts the workers, they meet in the store the earlier attempt
    used, where the dead workers' addresses are still written: without a fresh prefix, gloo connects
    to an address that refuses ("Gloo connectFullMesh failed ... Connection refused") and the
    restart fails as well. The attempt is counted in the store itself, as every process of every
    attempt joins once: torchrun's own TORCHELASTIC_RESTART_COUNT is not raised on the nodes whose
    processes did not fail, so across nodes it does not agree.
    """
    store, _, _ = next(dist.rendezvous("env://"))
    joined = store.add("seq2seq/processes-joined", 1)  # 1, 2, ... over the launch's whole life
    attempt = (joined - 1) // world_size
    return dist.PrefixStore(f"seq2seq/attempt-{attempt}", store), attempt


def barrier(group: ProcessGroup) -> None:
    """Wait for every process (no-op with one)."""
    if group.active:
        dist.barrier()


def max_over_processes(group: ProcessGroup, value: int) -> int:
    """The largest of every process's `value`, on every process (one all-reduce)."""
    if not group.active:
        return value
    tensor = torch.tensor([value], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def any_process(group: ProcessGroup, flag: bool) -> bool:
    """True on every process if `flag` is true on any of them (a stop decision all agree on)."""
    return bool(max_over_processes(group, int(flag)))


def sum_over_processes(group: ProcessGroup, values: list[float]) -> list[float]:
    """Element-wise sums of `values` over all processes (unchanged with one)."""
    if not group.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_from_main(group: ProcessGroup, obj: object) -> object:
    """The main process's `obj`, on every process."""
    if not group.active:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(group: ProcessGroup, obj: object) -> list:
    """`obj` from every process, in rank order (a one-item list with one process)."""
    if not group.active:
        return [obj]
    gathered: list = [None] * group.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def leave_launched_process(status: int) -> int:
    """Under torchrun (WORLD_SIZE > 1): flush and end the process now, skipping Python's finalization.

    Why: gloo's worker threads free finished collectives in the background. When the last reference
    to a tensor that Python created (our all-reduces of the stop decision and the loss) sits in such
    a collective, the worker thread needs the GIL to free it. If that happens while the main thread
    is already finalizing the interpreter, CPython ends the worker thread with pthread_exit, whose
    unwinding through a noexcept C++ destructor calls std::terminate: "terminate called without an
    active exception", exit -6, after the run had finished and saved everything (caught under load:
    2 of 40 launches; gdb: ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> THPVariable_dealloc ->
    take_gil -> PyThread_exit_thread -> std::terminate). With one process (plain `seq2seq train`),
    or in-process callers, this returns `status` unchanged.
    """
    world_size = os.environ.get("WORLD_SIZE", "1")
    if not world_size.isdigit() or int(world_size) <= 1:
        return status
    logging.shutdown()  # train.log and the console handlers, flushed and closed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def shutdown(group: ProcessGroup) -> None:
    """Leave the process group."""
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
