"""Ensembles: several checkpoints decoding and scoring as one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TOY_VOCAB, one_line_error, toy_sentence

from seq2seq.checkpoint import load_checkpoint, load_trained, save_checkpoint
from seq2seq.cli import main
from seq2seq.config import DecodeConfig, TokenizerConfig
from seq2seq.ensemble import Ensemble, load_ensemble
from seq2seq.errors import UserError
from seq2seq.search import decode_lines
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_sentencepiece

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_models(toy_model: dict):
    """The toy model's two step checkpoints (steps 40 and 80): different weights, one tokenizer."""
    steps = sorted(toy_model["run_dir"].glob("step-*.pt"))
    return [load_trained(path) for path in steps]


def source_batch(tokenizer, lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    sources = [torch.tensor(ids + [EOS_ID]) for ids in tokenizer.encode_src(lines)]
    src = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD_ID)
    return src, torch.tensor([len(s) for s in sources])


def test_an_ensemble_of_one_steps_with_the_models_own_log_probabilities(two_models):
    trained = two_models[0]
    src, lengths = source_batch(trained.tokenizer, ["uno dos tres", "gato"])
    ensemble = Ensemble([trained.model])
    log_probs, attention, _ = ensemble.step(torch.full((2, 1), BOS_ID), ensemble.start(src, lengths))
    memory, state = trained.model.encode(src, lengths, src != PAD_ID)
    attentional, _, weights = trained.model.decoder(torch.full((2, 1), BOS_ID), state, memory)
    expected = torch.log_softmax(trained.model.decoder.logits(attentional[:, 0]), dim=-1)
    assert torch.equal(log_probs, expected) and torch.equal(attention, weights[:, 0])


def test_weights_combine_the_models_log_probabilities(two_models):
    first, second = two_models
    src, lengths = source_batch(first.tokenizer, ["uno dos tres"])
    tgt_in = torch.tensor([[BOS_ID] + first.tokenizer.encode_tgt(["one two"])[0]])
    alone = [Ensemble([t.model]).teacher_forced(src, lengths, tgt_in) for t in two_models]
    together = Ensemble([first.model, second.model], weights=[3.0, 1.0]).teacher_forced(src, lengths, tgt_in)
    torch.testing.assert_close(together, torch.log_softmax(0.75 * alone[0] + 0.25 * alone[1], dim=-1))
    torch.testing.assert_close(together.exp().sum(-1), torch.ones(1, tgt_in.size(1)))  # a distribution again
    assert not torch.allclose(alone[0], alone[1])  # so the mix is not trivially either one


@pytest.mark.parametrize("beam", [1, 4])
def test_two_copies_of_one_checkpoint_decode_as_that_checkpoint(two_models, beam: int):
    trained = two_models[1]
    lines = ["uno dos tres", "", "gato perro casa rojo", toy_sentence(12, seed=3)]
    options = DecodeConfig(beam=beam, n_best=2 if beam > 1 else 1)
    single = decode_lines(trained.model, trained.tokenizer, lines, CPU, options)
    double = decode_lines(Ensemble([trained.model, trained.model]), trained.tokenizer, lines, CPU, options)
    for one, two in zip(single, double):
        assert [h.ids for h in one] == [h.ids for h in two]
        assert [h.score for h in one] == pytest.approx([h.score for h in two], abs=1e-5)


def test_checkpoints_of_other_languages_or_tokenizers_cannot_decode_together(toy_model: dict, tmp_path: Path):
    first = toy_model["checkpoint"]
    payload = load_checkpoint(first)
    payload["config"]["data"]["tgt_lang"] = "fr"
    save_checkpoint(payload, tmp_path / "french.pt")
    with pytest.raises(UserError, match=f"{first} and {tmp_path / 'french.pt'} translate different languages"):
        load_ensemble([first, tmp_path / "french.pt"])
    payload = load_checkpoint(first)
    lines = toy_model["src"].read_text().splitlines() + toy_model["ref"].read_text().splitlines()
    settings = TokenizerConfig(vocab_size=TOY_VOCAB, model_type="word", character_coverage=0.9999)
    other = train_sentencepiece(lines, settings, seed=1)  # the same pieces, another model file
    assert other != payload["tokenizer"]["src_model"]
    payload["tokenizer"] = {"src_model": other, "tgt_model": other}
    save_checkpoint(payload, tmp_path / "other-spm.pt")
    with pytest.raises(UserError, match=f"{first} and {tmp_path / 'other-spm.pt'} have different SentencePiece models"):
        load_ensemble([first, tmp_path / "other-spm.pt"])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (["1"], "1 ensemble weights (--weights) for 2 checkpoints: give one per checkpoint"),
        (["1", "0"], "ensemble weights (--weights) must be positive finite numbers, got [1.0, 0.0]"),
        (["1", "nan"], "ensemble weights (--weights) must be positive finite numbers"),
    ],
)
def test_bad_ensemble_weights_are_one_clear_error(toy_model: dict, capsys, weights: list[str], message: str):
    checkpoint = str(toy_model["checkpoint"])
    args = ["evaluate", checkpoint, checkpoint, "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"])]
    assert main([*args, "--weights", *weights]) == 2
    assert message in one_line_error(capsys)


def test_weights_for_a_single_checkpoint_are_refused_before_loading_it(tmp_path: Path, capsys):
    missing = str(tmp_path / "missing.pt")  # never read: the weights are checked first
    assert main(["translate", missing, "--weights", "2", "-i", str(tmp_path / "x")]) == 2
    assert "ensemble weights (--weights) need two or more checkpoints" in one_line_error(capsys)


def manual_greedy(models: list, weights: list[float], tokenizer, line: str, steps: int = 20) -> list[int]:
    """Greedy decoding written out by hand: each model's log-softmax, weighted, summed and normalised again."""
    src, lengths = source_batch(tokenizer, [line])
    encoded = [m.encode(src, lengths, src != PAD_ID) for m in models]
    states = [state for _, state in encoded]
    previous, ids = torch.full((1, 1), BOS_ID), []
    for _ in range(steps):
        combined = 0
        for index, (model, weight) in enumerate(zip(models, weights)):
            attentional, states[index], _ = model.decoder(previous, states[index], encoded[index][0])
            combined = combined + weight * torch.log_softmax(model.decoder.logits(attentional[:, 0]), dim=-1)
        combined = torch.log_softmax(combined, dim=-1)
        combined[:, PAD_ID] = float("-inf")
        best = int(combined.argmax())
        if best == EOS_ID:
            break
        ids.append(best)
        previous = torch.tensor([[best]])
    return ids


def test_an_ensemble_of_two_different_models_decodes_as_the_written_out_combination(two_models):
    first, second = two_models
    ensemble = Ensemble([first.model, second.model], weights=[1.0, 3.0])
    lines = ["uno dos tres", "gato perro casa rojo", toy_sentence(7, seed=8), toy_sentence(4, seed=9)]
    found = decode_lines(ensemble, first.tokenizer, lines, CPU, DecodeConfig(beam=1))
    for line, (hypothesis,) in zip(lines, found):
        assert hypothesis.ids == manual_greedy([first.model, second.model], [0.25, 0.75], first.tokenizer, line)


def test_evaluate_an_ensemble_from_the_command_line(toy_model: dict, tmp_path: Path, capsys):
    steps = [str(p) for p in sorted(toy_model["run_dir"].glob("step-*.pt"))]
    report = tmp_path / "ensemble.json"
    args = ["evaluate", *steps, "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"]), "--beam", "3"]
    assert main([*args, "--weights", "1", "3", "--output", str(tmp_path / "e.hyp"), "--report", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert saved["checkpoint"] == steps and saved["step"] == [40, 80] and saved["ensemble_weights"] == [0.25, 0.75]
    assert saved["bleu"] > 90
    hypotheses = (tmp_path / "e.hyp").read_text().splitlines()
    loaded = load_ensemble(steps, weights=[1, 3])
    expected = decode_lines(
        loaded.ensemble, loaded.tokenizer, toy_model["src"].read_text().splitlines(), CPU, DecodeConfig(beam=3)
    )
    assert hypotheses == [loaded.tokenizer.decode_tgt(best[0].ids) for best in expected]
