"""Several weighted training corpora (data.train as a list): what an epoch draws from each (every copy of a
pair an item of its own, numbered pair + copy x total, segmented apart under subword sampling), the batches,
the per-corpus log lines and summary, the cache entry of each corpus, and exact resume."""

from __future__ import annotations

import collections
import functools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    DATA,
    assert_same_weights,
    head,
    make_config,
    make_toy_config,
    regularised_toy_config,
    toy_pairs,
    write_config,
    write_lines,
    write_parallel,
    write_toy_corpus,
)

from seq2seq.cli import main
from seq2seq.config import SamplingConfig, config_from_dict
from seq2seq.data import EncodedCorpus, ParallelDataset, TokenBucketSampler, weighted_epoch
from seq2seq.rundir import read_records
from seq2seq.subwords import SubwordSampler
from seq2seq.tokenizer import EOS_ID
from seq2seq.train import prepared_run, train

# --- weighted_epoch: the pairs one epoch draws ------------------------------------------------------


def counts(indices: np.ndarray) -> collections.Counter:
    return collections.Counter(indices.tolist())


def test_weight_1_draws_every_pair_once_in_corpus_order():
    assert weighted_epoch([4, 3], [1.0, 1.0], seed=0, epoch=0).tolist() == list(range(7))


def test_weight_2_draws_every_pair_twice_as_two_numbered_copies():
    """Copy c of pair i is i + c x total: two items of their own, whose pair is the number % total."""
    drawn = weighted_epoch([5], [2.0], seed=0, epoch=0)
    assert drawn.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert counts(drawn % 5) == {i: 2 for i in range(5)}


def test_a_negative_seed_draws_like_its_unsigned_twin():
    """Checkpoints of earlier versions may hold train.seed: -1; numpy's generators take only seeds >= 0."""
    drawn = weighted_epoch([30], [0.5], seed=-1, epoch=0)
    assert drawn.tolist() == weighted_epoch([30], [0.5], seed=2**64 - 1, epoch=0).tolist()
    assert len(drawn) == 15


def test_weight_one_half_draws_half_the_pairs_once_each():
    drawn = weighted_epoch([30], [0.5], seed=3, epoch=0)
    assert len(drawn) == 15 and len(set(drawn.tolist())) == 15
    assert set(drawn.tolist()) <= set(range(30))


def test_the_fraction_is_drawn_anew_each_epoch_and_again_the_same_for_the_same_seed_and_epoch():
    first = weighted_epoch([30], [0.5], seed=3, epoch=0)
    assert weighted_epoch([30], [0.5], seed=3, epoch=0).tolist() == first.tolist()
    assert set(weighted_epoch([30], [0.5], seed=3, epoch=1).tolist()) != set(first.tolist())
    assert set(weighted_epoch([30], [0.5], seed=4, epoch=0).tolist()) != set(first.tolist())


def test_weight_2_5_draws_every_pair_twice_and_half_of_them_a_third_time():
    drawn = weighted_epoch([10], [2.5], seed=0, epoch=0)
    assert len(set(drawn.tolist())) == len(drawn) == 25  # every copy a number of its own
    tally = counts(drawn % 10)
    assert set(tally) == set(range(10))
    assert sorted(tally.values()) == [2] * 5 + [3] * 5
    assert set(drawn[drawn >= 20].tolist()) == {20 + i for i, n in tally.items() if n == 3}  # the third copies


def test_each_corpus_draws_from_its_own_index_range_and_its_own_random_stream():
    """Corpus k's pairs are numbered after those of corpora 0..k-1 (copies: + c x total, all corpora's pairs);
    another corpus's weight leaves its share be."""
    drawn = weighted_epoch([10, 20], [2.0, 0.5], seed=0, epoch=0)
    first, second = drawn[drawn % 30 < 10], drawn[drawn % 30 >= 10]
    assert first.tolist() == [*range(10), *range(30, 40)]  # pair i and its second copy i + 30
    assert counts(first % 30) == {i: 2 for i in range(10)}
    assert len(second) == 10 and len(set(second.tolist())) == 10 and 10 <= second.min() and second.max() < 30
    other = weighted_epoch([10, 20], [3.5, 0.5], seed=0, epoch=0)
    assert other[other % 30 >= 10].tolist() == second.tolist()
    assert sorted(counts(other[other % 30 < 10] % 30).values()) == [3] * 5 + [4] * 5
    twins = weighted_epoch([20, 20], [0.5, 0.5], seed=0, epoch=0)  # two corpora alike draw different pairs
    assert twins[twins < 20].tolist() != (twins[twins >= 20] - 20).tolist()


def test_a_weight_1_epoch_plan_gives_the_batches_of_no_plan():
    """One corpus of weight 1 batched through weighted_epoch is batched exactly as before corpora had weights."""
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    plain = TokenBucketSampler(src, tgt, 200, seed=5, pool_batches=2)
    planned = TokenBucketSampler(
        src, tgt, 200, seed=5, pool_batches=2, epoch_plan=functools.partial(weighted_epoch, [200], [1.0], 5)
    )
    for epoch in range(3):
        assert planned.all_batches(epoch) == plain.all_batches(epoch)
    assert plain.all_batches(0) != plain.all_batches(1)  # epochs differ, so the equality is not vacuous


def test_copies_are_batched_by_their_pairs_lengths():
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(1, 30, 50), rng.integers(1, 30, 50)
    plan = functools.partial(weighted_epoch, [20, 30], [2.0, 1.5], 5)
    sampler = TokenBucketSampler(src, tgt, 120, seed=5, pool_batches=2, epoch_plan=plan)
    for epoch in range(2):
        batches = sampler.all_batches(epoch)
        assert sorted(i for batch in batches for i in batch) == sorted(plan(epoch).tolist())
        assert max(i for batch in batches for i in batch) >= 50  # second copies, numbered past the pairs
        for batch in batches:  # each batch fits, counting each copy as long as its pair
            widths = [max(src[i % 50], tgt[i % 50]) + 1 for i in batch]
            assert max(widths) * len(batch) <= 120


def test_the_two_copies_of_a_pair_get_their_own_segmentations(tokenizer):
    """With subword sampling, the copies of a weight-2 epoch are segmented apart; without it, alike."""
    lines = head(DATA / "train.es", 40), head(DATA / "train.en", 40)
    corpus = EncodedCorpus.from_lists(tokenizer.encode_src(lines[0]), tokenizer.encode_tgt(lines[1]))
    pairs = len(corpus)
    drawn = weighted_epoch([pairs], [2.0], seed=3, epoch=0)
    assert sorted(drawn.tolist()) == list(range(2 * pairs))  # pair i as i and i + pairs
    sampler = SubwordSampler(tokenizer, SamplingConfig(alpha=0.1, nbest=-1), 3, (1000, 1000))
    sampled, plain = ParallelDataset(corpus, sampler), ParallelDataset(corpus)
    for dataset in (sampled, plain):
        dataset.set_epoch(0)

    def served(dataset: ParallelDataset, index: int) -> list[list[int]]:
        return [t.tolist() for t in dataset[index]]

    differing = 0
    for i in range(pairs):
        first, second = served(sampled, i), served(sampled, i + pairs)
        assert tokenizer.src.decode(first[0][:-1]) == tokenizer.src.decode(second[0][:-1]) == lines[0][i].strip()
        differing += first != second
        assert served(plain, i) == served(plain, i + pairs) == [[*ids.tolist(), EOS_ID] for ids in corpus.pair(i)]
    assert differing >= 0.9 * pairs


def test_a_weight_2_run_with_sampling_trains_on_two_segmentations_of_each_pair(tmp_path: Path, tiny_corpus):
    """The whole pipeline (builders): one corpus of weight 2, a unigram model, tokenizer.sampling on."""
    config = make_config(tmp_path, {"train": [{"prefix": tiny_corpus["train"], "weight": 2}], "dev": None})
    config["tokenizer"]["sampling"] = {"alpha": 0.1}
    config["train"]["batch_tokens"] = 2000
    with prepared_run(config_from_dict(config)) as trainer:
        dataset, total = trainer.data.dataset, len(trainer.data.dataset)
        assert trainer.data.tokenizer.model_type == "unigram" and dataset.subwords is not None
        dataset.set_epoch(0)
        drawn = [i for batch in trainer.data.sampler.rank_batches(0) for i in batch]
        assert sorted(drawn) == list(range(2 * total))  # each pair twice, as i and i + total
        served = {i: [t.tolist() for t in dataset[i]] for i in drawn}
        differing = sum(served[i] != served[i + total] for i in range(total))
        assert differing >= 0.75 * total  # some draws are over the length limit: both copies cached then
        for i in range(total):
            first, second = (dataset.subwords.segment(dataset.corpus.pair(i), 0, j) for j in (i, i + total))
            if first is not None and second is not None:
                assert served[i] == [[*first[0], EOS_ID], [*first[1], EOS_ID]]
                assert served[i + total] == [[*second[0], EOS_ID], [*second[1], EOS_ID]]
    config["tokenizer"]["sampling"] = None
    config["train"]["run_dir"] = str(tmp_path / "plain")
    with prepared_run(config_from_dict(config)) as trainer:
        dataset = trainer.data.dataset
        assert sorted(i for batch in trainer.data.sampler.rank_batches(0) for i in batch) == list(range(2 * total))
        for i in range(total):
            assert [t.tolist() for t in dataset[i]] == [t.tolist() for t in dataset[i + total]]


# --- a run with two weighted corpora ----------------------------------------------------------------


def two_corpora(directory: Path) -> dict:
    """The 30 toy pairs (weight 0.5) and 6 other toy pairs, one of them empty (weight 1.5: 5 kept, 7 drawn)."""
    corpus = write_toy_corpus(directory)
    src, tgt = toy_pairs(5, seed=1)
    extra = write_parallel(directory / "extra" / "train", [*src, ""], [*tgt, ""])
    return {
        "train": [{"prefix": corpus["train"], "weight": 0.5}, {"prefix": extra, "weight": 1.5}],
        "dev": corpus["dev"],
        "toy": corpus["train"],
        "extra": extra,
    }


def two_corpora_config(directory: Path, corpora: dict) -> dict:
    return make_toy_config(directory, {"train": corpora["train"], "dev": corpora["dev"]})


def test_each_epoch_draws_from_each_corpus_as_its_weight_says(tmp_path: Path):
    corpora = two_corpora(tmp_path)
    with prepared_run(config_from_dict(two_corpora_config(tmp_path, corpora))) as trainer:
        sampler, records = trainer.data.sampler, trainer.data.corpora
        assert len(trainer.data.dataset) == 35  # 30 + the 5 pairs of the second corpus that are kept
        subsets = []
        for epoch in range(3):
            batches = sampler.all_batches(epoch)
            assert batches == sampler.rank_batches(epoch)  # one process: every batch is its own
            drawn = [i for batch in batches for i in batch]
            assert len(set(drawn)) == len(drawn)  # copies are numbered apart
            tally = counts(np.array(drawn) % 35)
            toy = {i: n for i, n in tally.items() if i < 30}
            extra = [tally[i] for i in range(30, 35)]
            assert len(toy) == 15 and set(toy.values()) == {1}  # weight 0.5: half the pairs, once
            assert sorted(extra) == [1, 1, 1, 2, 2]  # weight 1.5: each once, round(2.5) of them twice
            assert [r["per_epoch"] for r in records] == [sum(toy.values()), sum(extra)]
            subsets.append(set(toy))
        assert subsets[0] != subsets[1] != subsets[2]
    assert records == [
        {"prefix": corpora["toy"], "weight": 0.5, "pairs": 30, "kept": 30, "per_epoch": 15},
        {"prefix": corpora["extra"], "weight": 1.5, "pairs": 6, "kept": 5, "per_epoch": 7},
    ]


def test_a_run_with_two_weighted_corpora_logs_and_records_each(tmp_path: Path, caplog):
    corpora = two_corpora(tmp_path)
    config = two_corpora_config(tmp_path, corpora)
    config["train"].update(max_steps=4, validate_every=4)
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        summary = train(config_from_dict(config))
    toy, extra = corpora["toy"], corpora["extra"]
    messages = [r.getMessage() for r in caplog.records]
    assert f"Kept 30 of 30 training pairs of {toy} (skipped: 0 empty, 0 longer than 100/100 pieces)" in messages
    assert f"Kept 5 of 6 training pairs of {extra} (skipped: 1 empty, 0 longer than 100/100 pieces)" in messages
    assert f"Each epoch draws 22 pairs: {toy} 15 (weight 0.5), {extra} 7 (weight 1.5)" in messages
    assert summary["steps"] == 4 and summary["skipped_updates"] == 0
    expected = [
        {"prefix": toy, "weight": 0.5, "pairs": 30, "kept": 30, "per_epoch": 15},
        {"prefix": extra, "weight": 1.5, "pairs": 6, "kept": 5, "per_epoch": 7},
    ]
    assert summary["train_corpora"] == expected
    run_dir = Path(config["train"]["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["train_corpora"] == expected
    run = torch.load(run_dir / "last.pt", weights_only=True)["run"]
    assert run["train_corpora"] == expected
    assert len(run["train_data_sha256"]) == 4  # source and target of each corpus
    progress = read_records(run_dir / "progress.jsonl")
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and progress[-1]["train_loss"] < progress[0]["train_loss"]


def test_a_single_corpus_logs_no_epoch_draw_line_and_records_itself(toy_config, caplog):
    toy_config["train"].update(max_steps=1, validate_every=1)
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        summary = train(config_from_dict(toy_config))
    assert not [r for r in caplog.records if r.getMessage().startswith("Each epoch draws")]
    prefix = toy_config["data"]["train"]
    assert summary["train_corpora"] == [{"prefix": prefix, "weight": 1.0, "pairs": 30, "kept": 30, "per_epoch": 30}]
    assert "train_corpora" not in torch.load(Path(toy_config["train"]["run_dir"]) / "last.pt")["run"]


@pytest.mark.parametrize(
    "listed",
    [lambda p: [p], lambda p: [{"prefix": p}], lambda p: [{"prefix": p, "weight": 1}]],
    ids=["list", "mapping", "weight-1"],
)
def test_one_corpus_of_weight_1_gives_the_batches_of_a_plain_prefix(tmp_path: Path, listed):
    corpus = write_toy_corpus(tmp_path)

    def batches(train_value, run: str) -> list:
        config = make_toy_config(tmp_path, {"train": train_value, "dev": None})
        config["train"].update(run_dir=str(tmp_path / run), batch_tokens=40)
        with prepared_run(config_from_dict(config)) as trainer:
            return [trainer.data.sampler.all_batches(epoch) for epoch in range(3)]

    plain = batches(corpus["train"], "plain")
    assert batches(listed(corpus["train"]), "listed") == plain
    assert len(plain[0]) > 3 and plain[0] != plain[1]


def test_corpus_file_errors_name_the_corpus(tmp_path: Path, capfd):
    corpus = write_toy_corpus(tmp_path)
    src, tgt = toy_pairs(5, seed=1)
    extra = write_parallel(tmp_path / "extra" / "train", src, tgt)
    config = make_toy_config(tmp_path, {"train": [corpus["train"], {"prefix": extra, "weight": 2}], "dev": None})
    write_lines(Path(f"{extra}.en"), tgt[:4])
    path = write_config(tmp_path, config)
    assert main(["train", path]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("seq2seq: error:")] == [lines[-1]]
    assert lines[-1] == (
        f"seq2seq: error: misaligned corpus: {extra}.es has 5 lines but {extra}.en has 4; "
        "line i of one must translate line i of the other"
    )
    Path(f"{extra}.en").unlink()
    assert main(["train", path]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert [line for line in lines if line.startswith("seq2seq: error:")] == [lines[-1]]
    assert lines[-1].startswith(f"seq2seq: error: corpus file not found: {extra}.en (nor {extra}.en.gz)")


# --- the cache, and resume ---------------------------------------------------------------------------


def reused_from_cache(caplog) -> list[str]:
    """The cache entries the last run reused (the directories its log names)."""
    prefix = "Encoded training corpus reused from cache: "
    return [r.getMessage()[len(prefix) :] for r in caplog.records if r.getMessage().startswith(prefix)]


def test_new_weights_reuse_each_corpus_cache_entry_and_the_tokenizer(tmp_path: Path, caplog):
    corpora = two_corpora(tmp_path)
    config = two_corpora_config(tmp_path, corpora)
    config["data"]["dev"] = None
    config["train"].update(max_steps=1)
    caplog.set_level(logging.INFO, logger="seq2seq")
    train(config_from_dict(config))
    assert reused_from_cache(caplog) == []
    entries = sorted(p.name for p in (tmp_path / "cache").glob("corpus-*"))
    assert len(entries) == 2
    caplog.clear()
    config["data"]["train"] = [{"prefix": corpora["toy"], "weight": 3}, {"prefix": corpora["extra"], "weight": 0.2}]
    config["train"]["run_dir"] = str(tmp_path / "reweighted")
    train(config_from_dict(config))
    assert sorted(Path(p).name for p in reused_from_cache(caplog)) == entries
    assert any(r.getMessage().startswith("SentencePiece model reused from cache") for r in caplog.records)
    assert sorted(p.name for p in (tmp_path / "cache").glob("corpus-*")) == entries


def test_adding_a_corpus_reuses_the_first_ones_cache_entry(tmp_path: Path, toy_model, caplog):
    """With the tokenizer fixed (fine-tuning), a corpus encoded alone is not encoded again beside a second one."""
    corpora = two_corpora(tmp_path)
    config = make_toy_config(tmp_path, {"train": corpora["toy"], "dev": None})
    config["train"].update(max_steps=1, init_from=str(toy_model["checkpoint"]))
    caplog.set_level(logging.INFO, logger="seq2seq")
    train(config_from_dict(config))
    assert reused_from_cache(caplog) == []
    (alone,) = (tmp_path / "cache").glob("corpus-*")
    caplog.clear()
    config["data"]["train"] = [corpora["toy"], {"prefix": corpora["extra"], "weight": 2}]
    config["train"]["run_dir"] = str(tmp_path / "two")
    train(config_from_dict(config))
    assert reused_from_cache(caplog) == [str(alone)]
    assert len(list((tmp_path / "cache").glob("corpus-*"))) == 2  # the second corpus got its own entry


def test_resume_with_two_weighted_corpora_equals_an_uninterrupted_run(tmp_path: Path):
    corpora = two_corpora(tmp_path)

    def config(run: str, max_steps: int):
        data = regularised_toy_config(tmp_path, {"train": corpora["train"], "dev": None}, run, max_steps)
        data["train"]["batch_tokens"] = 40  # several batches an epoch
        return config_from_dict(data)

    train(config("whole", 8))
    first_half = train(config("halves", 3))
    assert first_half["epochs"] % 1 != 0, "the break should fall inside an epoch"
    assert train(config("halves", 8), resume=True)["steps"] == 8
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    losses = [[p["train_loss"] for p in read_records(run / "progress.jsonl")] for run in (whole, halves)]
    assert len(losses[0]) == 8 and losses[1] == losses[0]
    weights = [torch.load(run / "last.pt", weights_only=True)["model"] for run in (whole, halves)]
    assert_same_weights(*weights)
