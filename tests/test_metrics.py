"""Corpus BLEU and chrF (seq2seq/metrics.py) against values worked out by hand from the metrics' definitions.

BLEU = BP * (p1 * p2 * p3 * p4) ** (1/4) on 13a-tokenized text, where pn is the clipped n-gram matches
over the hypothesis n-grams, summed over the corpus, and BP = exp(1 - ref_len / hyp_len) when the
hypotheses are shorter than the references (else 1). A zero count is smoothed ("exp" smoothing, the
sacreBLEU default): the k-th order with no match gets pn = 1 / (2**k * hyp n-grams of that order).

chrF2 = (1 + 2**2) * P * R / (2**2 * P + R) with P and R the character n-gram (n = 1..6, spaces
removed) precision and recall averaged over the orders that both sides have n-grams of.
"""

from __future__ import annotations

import math

import pytest

from seq2seq.metrics import bleu, chrf


def test_identical_text_scores_100():
    lines = ["the cat sat on the mat", "It was not unexpected.", "a b"]
    assert bleu(lines, lines).value == pytest.approx(100.0)
    assert chrf(lines, lines).value == pytest.approx(100.0)


def test_bleu_of_one_sentence_by_hand():
    # hyp: the cat sat on a mat / ref: the cat sat on the mat (6 words each: BP = 1)
    # 1-grams: the cat sat on mat match, 'a' does not             5/6
    # 2-grams: the-cat cat-sat sat-on match; on-a a-mat do not    3/5
    # 3-grams: the-cat-sat cat-sat-on match; 2 do not             2/4
    # 4-grams: the-cat-sat-on matches; 2 do not                   1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4) = 0.53728...
    score = bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert score.value == pytest.approx(100 * (1 / 12) ** 0.25)
    assert score.value == pytest.approx(53.7285, abs=1e-4)


def test_bleu_brevity_penalty_by_hand():
    # Every n-gram of the 5-word hypothesis is in the 6-word reference: all pn = 1.
    # BP = exp(1 - 6/5) = exp(-0.2) = 0.81873...
    score = bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert score.value == pytest.approx(100 * math.exp(-0.2))


def test_bleu_adds_counts_over_the_corpus_before_dividing():
    # Sentence 1 is a perfect match (6/6, 5/5, 4/4, 3/3); sentence 2, "a b c d" for "a b x d",
    # matches 3/4 1-grams, 1/3 2-grams (a-b), 0/2 3-grams, 0/1 4-grams.
    # Corpus: p1 = 9/10, p2 = 6/8, p3 = 4/6, p4 = 3/4; lengths 10 and 10 (BP = 1).
    # BLEU = (9/10 * 6/8 * 4/6 * 3/4) ** (1/4) = 0.3375 ** (1/4) = 0.76220...
    # (The mean of the two sentence scores would be far lower: sentence 2 alone has p3 = p4 = 0.)
    score = bleu(["the cat sat on the mat", "a b c d"], ["the cat sat on the mat", "a b x d"])
    assert score.value == pytest.approx(100 * 0.3375**0.25)


def test_bleu_smooths_a_missing_order():
    # hyp: a b c d e / ref: a b c x e
    # p1 = 4/5, p2 = 2/4 (a-b, b-c), p3 = 1/3 (a-b-c), p4: no match among 2 -> 1 / (2 * 2) = 1/4
    # BLEU = (4/5 * 2/4 * 1/3 * 1/4) ** (1/4) = (1/30) ** (1/4) = 0.42728...
    assert bleu(["a b c d e"], ["a b c x e"]).value == pytest.approx(100 * (1 / 30) ** 0.25)


def test_bleu_tokenizes_punctuation_with_13a():
    # 13a splits the final period off 'mat.', so both sides are the same 7 tokens.
    assert bleu(["the cat sat on the mat."], ["the cat sat on the mat ."]).value == pytest.approx(100.0)
    assert bleu(["x y z w"], ["a b c d"]).value == 0.0  # no word in common


def test_chrf_by_hand():
    # hyp 'cat', ref 'cats':
    #   1-grams c a t / c a t s        P = 3/3, R = 3/4
    #   2-grams ca at / ca at ts       P = 2/2, R = 2/3
    #   3-grams cat / cat ats          P = 1/1, R = 1/2
    #   4- to 6-grams: none in the hypothesis (not averaged)
    # P = 1, R = (3/4 + 2/3 + 1/2) / 3 = 23/36; chrF2 = 5 * (23/36) / (4 + 23/36) = 115/167 = 0.68862...
    assert chrf(["cat"], ["cats"]).value == pytest.approx(100 * 115 / 167)
    # hyp 'abc', ref 'abd': P = R = 2/3, 1/2, 0 for n = 1, 2, 3 -> (2/3 + 1/2 + 0) / 3 = 7/18; chrF2 = 7/18
    assert chrf(["abc"], ["abd"]).value == pytest.approx(100 * 7 / 18)


def test_chrf_ignores_spaces_and_scores_nothing_in_common_0():
    assert chrf(["a b c"], ["abc"]).value == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]).value == 0.0


def test_scores_carry_their_sacrebleu_signatures_and_text():
    hypotheses, references = ["the cat sat on a mat"], ["the cat sat on the mat"]
    score = bleu(hypotheses, references)
    assert score.name == "BLEU"
    assert score.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert score.text.startswith("BLEU = 53.73 83.3/60.0/50.0/33.3 (BP = 1.000 ratio = 1.000 hyp_len = 6 ref_len = 6)")
    score = chrf(hypotheses, references)
    assert score.name == "chrF"
    assert score.signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert score.text.startswith("chrF2 = ")
