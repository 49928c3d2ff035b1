"""Parallel corpora: read and validate, encode once into a cache, batch by tokens.

The training corpus is streamed in chunks, encoded by worker processes, and stored as flat int32
arrays (`*_ids.bin`, memory-mapped on load) plus offsets (`*_offsets.npy`), under a key made from
the files' contents and the SentencePiece model: the next run with the same data reuses it, and a
corpus of millions of pairs never sits in memory as Python lists.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from seq2seq.cache import cached_entry, file_sha256
from seq2seq.errors import UserError
from seq2seq.subwords import SubwordSampler
from seq2seq.textfiles import iter_lines
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: entries carry a manifest (seq2seq/cache.py)
CHUNK_LINES = 20_000  # pairs encoded per task


# --- reading files ---------------------------------------------------------------------------


def corpus_file(prefix: str, lang: str) -> Path:
    """The file for one side of a corpus: `prefix.lang` or `prefix.lang.gz`."""
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"corpus file not found: {prefix}.{lang} (nor {prefix}.{lang}.gz); check data.* paths and languages in the config"
    )


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (plain or gzip), without line endings."""
    return list(iter_lines(path))


def check_aligned(src_path: Path, src_count: int, tgt_path: Path, tgt_count: int, what: str = "corpus") -> None:
    """The one-line error for two sides of a parallel text with different line counts."""
    if src_count != tgt_count:
        raise UserError(
            f"misaligned {what}: {src_path} has {src_count} lines but {tgt_path} has {tgt_count}; "
            "line i of one must translate line i of the other"
        )


def read_parallel_files(src_path: Path, tgt_path: Path, what: str = "corpus") -> tuple[list[str], list[str]]:
    """The lines of two line-aligned files (equal line counts, else a UserError naming both)."""
    src_lines, tgt_lines = read_lines(Path(src_path)), read_lines(Path(tgt_path))
    check_aligned(src_path, len(src_lines), tgt_path, len(tgt_lines), what)
    return src_lines, tgt_lines


def read_parallel(prefix: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str], tuple[Path, Path]]:
    """Source and target lines of a line-aligned corpus `prefix.src_lang` / `prefix.tgt_lang`."""
    src_path, tgt_path = corpus_file(prefix, src_lang), corpus_file(prefix, tgt_lang)
    src_lines, tgt_lines = read_parallel_files(src_path, tgt_path)
    return src_lines, tgt_lines, (src_path, tgt_path)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (as stored, compressed or not)."""
    return file_sha256(path)


# --- the encoded corpus ----------------------------------------------------------------------


@dataclass
class EncodedCorpus:
    """Piece ids of a parallel corpus as flat arrays: sentence i is ids[offsets[i]:offsets[i+1]]."""

    src_ids: np.ndarray  # int32 [total source pieces]
    src_offsets: np.ndarray  # int64 [N + 1]
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target ids of sentence pair `index`."""
        return (
            self.src_ids[self.src_offsets[index] : self.src_offsets[index + 1]],
            self.tgt_ids[self.tgt_offsets[index] : self.tgt_offsets[index + 1]],
        )

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> EncodedCorpus:
        """Pack lists of id lists into flat arrays."""

        def pack(sentences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
            offsets = np.zeros(len(sentences) + 1, dtype=np.int64)
            np.cumsum([len(s) for s in sentences], out=offsets[1:])
            flat = np.fromiter((i for s in sentences for i in s), dtype=np.int32, count=int(offsets[-1]))
            return flat, offsets

        return cls(*pack(src), *pack(tgt))

    @classmethod
    def load(cls, directory: Path) -> EncodedCorpus:
        """Memory-map the arrays written by `CorpusWriter`."""
        return cls(
            _map_ids(directory / "src_ids.bin"),
            np.load(directory / "src_offsets.npy"),
            _map_ids(directory / "tgt_ids.bin"),
            np.load(directory / "tgt_offsets.npy"),
        )


def _map_ids(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


class CorpusWriter:
    """Appends encoded chunks to a cache directory: ids straight to disk, only lengths in memory."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.files = {side: open(directory / f"{side}_ids.bin", "wb") for side in ("src", "tgt")}  # noqa: SIM115 (closed in close())
        self.lengths: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}

    def append(self, chunk: EncodedCorpus) -> None:
        """Add a chunk's pairs after those already written."""
        for side in ("src", "tgt"):
            self.files[side].write(np.ascontiguousarray(getattr(chunk, f"{side}_ids"), dtype=np.int32).tobytes())
            self.lengths[side].append(np.diff(getattr(chunk, f"{side}_offsets")))

    def close(self, stats: dict) -> None:
        """Finish the files: offsets and the stats that mark the entry complete."""
        for side in ("src", "tgt"):
            self.files[side].close()
            lengths = np.concatenate(self.lengths[side]) if self.lengths[side] else np.zeros(0, dtype=np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            np.save(self.directory / f"{side}_offsets.npy", offsets)
        (self.directory / "stats.json").write_text(json.dumps(stats))


def encode_and_filter(
    src_lines: Sequence[str], tgt_lines: Sequence[str], tokenizer: Tokenizer, max_src: int, max_tgt: int
) -> tuple[EncodedCorpus, dict]:
    """Encode a training corpus, skipping empty and over-long pairs; returns the corpus and counts."""
    src_encoded, tgt_encoded = tokenizer.encode_src(src_lines), tokenizer.encode_tgt(tgt_lines)
    kept_src, kept_tgt = [], []
    stats = {"pairs": len(src_lines), "kept": 0, "skipped_empty": 0, "skipped_too_long": 0}
    for src_text, tgt_text, src, tgt in zip(src_lines, tgt_lines, src_encoded, tgt_encoded):
        if not src_text.strip() or not tgt_text.strip() or not src or not tgt:
            stats["skipped_empty"] += 1
        elif len(src) + 1 > max_src or len(tgt) + 1 > max_tgt:  # +1: the EOS each side gets
            stats["skipped_too_long"] += 1
        else:
            kept_src.append(src)
            kept_tgt.append(tgt)
    stats["kept"] = len(kept_src)
    return EncodedCorpus.from_lists(kept_src, kept_tgt), stats


def parallel_chunks(src_path: Path, tgt_path: Path, size: int = CHUNK_LINES) -> Iterator[tuple[list[str], list[str]]]:
    """Aligned chunks of (source lines, target lines), streamed; unequal line counts raise a UserError."""
    src_lines, tgt_lines = iter_lines(src_path), iter_lines(tgt_path)
    count = 0
    while True:
        src_chunk = list(itertools.islice(src_lines, size))
        tgt_chunk = list(itertools.islice(tgt_lines, len(src_chunk) if src_chunk else 1))
        if len(src_chunk) != len(tgt_chunk):
            src_total = count + len(src_chunk) + sum(1 for _ in src_lines)
            tgt_total = count + len(tgt_chunk) + sum(1 for _ in tgt_lines)
            check_aligned(src_path, src_total, tgt_path, tgt_total)
        if not src_chunk:
            return
        count += len(src_chunk)
        yield src_chunk, tgt_chunk


_worker_tokenizer: Tokenizer | None = None


def _start_worker(src_model: bytes, tgt_model: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(src_model, tgt_model)


def _encode_chunk(task: tuple[list[str], list[str], int, int]) -> tuple[EncodedCorpus, dict]:
    src_lines, tgt_lines, max_src, max_tgt = task
    assert _worker_tokenizer is not None, "the pool's initializer sets it"
    return encode_and_filter(src_lines, tgt_lines, _worker_tokenizer, max_src, max_tgt)


def load_training_corpus(
    paths: tuple[Path, Path],
    digests: tuple[str, str],
    tokenizer: Tokenizer,
    max_src: int,
    max_tgt: int,
    cache_dir: Path,
    workers: int = 1,
) -> tuple[EncodedCorpus, dict]:
    """The encoded, filtered training corpus, from the cache when the same data was encoded before.

    Otherwise the files are streamed in chunks and encoded by `workers` processes (1: in this one).
    """
    model_digest = hashlib.sha256(tokenizer.src_model + tokenizer.tgt_model).hexdigest()
    key = hashlib.sha256(repr((digests, model_digest, max_src, max_tgt, CACHE_VERSION)).encode()).hexdigest()[:20]

    def build(directory: Path) -> None:
        writer = CorpusWriter(directory)
        stats = {"pairs": 0, "kept": 0, "skipped_empty": 0, "skipped_too_long": 0}
        tasks = ((src, tgt, max_src, max_tgt) for src, tgt in parallel_chunks(*paths))
        for chunk, chunk_stats in encode_chunks(tasks, tokenizer, workers):
            writer.append(chunk)
            for name in stats:
                stats[name] += chunk_stats[name]
        writer.close(stats)

    entry = cached_entry(cache_dir, f"corpus-{key}", build, "encoded training corpus")
    return EncodedCorpus.load(entry), json.loads((entry / "stats.json").read_text())


def encode_chunks(tasks, tokenizer: Tokenizer, workers: int) -> Iterator[tuple[EncodedCorpus, dict]]:
    """Encode (src, tgt, max_src, max_tgt) chunks in order; with workers > 1 in a process pool.

    At most 2 x workers chunks are in flight, so memory stays bounded whatever the corpus size.
    """
    if workers <= 1:
        for src, tgt, max_src, max_tgt in tasks:
            yield encode_and_filter(src, tgt, tokenizer, max_src, max_tgt)
        return
    context = multiprocessing.get_context("spawn")  # not fork: safe beside torch's threads
    initargs = (tokenizer.src_model, tokenizer.tgt_model)
    with context.Pool(workers, initializer=_start_worker, initargs=initargs) as pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_chunk, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --- batching --------------------------------------------------------------------------------


class CorpusSet:
    """Several encoded corpora behind one index: pair i of the set is pair i - starts[k] of corpus k."""

    def __init__(self, corpora: Sequence[EncodedCorpus]):
        self.corpora = list(corpora)
        self.starts = np.concatenate([[0], np.cumsum([len(c) for c in self.corpora])]).astype(np.int64)  # [K + 1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def src_lengths(self) -> np.ndarray:
        return np.concatenate([c.src_lengths for c in self.corpora])

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.concatenate([c.tgt_lengths for c in self.corpora])

    def _locate(self, index: int) -> tuple[EncodedCorpus, int]:
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.corpora[k], index - int(self.starts[k])

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and target ids of pair `index` of the set."""
        corpus, local = self._locate(index)
        return corpus.pair(local)


def weighted_epoch(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """The pairs one epoch draws from corpora of `sizes` (a CorpusSet): from each, weight x its size pairs: every
    pair floor(weight) times, plus a random share (the weight's fraction, drawn per epoch).

    Copy c of pair i is numbered i + c x total (total: all corpora's pairs), so that each copy is an item
    of its own (subword sampling draws each copy's segmentation separately); index % total is the pair.
    """
    parts, start, total = [], 0, sum(sizes)
    for k, (size, weight) in enumerate(zip(sizes, weights)):
        whole, fraction = divmod(weight, 1.0)
        rng = np.random.default_rng([seed % 2**64, epoch, k])  # numpy takes no negative seed: -1 is 2**64 - 1
        extra = np.sort(rng.choice(size, round(fraction * size), replace=False))
        copies = [np.arange(size) + copy * total for copy in range(int(whole))]
        parts.append(np.concatenate([*copies, extra + int(whole) * total]) + start)
        start += size
    return np.concatenate(parts).astype(np.int64)


class ParallelDataset(Dataset):
    """Sentence pairs as tensors of piece ids, each side ending in EOS.

    With a `SubwordSampler`, each pair is segmented anew per epoch (`set_epoch`), in the DataLoader's
    worker processes; otherwise the cached segmentation is used.
    """

    def __init__(self, corpus: EncodedCorpus | CorpusSet, subwords: SubwordSampler | None = None):
        self.corpus, self.subwords = corpus, subwords
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose segmentations to draw (workers started afterwards copy it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        src, tgt = self.corpus.pair(index % len(self.corpus))  # index: a copy's number (see weighted_epoch)
        if self.subwords is not None:
            sampled = self.subwords.segment((src, tgt), self.epoch, index)
            if sampled is not None:
                src, tgt = np.asarray(sampled[0]), np.asarray(sampled[1])
        return _with_eos(src), _with_eos(tgt)


def _with_eos(ids: np.ndarray) -> Tensor:
    out = torch.empty(len(ids) + 1, dtype=torch.long)
    out[:-1] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    out[-1] = EOS_ID
    return out


@dataclass
class Batch:
    """A padded batch. Shapes: src [B, S], src_lengths [B], tgt_in / tgt_out [B, T]."""

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor  # BOS + target
    tgt_out: Tensor  # target + EOS

    @property
    def src_mask(self) -> Tensor:
        return self.src != PAD_ID  # [B, S], True on real tokens

    @property
    def num_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device) -> Batch:
        """The same batch on `device`."""
        return Batch(
            *(t.to(device, non_blocking=True) for t in (self.src, self.src_lengths, self.tgt_in, self.tgt_out))
        )


def pad(sequences: Sequence[Tensor], value: int = PAD_ID) -> Tensor:
    """Stack 1-d tensors of different lengths into [B, max length], right-padded."""
    return torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=value)


def collate(pairs: Sequence[tuple[Tensor, Tensor]]) -> Batch:
    """Pad a list of (src, tgt) pairs into a Batch with teacher-forcing inputs and outputs."""
    srcs, tgts = zip(*pairs)
    tgt_out = pad(tgts)
    bos = torch.full((len(tgts), 1), BOS_ID, dtype=torch.long)
    tgt_in = torch.cat([bos, tgt_out[:, :-1]], dim=1)
    tgt_in = tgt_in.masked_fill(tgt_in == EOS_ID, PAD_ID)  # EOS is never an input
    return Batch(pad(srcs), torch.tensor([len(s) for s in srcs]), tgt_in, tgt_out)


def split_to_multiple(batches: list[list[int]], ranks: int) -> list[list[int]]:
    """Split the largest batches in halves until their number divides by `ranks` (halves stay within size).

    Only when every batch is a single sentence and still no multiple is reached are the last few dropped.
    """
    batches = list(batches)
    while len(batches) % ranks:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]), default=None)
        if largest is None or len(batches[largest]) < 2:
            log.warning(
                "%d single-sentence batches cannot be shared by %d processes: skipped", len(batches) % ranks, ranks
            )
            return batches[: len(batches) - len(batches) % ranks]
        batch = batches[largest]
        batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    return batches


class TokenBucketSampler(Sampler[list[int]]):
    """Batches of similar-length pairs, each holding at most `max_tokens` padded tokens per side.

    Each epoch shuffles the corpus (seeded by seed + epoch), sorts pools of nearby sentences by
    length so that little padding is needed, cuts them into batches and shuffles the batches.
    `epoch_plan(epoch)` names the pairs an epoch draws when that is not each pair once (weighted corpora).
    With several processes, each takes every `num_replicas`-th batch (all ranks get the same count,
    see `split_to_multiple`).
    `start_batch` skips batches already seen in this epoch (for exact resume).
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        max_tokens: int,
        seed: int = 0,
        shuffle: bool = True,
        pool_batches: int = 100,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_plan: Callable[[int], np.ndarray] | None = None,
    ):
        # +1: every side gets an EOS (and the target input a BOS)
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64) + 1
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64) + 1
        self.widths = np.maximum(self.src_lengths, self.tgt_lengths)  # padded size per pair and side
        longest = int(self.widths.max(initial=0))
        if longest > max_tokens:
            raise UserError(
                f"train.batch_tokens ({max_tokens}) is smaller than the longest sentence ({longest} pieces): "
                "raise train.batch_tokens or lower data.max_src_length / data.max_tgt_length"
            )
        self.max_tokens = max_tokens
        self.seed, self.shuffle, self.pool_batches = seed, shuffle, pool_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch_plan = epoch_plan  # the pairs an epoch draws (several weighted corpora); None: each pair once
        self.epoch, self.start_batch = 0, 0
        self._cached_epoch: int | None = None
        self._cached_batches: list[list[int]] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch whose order to produce, and how many of its batches to skip."""
        self.epoch, self.start_batch = epoch, start_batch

    def all_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of `epoch`, across all ranks, in order."""
        rng = random.Random(self.seed * 100_003 + epoch)
        order = self.epoch_plan(epoch).tolist() if self.epoch_plan else list(range(len(self.src_lengths)))
        if self.shuffle:
            rng.shuffle(order)
        average = max(1, int(np.mean(self.widths))) if len(self.widths) else 1
        pool_size = max(1, self.pool_batches * self.max_tokens // average)
        batches: list[list[int]] = []
        pairs = len(self.widths)  # indices of copies (weighted_epoch) are pair + copy x pairs
        for start in range(0, len(order), pool_size):
            pool = order[start : start + pool_size]
            pool.sort(key=lambda i: (self.tgt_lengths[i % pairs], self.src_lengths[i % pairs]))
            batches.extend(self._cut(pool))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _cut(self, pool: list[int]) -> Iterator[list[int]]:
        batch: list[int] = []
        widest = 0
        for index in pool:
            width = int(self.widths[index % len(self.widths)])
            if batch and max(widest, width) * (len(batch) + 1) > self.max_tokens:
                yield batch
                batch, widest = [], 0
            batch.append(index)
            widest = max(widest, width)
        if batch:
            yield batch

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch`: the same number on every rank, every pair on exactly one rank."""
        if self._cached_epoch != epoch:
            batches = split_to_multiple(self.all_batches(epoch), self.num_replicas)
            self._cached_epoch, self._cached_batches = epoch, batches[self.rank :: self.num_replicas]
        return self._cached_batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rank_batches(self.epoch)[self.start_batch :])

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch)) - self.start_batch
