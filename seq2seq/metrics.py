"""Corpus-level BLEU and chrF with sacreBLEU, on detokenized text, with their signatures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass
class Score:
    """A metric's value and its sacreBLEU signature."""

    name: str
    value: float
    signature: str
    text: str  # sacreBLEU's one-line formatting, e.g. "BLEU = 12.3 45.6/..."


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """sacreBLEU BLEU with its standard 13a tokenizer."""
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("BLEU", result.score, str(metric.get_signature()), str(result))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """sacreBLEU chrF (character 6-grams, beta 2)."""
    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("chrF", result.score, str(metric.get_signature()), str(result))
