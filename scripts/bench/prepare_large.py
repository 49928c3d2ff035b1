#!/usr/bin/env python3
"""Measure corpus preparation on a large synthetic corpus: pairs/s and peak memory.

Writes N pairs made from the bundled training data (its sentences, with words shuffled so that
lines differ), then times what `seq2seq train` does before the first update: count lines,
sample and train SentencePiece, stream and encode the corpus with worker processes into the
memory-mapped cache.

    python scripts/bench/prepare_large.py --pairs 2000000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from seq2seq.config import TokenizerConfig
from seq2seq.data import file_digest, load_training_corpus
from seq2seq.textfiles import count_lines, iter_lines
from seq2seq.tokenizer import build_tokenizer

DATA = Path(__file__).resolve().parents[2] / "data"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        paths = write_synthetic(directory, args.pairs)
        written = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        before = peak_rss_mib()
        started = time.perf_counter()
        lines = count_lines(paths[0]), count_lines(paths[1])
        digests = file_digest(paths[0]), file_digest(paths[1])
        counted = time.perf_counter()
        tokenizer = build_tokenizer(
            [paths], [digests], TokenizerConfig(vocab_size=args.vocab), directory / "cache", seed=1
        )
        tokenized = time.perf_counter()
        _, stats = load_training_corpus(paths, digests, tokenizer, 100, 100, directory / "cache", args.workers)
        encoded = time.perf_counter()
        own = peak_rss_mib()
        figures = {
            "pairs": args.pairs,
            "corpus_mb": round(size_mb, 1),
            "workers": args.workers,
            "kept": stats["kept"],
            "count_and_hash_s": round(counted - started, 1),
            "sentencepiece_s": round(tokenized - counted, 1),
            "encode_s": round(encoded - tokenized, 1),
            "total_s": round(encoded - started, 1),
            "pairs_per_s_encode": round(args.pairs / (encoded - tokenized)),
            "pairs_per_s_total": round(args.pairs / (encoded - started)),
            "peak_rss_main_mib": round(own),
            "peak_rss_main_before_mib": round(before),
            "write_corpus_s": round(written, 1),
            "lines": lines[0],
        }
        print(json.dumps(figures, indent=2))
        if args.output:
            Path(args.output).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
