"""The server's dynamic batcher (seq2seq/batching.py) with a plain Python work function, no model: gathering,
the token budget, grouping by kind and options, results to the right caller, dropped and failing jobs,
stopping, and the worker thread that leaves the event loop free.

Each test runs its own event loop (asyncio.run); jobs are lined up deterministically behind a "blocker"
job that holds the worker thread until the test releases it, rather than by timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from seq2seq.batching import DynamicBatcher

BLOCK = "block"  # an item that holds the worker until Recorder.release is set
BAD = "bad"  # an item that makes the work function raise


class Recorder:
    """A work function that records its calls (kind, options, items, thread) and answers `kind/options/item`."""

    def __init__(self, pause: float = 0.0):
        self.calls: list[tuple[str, Any, list[Any]]] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        self.pause = pause

    def __call__(self, kind: str, options: Any, items: list[Any]) -> list[Any]:
        self.calls.append((kind, options, list(items)))
        self.threads.append(threading.get_ident())
        if BLOCK in items and not self.release.wait(20):
            raise TimeoutError("the test never released the blocker")
        if self.pause:
            time.sleep(self.pause)
        if BAD in items:
            raise ValueError("a bad item")
        return [f"{kind}/{options}/{item}" for item in items]

    @property
    def items(self) -> list[list[Any]]:
        """The items of each call, in order."""
        return [items for _, _, items in self.calls]


def run(test: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
    """Run an async test body in a fresh event loop, failing (not hanging) after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(test(), timeout))


async def until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll `condition` on the event loop until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.002)


async def behind_blocker(
    batcher: DynamicBatcher, work: Recorder, jobs: list[tuple[str, Any, list[Any], int]]
) -> tuple[asyncio.Task, list[asyncio.Task]]:
    """Occupy the worker with a blocker job, then queue `jobs` (kind, options, items, tokens) behind it.

    Returns the blocker's task and the jobs' tasks; the jobs are all waiting when this returns (the worker is
    still held: set work.release to let it go).
    """
    blocker = asyncio.ensure_future(batcher.submit("blocker", None, [BLOCK], 1))
    await until(lambda: batcher.busy, "the blocker is in the worker")
    tasks = []
    for kind, options, items, tokens in jobs:
        tasks.append(asyncio.ensure_future(batcher.submit(kind, options, items, tokens)))
        await until(lambda: batcher.queued == len(tasks), "the job is queued")
    return blocker, tasks


# --- gathering ---------------------------------------------------------------------------------------


def test_jobs_arriving_within_the_wait_are_gathered_into_one_call():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.3, max_tokens=1000)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("translate", "A", ["a1", "a2"], 2))
        await asyncio.sleep(0.01)  # later than the first job, well within its wait
        second = asyncio.ensure_future(batcher.submit("translate", "A", ["b1"], 1))
        results = await asyncio.gather(first, second)
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(body)
    assert work.items == [["a1", "a2", "b1"]]
    assert results == [["translate/A/a1", "translate/A/a2"], ["translate/A/b1"]]
    assert (stats.requests, stats.items, stats.batches, stats.dropped, stats.failed) == (2, 3, 1, 0, 0)


def test_a_job_arriving_after_the_batch_went_makes_its_own_call():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        first = await batcher.submit("translate", "A", ["a"], 1)
        second = await batcher.submit("translate", "A", ["b"], 1)
        await batcher.stop()
        return first, second, batcher.stats

    first, second, stats = run(body)
    assert (first, second) == (["translate/A/a"], ["translate/A/b"])
    assert work.items == [["a"], ["b"]] and stats.batches == 2


def test_a_full_token_budget_stops_the_wait_early():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=60, max_tokens=10)  # a wait no test could sit through
        batcher.start()
        results = await asyncio.wait_for(
            asyncio.gather(
                batcher.submit("translate", "A", ["a"], 5),
                batcher.submit("translate", "A", ["b"], 5),
            ),
            10,
        )
        await batcher.stop()
        return results

    assert run(body) == [["translate/A/a"], ["translate/A/b"]]
    assert work.items == [["a", "b"]]


def test_right_after_a_batch_the_wait_stretches_until_its_clients_are_back():
    """Closed-loop clients: 3 answered at once come back some milliseconds later, one by one; the next batch
    waits (past max_wait_s, within wait_s) until all 3 are back and holds them together."""
    work = Recorder(pause=0.2)  # each call takes 200 ms: wait_s is 15% of it, 30 ms

    async def client(batcher: DynamicBatcher, name: str, delay: float) -> list[Any]:
        first = await batcher.submit("translate", "A", [f"{name}1"], 1)
        await asyncio.sleep(delay)  # the round trip back to the server
        return first + await batcher.submit("translate", "A", [f"{name}2"], 1)

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        clients = [client(batcher, name, delay) for name, delay in (("a", 0.0), ("b", 0.008), ("c", 0.016))]
        first = asyncio.ensure_future(asyncio.gather(*clients))
        results = await first
        waited = batcher.wait_s()
        await batcher.stop()
        return results, waited

    results, waited = run(body)
    assert waited == pytest.approx(0.03, abs=0.01)
    assert work.items[-1] == ["a2", "b2", "c2"]  # one batch, not three
    assert results == [
        ["translate/A/a1", "translate/A/a2"],
        ["translate/A/b1", "translate/A/b2"],
        ["translate/A/c1", "translate/A/c2"],
    ]


def test_a_lone_client_is_not_kept_waiting_for_clients_that_do_not_exist():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        await batcher.submit("translate", "A", ["a1"], 1)
        batcher._last_batch_s = 10.0  # as if the last batch took 10 s: wait_s is at its most
        started = time.monotonic()
        await batcher.submit("translate", "A", ["a2"], 1)  # the one job expected is there at once
        took = time.monotonic() - started
        await batcher.stop()
        return took

    assert run(body) < 0.05  # not BUSY_WAIT_MAX_S (0.1 s)


def test_a_request_long_after_a_burst_does_not_wait_for_the_bursts_clients():
    """After a batch of 3, a request that comes when the server has long been idle goes at max_wait_s, not after
    the stretched wait for 3 returning clients."""
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        await asyncio.gather(*(batcher.submit("translate", "A", [name], 1) for name in ("a", "b", "c")))
        batcher._last_batch_s = 10.0  # as if that batch took 10 s: wait_s is at its most (0.1 s)
        await asyncio.sleep(0.15)  # idle for longer than wait_s
        started = time.monotonic()
        await batcher.submit("translate", "A", ["late"], 1)
        took = time.monotonic() - started
        await batcher.stop()
        return took

    assert run(body) < 0.05


# --- the token budget -----------------------------------------------------------------------------------


def test_the_token_budget_splits_batches_in_arrival_order():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=10)
        batcher.start()
        jobs = [("translate", "A", [name], 4) for name in ("a", "b", "c", "d", "e")]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()
        results = await asyncio.gather(blocker, *tasks)
        await batcher.stop()
        return results

    results = run(body)
    assert work.items == [[BLOCK], ["a", "b"], ["c", "d"], ["e"]]  # 4 + 4 fit in 10, a third 4 does not
    assert results[1:] == [[f"translate/A/{name}"] for name in "abcde"]


def test_a_first_job_larger_than_the_budget_runs_alone():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=10)
        batcher.start()
        jobs = [("translate", "A", ["big1", "big2"], 25), ("translate", "A", ["small"], 3)]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()
        results = await asyncio.gather(*tasks)
        await blocker
        await batcher.stop()
        return results

    results = run(body)
    assert work.items == [[BLOCK], ["big1", "big2"], ["small"]]
    assert results == [["translate/A/big1", "translate/A/big2"], ["translate/A/small"]]


# --- grouping and results -------------------------------------------------------------------------------


def test_jobs_with_other_options_or_kind_go_to_other_calls():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [
            ("translate", "A", ["a1"], 1),
            ("score", "A", ["s1"], 1),
            ("translate", "B", ["b1"], 1),
            ("translate", "A", ["a2"], 1),
            ("score", "A", ["s2"], 1),
        ]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()
        results = await asyncio.gather(*tasks)
        await blocker
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(body)
    # one call per (kind, options), in the order of each group's first job, the jobs in arrival order
    assert work.calls[1:] == [
        ("translate", "A", ["a1", "a2"]),
        ("score", "A", ["s1", "s2"]),
        ("translate", "B", ["b1"]),
    ]
    assert results == [["translate/A/a1"], ["score/A/s1"], ["translate/B/b1"], ["translate/A/a2"], ["score/A/s2"]]
    assert (stats.requests, stats.batches, stats.items) == (6, 4, 6)


def test_options_are_compared_by_value():
    """Equal dataclass options built separately share a call (the key is their repr)."""
    from seq2seq.config import DecodeConfig

    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [
            ("translate", DecodeConfig(beam=2), ["a"], 1),
            ("translate", DecodeConfig(beam=2), ["b"], 1),
            ("translate", DecodeConfig(beam=3), ["c"], 1),
        ]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.stop()

    run(body)
    assert [(options.beam, items) for _, options, items in work.calls[1:]] == [(2, ["a", "b"]), (3, ["c"])]


def test_each_caller_gets_its_own_results_in_order():
    def work(kind: str, options: Any, items: list[Any]) -> list[Any]:
        return [item * 10 for item in items]

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.05, max_tokens=1000)
        batcher.start()
        sizes = [3, 1, 4, 1, 5, 0, 2]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        requests = [list(range(start, start + size)) for start, size in zip(starts, sizes)]
        results = await asyncio.gather(*(batcher.submit("translate", None, items, len(items)) for items in requests))
        await batcher.stop()
        return requests, results, batcher.stats

    requests, results, stats = run(body)
    assert results == [[item * 10 for item in items] for items in requests]
    assert stats.batches == 1 and stats.items == sum(len(items) for items in requests)


# --- dropped and failing jobs ---------------------------------------------------------------------------


def test_a_cancelled_job_that_has_not_started_is_dropped_and_never_worked_on():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [("translate", "A", ["kept1"], 1), ("translate", "A", ["gone"], 1), ("translate", "A", ["kept2"], 1)]
        blocker, (kept1, gone, kept2) = await behind_blocker(batcher, work, jobs)
        gone.cancel()  # its client went away while it waited
        await until(gone.done, "the job is cancelled")
        work.release.set()
        results = await asyncio.gather(kept1, kept2)
        await blocker
        await batcher.stop()
        return results, gone, batcher.stats

    results, gone, stats = run(body)
    assert gone.cancelled()
    assert results == [["translate/A/kept1"], ["translate/A/kept2"]]
    assert work.items == [[BLOCK], ["kept1", "kept2"]]  # "gone" never reached the work function
    assert (stats.requests, stats.dropped, stats.failed, stats.items) == (4, 1, 0, 3)


def test_a_batch_of_only_cancelled_jobs_calls_nothing():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [("translate", "A", ["gone1"], 1), ("score", "A", ["gone2"], 1)]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        for task in tasks:
            task.cancel()
        work.release.set()
        await blocker
        await until(lambda: batcher.stats.dropped == 2, "both jobs are dropped")
        after = await batcher.submit("translate", "A", ["later"], 1)  # the batcher goes on
        await batcher.stop()
        return after, batcher.stats

    after, stats = run(body)
    assert after == ["translate/A/later"]
    assert work.items == [[BLOCK], ["later"]]
    assert (stats.batches, stats.dropped) == (2, 2)


def test_a_failing_batch_is_retried_job_by_job_so_only_the_bad_job_fails(caplog):
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [("translate", "A", ["good1"], 1), ("translate", "A", ["x", BAD], 2), ("translate", "A", ["good2"], 1)]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await blocker
        after = await batcher.submit("translate", "A", ["after"], 1)  # the batcher still works
        await batcher.stop()
        return results, after, batcher.stats

    (good1, bad, good2), after, stats = run(body)
    assert good1 == ["translate/A/good1"] and good2 == ["translate/A/good2"]
    assert isinstance(bad, RuntimeError) and "the translate request failed" in str(bad)
    assert after == ["translate/A/after"]
    # the whole group, then each job alone
    assert work.items == [[BLOCK], ["good1", "x", BAD, "good2"], ["good1"], ["x", BAD], ["good2"], ["after"]]
    assert stats.failed == 1 and stats.dropped == 0
    assert "a translate request failed" in caplog.text


def test_a_failing_job_alone_fails_without_a_retry():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        with pytest.raises(RuntimeError, match="the score request failed inside the model"):
            await batcher.submit("score", None, [BAD], 1)
        await batcher.stop()
        return batcher.stats

    stats = run(body)
    assert work.items == [[BAD]] and stats.failed == 1 and stats.batches == 0


# --- stopping -----------------------------------------------------------------------------------------


def test_stop_cancels_the_waiting_jobs():
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        jobs = [("translate", "A", ["w1"], 1), ("score", "B", ["w2"], 1)]
        blocker, tasks = await behind_blocker(batcher, work, jobs)
        work.release.set()  # the batch in the worker may finish; stop() waits for the thread
        await batcher.stop()
        await asyncio.wait(tasks, timeout=5)
        blocker.cancel()
        return tasks, batcher

    tasks, batcher = run(body)
    assert all(task.cancelled() for task in tasks)
    assert batcher.queued == 0
    assert work.items == [[BLOCK]]  # the waiting jobs never started


def test_stop_answers_the_callers_of_the_batch_in_the_worker():
    """stop() lets the batch in the worker thread finish: its callers must then get an answer (their results, or a
    cancellation), not wait forever."""
    work = Recorder()

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("translate", "A", [BLOCK, "r"], 2))
        await until(lambda: batcher.busy, "the batch is in the worker")
        work.release.set()
        await batcher.stop()
        done, _ = await asyncio.wait({running}, timeout=1)
        running.cancel()
        return bool(done)

    assert run(body), "the caller of the batch running at stop() is never answered"


def test_stop_without_start_and_an_idle_stop():
    async def body():
        never_started = DynamicBatcher(Recorder())
        await never_started.stop()
        idle = DynamicBatcher(Recorder())
        idle.start()
        await idle.stop()
        return idle

    assert run(body).queued == 0


# --- the worker thread ------------------------------------------------------------------------------------


def test_the_work_runs_in_a_worker_thread_and_the_loop_stays_responsive():
    work = Recorder(pause=0.5)  # a blocking call, as a decoding batch is

    async def body():
        loop_thread = threading.get_ident()
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=1000)
        batcher.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        job = asyncio.ensure_future(batcher.submit("translate", "A", ["a"], 1))
        await until(lambda: batcher.busy, "the batch is in the worker")
        busy_ticks = ticks
        result = await job
        ticked = ticks - busy_ticks
        ticking.cancel()
        await batcher.stop()
        return loop_thread, result, ticked, batcher.busy

    loop_thread, result, ticked, busy_after = run(body)
    assert result == ["translate/A/a"]
    assert work.threads and all(thread != loop_thread for thread in work.threads)
    assert ticked >= 5  # the ticker kept going while the work slept (a blocked loop would give 0 or 1)
    assert not busy_after


def test_one_batch_at_a_time():
    """Batches never overlap in the worker: the next one gathers while the current one runs."""
    running = 0
    most = 0
    lock = threading.Lock()

    def work(kind: str, options: Any, items: list[Any]) -> list[Any]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return items

    async def body():
        batcher = DynamicBatcher(work, max_wait_s=0.001, max_tokens=2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit("translate", i % 3, [i], 1) for i in range(12)))
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(body)
    assert results == [[i] for i in range(12)]
    assert most == 1 and stats.batches >= 6


def test_on_idle_runs_once_in_the_worker_after_idle_s_without_a_job_and_not_under_load():
    work = Recorder()
    idle_threads: list[int] = []

    async def body():
        batcher = DynamicBatcher(
            work, max_wait_s=0.001, on_idle=lambda: idle_threads.append(threading.get_ident()), idle_s=0.1
        )
        batcher.start()
        for name in ("a", "b", "c"):  # back to back: never idle for 0.1 s
            await batcher.submit("translate", "A", [name], 1)
        busy = len(idle_threads)
        await asyncio.sleep(0.35)  # idle: on_idle once, not once per 0.1 s
        idle_once = len(idle_threads)
        await batcher.submit("translate", "A", ["d"], 1)
        await asyncio.sleep(0.25)  # idle again after a job: once more
        await batcher.stop()
        return busy, idle_once, len(idle_threads)

    busy, idle_once, after = run(body)
    assert (busy, idle_once, after) == (0, 1, 2)
    assert set(idle_threads) == set(work.threads)  # the worker thread, where the work runs
