"""Parallel corpora (seq2seq/data.py): reading and aligning files, the encoded-corpus cache, token-bucket
batching and collation. Reading one text file is tested in test_textfiles.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_lines

from seq2seq.data import (
    EncodedCorpus,
    ParallelDataset,
    TokenBucketSampler,
    collate,
    encode_and_filter,
    file_digest,
    load_training_corpus,
    read_parallel,
    split_to_multiple,
)
from seq2seq.errors import UserError
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

# --- reading files ---------------------------------------------------------------------------


def test_read_parallel_returns_aligned_lines(tiny_corpus):
    src, tgt, (src_path, tgt_path) = read_parallel(tiny_corpus["train"], "es", "en")
    assert len(src) == len(tgt) == 200
    assert src[0].startswith("En el principio") and tgt[0].startswith("In the beginning")
    assert src_path.name == "train.es" and tgt_path.name == "train.en"


def test_misaligned_corpus_names_both_files_and_counts(tmp_path: Path):
    (tmp_path / "c.es").write_text("uno\ndos\ntres\n", encoding="utf-8")
    (tmp_path / "c.en").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        read_parallel(str(tmp_path / "c"), "es", "en")
    message = str(error.value)
    assert f"{tmp_path / 'c.es'} has 3 lines" in message
    assert f"{tmp_path / 'c.en'} has 2" in message
    assert "\n" not in message


def test_missing_corpus_file(tmp_path: Path):
    (tmp_path / "c.es").write_text("uno\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"corpus file not found: {tmp_path / 'c.en'} \(nor .*c\.en\.gz\)"):
        read_parallel(str(tmp_path / "c"), "es", "en")


def test_gzip_corpus_is_read_like_plain_text(tmp_path: Path, tiny_corpus):
    plain_src, plain_tgt, _ = read_parallel(tiny_corpus["train"], "es", "en")
    for lang in ("es", "en"):
        with gzip.open(tmp_path / f"zipped.{lang}.gz", "wb") as handle:
            handle.write(Path(f"{tiny_corpus['train']}.{lang}").read_bytes())
    src, tgt, paths = read_parallel(str(tmp_path / "zipped"), "es", "en")
    assert (src, tgt) == (plain_src, plain_tgt)
    assert [p.name for p in paths] == ["zipped.es.gz", "zipped.en.gz"]


# --- encoding and the cache ------------------------------------------------------------------


def test_encode_and_filter_skips_and_counts_empty_and_long_pairs(tokenizer: Tokenizer):
    long_src = "y la tierra estaba desordenada y vacía " * 10
    src = ["el cielo", "", "la tierra", "   ", long_src, "luz", "agua"]
    tgt = ["the sky", "nothing", "", "blank", "short", "light " * 40, "water"]
    corpus, stats = encode_and_filter(src, tgt, tokenizer, max_src=20, max_tgt=20)
    assert stats == {"pairs": 7, "kept": 2, "skipped_empty": 3, "skipped_too_long": 2}
    assert len(corpus) == 2
    for position, index in enumerate([0, 6]):
        got_src, got_tgt = corpus.pair(position)
        assert got_src.tolist() == tokenizer.encode_src([src[index]])[0]
        assert got_tgt.tolist() == tokenizer.encode_tgt([tgt[index]])[0]


def test_length_limit_counts_the_eos(tokenizer: Tokenizer):
    src, tgt = ["el cielo y la tierra"], ["the sky"]
    pieces = len(tokenizer.encode_src(src)[0])
    _, kept = encode_and_filter(src, tgt, tokenizer, max_src=pieces + 1, max_tgt=100)
    _, skipped = encode_and_filter(src, tgt, tokenizer, max_src=pieces, max_tgt=100)
    assert (kept["kept"], skipped["skipped_too_long"]) == (1, 1)


class OnceTokenizer(Tokenizer):
    """A real tokenizer that refuses to encode a second time (so a cache hit is observable)."""

    def __init__(self, src_model: bytes, tgt_model: bytes):
        super().__init__(src_model, tgt_model)
        self.calls = 0

    def encode_src(self, lines):
        self.calls += 1
        if self.calls > 1:
            raise AssertionError("encoded again: the cache was not used")
        return super().encode_src(lines)


def test_training_corpus_is_cached_and_reused(tmp_path: Path, tiny_corpus, tokenizer: Tokenizer):
    src, tgt, paths = read_parallel(tiny_corpus["train"], "es", "en")
    digests = (file_digest(paths[0]), file_digest(paths[1]))
    once = OnceTokenizer(tokenizer.src_model, tokenizer.tgt_model)
    cache = tmp_path / "cache"
    first, first_stats = load_training_corpus(paths, digests, once, 60, 60, cache)
    entries = [path for path in cache.iterdir() if not path.name.startswith(".")]  # not the lock file
    assert len(entries) == 1 and entries[0].name.startswith("corpus-") and (entries[0] / "stats.json").is_file()
    assert 0 < first_stats["kept"] < first_stats["pairs"] == 200  # some pairs are longer than 60 pieces

    second, second_stats = load_training_corpus(paths, digests, once, 60, 60, cache)
    assert second_stats == first_stats
    for name in ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert isinstance(second.src_ids, np.memmap)  # read from the cache files
    assert not list(cache.glob(".*.tmp"))

    expected, _ = encode_and_filter(src, tgt, tokenizer, 60, 60)
    np.testing.assert_array_equal(second.tgt_ids, expected.tgt_ids)


def test_cache_key_changes_with_the_length_limits_and_the_data(tmp_path: Path, tiny_corpus, tokenizer: Tokenizer):
    src, tgt, paths = read_parallel(tiny_corpus["train"], "es", "en")
    digests = (file_digest(paths[0]), file_digest(paths[1]))
    cache = tmp_path / "cache"
    _, short = load_training_corpus(paths, digests, tokenizer, 40, 40, cache)
    _, long = load_training_corpus(paths, digests, tokenizer, 200, 200, cache)
    assert short["kept"] < long["kept"] == 200
    write_lines(tmp_path / "ten.es", src[:10])
    write_lines(tmp_path / "ten.en", tgt[:10])
    ten = (tmp_path / "ten.es", tmp_path / "ten.en")
    other, _ = load_training_corpus(ten, ("a", "b"), tokenizer, 200, 200, cache)
    assert len(other) == 10
    assert len(list(cache.glob("corpus-*"))) == 3


# --- batching --------------------------------------------------------------------------------


def random_lengths(count: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 40, count), rng.integers(1, 40, count)


def make_sampler(**options) -> TokenBucketSampler:
    src, tgt = random_lengths()
    return TokenBucketSampler(src, tgt, **{"max_tokens": 200, "seed": 3, "pool_batches": 4, **options})


def test_every_index_once_per_epoch():
    sampler = make_sampler()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = [i for batch in sampler for i in batch]
        assert sorted(indices) == list(range(500))


def test_no_batch_exceeds_max_tokens_padded():
    sampler = make_sampler()
    src, tgt = random_lengths()
    batches = list(sampler)
    for batch in batches:
        widest = max(max(src[i], tgt[i]) + 1 for i in batch)  # +1: the EOS
        assert widest * len(batch) <= 200
    # Bucketing keeps padding low: batches are far fuller than one sentence each.
    assert len(batches) < 500 / 4


def test_batches_hold_similar_lengths():
    sampler = make_sampler(pool_batches=1000)  # one pool: the whole corpus is sorted
    _, tgt = random_lengths()
    spreads = [max(tgt[i] for i in b) - min(tgt[i] for i in b) for b in sampler]
    assert max(spreads) <= 2


def test_epochs_differ_and_seed_plus_epoch_repeats():
    sampler = make_sampler()
    orders = {epoch: sampler.all_batches(epoch) for epoch in range(3)}
    assert orders[0] != orders[1] != orders[2]
    again = make_sampler()
    again.set_epoch(1)
    assert list(again) == orders[1]
    assert make_sampler(seed=4).all_batches(1) != orders[1]


def test_no_shuffle_is_the_same_every_epoch():
    sampler = make_sampler(shuffle=False)
    assert sampler.all_batches(0) == sampler.all_batches(5)


def test_sharding_gives_disjoint_equal_shares():
    ranks = [make_sampler(num_replicas=2, rank=r) for r in range(2)]
    everything = make_sampler().all_batches(0)
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == (len(everything) + 1) // 2 == len(ranks[0])
    seen = [i for share in shares for batch in share for i in batch]
    assert len(seen) == len(set(seen)), "a sentence went to both ranks"
    assert sorted(seen) == list(range(500)), "every sentence goes to exactly one rank"
    for share in shares:
        for batch in share:
            assert max(max(ranks[0].src_lengths[i], ranks[0].tgt_lengths[i]) for i in batch) * len(batch) <= 200


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_split_to_multiple_covers_everything_once(ranks: int):
    batches = make_sampler().all_batches(1)
    split = split_to_multiple(batches, ranks)
    assert len(split) % ranks == 0 and len(split) - len(batches) < ranks
    assert sorted(i for b in split for i in b) == sorted(i for b in batches for i in b)


@pytest.mark.parametrize("start", [0, 1, 7])
def test_start_batch_skips_exactly_that_many(start: int):
    sampler = make_sampler()
    full = sampler.all_batches(2)
    sampler.set_epoch(2, start_batch=start)
    assert list(sampler) == full[start:]
    assert len(sampler) == len(full) - start


def test_sentence_longer_than_max_tokens_is_a_user_error():
    with pytest.raises(
        UserError, match=r"train\.batch_tokens \(20\) is smaller than the longest sentence \(31 pieces\)"
    ):
        TokenBucketSampler(np.array([3, 30]), np.array([4, 5]), max_tokens=20)


# --- collation -------------------------------------------------------------------------------


def test_collate_builds_teacher_forcing_inputs_and_outputs():
    src = [[10, 11, 12], [13], [14, 15]]
    tgt = [[20, 21], [22, 23, 24, 25], [26]]
    dataset = ParallelDataset(EncodedCorpus.from_lists(src, tgt))
    batch = collate([dataset[i] for i in range(3)])

    assert batch.src.tolist() == [[10, 11, 12, EOS_ID], [13, EOS_ID, PAD_ID, PAD_ID], [14, 15, EOS_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [4, 2, 3]
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False], [True, True, True, False]]
    assert batch.tgt_out.tolist() == [
        [20, 21, EOS_ID, PAD_ID, PAD_ID],
        [22, 23, 24, 25, EOS_ID],
        [26, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert batch.tgt_in.tolist() == [
        [BOS_ID, 20, 21, PAD_ID, PAD_ID],
        [BOS_ID, 22, 23, 24, 25],
        [BOS_ID, 26, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert not (batch.tgt_in == EOS_ID).any()
    assert batch.num_tgt_tokens == 3 + 5 + 2


def test_collate_invariants_on_real_batches(tiny_corpus, tokenizer: Tokenizer):
    src, tgt, _ = read_parallel(tiny_corpus["train"], "es", "en")
    corpus, _ = encode_and_filter(src, tgt, tokenizer, 200, 200)
    dataset = ParallelDataset(corpus)
    sampler = TokenBucketSampler(corpus.src_lengths, corpus.tgt_lengths, max_tokens=600, seed=1)
    for indices in sampler:
        batch = collate([dataset[i] for i in indices])
        lengths = torch.tensor([len(corpus.pair(i)[1]) + 1 for i in indices])  # target pieces + EOS
        assert batch.tgt_in.shape == batch.tgt_out.shape
        assert torch.all(batch.tgt_in[:, 0] == BOS_ID)
        assert not (batch.tgt_in == EOS_ID).any()
        rows = torch.arange(len(indices))
        assert torch.all(batch.tgt_out[rows, lengths - 1] == EOS_ID)
        assert ((batch.tgt_out == EOS_ID).sum(1) == 1).all()
        positions = torch.arange(batch.tgt_out.size(1))[None, :]
        assert torch.all((batch.tgt_out == PAD_ID) == (positions >= lengths[:, None]))
        assert torch.all((batch.tgt_in == PAD_ID) == (positions >= lengths[:, None]))
        shifted = positions[:, 1:] < lengths[:, None]  # tgt_in[t] is tgt_out[t - 1] on real positions
        assert torch.equal(batch.tgt_in[:, 1:][shifted], batch.tgt_out[:, :-1][shifted])
        assert torch.equal(batch.src_mask.sum(1), batch.src_lengths)
