"""`seq2seq serve` under load, next to `seq2seq translate`'s batch mode on the same sentences.

    python scripts/bench/serve_load.py [--checkpoint runs/quickstart/best.pt]

1. Batch mode: the test split's sources through `translate_batch` (what `seq2seq translate -i FILE` runs), timed
   without the model's loading.
2. The server: `seq2seq serve CHECKPOINT --port 0` (the real command, in its own process), then for 1, 8 and
   32 concurrent clients, each request one test sentence (every sentence once per level), on 127.0.0.1 only:
   sentences/s and p50/p95/p99 latency, failed requests.
3. Memory: 10,000 more requests from 32 clients in 20 rounds; the server's resident memory (VmRSS) read
   between rounds (nothing in flight: what the server keeps) and halfway through each.

Batch mode runs twice: with the checkpoint's decoding batches (what `seq2seq translate` does) and with the
server's (each gathered batch whole); the server is compared with both. Targets (issue 15): at 32 clients,
throughput >= 70% of batch mode; no failed request; resident memory flat: what the server keeps between
rounds within +-10% from the first round (the warm-up) to the last. Writes docs/serving.json and docs/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import experiments
from experiments import ROOT, SEQ2SEQ, log

from seq2seq.data import file_digest

TARGET_THROUGHPUT = 0.7
TARGET_MEMORY_CHANGE = 0.1
IDLE_S = 1.5  # a pause between memory rounds: longer than the server's idle time before it trims (1 s)
SERVING_LINE = re.compile(r"serving \S+ -> \S+ at (http://[^/\s]+)/")


# --- batch mode ---------------------------------------------------------------------------------------------


def batch_mode(checkpoint: Path, sentences: list[str], beam: int, whole: bool = False) -> dict:
    """`seq2seq translate`'s batch mode on `sentences`, in this process, timed after the model has loaded.

    whole: with the server's decoding batches (`server.whole_batches`: batch_tokens per row of the beam) instead
    of the checkpoint's, which is `seq2seq translate --batch-tokens` with batch_tokens x beam."""
    import io

    from seq2seq.server import whole_batches
    from seq2seq.translate import Translator, translate_batch

    translator = Translator(str(checkpoint), {"beam": beam}, device="cpu")
    if whole:
        translator.options = whole_batches(translator.options)
    translator.translate(sentences[:20])  # warm-up, as the server's first requests are
    started = time.perf_counter()
    translate_batch(translator, io.StringIO("".join(s + "\n" for s in sentences)), io.StringIO())
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "sentences_per_s": round(len(sentences) / seconds, 1)}


# --- the server ----------------------------------------------------------------------------------------------


class Server:
    """`seq2seq serve CHECKPOINT --port 0` in its own process; its URL is read from its log."""

    def __init__(self, checkpoint: Path, beam: int, log_file: Path):
        command = [*SEQ2SEQ, "serve", str(checkpoint), "--port", "0", "--no-access-log", "--beam", str(beam)]
        self.log_file = log_file
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file.open("w"))
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = SERVING_LINE.search(self.log_file.read_text())
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"seq2seq serve exited: {self.log_file.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("seq2seq serve did not start in time")

    def resident_mib(self) -> float:
        """The server process's resident memory (VmRSS), MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def load(url: str, sentences: list[str], clients: int, requests: int, on_progress=None) -> dict:
    """`requests` requests of one sentence each (cycling through `sentences`) from `clients` concurrent clients."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    next_request = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for number in next_request:
            started = time.perf_counter()
            try:
                response = await http.post("/v1/translate", json={"text": sentences[number % len(sentences)]})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            latencies.append(time.perf_counter() - started)
            if on_progress is not None:
                on_progress(len(latencies))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": requests,
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": round(seconds, 2),
        "sentences_per_s": round(requests / seconds, 1),
        "latency_ms": {name: round(cuts[q - 1] * 1000, 1) for name, q in (("p50", 50), ("p95", 95), ("p99", 99))},
    }


def memory_run(server: Server, sentences: list[str], clients: int, requests: int, rounds: int = 20) -> dict:
    """`requests` requests from `clients` clients in `rounds` rounds, the server's resident memory read between
    rounds (after IDLE_S without a request: what it keeps) and halfway through each (with a batch in flight).

    The first round is the warm-up: the first requests allocate torch's and the allocator's working memory
    once. A leak would make the memory kept between rounds grow after it."""
    before = round(server.resident_mib(), 1)
    per_round = requests // rounds
    kept: list[tuple[int, float]] = []
    in_flight: list[float] = []
    failed, seconds = 0, 0.0

    def sample(done: int) -> None:
        if done == per_round // 2:
            in_flight.append(round(server.resident_mib(), 1))

    for number in range(rounds):
        offset = (number * per_round) % len(sentences)
        result = asyncio.run(load(server.url, sentences[offset:] + sentences[:offset], clients, per_round, sample))
        failed, seconds = failed + result["failed"], seconds + result["seconds"]
        time.sleep(IDLE_S)  # the server gives back what its batches freed after 1 s without a request
        kept.append(((number + 1) * per_round, round(server.resident_mib(), 1)))
    after_warm_up = kept[0][1]
    return {
        "clients": clients,
        "requests": per_round * rounds,
        "rounds": rounds,
        "failed": failed,
        "sentences_per_s": round(per_round * rounds / seconds, 1),
        "rss_mib_before": before,
        "rss_mib_kept": kept,  # (requests so far, MiB) between rounds
        "rss_mib_in_flight": in_flight,
        "rss_mib_after_warm_up": after_warm_up,
        "rss_mib_last": kept[-1][1],
        "rss_kept_largest_change": round(max((mib - after_warm_up for _, mib in kept), key=abs) / after_warm_up, 4),
        "rss_in_flight_largest_change": round(
            max((mib - after_warm_up for mib in in_flight), key=abs) / after_warm_up, 4
        ),
    }


# --- the whole benchmark --------------------------------------------------------------------------------------


def measure(checkpoint: Path, sentences: list[str], levels: list[int], memory_requests: int, beam: int) -> dict:
    """Batch mode, then the server at each level of concurrency, then the memory run; with the targets checked."""
    log.info("Batch mode: %d sentences, beam %d", len(sentences), beam)
    results = {
        "batch_mode": batch_mode(checkpoint, sentences, beam),
        "batch_mode_whole_batches": batch_mode(checkpoint, sentences, beam, whole=True),
    }
    default, whole = (results[key]["sentences_per_s"] for key in ("batch_mode", "batch_mode_whole_batches"))
    log.info("Batch mode: %s", results)
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(checkpoint, beam, Path(scratch) / "serve.log")
        try:
            asyncio.run(load(server.url, sentences, 4, 40))  # warm-up
            results["levels"] = []
            for clients in levels:
                level = asyncio.run(load(server.url, sentences, clients, len(sentences)))
                level["vs_batch_mode"] = round(level["sentences_per_s"] / default, 3)
                level["vs_batch_mode_whole_batches"] = round(level["sentences_per_s"] / whole, 3)
                log.info("%d clients: %s", clients, {k: level[k] for k in ("sentences_per_s", "latency_ms", "failed")})
                results["levels"].append(level)
            if memory_requests:
                log.info("Memory: %d requests from %d clients", memory_requests, max(levels))
                results["memory"] = memory_run(server, sentences, max(levels), memory_requests)
                log.info("Memory: %s", {k: v for k, v in results["memory"].items() if k.startswith("rss_")})
        finally:
            server.stop()
    top = results["levels"][-1]
    results["targets"] = {
        f"{top['clients']} clients >= {TARGET_THROUGHPUT}x seq2seq translate (the checkpoint's batches)": (
            top["vs_batch_mode"] >= TARGET_THROUGHPUT
        ),
        f"{top['clients']} clients >= {TARGET_THROUGHPUT}x batch mode with the server's batches": (
            top["vs_batch_mode_whole_batches"] >= TARGET_THROUGHPUT
        ),
        "no failed request": all(level["failed"] == 0 for level in results["levels"])
        and results.get("memory", {}).get("failed", 0) == 0,
    }
    if "memory" in results:
        memory = results["memory"]
        results["targets"][f"memory kept between rounds within +-{TARGET_MEMORY_CHANGE:.0%} after the warm-up"] = (
            abs(memory["rss_kept_largest_change"]) <= TARGET_MEMORY_CHANGE
        )
    return results


def markdown(results: dict) -> str:
    """docs/serving.md: the tables the README quotes."""
    batch, whole = results["batch_mode"], results["batch_mode_whole_batches"]
    lines = [
        f"# Serving under load ({results['date']}, commit {results['commit']})",
        "",
        (
            f"`{results['command']}` on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
            f"torch {results['machine']['torch']}; checkpoint {results['checkpoint']}, beam {results['beam']}, "
            f"the test split's {results['sentences']} sentences, one sentence per request, client and server on "
            "this machine."
        ),
        "",
        (
            f"Batch mode (`seq2seq translate -i`, the checkpoint's decoding batches): {batch['sentences_per_s']:.1f} "
            f"sentences/s; with the server's decoding batches (`--batch-tokens` x beam: the server decodes each "
            f"gathered batch whole): {whole['sentences_per_s']:.1f} sentences/s."
        ),
        "",
        (
            "| clients | sentences/s | vs `seq2seq translate` | vs batch mode, server's batches | p50 ms | p95 ms | p99 ms "
            "| failed |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in results["levels"]:
        latency = level["latency_ms"]
        lines.append(
            f"| {level['clients']} | {level['sentences_per_s']:.1f} | {level['vs_batch_mode']:.2f}x | "
            f"{level['vs_batch_mode_whole_batches']:.2f}x | "
            f"{latency['p50']:.0f} | {latency['p95']:.0f} | {latency['p99']:.0f} | {level['failed']} |"
        )
    if "memory" in results:
        memory = results["memory"]
        lines += [
            "",
            (
                f"Memory: {memory['requests']:,} requests from {memory['clients']} clients in {memory['rounds']} "
                f"rounds, {memory['failed']} failed. The server's resident memory: {memory['rss_mib_before']:.0f} "
                f"MiB before (after the runs above), {memory['rss_mib_after_warm_up']:.0f} MiB after the first round "
                f"(the warm-up), {memory['rss_mib_last']:.0f} MiB after the last. "
                f"Between rounds (nothing in flight) it stayed within {memory['rss_kept_largest_change']:+.1%} of "
                f"the warm-up's; halfway through a round (a batch in flight) within "
                f"{memory['rss_in_flight_largest_change']:+.1%}."
            ),
        ]
    lines += ["", "| target | met |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in results["targets"].items()), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/quickstart/best.pt", help="what the README's first command made")
    parser.add_argument("--src", default="data/test.es", help="the sentences to send")
    parser.add_argument("--clients", default="1,8,32", help="levels of concurrency")
    parser.add_argument("--memory-requests", type=int, default=10_000, help="requests of the memory run (0: none)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--limit", type=int, help="use only the first N sentences (a quick look; not published)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "serving"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    checkpoint = ROOT / args.checkpoint
    if not checkpoint.is_file():
        print(f"serve_load.py: error: no {checkpoint}: run the README's first command first", file=sys.stderr)
        return 2
    sentences = (ROOT / args.src).read_text(encoding="utf-8").splitlines()[: args.limit]
    results = experiments.provenance(sys.argv) | {
        "checkpoint": args.checkpoint,
        "checkpoint_sha256": file_digest(checkpoint),
        "beam": args.beam,
        "sentences": len(sentences),
    }
    levels = [int(count) for count in args.clients.split(",")]
    results.update(measure(checkpoint, sentences, levels, args.memory_requests, args.beam))
    output = Path(args.output) if args.limit is None else Path(tempfile.mkdtemp()) / "serving"
    experiments.write_results(results, output, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
