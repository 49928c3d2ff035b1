"""Dynamic batching for the server: requests that arrive together are decoded together, off the event loop.

Each request becomes a `Job` (its sentences, the decoding options, a future). The batcher waits
for a first job, then keeps gathering for up to `max_wait_s` (longer right after a batch, until the
clients just answered are back) or until the jobs hold `max_tokens` source pieces, and hands the
jobs that share their options to one call of the work function, which runs in a single worker
thread: the event loop stays free to answer other requests (health checks included) while a batch
decodes, and only one batch uses the CPU at a time. Under load the next batch gathers while the
current one decodes, so batches grow with the load.

A job whose client went away before its batch started is dropped; a batch that fails is retried
job by job, so that one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BUSY_WAIT_SHARE = 0.15  # under load, gather for this share of the last batch's time (see DynamicBatcher.wait_s)
BUSY_WAIT_MAX_S = 0.1

# The work function: (kind, options, items of all jobs in the group) -> one result per item, in order.
Work = Callable[[str, Any, list[Any]], list[Any]]


@dataclass
class Job:
    """One request's items (sentences, or source-target pairs) to be worked on with `options`."""

    kind: str  # "translate" or "score": jobs of one kind and equal options share a batch
    options: Any
    items: list[Any]
    tokens: int  # source pieces, for the batch budget
    future: asyncio.Future[list[Any]]

    @property
    def key(self) -> tuple[str, str]:
        """Jobs with equal keys can be worked on in one call (dataclass options have a full repr)."""
        return self.kind, repr(self.options)


@dataclass
class BatcherStats:
    """Counts since start, for /v1/health and the load benchmark."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    dropped: int = 0  # jobs whose client went away before their batch started
    failed: int = 0  # jobs that ended in an error
    started: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Gathers concurrent jobs into batches and runs them, one batch at a time, in a worker thread."""

    def __init__(
        self,
        work: Work,
        max_wait_s: float = 0.005,
        max_tokens: int = 4000,
        on_idle: Callable[[], Any] | None = None,
        idle_s: float = 1.0,
    ):
        self.work = work
        self.on_idle = on_idle  # called in the worker thread once the queue has been empty for idle_s
        self.idle_s = idle_s
        self.max_wait_s = max_wait_s
        self.max_tokens = max_tokens
        self.stats = BatcherStats()
        self.busy = False  # a batch is in the worker thread
        self._stopping = False
        self._last_batch_s = 0.0
        self._last_batch_jobs = 0
        self._last_batch_ended = float("-inf")
        self._waiting: deque[Job] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seq2seq-decode")
        self._task: asyncio.Task[None] | None = None

    def wait_s(self) -> float:
        """The longest gathering wait right after a batch: max_wait_s, or a share of the last batch's time if that
        is longer (15% of a batch that took 400 ms is 60 ms, at most BUSY_WAIT_MAX_S)."""
        return max(self.max_wait_s, min(BUSY_WAIT_SHARE * self._last_batch_s, BUSY_WAIT_MAX_S))

    @property
    def queued(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._waiting)

    def start(self) -> None:
        """Start gathering (call from the event loop that will submit jobs)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="seq2seq-batcher")

    async def stop(self) -> None:
        """Stop gathering: the group in the worker thread finishes and its callers get their results; jobs
        still waiting (or in a later group of the same batch) are cancelled."""
        self._stopping = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        for job in self._waiting:
            job.future.cancel()
        self._waiting.clear()
        self._executor.shutdown(wait=False)  # idle by now

    async def submit(self, kind: str, options: Any, items: Sequence[Any], tokens: int) -> list[Any]:
        """Queue `items` for the next batch and wait for their results (in order).

        If the caller is cancelled (its client went away) before the batch starts, the job is dropped.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append(Job(kind, options, list(items), tokens, future))
        self.stats.requests += 1
        self._arrived.set()
        return await future

    async def _run(self) -> None:
        while not self._stopping:
            jobs = await self._next_jobs()
            self._last_batch_jobs = len(jobs)
            live = [job for job in jobs if not job.future.done()]
            self.stats.dropped += len(jobs) - len(live)
            for group in _groups(live):
                if self._stopping:
                    for job in group:
                        job.future.cancel()
                else:
                    await self._run_group(group)

    async def _next_jobs(self) -> list[Job]:
        """Wait for a job, then gather more until the budget is full or the wait is over; take what fits.

        The wait is max_wait_s; right after a batch it may stretch to wait_s() until the clients just
        answered are back (under load they send again at once), so that they join the jobs that queued
        meanwhile instead of making a small batch of their own. Returns no job once stopping."""
        expected = len(self._waiting) + self._last_batch_jobs
        await self._first_job()
        if not self._waiting:  # stopping
            return []
        loop = asyncio.get_running_loop()
        started = loop.time()
        if started - self._last_batch_ended > self.wait_s():
            expected = 0  # nobody came back at once: the server was idle, there is no load to wait for
        short, long = started + self.max_wait_s, started + self.wait_s()
        while sum(job.tokens for job in self._waiting) < self.max_tokens and not self._stopping:
            deadline = long if len(self._waiting) < expected else short
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
                if deadline == short or len(self._waiting) >= expected:
                    break
        log.debug(
            "gathered %d jobs (%d expected) in %.0f ms", len(self._waiting), expected, 1000 * (loop.time() - started)
        )
        taken = [self._waiting.popleft()]  # the first job always goes, however large
        tokens = taken[0].tokens
        while self._waiting and tokens + self._waiting[0].tokens <= self.max_tokens:
            tokens += self._waiting[0].tokens
            taken.append(self._waiting.popleft())
        return taken

    async def _first_job(self) -> None:
        """Wait until a job waits (or stopping); after idle_s without one, call on_idle once, in the worker thread."""
        on_idle = self.on_idle
        while not self._waiting and not self._stopping:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), None if on_idle is None else self.idle_s)
            except asyncio.TimeoutError:
                if on_idle is not None:
                    await asyncio.get_running_loop().run_in_executor(self._executor, on_idle)
                on_idle = None

    async def _run_group(self, group: list[Job]) -> None:
        """Work on the group in the worker thread; on an error, on each job alone so only the bad one fails."""
        try:
            results = await self._call(group)
        except Exception:
            if len(group) > 1:
                log.warning("a batch of %d %s requests failed: trying each alone", len(group), group[0].kind)
            if len(group) == 1:
                log.exception("a %s request failed", group[0].kind)
                _fail(group[0])
                self.stats.failed += 1
                return
            for job in group:
                if not job.future.done():
                    await self._run_group([job])
            return
        start = 0
        for job in group:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)

    async def _call(self, group: list[Job]) -> list[Any]:
        items = [item for job in group for item in job.items]
        log.debug(
            "a batch of %d %s items from %d jobs (%d waiting)", len(items), group[0].kind, len(group), self.queued
        )
        self.busy = True
        started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.work, group[0].kind, group[0].options, items
            )
        finally:
            self.busy = False
            self._last_batch_s = time.monotonic() - started
            self._last_batch_ended = asyncio.get_running_loop().time()
        self.stats.batches += 1
        self.stats.items += len(items)
        return results


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by kind and options, groups in order of their first job."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.key, []).append(job)
    return list(groups.values())


def _fail(job: Job) -> None:
    if not job.future.done():
        job.future.set_exception(RuntimeError(f"the {job.kind} request failed inside the model; see the server log"))
