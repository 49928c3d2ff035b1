"""Subword regularisation (seq2seq/subwords.py, tokenizer.sampling): every epoch segments each training pair
anew from its cached ids, reproducibly per (seed, epoch, pair), in any process; the draws follow SentencePiece's
models (unigram lattice sampling, n-best sampling, BPE-dropout) and spell the cached text; a side holding an
unknown piece and over-long draws keep the cached segmentation; dev, test and decoding stay deterministic; a run
with sampling trains, reproduces and resumes exactly."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DATA, SUBPROCESS_ENV, assert_same_weights, head, make_config, run_seq2seq, write_config
from sentencepiece import sentencepiece_model_pb2
from torch.utils.data import DataLoader

from seq2seq.config import ConfigError, SamplingConfig, TokenizerConfig, config_from_dict
from seq2seq.data import EncodedCorpus, ParallelDataset, TokenBucketSampler, collate, file_digest, load_training_corpus
from seq2seq.rundir import read_records
from seq2seq.subwords import (
    PieceTable,
    SubwordSampler,
    bpe_dropout,
    expected_lengths,
    sample_nbest,
    sample_unigram,
)
from seq2seq.tokenizer import EOS_ID, UNK_ID, Tokenizer, model_type, train_sentencepiece
from seq2seq.train import prepared_run, train
from seq2seq.validation import make_dev_set

SAMPLING = {"alpha": 0.1, "nbest": -1}
PAIRS = 40  # training pairs the unit tests segment

Pair = tuple[np.ndarray, np.ndarray]  # a pair's cached ids, as the corpus cache holds them
Segmented = tuple[list[int], list[int]]


@pytest.fixture(scope="module")
def texts() -> list[tuple[str, str]]:
    """The first training pairs of 10 to 40 words a side: long enough to sample, short enough never to fall back."""
    src, tgt = head(DATA / "train.es", 200), head(DATA / "train.en", 200)
    chosen = [(s, t) for s, t in zip(src, tgt) if 10 <= len(s.split()) <= 40 and 10 <= len(t.split()) <= 40]
    assert len(chosen) >= PAIRS
    return chosen[:PAIRS]


@pytest.fixture(scope="module")
def training_lines() -> list[str]:
    """The 400 lines (200 pairs) the session's unigram `tokenizer` and `bpe_tokenizer` are trained on."""
    return head(DATA / "train.es", 200) + head(DATA / "train.en", 200)


@pytest.fixture(scope="module")
def bpe_tokenizer(training_lines) -> Tokenizer:
    """A joint BPE SentencePiece model (vocab 300) on the same 200 pairs as the session's unigram `tokenizer`."""
    model = train_sentencepiece(training_lines, TokenizerConfig(vocab_size=300, model_type="bpe"), seed=1)
    return Tokenizer(model, model)


def cached(tokenizer: Tokenizer, texts: list[tuple[str, str]]) -> list[Pair]:
    """The pairs' deterministic ids as the corpus cache gives them: int32 arrays."""
    src = tokenizer.encode_src([s for s, _ in texts])
    tgt = tokenizer.encode_tgt([t for _, t in texts])
    return [(np.array(s, dtype=np.int32), np.array(t, dtype=np.int32)) for s, t in zip(src, tgt)]


def as_lists(pair: Pair) -> Segmented:
    return pair[0].tolist(), pair[1].tolist()


def sampler_for(
    tokenizer: Tokenizer, seed: int = 42, alpha: float = 0.1, limit: int = 1000, nbest: int = -1
) -> SubwordSampler:
    return SubwordSampler(tokenizer, SamplingConfig(alpha=alpha, nbest=nbest), seed, (limit, limit))


def draws(sampler: SubwordSampler, pairs: list[Pair], epoch: int) -> list[Segmented]:
    """Every pair's segmentation in `epoch`; none may fall back (the limits are far above the pairs' lengths)."""
    segmented = [sampler.segment(pair, epoch, index) for index, pair in enumerate(pairs)]
    assert all(s is not None for s in segmented)
    return segmented


def losses_and_weights(run_dir: Path) -> tuple[list[float], dict]:
    """The training losses of progress.jsonl and last.pt's weights."""
    losses = [p["train_loss"] for p in read_records(run_dir / "progress.jsonl")]
    return losses, torch.load(run_dir / "last.pt", weights_only=True)["model"]


# --- segmentations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["unigram", "bpe"])
def test_each_epoch_draws_new_segmentations_that_differ_from_the_cached_ones(tokenizer, bpe_tokenizer, texts, model):
    chosen = tokenizer if model == "unigram" else bpe_tokenizer
    sampler = sampler_for(chosen)
    assert sampler.model_type == model  # read from the SentencePiece model itself
    fixed = [as_lists(pair) for pair in cached(chosen, texts)]
    epochs = [draws(sampler, cached(chosen, texts), epoch) for epoch in range(3)]
    # Sentences of 10+ words: nearly every draw differs from the deterministic segmentation somewhere ...
    differing = sum(draw != fixed[i] for segmented in epochs for i, draw in enumerate(segmented))
    assert differing >= 0.9 * 3 * len(texts)
    # ... and from the same pair's draw in another epoch.
    changed = sum(epochs[0][i] != epochs[1][i] and epochs[1][i] != epochs[2][i] for i in range(len(texts)))
    assert changed >= 0.9 * len(texts)
    # Both sides are sampled.
    assert sum(e[0] != f[0] for e, f in zip(epochs[0], fixed)) >= 0.9 * len(texts)
    assert sum(e[1] != f[1] for e, f in zip(epochs[0], fixed)) >= 0.9 * len(texts)


def test_the_same_pair_at_another_index_gets_another_segmentation(tokenizer, texts):
    sampler = sampler_for(tokenizer)
    same_pair_elsewhere = sum(
        sampler.segment(pair, 0, 0) != sampler.segment(pair, 0, 1) for pair in cached(tokenizer, texts)
    )
    assert same_pair_elsewhere >= 0.9 * len(texts)


@pytest.mark.parametrize(("model", "nbest"), [("unigram", -1), ("unigram", 4), ("bpe", -1)])
def test_every_draw_spells_the_cached_text(tokenizer, bpe_tokenizer, texts, model, nbest):
    """The pieces of a draw concatenate to the normalized text the cached ids spell, so both decode alike."""
    chosen = tokenizer if model == "unigram" else bpe_tokenizer
    sampler = sampler_for(chosen, alpha=0.2 if model == "bpe" else 0.1, nbest=nbest)
    table = PieceTable(chosen.src)
    pairs = cached(chosen, texts)
    for epoch in range(3):
        for index, (src, tgt) in enumerate(draws(sampler, pairs, epoch)):
            for drawn, ids in ((src, pairs[index][0]), (tgt, pairs[index][1])):
                assert "".join(chosen.src.id_to_piece(i) for i in drawn) == table.text(ids), (epoch, index)
                assert chosen.src.decode(drawn) == chosen.src.decode(ids.tolist()), (epoch, index)
                assert all(EOS_ID < i < chosen.src_vocab_size for i in drawn)  # no special or unknown piece


def test_seed_epoch_and_index_alone_fix_a_segmentation(tokenizer, texts):
    """Two samplers (one on a tokenizer rebuilt from the model bytes), asked in different orders, agree."""
    pairs = cached(tokenizer, texts)
    first = sampler_for(tokenizer)
    second = sampler_for(Tokenizer.from_state_dict(tokenizer.state_dict()))
    forward = {
        (epoch, index): first.segment(pair, epoch, index) for epoch in range(2) for index, pair in enumerate(pairs)
    }
    backward = {
        (epoch, index): second.segment(pairs[index], epoch, index)
        for epoch in reversed(range(2))
        for index in reversed(range(len(pairs)))
    }
    assert forward == backward
    again = {key: first.segment(pairs[key[1]], *key) for key in forward}  # after other draws in between
    assert again == forward
    as_plain_lists = {key: first.segment(as_lists(pairs[key[1]]), *key) for key in forward}  # ids as lists
    assert as_plain_lists == forward
    other_seed = sampler_for(tokenizer, seed=7)
    assert sum(other_seed.segment(pair, 0, i) != forward[0, i] for i, pair in enumerate(pairs)) >= 0.9 * len(pairs)


@pytest.mark.parametrize(("model", "nbest"), [("unigram", -1), ("unigram", 4), ("bpe", -1)])
def test_a_draw_is_the_algorithm_seeded_by_draw_seed_source_side_first(tokenizer, bpe_tokenizer, texts, model, nbest):
    """segment() is sample_unigram / sample_nbest / bpe_dropout of each side's cached text, with one
    random.Random(draw_seed(epoch, index)) drawing the source side first, then the target side."""
    chosen = tokenizer if model == "unigram" else bpe_tokenizer
    sampler, table = sampler_for(chosen, alpha=0.2, nbest=nbest), PieceTable(chosen.src)

    def algorithm(text: str, rng: random.Random) -> list[int]:
        if model == "bpe":
            return bpe_dropout(text, table, 0.2, rng)
        return sample_nbest(text, table, 0.2, nbest, rng) if nbest >= 2 else sample_unigram(text, table, 0.2, rng)

    for index, (src, tgt) in enumerate(cached(chosen, texts[:10])):
        for epoch in (0, 5):
            rng = random.Random(sampler.draw_seed(epoch, index))
            expected = algorithm(table.text(src), rng), algorithm(table.text(tgt), rng)
            assert sampler.segment((src, tgt), epoch, index) == expected
    assert len({sampler.draw_seed(epoch, index) for epoch in range(3) for index in range(100)}) == 300
    assert sampler_for(chosen, seed=7).draw_seed(0, 0) != sampler.draw_seed(0, 0)


def test_bpe_dropout_is_reproducible_too(bpe_tokenizer, texts):
    pairs = cached(bpe_tokenizer, texts)
    first, second = sampler_for(bpe_tokenizer), sampler_for(bpe_tokenizer)
    assert draws(first, pairs, 3) == draws(second, pairs, 3)
    assert draws(first, pairs, 3) != draws(first, pairs, 4)


def test_bpe_dropout_alpha_is_the_probability_of_dropping_a_merge(bpe_tokenizer, texts):
    """More dropout, more and shorter pieces: the deterministic segmentation is the shortest."""
    pairs = cached(bpe_tokenizer, texts)
    fixed = sum(len(src) for src, _ in pairs)
    light = sum(len(src) for src, _ in draws(sampler_for(bpe_tokenizer, alpha=0.05), pairs, 0))
    heavy = sum(len(src) for src, _ in draws(sampler_for(bpe_tokenizer, alpha=0.5), pairs, 0))
    assert fixed < light < heavy


def test_a_side_holding_an_unknown_piece_keeps_its_cached_ids(tokenizer, texts):
    """Its text is lost in the unknown piece: that side keeps the cached segmentation, the other is sampled."""
    unknown = tokenizer.encode_src(["\u65e5\u672c " + texts[0][0]])[0]  # two characters the model never saw
    assert UNK_ID in unknown
    table = PieceTable(tokenizer.src)
    assert table.text(unknown) is None
    known = cached(tokenizer, texts[:1])[0][1]
    sampler = sampler_for(tokenizer)
    for pair, kept_side in (((np.array(unknown, dtype=np.int32), known), 0), ((known, np.array(unknown)), 1)):
        segmented = [sampler.segment(pair, 0, index) for index in range(20)]
        assert all(s[kept_side] == unknown for s in segmented)
        other = 1 - kept_side
        assert sum(s[other] != known.tolist() for s in segmented) >= 15  # the other side is still sampled
        assert all(table.text(s[other]) == table.text(known) for s in segmented)
    both = np.array(unknown, dtype=np.int32)
    assert sampler.segment((both, both), 0, 0) == (unknown, unknown)


# --- the draws follow SentencePiece's models ------------------------------------------------------------


def test_unigram_sampling_with_a_huge_alpha_is_sentencepieces_own_segmentation(tokenizer, training_lines):
    """alpha 1000 puts all the weight on the best segmentation: SentencePiece's Viterbi one, on every line."""
    table, rng = PieceTable(tokenizer.src), random.Random(0)
    segmented = [tokenizer.src.encode(line) for line in training_lines]
    lines = [ids for ids in segmented if ids and UNK_ID not in ids]
    assert len(lines) >= 390
    for ids in lines:
        assert sample_unigram(table.text(ids), table, 1000.0, rng) == ids
        assert sample_nbest(table.text(ids), table, 1000.0, 4, rng) == ids


def test_bpe_dropout_0_is_sentencepieces_bpe_segmentation(bpe_tokenizer):
    """Without dropout, BPE-dropout is plain BPE: the same pieces as SentencePiece's own encoding."""
    table, rng = PieceTable(bpe_tokenizer.src), random.Random(0)
    lines = head(DATA / "train.es", 600) + head(DATA / "train.en", 600)  # 800 of them unseen in training
    # Runs of a letter whose double is a piece ("lll": "ll l", not "l ll": of equal merges the leftmost goes first)
    doubled = [c for c in table.ids if len(c) == 1 and c.isalpha() and c + c in table.ids]
    assert doubled
    lines += [letter * count for letter in doubled for count in range(2, 8)]
    # and made-up words.
    letters = sorted({c for piece in table.ids for c in piece if c.isalpha()})
    lines += ["".join(rng.choices(letters, k=rng.randint(1, 12))) for _ in range(1000)]
    segmented = [ids for ids in bpe_tokenizer.src.encode(lines) if ids and UNK_ID not in ids]
    assert len(segmented) >= 2000
    for ids in segmented:
        assert bpe_dropout(table.text(ids), table, 0.0, rng) == ids, bpe_tokenizer.src.decode(ids)


def segmentations(text: str, table: PieceTable) -> list[list[int]]:
    """Every way of cutting `text` into pieces of `table`, by brute force."""
    if not text:
        return [[]]
    found = []
    for end in range(1, len(text) + 1):
        if text[:end] in table.ids:
            found += [[table.ids[text[:end]], *rest] for rest in segmentations(text[end:], table)]
    return found


def model_probabilities(candidates: list[list[int]], table: PieceTable, alpha: float) -> dict[tuple[int, ...], float]:
    """exp(alpha x score) of each segmentation, normalized over `candidates`."""
    weights = {tuple(c): math.exp(alpha * sum(table.scores[i] for i in c)) for c in candidates}
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()}


def frequencies(draw, count: int) -> dict[tuple[int, ...], float]:
    """How often each segmentation comes out of `count` calls of draw(rng)."""
    rng = random.Random(1)
    tally = collections.Counter(tuple(draw(rng)) for _ in range(count))
    return {segmentation: n / count for segmentation, n in tally.items()}


DRAWS = 4000  # a frequency's standard error is at most 0.008


@pytest.mark.parametrize("word", ["▁and", "▁sobre", "▁para"])
@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_unigram_draws_follow_the_model_over_every_segmentation(tokenizer, word, alpha):
    table = PieceTable(tokenizer.src)
    candidates = segmentations(word, table)
    assert 4 <= len(candidates) <= 8
    expected = model_probabilities(candidates, table, alpha)
    observed = frequencies(lambda rng: sample_unigram(word, table, alpha, rng), DRAWS)
    assert set(observed) <= set(expected)
    for segmentation, probability in expected.items():
        assert observed.get(segmentation, 0.0) == pytest.approx(probability, abs=0.03), segmentation


def test_unigram_draws_through_the_sampler_follow_the_model(tokenizer):
    """The same through SubwordSampler.segment: one draw per (epoch, index), seeded by their hash."""
    table, sampler = PieceTable(tokenizer.src), sampler_for(tokenizer, alpha=0.2)
    src, tgt = "▁para", "▁and"
    pair = (tokenizer.src.encode("para"), tokenizer.src.encode("and"))
    segmented = [sampler.segment(pair, epoch, index) for epoch in range(2) for index in range(DRAWS // 2)]
    for side, text in ((0, src), (1, tgt)):
        expected = model_probabilities(segmentations(text, table), table, 0.2)
        tally = collections.Counter(tuple(s[side]) for s in segmented)
        for segmentation, probability in expected.items():
            assert tally[segmentation] / len(segmented) == pytest.approx(probability, abs=0.03), (text, segmentation)


def test_nbest_draws_follow_the_model_over_the_n_best_segmentations(tokenizer):
    table, word = PieceTable(tokenizer.src), "▁para"
    best = [list(c) for c in tokenizer.src.nbest_encode("para", nbest_size=3)]
    assert len(best) == 3 and len(segmentations(word, table)) > 3
    assert best[0] == tokenizer.src.encode("para")
    expected = model_probabilities(best, table, 0.5)
    observed = frequencies(lambda rng: sample_nbest(word, table, 0.5, 3, rng), DRAWS)
    assert set(observed) == set(expected)
    for segmentation, probability in expected.items():
        assert observed[segmentation] == pytest.approx(probability, abs=0.03), segmentation


def bpe_dropout_probabilities(word: str, table: PieceTable, dropout: float) -> dict[tuple[int, ...], float]:
    """BPE-dropout (Provilkov et al. 2020) of one word, exactly: at each step the applicable merges, best first
    (ties: leftmost first), are each left out with probability `dropout`; the first one kept is applied; when
    none is kept, the segmentation is final."""
    result: dict[tuple[int, ...], float] = collections.defaultdict(float)

    def walk(symbols: list[str], probability: float) -> None:
        merges = sorted(
            (-table.scores[table.ids[a + b]], i)
            for i, (a, b) in enumerate(itertools.pairwise(symbols))
            if a + b in table.ids
        )
        for rank, (_, i) in enumerate(merges):
            merged = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
            walk(merged, probability * dropout**rank * (1 - dropout))
        result[tuple(table.ids[s] for s in symbols)] += probability * dropout ** len(merges)

    walk(list(word), 1.0)
    return dict(result)


@pytest.mark.parametrize("word", ["▁and", "▁sobre"])
@pytest.mark.parametrize("dropout", [0.1, 0.4])
def test_bpe_dropout_draws_follow_provilkovs_definition(bpe_tokenizer, word, dropout):
    table = PieceTable(bpe_tokenizer.src)
    expected = bpe_dropout_probabilities(word, table, dropout)
    assert len(expected) >= 4
    assert sum(expected.values()) == pytest.approx(1.0)
    observed = frequencies(lambda rng: bpe_dropout(word, table, dropout, rng), DRAWS)
    assert set(observed) <= set(expected)
    for segmentation, probability in expected.items():
        assert observed.get(segmentation, 0.0) == pytest.approx(probability, abs=0.03), segmentation


def test_model_type_reads_the_type_from_the_model_bytes(training_lines):
    models = {}
    for kind, vocab_size in (("unigram", 300), ("bpe", 300), ("word", 300), ("char", 300)):
        models[kind] = train_sentencepiece(training_lines, TokenizerConfig(vocab_size=vocab_size, model_type=kind), 1)
        assert model_type(models[kind]) == kind
        assert Tokenizer(models[kind], models[kind]).model_type == kind
    assert Tokenizer(models["bpe"], models["word"]).model_type == "bpe"  # the source model's
    # A model whose trainer spec leaves the type out is a unigram one (protobuf's default).
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(models["bpe"])
    proto.trainer_spec.ClearField("model_type")
    assert model_type(proto.SerializeToString()) == "unigram"
    proto.ClearField("trainer_spec")
    assert model_type(proto.SerializeToString()) == "unigram"


# --- the sampler in the data pipeline ---------------------------------------------------------------------


def test_a_draw_over_the_length_limits_is_none_and_the_dataset_keeps_the_cached_pair(tokenizer, texts):
    pairs = cached(tokenizer, texts)
    fixed = [as_lists(pair) for pair in pairs]
    free = sampler_for(tokenizer)
    # Limits that every deterministic pair meets (EOS counted) but longer draws do not.
    limit = 1 + max(max(len(src), len(tgt)) for src, tgt in fixed)
    bounded = sampler_for(tokenizer, limit=limit)
    corpus = EncodedCorpus.from_lists([s for s, _ in fixed], [t for _, t in fixed])
    dataset = ParallelDataset(corpus, bounded)
    fell_back = 0
    for index, pair in enumerate(pairs):
        src, tgt = free.segment(pair, 0, index)
        too_long = len(src) + 1 > limit or len(tgt) + 1 > limit
        assert bounded.segment(pair, 0, index) == (None if too_long else (src, tgt))
        expected = fixed[index] if too_long else (src, tgt)
        assert [t.tolist() for t in dataset[index]] == [expected[0] + [EOS_ID], expected[1] + [EOS_ID]]
        fell_back += too_long
    assert 0 < fell_back < len(pairs), "the limit should cut some draws and keep others"
    # A tiny limit: every draw falls back, and the dataset serves exactly the cached pairs.
    tiny = ParallelDataset(corpus, sampler_for(tokenizer, limit=3))
    for index in range(len(pairs)):
        assert [t.tolist() for t in tiny[index]] == [fixed[index][0] + [EOS_ID], fixed[index][1] + [EOS_ID]]


def test_the_length_limits_count_the_eos(tokenizer, texts):
    pair = cached(tokenizer, texts[:1])[0]
    src, tgt = sampler_for(tokenizer).segment(pair, 0, 0)
    config = SamplingConfig(alpha=0.1, nbest=-1)
    assert SubwordSampler(tokenizer, config, 42, (len(src) + 1, len(tgt) + 1)).segment(pair, 0, 0) == (src, tgt)
    assert SubwordSampler(tokenizer, config, 42, (len(src), 1000)).segment(pair, 0, 0) is None
    assert SubwordSampler(tokenizer, config, 42, (1000, len(tgt))).segment(pair, 0, 0) is None


def test_the_dataset_serves_the_draws_of_its_epoch(tokenizer, texts):
    pairs = cached(tokenizer, texts)
    sampler = sampler_for(tokenizer)
    corpus = EncodedCorpus.from_lists([s for s, _ in pairs], [t for _, t in pairs])
    dataset = ParallelDataset(corpus, sampler)
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        served = [[t.tolist() for t in dataset[i]] for i in range(len(pairs))]
        assert served == [[src + [EOS_ID], tgt + [EOS_ID]] for src, tgt in draws(sampler, pairs, epoch)]
    plain = ParallelDataset(corpus)  # no sampler: the cached segmentation whatever the epoch
    plain.set_epoch(3)
    assert [[t.tolist() for t in plain[i]] for i in range(len(pairs))] == [
        [s.tolist() + [EOS_ID], t.tolist() + [EOS_ID]] for s, t in pairs
    ]


def test_the_memory_mapped_corpus_cache_is_sampled_from(tmp_path: Path, tiny_corpus, tokenizer):
    """The cache holds ids only (memory-mapped int32 arrays): the sampler segments them anew, spelling the same text."""
    paths = (Path(f"{tiny_corpus['train']}.es"), Path(f"{tiny_corpus['train']}.en"))
    digests = (file_digest(paths[0]), file_digest(paths[1]))
    corpus, stats = load_training_corpus(paths, digests, tokenizer, 60, 60, tmp_path / "cache")
    assert isinstance(corpus.src_ids, np.memmap) and stats["kept"] == len(corpus) > 100
    cached_files = {p.name for p in next((tmp_path / "cache").glob("corpus-*")).iterdir()}
    assert not [name for name in cached_files if "text" in name]
    sampler = sampler_for(tokenizer, limit=60)
    dataset = ParallelDataset(corpus, sampler)
    sampled = 0
    for index in range(len(corpus)):
        src, tgt = (t.tolist() for t in dataset[index])
        cached_src, cached_tgt = (ids.tolist() for ids in corpus.pair(index))
        assert tokenizer.src.decode(src) == tokenizer.src.decode(cached_src)
        assert tokenizer.decode_tgt(tgt) == tokenizer.decode_tgt(cached_tgt)
        drawn = sampler.segment(corpus.pair(index), 0, index)
        if drawn is None:  # longer than the limit: the cached pair
            assert (src, tgt) == (cached_src + [EOS_ID], cached_tgt + [EOS_ID])
        else:
            assert (src, tgt) == (drawn[0] + [EOS_ID], drawn[1] + [EOS_ID]) and len(src) <= 60 and len(tgt) <= 60
            sampled += drawn != (cached_src, cached_tgt)
    assert sampled >= 0.4 * len(corpus)  # the others' draws were over 60 pieces long: many at this low limit


def loader_batches(dataset: ParallelDataset, batches: TokenBucketSampler, epoch: int, workers: int, **options) -> list:
    dataset.set_epoch(epoch)  # as the Trainer does: before the workers start
    batches.set_epoch(epoch)
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers, **options)
    return [(b.src, b.src_lengths, b.tgt_in, b.tgt_out) for b in loader]


def test_worker_processes_load_the_same_batches_as_the_main_process(tokenizer, texts):
    """Forked workers, and spawned ones (fresh interpreters, as on macOS and Windows), draw what this process draws."""
    pairs = cached(tokenizer, texts)
    corpus = EncodedCorpus.from_lists([s for s, _ in pairs], [t for _, t in pairs])
    dataset = ParallelDataset(corpus, sampler_for(tokenizer))
    lengths = 2 * corpus.src_lengths, 2 * corpus.tgt_lengths  # room for the longer sampled segmentations
    batches = TokenBucketSampler(*lengths, max_tokens=400, seed=3)
    for epoch, options in ((0, {}), (1, {"multiprocessing_context": "spawn"})):
        in_process = loader_batches(dataset, batches, epoch, workers=0)
        in_workers = loader_batches(dataset, batches, epoch, workers=2, **options)
        assert len(in_process) == len(in_workers) > 2
        for ours, theirs in zip(in_process, in_workers):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    plain = loader_batches(ParallelDataset(corpus), batches, 1, workers=0)  # not vacuous: the draws are no copies
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(in_process, plain)) >= 0.9 * len(plain)


FRESH_PROCESS_DRAWS = """
import json, sys
from pathlib import Path
from seq2seq.config import SamplingConfig
from seq2seq.subwords import SubwordSampler
from seq2seq.tokenizer import Tokenizer
drawn = []
for case in json.loads(Path(sys.argv[1]).read_text()):
    model = Path(case["model"]).read_bytes()
    config = SamplingConfig(alpha=0.1, nbest=case["nbest"])
    sampler = SubwordSampler(Tokenizer(model, model), config, 42, (1000, 1000))
    drawn.append([sampler.segment(pair, epoch, i) for epoch in (0, 1) for i, pair in enumerate(case["pairs"])])
print(json.dumps(drawn))
"""


@pytest.mark.slow
def test_a_fresh_process_draws_the_same_segmentations(tmp_path: Path, tokenizer, bpe_tokenizer, texts):
    """What exact resume and reruns rely on: a new interpreter (another hash seed, another memory layout) draws
    what this process draws, for unigram sampling, n-best sampling and BPE-dropout."""
    cases, ours = [], []
    for name, chosen, nbest in (("unigram", tokenizer, -1), ("unigram", tokenizer, 4), ("bpe", bpe_tokenizer, -1)):
        model = tmp_path / f"{name}.model"
        model.write_bytes(chosen.src_model)
        pairs = [as_lists(pair) for pair in cached(chosen, texts[:10])]
        cases.append({"model": str(model), "nbest": nbest, "pairs": pairs})
        sampler = sampler_for(chosen, nbest=nbest)
        ours.append([list(sampler.segment(pair, epoch, i)) for epoch in (0, 1) for i, pair in enumerate(pairs)])
        assert sum(draw != list(pair) for draw, pair in zip(ours[-1], pairs + pairs)) >= 15  # the draws are no copies
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_DRAWS, str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        env={**SUBPROCESS_ENV, "PYTHONHASHSEED": "random"},
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout) == ours


def test_encoding_for_dev_test_and_decoding_never_samples(tokenizer, texts):
    lines = [src for src, _ in texts]
    before = tokenizer.encode_src(lines), tokenizer.encode_tgt(lines)
    sampler = sampler_for(tokenizer)
    for epoch in range(3):
        draws(sampler, cached(tokenizer, texts), epoch)
    assert (tokenizer.encode_src(lines), tokenizer.encode_tgt(lines)) == before
    assert [tokenizer.encode_src([line])[0] for line in lines] == before[0]


def test_expected_lengths_scale_round_up_and_stay_below_the_limit():
    lengths = np.array([1, 10, 40, 99])
    assert expected_lengths(lengths, 1.5, 100).tolist() == [2, 15, 60, 99]
    assert expected_lengths(lengths, 3.0, 100).tolist() == [3, 30, 99, 99]  # limit - 1: what a fallback guarantees
    assert expected_lengths(lengths, 1.0, 100).tolist() == lengths.tolist()


def test_length_factors_measure_how_much_longer_draws_are(tokenizer, texts):
    sampler = sampler_for(tokenizer)
    pairs = cached(tokenizer, texts)
    src_factor, tgt_factor = sampler.length_factors(pairs)
    sampled = [sampler.segment(pair, -1, index) for index, pair in enumerate(pairs)]
    assert src_factor == pytest.approx(sum(len(s) for s, _ in sampled) / sum(len(s) for s, _ in pairs))
    assert tgt_factor == pytest.approx(sum(len(t) for _, t in sampled) / sum(len(t) for _, t in pairs))
    assert src_factor > 1.05 and tgt_factor > 1.05
    # Never below 1, even when every draw falls back to the deterministic lengths.
    assert sampler_for(tokenizer, limit=3).length_factors(pairs) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("tokenizer_settings", "message"),
    [
        (
            {"model_type": "word", "sampling": SAMPLING},
            "'tokenizer.sampling' needs tokenizer.model_type unigram or bpe",
        ),
        (
            {"model_type": "char", "sampling": SAMPLING},
            "'tokenizer.sampling' needs tokenizer.model_type unigram or bpe",
        ),
        ({"model_type": "bpe", "sampling": {"alpha": 1.0}}, "BPE-dropout's probability: it must be in (0, 1)"),
        ({"sampling": {"alpha": 0.0}}, "'tokenizer.sampling.alpha' must be greater than 0"),
        ({"sampling": {"alpha": 0.1, "nbest": 1}}, "'tokenizer.sampling.nbest' must be -1"),
        ({"sampling": {"alpha": 0.1, "nbest": -2}}, "'tokenizer.sampling.nbest' must be -1"),
    ],
)
def test_sampling_settings_that_cannot_work_are_config_errors(tmp_path: Path, tokenizer_settings, message):
    data = make_config(tmp_path, {"train": "t", "dev": None})
    data["tokenizer"].update(tokenizer_settings)
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


# --- training with sampling ---------------------------------------------------------------------------------


def tiny_sampling_config(tmp_path: Path, corpus: dict, run: str, max_steps: int, seed: int = 42) -> dict:
    """The tiny real corpus with a unigram model, sampling on, dropout on, no dev set; 8 batches an epoch."""
    config = make_config(tmp_path, {"train": corpus["train"], "dev": None})
    config["tokenizer"]["sampling"] = dict(SAMPLING)
    config["data"]["cache_dir"] = str(tmp_path / f"cache-{run}")  # nothing shared between runs
    config["train"].update(
        run_dir=str(tmp_path / run), max_steps=max_steps, validate_every=4, batch_tokens=2000, lr=0.005, seed=seed
    )
    return config


def test_a_run_with_subword_sampling_trains(tmp_path: Path, tiny_corpus, caplog):
    caplog.set_level(logging.INFO, logger="seq2seq")
    data = tiny_sampling_config(tmp_path, tiny_corpus, "run", max_steps=6)
    data["data"]["dev"] = tiny_corpus["dev"]
    data["train"].update(validate_every=6, validate_max_sentences=5)
    summary = train(config_from_dict(data))
    assert summary["steps"] == 6 and summary["skipped_updates"] == 0
    losses, _ = losses_and_weights(tmp_path / "run")
    assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert summary["best_dev_bleu"] is not None
    factors = [
        re.fullmatch(r"Sampled segmentations are (\S+)x \(source\) and (\S+)x \(target\) as long", r.getMessage())
        for r in caplog.records
    ]
    (found,) = [f for f in factors if f]
    assert 1.0 < float(found[1]) < 3.0 and 1.0 < float(found[2]) < 3.0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Subword sampling: alpha 0.1, n-best -1; every epoch segments the training pairs anew" in log


def epoch_batches(trainer, epoch: int) -> list[list[tuple[list[int], list[int]]]]:
    """What the Trainer's loader gives in `epoch`: per batch, each pair's ids (EOS included)."""
    trainer.data.dataset.set_epoch(epoch)
    trainer.data.sampler.set_epoch(epoch)
    return [
        [(trainer.data.dataset[i][0].tolist(), trainer.data.dataset[i][1].tolist()) for i in batch]
        for batch in trainer.data.sampler
    ]


def test_training_batches_hold_sampled_segmentations_the_same_in_every_run(tmp_path: Path, tiny_corpus):
    corpus = {"train": tiny_corpus["train"], "dev": tiny_corpus["dev"]}
    seen = []
    for run in ("a", "b"):
        data = tiny_sampling_config(tmp_path, corpus, run, max_steps=2)
        data["data"]["dev"] = corpus["dev"]
        with prepared_run(config_from_dict(data)) as trainer:
            assert trainer.data.loader_workers == 1  # data.num_workers 0: one worker segments in the background
            dataset = trainer.data.dataset
            cached = [
                ([*dataset.corpus.pair(i)[0].tolist(), EOS_ID], [*dataset.corpus.pair(i)[1].tolist(), EOS_ID])
                for i in range(len(dataset))
            ]
            batches = epoch_batches(trainer, 0)
            indices = [i for batch in trainer.data.sampler.rank_batches(0) for i in batch]
            served = [pair for batch in batches for pair in batch]
            assert sorted(indices) == list(range(len(dataset)))
            # Each pair is its draw for (epoch 0, its index), or the cached pair when the draw is over the limits.
            drawn = [dataset.subwords.segment(dataset.corpus.pair(i), 0, i) for i in indices]
            expected = [cached[i] if d is None else ([*d[0], EOS_ID], [*d[1], EOS_ID]) for i, d in zip(indices, drawn)]
            assert served == expected
            fell_back = sum(d is None for d in drawn)
            assert fell_back <= 0.25 * len(indices)
            differing = sum(served[k] != cached[i] for k, i in enumerate(indices))
            assert differing == len(indices) - fell_back, "epoch 0 should train on sampled segmentations"
            # The batches are sized for the longer draws: expected lengths between the cached ones and the limit.
            sizes = trainer.data.sampler.src_lengths - 1
            assert (sizes >= dataset.corpus.src_lengths).all() and (sizes <= 99).all()
            assert (sizes > dataset.corpus.src_lengths).mean() > 0.5
            # The same through the DataLoader the Trainer builds (a worker process), batch for batch.
            loader = DataLoader(dataset, batch_sampler=trainer.data.sampler, collate_fn=collate, num_workers=1)
            loaded = list(loader)
            assert len(loaded) == len(batches)
            for batch, pairs in zip(loaded, batches):
                assert batch.src_lengths.tolist() == [len(src) for src, _ in pairs]
                for row, (src, tgt) in enumerate(pairs):
                    assert batch.src[row, : len(src)].tolist() == src and batch.tgt_out[row, : len(tgt)].tolist() == tgt
            # Validation batches stay deterministic.
            dev_src, dev_ref = head(Path(f"{corpus['dev']}.es"), 20), head(Path(f"{corpus['dev']}.en"), 20)
            plain = make_dev_set(dev_src, dev_ref, trainer.data.tokenizer, 2000)
            for ours, theirs in zip(trainer.validator.dev.batches, plain.batches, strict=True):
                assert torch.equal(ours.src, theirs.src) and torch.equal(ours.tgt_out, theirs.tgt_out)
            seen.append((batches, epoch_batches(trainer, 1)))
    assert seen[0] == seen[1]
    assert seen[0][0] != seen[0][1]  # epoch 1 draws anew


def test_without_sampling_the_loader_stays_in_the_training_process(tmp_path: Path, tiny_corpus):
    data = tiny_sampling_config(tmp_path, tiny_corpus, "run", max_steps=2)
    data["tokenizer"]["sampling"] = None
    with prepared_run(config_from_dict(data)) as trainer:
        assert trainer.data.loader_workers == 0 and trainer.data.dataset.subwords is None
        sizes = trainer.data.sampler.src_lengths - 1
        assert (sizes == trainer.data.dataset.corpus.src_lengths).all()
    data["tokenizer"]["sampling"] = dict(SAMPLING)
    data["data"]["num_workers"] = 2
    data["train"]["run_dir"] = str(tmp_path / "workers")
    with prepared_run(config_from_dict(data)) as trainer:
        assert trainer.data.loader_workers == 2  # as configured


def test_same_seed_with_sampling_reproduces_a_run_exactly(tmp_path: Path, tiny_corpus):
    """Two runs of one config train on the same segmentations (the same draws in any process: see
    test_a_fresh_process_draws_the_same_segmentations)."""
    for run in ("a", "b"):
        train(config_from_dict(tiny_sampling_config(tmp_path, tiny_corpus, run, max_steps=4)))
    losses_a, weights_a = losses_and_weights(tmp_path / "a")
    losses_b, weights_b = losses_and_weights(tmp_path / "b")
    assert losses_a == losses_b
    assert_same_weights(weights_a, weights_b)


def test_resume_with_sampling_equals_an_uninterrupted_run(tmp_path: Path, tiny_corpus):
    """Broken inside epoch 0, resumed into epoch 1: every update sees the same segmentations."""

    def config(run: str, max_steps: int):
        return config_from_dict(tiny_sampling_config(tmp_path, tiny_corpus, run, max_steps))

    with prepared_run(config("whole", 11)) as trainer:
        trainer.run()
        assert trainer.data.dataset.epoch == 1, "the Trainer tells the dataset which epoch it segments"
    first_half = train(config("halves", 3))
    assert first_half["epochs"] < 1
    resumed = train(config("halves", 11), resume=True)
    assert resumed["steps"] == 11 and resumed["epochs"] > 1, "the resumed part should reach epoch 1"
    losses_whole, weights_whole = losses_and_weights(tmp_path / "whole")
    losses_halves, weights_halves = losses_and_weights(tmp_path / "halves")
    assert losses_halves == losses_whole
    assert_same_weights(weights_whole, weights_halves)


@pytest.mark.slow
def test_resume_with_sampling_in_a_new_process_equals_an_uninterrupted_run(tmp_path: Path, tiny_corpus):
    """The resumed part runs in a child process (`seq2seq train --resume`): its draws are this process's."""
    train(config_from_dict(tiny_sampling_config(tmp_path, tiny_corpus, "whole", 11)))
    assert train(config_from_dict(tiny_sampling_config(tmp_path, tiny_corpus, "halves", 3)))["epochs"] < 1
    config = write_config(tmp_path, tiny_sampling_config(tmp_path, tiny_corpus, "halves", 11))
    result = run_seq2seq("train", config, "--resume", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    losses_whole, weights_whole = losses_and_weights(tmp_path / "whole")
    losses_halves, weights_halves = losses_and_weights(tmp_path / "halves")
    assert len(losses_whole) == 11 and losses_halves == losses_whole
    assert_same_weights(weights_whole, weights_halves)
