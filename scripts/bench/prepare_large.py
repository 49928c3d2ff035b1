#!/usr/bin/env python3
"""Measure corpus preparation on a large synthetic corpus: pairs/s and peak memory.

Writes N pairs made from the bundled training data (its sentences, with words shuffled so that
lines differ), then times what `seq2seq train` does before the first update: count lines,
sample and train SentencePiece, stream and encode the corpus with worker processes into the
memory-mapped cache.

    python scripts/bench/prepare_large.py --pairs 2000000 --workers 2

writes docs/prepare_large.{json,md} (the figures the README quotes) from a tree without uncommitted
changes and the default corpus size; otherwise, or with --output, OUTPUT.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, provenance, write_results

from seq2seq.config import TokenizerConfig
from seq2seq.data import file_digest, load_training_corpus
from seq2seq.textfiles import count_lines, iter_lines
from seq2seq.tokenizer import build_tokenizer

DATA = ROOT / "data"
PUBLISHED = ROOT / "docs" / "prepare_large"
DEFAULT_PAIRS = 2_000_000

log = logging.getLogger("bench")


def write_synthetic(directory: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """N pairs of shuffled-word variants of the bundled training pairs."""
    src_lines, tgt_lines = list(iter_lines(DATA / "train.es")), list(iter_lines(DATA / "train.en"))
    rng = random.Random(seed)
    paths = directory / "big.es", directory / "big.en"
    with open(paths[0], "w", encoding="utf-8") as src, open(paths[1], "w", encoding="utf-8") as tgt:
        for n in range(pairs):
            i = n % len(src_lines)
            if n < len(src_lines):
                s, t = src_lines[i], tgt_lines[i]
            else:
                s_words, t_words = src_lines[i].split(), tgt_lines[i].split()
                rng.shuffle(s_words)
                rng.shuffle(t_words)
                s, t = " ".join(s_words), " ".join(t_words)
            src.write(s + "\n")
            tgt.write(t + "\n")
    return paths


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB).

    The workers' own peaks are not reported: a child's ru_maxrss starts from its parent's size at
    fork time, so it would only repeat the main process's figure.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(pairs: int, workers: int, vocab: int) -> dict:
    """Write the synthetic corpus, then prepare it as `seq2seq train` does: the time of each stage and the
    main process's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        paths = write_synthetic(directory, pairs)
        written = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        before = peak_rss_mib()
        started = time.perf_counter()
        lines = count_lines(paths[0]), count_lines(paths[1])
        digests = file_digest(paths[0]), file_digest(paths[1])
        counted = time.perf_counter()
        tokenizer = build_tokenizer([paths], [digests], TokenizerConfig(vocab_size=vocab), directory / "cache", seed=1)
        tokenized = time.perf_counter()
        _, stats = load_training_corpus(paths, digests, tokenizer, 100, 100, directory / "cache", workers)
        encoded = time.perf_counter()
    return {
        "pairs": pairs,
        "corpus_mb": round(size_mb, 1),
        "workers": workers,
        "vocab_size": vocab,
        "kept": stats["kept"],
        "count_and_hash_s": round(counted - started, 1),
        "sentencepiece_s": round(tokenized - counted, 1),
        "encode_s": round(encoded - tokenized, 1),
        "total_s": round(encoded - started, 1),
        "pairs_per_s_encode": round(pairs / (encoded - tokenized)),
        "pairs_per_s_total": round(pairs / (encoded - started)),
        "peak_rss_main_gib": round(peak_rss_mib() / 1024, 2),
        "peak_rss_main_before_mib": round(before),
        "write_corpus_s": round(written, 1),
        "lines": lines[0],
    }


def markdown(results: dict) -> str:
    """The report page, rendered from the JSON alone (a test renders the committed JSON again and compares)."""
    return "\n".join(
        [
            f"# Preparing a large corpus ({results['date']}, commit {results['commit']})",
            "",
            (
                f"`{results['command']}` on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
                f"torch {results['machine']['torch']}: {results['pairs']:,} synthetic pairs ({results['corpus_mb']:.0f} MB "
                f"of text), SentencePiece vocabulary {results['vocab_size']:,}, {results['workers']} encoding workers."
            ),
            "",
            "| stage | seconds |",
            "| --- | ---: |",
            f"| count lines and hash both files | {results['count_and_hash_s']:.1f} |",
            f"| train SentencePiece on the sample | {results['sentencepiece_s']:.1f} |",
            f"| encode into the memory-mapped cache | {results['encode_s']:.1f} |",
            f"| **all of it** | **{results['total_s']:.1f}** |",
            "",
            (
                f"{results['pairs_per_s_total']:,} pairs/s end to end; encoding alone {results['pairs_per_s_encode']:,} "
                f"pairs/s. Peak resident memory of the main process: {results['peak_rss_main_gib']:.2f} GiB "
                f"({results['peak_rss_main_before_mib']} MiB before preparing)."
            ),
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument(
        "--output", help="writes OUTPUT.json and OUTPUT.md (default: docs/prepare_large when publishable)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    output = Path(args.output) if args.output else PUBLISHED
    if output == PUBLISHED and (results["dirty"] or args.pairs != DEFAULT_PAIRS):
        output = Path(tempfile.mkdtemp(prefix="prepare-large-")) / "prepare_large"
        log.warning("Not publishing to docs/ (uncommitted changes or not the default size): writing %s", output)
    results.update(measure(args.pairs, args.workers, args.vocab))
    write_results(results, output, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
