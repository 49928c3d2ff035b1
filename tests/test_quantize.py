"""`--quantize int8`: which layers become int8, how close int8 decoding stays to fp32 (the toy model, every
attention variant, the GRU with lengths), and the mistakes that are one line and exit 2."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_copy, one_line_error
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized

from seq2seq import quantize
from seq2seq.attention import ATTENTION_TYPES
from seq2seq.checkpoint import load_trained
from seq2seq.cli import main
from seq2seq.config import AttentionConfig, ModelConfig
from seq2seq.ensemble import Ensemble
from seq2seq.errors import UserError
from seq2seq.gru import GRU
from seq2seq.model import Seq2Seq
from seq2seq.quantize import QuantizedGRU, check_quantize_precision, decoding_device, quantize_for_decoding
from seq2seq.search import beam_search
from seq2seq.translate import Translator

# --- what gets quantized ---------------------------------------------------------------------------------


def test_int8_makes_the_linear_layers_and_grus_dynamic_int8(toy_model):
    model = quantize_for_decoding(load_trained(toy_model["checkpoint"]).model, "int8")
    decoder = model.decoder
    for layer in (decoder.output, decoder.combine, decoder.bridge, decoder.attention.query_layer):
        assert isinstance(layer, quantized.Linear), layer
        assert layer.weight().dtype == torch.qint8
    assert isinstance(model.encoder.rnn, QuantizedGRU) and isinstance(decoder.rnn, QuantizedGRU)
    assert isinstance(decoder.rnn.gru, quantized.GRU)
    left = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, GRU))]
    assert left == ["decoder.attention.energy_layer"]  # additive attention reads its one-row weight as a tensor


def test_none_leaves_the_model_as_it_was(toy_model):
    model = load_trained(toy_model["checkpoint"]).model
    before = copy.deepcopy(model.state_dict())
    assert quantize_for_decoding(model, "none") is model
    assert isinstance(model.decoder.output, nn.Linear) and isinstance(model.decoder.rnn, GRU)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


# --- int8 decodes close to fp32 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_translator(toy_model) -> Translator:
    """The toy model, int8."""
    return Translator(str(toy_model["checkpoint"]), device="cpu", quantize="int8")


def test_int8_translates_the_toy_corpus_as_fp32_does(translator, int8_translator, corpus):
    sources, references = corpus
    full, int8 = translator.translate(sources), int8_translator.translate(sources)
    assert [t.best.text for t in full] == references
    same = [(ours, theirs) for ours, theirs in zip(int8, full) if ours.best.text == theirs.best.text]
    assert len(same) >= len(sources) - 1  # scores move a little: a near tie in the beam may go the other way
    for ours, theirs in same:
        assert ours.best.log_prob == pytest.approx(theirs.best.log_prob, abs=0.05)  # about 0.01 at most here
        assert torch.allclose(ours.best.attention, theirs.best.attention, atol=0.05)


def test_int8_scores_given_translations_close_to_fp32(translator, int8_translator, corpus):
    sources, references = corpus
    wrong = references[1:] + references[:1]  # unlikely translations: large negative log-probabilities
    for targets in (references, wrong):
        full, int8 = translator.score(sources, targets), int8_translator.score(sources, targets)
        for ours, theirs in zip(int8, full):
            assert ours is not None and theirs is not None
            assert ours.log_prob == pytest.approx(theirs.log_prob, abs=0.05 + 0.02 * abs(theirs.log_prob))


def _random_model(attention: str, **sizes) -> Seq2Seq:
    torch.manual_seed(0)
    config = ModelConfig(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=32, dropout=0.0, **sizes)
    config.attention = AttentionConfig(type=attention)
    return Seq2Seq(config, 30, 30).eval()


@pytest.mark.parametrize(
    ("attention", "sizes"),
    [(name, {}) for name in sorted(ATTENTION_TYPES)]
    + [("additive", {"input_feeding": True, "decoder_layers": 2, "encoder_layers": 2})],
    ids=[*sorted(ATTENTION_TYPES), "input_feeding-2layers"],
)
def test_every_variant_decodes_int8_close_to_fp32(attention: str, sizes: dict):
    model = _random_model(attention, **sizes)
    int8 = quantize_for_decoding(copy.deepcopy(model), "int8")
    generator = torch.Generator().manual_seed(1)
    src = torch.randint(4, 30, (3, 7), generator=generator)
    src[2, 4:] = 1  # padding: the third sentence is 4 pieces long
    lengths, tgt = torch.tensor([7, 7, 4]), torch.randint(4, 30, (3, 6), generator=generator)
    with torch.inference_mode():
        full_scores = Ensemble([model]).teacher_forced(src, lengths, tgt)
        int8_scores = Ensemble([int8]).teacher_forced(src, lengths, tgt)
        found = beam_search(int8, src, lengths, beam_size=3, n_best=2)
    assert (int8_scores - full_scores).abs().max() < 0.02  # about 0.005 on these near-uniform random models
    assert [len(hypotheses) for hypotheses in found] == [2, 2, 2]
    assert all(h.attention.shape[1] == length for h, length in zip([f[0] for f in found], [7, 7, 4]))


def test_the_int8_gru_keeps_the_gru_contract_with_lengths():
    torch.manual_seed(0)
    gru = GRU(8, 16, num_layers=2, bidirectional=True).eval()
    int8 = QuantizedGRU.from_gru(gru).eval()
    x, lengths = torch.randn(3, 6, 8), torch.tensor([6, 4, 1])
    with torch.inference_mode():
        outputs, finals = gru(x, None, lengths)
        int8_outputs, int8_finals = int8(x, None, lengths)
        h0 = torch.randn(4, 3, 16)
        plain, plain_int8 = gru(x, h0), int8(x, h0)
    assert int8_outputs.shape == outputs.shape == (3, 6, 32) and int8_finals.shape == finals.shape == (4, 3, 16)
    assert (int8_outputs[1, 4:] == 0).all() and (int8_outputs[2, 1:] == 0).all()  # zeros past each length
    assert torch.allclose(int8_outputs, outputs, atol=0.05) and torch.allclose(int8_finals, finals, atol=0.05)
    assert torch.allclose(plain_int8[0], plain[0], atol=0.05) and torch.allclose(plain_int8[1], plain[1], atol=0.05)


# --- mistakes ----------------------------------------------------------------------------------------------


def test_int8_is_cpu_only_and_auto_means_the_cpu(monkeypatch):
    with pytest.raises(UserError, match=r"^--quantize int8 runs on the CPU only: use --device cpu"):
        decoding_device("cuda", "int8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert decoding_device("auto", "int8") == torch.device("cpu")
    assert decoding_device("auto", "none") == torch.device("cuda")


def test_int8_refuses_bf16_naming_both(int8_translator):
    with pytest.raises(UserError, match=r"^--precision bf16 does not combine with --quantize int8 \("):
        check_quantize_precision("int8", "bf16")
    check_quantize_precision("int8", "fp32")
    check_quantize_precision("none", "bf16")
    with pytest.raises(UserError, match=r"^precision bf16 does not combine with --quantize int8"):
        int8_translator.translate(["uno dos"], precision="bf16")  # the Python API's per-call options too


def test_an_unknown_mode_is_refused(toy_model):
    with pytest.raises(UserError, match=r"^--quantize must be one of none, int8, got 'int4'$"):
        Translator(str(toy_model["checkpoint"]), device="cpu", quantize="int4")
    with pytest.raises(UserError, match="got 'fp16'"):
        quantize_for_decoding(load_trained(toy_model["checkpoint"]).model, "fp16")


def _cli_args(command: str, checkpoint: Path, toy_model: dict) -> list[str]:
    if command == "evaluate":
        return ["evaluate", str(checkpoint), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"])]
    if command == "translate":
        return ["translate", str(checkpoint), "-i", str(toy_model["src"]), "-o", str(checkpoint.with_suffix(".out"))]
    return ["serve", str(checkpoint), "--port", "0"]


@pytest.mark.parametrize("command", ["evaluate", "translate", "serve"])
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--device", "cuda"], "--quantize int8 runs on the CPU only: use --device cpu, or --quantize none on the GPU"),
        (["--precision", "bf16"], "--precision bf16 does not combine with --quantize int8"),
        ([], "--quantize int8 needs a quantized engine, and this torch build"),
    ],
    ids=["cuda", "bf16", "no-engine"],
)
def test_cli_quantize_mistakes_are_one_line_and_exit_2(
    toy_model, tmp_path: Path, capsys, monkeypatch, command: str, flags: list[str], expected: str
):
    if not flags:
        monkeypatch.setattr(quantize, "quantized_engines", list)  # a torch build without fbgemm or qnnpack
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    assert main([*_cli_args(command, checkpoint, toy_model), "--quantize", "int8", *flags]) == 2
    assert one_line_error(capsys).startswith(f"seq2seq: error: {expected}")
    assert not list(tmp_path.glob("*.hyp")) and not list(tmp_path.glob("*.out"))
