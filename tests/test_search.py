"""Decoding on a tiny trained model: greedy and beam search agree where they must, scores are
true (length-normalised) log-probabilities, attention is well formed, padding never leaks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import toy_sentence
from torch.nn.utils.rnn import pad_sequence

from seq2seq.checkpoint import load_trained
from seq2seq.config import DecodeConfig, ModelConfig
from seq2seq.ensemble import Ensemble
from seq2seq.model import Seq2Seq
from seq2seq.search import (
    Hypothesis,
    beam_search,
    coverage_penalty,
    decode_lines,
    greedy_search,
    length_penalty,
    max_output_lengths,
    sampling_distribution,
)
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

ATOL = 1e-4


@pytest.fixture(scope="module")
def trained(toy_model):
    """The toy model (eval mode, CPU), its tokenizer, and the training sentences."""
    trained = load_trained(toy_model["checkpoint"])
    return {
        "model": trained.model,
        "tokenizer": trained.tokenizer,
        "train_src": toy_model["src"].read_text().splitlines(),
        "train_ref": toy_model["ref"].read_text().splitlines(),
    }


@pytest.fixture(scope="module")
def mixed(trained) -> list[str]:
    """Sentences of very different lengths: 1, 6 and 3-6 (seen in training), 12 and 40 words."""
    six = next(line for line in trained["train_src"] if len(line.split()) == 6)
    return ["gato", six, toy_sentence(12, seed=1), trained["train_src"][7], toy_sentence(40, seed=2)]


def as_batch(tokenizer, lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded source ids [B, S] (EOS-terminated) and lengths [B], as decode_lines builds them."""
    sources = [torch.tensor(ids + [EOS_ID]) for ids in tokenizer.encode_src(lines)]
    src = pad_sequence(sources, batch_first=True, padding_value=PAD_ID)
    return src, torch.tensor([len(s) for s in sources])


def teacher_forced(model, tokenizer, line: str, ids: list[int]) -> tuple[float, torch.Tensor]:
    """log P(ids + EOS | line) and the attention [len(ids) + 1, S], by teacher forcing the sentence alone."""
    src, lengths = as_batch(tokenizer, [line])
    tgt_in = torch.tensor([[BOS_ID] + ids])
    with torch.no_grad():
        every = torch.ones_like(tgt_in, dtype=torch.bool)
        logits = model(src, lengths, src != PAD_ID, tgt_in, every)  # [T, V]
        weights = model.attend(src, lengths, src != PAD_ID, tgt_in)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
    target = ids + [EOS_ID]
    return float(log_probs[torch.arange(len(target)), target].sum()), weights[0].float()


def test_sentences_really_differ_in_length(trained, mixed):
    _, lengths = as_batch(trained["tokenizer"], mixed)
    assert lengths.min() == 2 and lengths.max() == 41  # so padding is heavy for most rows


def test_beam_size_1_is_exactly_greedy(trained, mixed):
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    greedy = greedy_search(model, src, lengths)
    beam = beam_search(model, src, lengths, beam_size=1, alpha=0.0)
    assert len(greedy) == len(beam) == len(mixed)
    for g, (b,) in zip(greedy, beam):
        assert b.ids == g.ids
        assert b.log_prob == pytest.approx(g.log_prob, abs=ATOL)
        assert g.score == g.log_prob  # greedy: the score is the log-probability
    assert any(len(g.ids) >= 3 for g in greedy)  # not a vacuous comparison of empty outputs


def test_memorised_sentences_are_translated(trained):
    """Sanity check that the fixture model learnt its corpus, so the other tests are not vacuous."""
    tokenizer = trained["tokenizer"]
    src, lengths = as_batch(tokenizer, trained["train_src"])
    texts = [tokenizer.decode_tgt(h.ids) for h in greedy_search(trained["model"], src, lengths)]
    right = sum(t == r for t, r in zip(texts, trained["train_ref"]))
    assert right >= 0.9 * len(texts)


@pytest.mark.parametrize("n_best", [1, 3, 5])
def test_n_best_lists_are_sorted_and_complete(trained, mixed, n_best):
    src, lengths = as_batch(trained["tokenizer"], mixed)
    results = beam_search(trained["model"], src, lengths, beam_size=5, n_best=n_best)
    assert len(results) == len(mixed)
    for hypotheses in results:
        assert len(hypotheses) == n_best
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in hypotheses}) == n_best  # distinct hypotheses


def tiny_untrained_model() -> Seq2Seq:
    """An untrained model with 6 target pieces (the 4 specials and 2 words), its output layer sharpened."""
    torch.manual_seed(0)
    config = ModelConfig(embedding_size=8, encoder_hidden_size=8, decoder_hidden_size=16, dropout=0.0)
    model = Seq2Seq(config, src_vocab_size=6, tgt_vocab_size=6).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(10.0)  # clear preferences: no near-ties between outputs
    return model


def test_a_beam_as_wide_as_the_search_space_is_exact():
    """A beam that holds every possible output prunes nothing: its n-best list is all of them, ranked by
    their true log-probability (alpha 0), so it finds the most probable output and beats greedy search.

    (With a narrower beam neither is guaranteed: the greedy prefix can fall out of the beam, and the beam's
    best can then score below greedy's. Beam size 1 equal to greedy is tested above.)
    """
    model = tiny_untrained_model()
    src, lengths = torch.tensor([[4, 5, 4, EOS_ID]]), torch.tensor([4])
    limit = int(max_output_lengths(lengths, 0.01))  # 5 pieces, EOS included
    pieces = [i for i in range(6) if i not in (PAD_ID, EOS_ID)]  # what search may emit before EOS: UNK, BOS, 4, 5
    outputs = [list(ids) for n in range(limit) for ids in itertools.product(pieces, repeat=n)]
    assert len(outputs) == 1 + 4 + 16 + 64 + 256
    # Every output scored by teacher forcing, all at once: log P(ids + EOS | src).
    tgt_in = torch.tensor([[BOS_ID] + ids + [PAD_ID] * (limit - 1 - len(ids)) for ids in outputs])
    batch = len(outputs)
    with torch.no_grad():
        every = torch.ones_like(tgt_in, dtype=torch.bool)
        logits = model(src.expand(batch, -1), lengths.expand(batch), (src != PAD_ID).expand(batch, -1), tgt_in, every)
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(batch, limit, -1)
    exact = {}
    for row, ids in enumerate(outputs):
        target = ids + [EOS_ID]
        exact[tuple(ids)] = float(log_probs[row, torch.arange(len(target)), target].sum())
    ranked = sorted(exact, key=exact.get, reverse=True)
    assert exact[ranked[0]] - exact[ranked[1]] > 0.01  # a clear winner: the comparison below is not a coin toss

    (found,) = beam_search(model, src, lengths, beam_size=batch, alpha=0.0, max_output_ratio=0.01, n_best=batch)
    assert sorted(tuple(h.ids) for h in found) == sorted(exact)  # each possible output once
    for h in found:
        assert h.score == h.log_prob == pytest.approx(exact[tuple(h.ids)], abs=ATOL)
    assert tuple(found[0].ids) == ranked[0]
    (greedy,) = greedy_search(model, src, lengths, max_output_ratio=0.01)
    assert greedy.score == pytest.approx(exact[tuple(greedy.ids)], abs=ATOL)
    assert found[0].score >= greedy.score - ATOL


def test_batched_greedy_search_equals_one_sentence_at_a_time(trained, mixed):
    """Sentences leave the batch as they end: the others' results must not change."""
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    batched = greedy_search(model, src, lengths)
    assert len({len(h.ids) for h in batched}) > 2  # sentences end at different steps
    for line, together in zip(mixed, batched):
        one_src, one_lengths = as_batch(tokenizer, [line])
        (alone,) = greedy_search(model, one_src, one_lengths)
        assert together.ids == alone.ids
        assert together.score == pytest.approx(alone.score, abs=ATOL)
        torch.testing.assert_close(together.attention, alone.attention, atol=ATOL, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_batched_beam_search_equals_one_sentence_at_a_time(trained, mixed, alpha):
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    batched = beam_search(model, src, lengths, beam_size=4, alpha=alpha, n_best=4)
    for line, together in zip(mixed, batched):
        one_src, one_lengths = as_batch(tokenizer, [line])
        (alone,) = beam_search(model, one_src, one_lengths, beam_size=4, alpha=alpha, n_best=4)
        assert [h.ids for h in together] == [h.ids for h in alone]
        for a, b in zip(together, alone):
            assert a.score == pytest.approx(b.score, abs=ATOL)
            assert a.log_prob == pytest.approx(b.log_prob, abs=ATOL)
            torch.testing.assert_close(a.attention, b.attention, atol=ATOL, rtol=0)


def test_scores_are_length_normalised_true_log_probabilities(trained, mixed):
    """log_prob is log P(ids + EOS | source) (checked by teacher forcing); score = log_prob / penalty."""
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    plain = beam_search(model, src, lengths, beam_size=3, alpha=0.0, n_best=3)
    penalised = beam_search(model, src, lengths, beam_size=3, alpha=1.0, n_best=3)
    for line, hypotheses in zip(mixed, plain):
        assert hypotheses[0].score == hypotheses[0].log_prob  # alpha 0: no length penalty
        for h in hypotheses:
            assert h.score == h.log_prob
            forced, _ = teacher_forced(model, tokenizer, line, h.ids)
            assert h.log_prob == pytest.approx(forced, abs=ATOL)
    for line, hypotheses in zip(mixed, penalised):
        for h in hypotheses:
            forced, _ = teacher_forced(model, tokenizer, line, h.ids)
            assert h.log_prob == pytest.approx(forced, abs=ATOL)
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.ids) + 1) / 6), abs=ATOL)
    for line, g in zip(mixed, greedy_search(model, src, lengths)):
        assert g.score == pytest.approx(teacher_forced(model, tokenizer, line, g.ids)[0], abs=ATOL)


def test_length_penalty_values():
    assert length_penalty(1, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(7, 0.5) == pytest.approx(2.0**0.5)


def check_attention(hypothesis: Hypothesis, src_length: int) -> None:
    attention = hypothesis.attention
    assert attention.shape == (len(hypothesis.ids) + 1, src_length)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(len(hypothesis.ids) + 1), atol=1e-4, rtol=0)


def test_attention_has_a_row_per_output_piece_and_a_column_per_source_piece(trained, mixed):
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    greedy = greedy_search(model, src, lengths)
    beams = beam_search(model, src, lengths, beam_size=4, n_best=4)
    for line, length, g, hypotheses in zip(mixed, lengths.tolist(), greedy, beams):
        check_attention(g, length)
        torch.testing.assert_close(g.attention, teacher_forced(model, tokenizer, line, g.ids)[1], atol=ATOL, rtol=0)
        for h in hypotheses:
            check_attention(h, length)
            # the attention followed this hypothesis' own history (beam reordering kept it right)
            torch.testing.assert_close(h.attention, teacher_forced(model, tokenizer, line, h.ids)[1], atol=ATOL, rtol=0)


def test_max_output_ratio_bounds_output_lengths(trained, mixed):
    model, tokenizer = trained["model"], trained["tokenizer"]
    src, lengths = as_batch(tokenizer, mixed)
    free = greedy_search(model, src, lengths, max_output_ratio=1.5)
    for ratio in (0.01, 0.3, 1.5):
        limits = max_output_lengths(lengths, ratio).tolist()
        greedy = greedy_search(model, src, lengths, max_output_ratio=ratio)
        beams = beam_search(model, src, lengths, beam_size=3, n_best=3, max_output_ratio=ratio)
        for limit, g, f, hypotheses in zip(limits, greedy, free, beams):
            assert len(g.ids) + 1 <= limit  # EOS included
            assert g.ids == f.ids[: limit - 1]  # greedy is cut, not changed, by the limit
            assert len(hypotheses) == 3  # every beam still ends (EOS is forced at the limit) ...
            assert all(len(h.ids) + 1 <= limit for h in hypotheses)  # ... within the limit
    assert max_output_lengths(torch.tensor([7]), 0.01).tolist() == [5]
    # 0.01 binds on the memorised 6-word sentence: it comes out cut to 4 pieces
    cut = greedy_search(model, src[1:2, : lengths[1]], lengths[1:2], max_output_ratio=0.01)[0]
    assert len(free[1].ids) > 4 and len(cut.ids) == 4


def test_padding_never_leaks_into_scores(trained):
    model, tokenizer = trained["model"], trained["tokenizer"]
    line, long_line = trained["train_src"][3], toy_sentence(60, seed=3)
    alone_src, alone_lengths = as_batch(tokenizer, [line])
    both_src, both_lengths = as_batch(tokenizer, [line, long_line])
    assert both_src.size(1) > 5 * alone_src.size(1)
    (greedy_alone,) = greedy_search(model, alone_src, alone_lengths)
    greedy_both = greedy_search(model, both_src, both_lengths)[0]
    assert greedy_both.ids == greedy_alone.ids
    assert greedy_both.score == pytest.approx(greedy_alone.score, abs=ATOL)
    torch.testing.assert_close(greedy_both.attention, greedy_alone.attention, atol=ATOL, rtol=0)
    (beam_alone,) = beam_search(model, alone_src, alone_lengths, beam_size=5, n_best=5)
    beam_both = beam_search(model, both_src, both_lengths, beam_size=5, n_best=5)[0]
    assert [h.ids for h in beam_both] == [h.ids for h in beam_alone]
    for a, b in zip(beam_both, beam_alone):
        assert a.score == pytest.approx(b.score, abs=ATOL)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_decode_lines_keeps_order_and_gives_empty_lines_an_empty_hypothesis(trained, mixed, beam_size):
    model, tokenizer = trained["model"], trained["tokenizer"]
    lines = [mixed[4], "", mixed[0], "   ", mixed[2], mixed[1], ""]
    whole = decode_lines(model, tokenizer, lines, torch.device("cpu"), DecodeConfig(beam=beam_size))
    small = decode_lines(
        model, tokenizer, lines, torch.device("cpu"), DecodeConfig(beam=beam_size, batch_tokens=3 * beam_size)
    )
    assert len(whole) == len(small) == len(lines)
    for line, a, b in zip(lines, whole, small):
        assert [h.ids for h in a] == [h.ids for h in b]  # batching does not change results
        if not line.strip():
            assert a[0].ids == [] and a[0].score == 0.0
        else:
            src, lengths = as_batch(tokenizer, [line])
            alone = (
                greedy_search(model, src, lengths)[0]
                if beam_size == 1
                else beam_search(model, src, lengths, beam_size=beam_size)[0][0]
            )
            assert a[0].ids == alone.ids  # each result belongs to its own line


def test_decode_lines_truncates_long_sources(trained):
    model, tokenizer = trained["model"], trained["tokenizer"]
    line = toy_sentence(30, seed=4)
    (best,) = decode_lines(model, tokenizer, [line], torch.device("cpu"), DecodeConfig(beam=1, max_src_length=10))[0]
    assert best.attention.shape[1] == 10  # 9 pieces and EOS
    assert len(best.ids) + 1 <= max_output_lengths(torch.tensor([10]), 1.5).item()
    first_words = " ".join(line.split()[:9])
    (same,) = decode_lines(model, tokenizer, [first_words], torch.device("cpu"), DecodeConfig(beam=1))[0]
    assert best.ids == same.ids


# --- sampling, the coverage penalty, the same output whatever the batch ----------------------------------------


def test_top_k_and_top_p_cut_the_distribution():
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_two = sampling_distribution(log_probs, DecodeConfig(top_k=2))
    torch.testing.assert_close(top_two, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    nucleus = sampling_distribution(log_probs, DecodeConfig(top_p=0.85))  # 0.5 + 0.3 < 0.85: the third is needed
    torch.testing.assert_close(nucleus, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    hot = sampling_distribution(log_probs, DecodeConfig(temperature=2.0))
    torch.testing.assert_close(hot, torch.softmax(log_probs / 2, dim=-1))
    exact = sampling_distribution(torch.log(torch.tensor([[0.5, 0.25, 0.25]])), DecodeConfig(top_p=0.5))
    torch.testing.assert_close(exact, torch.tensor([[1.0, 0.0, 0.0]]))  # 0.5 alone reaches top_p: nothing more
    tied = sampling_distribution(torch.log(torch.tensor([[0.4, 0.2, 0.2, 0.2]])), DecodeConfig(top_k=2))
    assert int((tied > 0).sum()) == 2  # exactly k pieces, ties or not
    cold = sampling_distribution(log_probs, DecodeConfig(temperature=1e-40))
    torch.testing.assert_close(cold, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # no overflow to NaN


def sampled(trained, lines: list[str], **options) -> list[list]:
    return decode_lines(
        trained["model"], trained["tokenizer"], lines, torch.device("cpu"), DecodeConfig(sample=True, **options)
    )


def test_sampling_with_top_k_1_is_greedy(trained, mixed):
    greedy = decode_lines(trained["model"], trained["tokenizer"], mixed, torch.device("cpu"), DecodeConfig(beam=1))
    for one, (sample,) in zip(greedy, sampled(trained, mixed, top_k=1, seed=3)):
        assert sample.ids == one[0].ids and sample.score == pytest.approx(one[0].score, abs=1e-5)


def test_the_same_seed_gives_the_same_samples_and_another_seed_others(trained, mixed):
    first = sampled(trained, mixed, n_best=3, temperature=3.0, seed=11)
    again = sampled(trained, mixed, n_best=3, temperature=3.0, seed=11)
    other = sampled(trained, mixed, n_best=3, temperature=3.0, seed=12)
    assert [[h.ids for h in hs] for hs in first] == [[h.ids for h in hs] for hs in again]
    assert [[h.ids for h in hs] for hs in first] != [[h.ids for h in hs] for hs in other]
    assert all(len(hs) == 3 and hs[0].score >= hs[1].score >= hs[2].score for hs in first)


def test_coverage_penalty_values():
    covered = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.0, 0.5]])  # column sums 1.1 and 1.4: fully covered
    assert coverage_penalty(covered, 0.4) == 0.0
    half = torch.tensor([[0.5, 0.25]])
    assert coverage_penalty(half, 0.4) == pytest.approx(0.4 * (math.log(0.5) + math.log(0.25)))


def test_beam_scores_with_a_coverage_penalty(trained, mixed):
    src, lengths = as_batch(trained["tokenizer"], mixed)
    plain = beam_search(trained["model"], src, lengths, beam_size=3, alpha=0.6, n_best=3)
    covered = beam_search(trained["model"], src, lengths, beam_size=3, alpha=0.6, n_best=3, coverage_beta=2.0)
    penalised = 0
    for hypotheses in covered:
        for h in hypotheses:
            expected = h.log_prob / length_penalty(len(h.ids) + 1, 0.6) + coverage_penalty(h.attention, 2.0)
            assert h.score == pytest.approx(expected, abs=1e-5)
            penalised += coverage_penalty(h.attention, 2.0) < 0
    assert penalised  # some source pieces were left uncovered, so the penalty did something
    # A dominant penalty ranks the finished hypothesis that covers the source best first.
    dominant = beam_search(trained["model"], src, lengths, beam_size=3, alpha=0.6, n_best=3, coverage_beta=1e6)
    for without, with_penalty in zip(plain, dominant):
        best_plain, best_covered = without[0], with_penalty[0]
        assert coverage_penalty(best_covered.attention, 1.0) >= coverage_penalty(best_plain.attention, 1.0) - 1e-6


BATCHES = {"alone": [], "short": ["gato", "uno dos", "perro"], "long": [toy_sentence(30, seed=s) for s in (5, 6, 7)]}


@pytest.mark.parametrize(
    "options",
    [
        DecodeConfig(beam=1),
        DecodeConfig(beam=5, n_best=2),
        DecodeConfig(beam=4, coverage_penalty=0.5),
        DecodeConfig(sample=True, n_best=2, temperature=2.0, top_p=0.9, seed=5),
    ],
    ids=["greedy", "beam", "coverage", "sampling"],
)
@pytest.mark.parametrize("ensemble", [False, True], ids=["model", "ensemble"])
def test_a_sentence_decodes_the_same_whatever_its_batch(trained, toy_model, options: DecodeConfig, ensemble: bool):
    earlier = load_trained(min(toy_model["run_dir"].glob("step-*.pt"))).model  # another model: step 40
    model = Ensemble([trained["model"], earlier], [2.0, 1.0]) if ensemble else trained["model"]
    sentence = "tres gato verde uno"
    results = {
        name: decode_lines(model, trained["tokenizer"], [*others, sentence], torch.device("cpu"), options)[-1]
        for name, others in BATCHES.items()
    }
    alone = results.pop("alone")
    for name, hypotheses in results.items():
        assert [h.ids for h in hypotheses] == [h.ids for h in alone], name
        assert [h.score for h in hypotheses] == pytest.approx([h.score for h in alone], abs=1e-4), name
