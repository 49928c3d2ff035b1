"""Translating with a trained model: in batch (files, stdin, n-best, alignments) on the tiny toy
model; word alignment and the text heatmap on hand-made weights. (The interactive prompt, which needs
a terminal, is in test_scenarios.py.)"""

from __future__ import annotations

import io
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import file_lines, toy_sentence, write_lines

from seq2seq.cli import main
from seq2seq.errors import UserError
from seq2seq.search import max_output_lengths
from seq2seq.translate import SHADES, Translator, attention_heatmap, translate_batch

PAIR = re.compile(r"^(\d+)-(\d+)$")


# --- translate: batch mode -------------------------------------------------------------------------


def test_translate_batch_keeps_line_count_and_empty_lines(translator, corpus):
    sources, references = corpus
    lines = ["", sources[0], "", "", sources[1], "   ", *sources[2:10], ""]
    sink = io.StringIO()
    assert translate_batch(translator, io.StringIO("".join(f"{line}\n" for line in lines)), sink) == len(lines)
    outputs = sink.getvalue().split("\n")
    assert outputs.pop() == "" and len(outputs) == len(lines)
    for line, output in zip(lines, outputs):
        if not line.strip():
            assert output == ""  # empty in, empty out
        else:
            assert output == translator.translate([line])[0].best.text  # in its own place
    memorised = dict(zip(sources, references))
    right = sum(output == memorised[line] for line, output in zip(lines, outputs) if line.strip())
    assert right >= 0.8 * sum(1 for line in lines if line.strip())


def test_translate_batch_truncates_a_very_long_line_with_a_warning(translator, corpus, caplog):
    caplog.set_level(logging.WARNING, logger="seq2seq")
    sources = corpus[0]
    lines = [sources[0], toy_sentence(2000), sources[1]]
    sink = io.StringIO()
    assert translate_batch(translator, io.StringIO("\n".join(lines) + "\n"), sink) == 3
    outputs = sink.getvalue().split("\n")[:-1]
    assert len(outputs) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["line 2 has 2000 pieces: only the first 249 are translated (--max-src-length)"]
    limit = int(max_output_lengths(torch.tensor([250]), 1.5)) - 1
    assert 0 < len(outputs[1].split()) <= limit
    assert outputs[0] == translator.translate([sources[0]])[0].best.text
    assert outputs[2] == translator.translate([sources[1]])[0].best.text


def test_translate_batch_n_best(toy_model, corpus):
    n_best = Translator(str(toy_model["checkpoint"]), {"beam": 2, "n_best": 3}, device="cpu")
    sink = io.StringIO()
    translate_batch(n_best, io.StringIO(f"{corpus[0][0]}\n\n"), sink)
    first, empty = sink.getvalue().split("\n")[:-1]
    fields = first.split(" ||| ")
    assert len(fields) == 6  # text ||| score, three times (the beam is widened to 3)
    scores = [float(s) for s in fields[1::2]]
    assert scores == sorted(scores, reverse=True)
    one_best = Translator(str(toy_model["checkpoint"]), {"beam": 3}, device="cpu")
    assert fields[0] == one_best.translate([corpus[0][0]])[0].best.text  # the 1-best comes first
    assert empty == " ||| 0.0000"


def test_cli_translate_batch_with_alignments(toy_model, translator, corpus, tmp_path: Path, capsys):
    sources = corpus[0]
    long_line = toy_sentence(2000, seed=1)
    lines = [sources[0], "", sources[1], long_line, "", *sources[2:12], ""]
    source = write_lines(tmp_path / "in.es", lines)
    output, alignment = tmp_path / "out.en", tmp_path / "out.align"
    args = ["translate", str(toy_model["checkpoint"]), "--input", str(source), "--output", str(output)]
    assert main(args + ["--alignment", str(alignment), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "line 4 has 2000 pieces: only the first 249 are translated" in captured.err

    outputs, alignments = file_lines(output), file_lines(alignment)
    assert len(outputs) == len(alignments) == len(lines)
    diagonal = total = 0
    for line, out, links in zip(lines, outputs, alignments):
        if not line.strip():
            assert out == "" and links == ""
            continue
        src_words, out_words = min(len(line.split()), 249), len(out.split())
        pairs = [PAIR.match(link) for link in links.split(" ")]
        assert all(pairs), links
        pairs = [(int(m[1]), int(m[2])) for m in pairs]
        assert all(0 <= i < src_words and 0 <= j < out_words for i, j in pairs), (line, out, links)
        assert [j for _, j in pairs] == list(range(out_words))  # each output word aligned once, in order
        if line != long_line:
            diagonal += sum(i == j for i, j in pairs)
            total += len(pairs)
    assert diagonal >= 0.5 * total  # word-for-word toy corpus: attention is mostly monotone
    assert outputs[0] == translator.translate([sources[0]])[0].best.text


def test_cli_translate_reads_stdin_and_writes_stdout(toy_model, translator, corpus, monkeypatch, capsys):
    lines = [corpus[0][4], "", corpus[0][5]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["translate", str(toy_model["checkpoint"]), "--device", "cpu"]) == 0
    expected = [t.best.text for t in translator.translate(lines)]
    assert capsys.readouterr().out == "".join(f"{t}\n" for t in expected)
    assert expected[1] == "" and expected[0] and expected[2]


def test_cli_translate_keeps_a_line_with_a_carriage_return_whole(toy_model, tmp_path: Path, capsys):
    source = tmp_path / "in.es"
    source.write_bytes(b"uno dos\rtres\ncuatro\n")  # 2 lines, as wc -l and evaluate count them
    output = tmp_path / "out.en"
    assert main(["translate", str(toy_model["checkpoint"]), "-i", str(source), "-o", str(output), "--beam", "1"]) == 0
    assert len(file_lines(output)) == 2


def test_cli_translate_int8_writes_what_fp32_writes(toy_model, corpus, tmp_path: Path, capsys):
    sources, references = corpus
    source, output = write_lines(tmp_path / "in.es", [*sources, ""]), tmp_path / "out.en"
    args = ["translate", str(toy_model["checkpoint"]), "-i", str(source), "-o", str(output), "--n-best", "2"]
    assert main([*args, "--quantize", "int8"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # no torch deprecation warnings either
    best = [line.split(" ||| ")[0] for line in file_lines(output)]  # the n-best format, best first
    assert len(best) == len(sources) + 1 and best[-1] == ""
    assert sum(a == b for a, b in zip(best, references)) >= len(references) - 1  # int8 may flip a near tie


# --- word alignment and the text heatmap, on hand-made weights --------------------------------------


def test_attention_heatmap_draws_shades():
    heatmap = attention_heatmap(["ab", "c"], ["x", "y"], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    pad = " " * 15
    assert heatmap.split("\n") == [
        pad + "a c",  # source pieces written downwards, one column each
        pad + "b",
        pad + "─" * 4,
        " " * 13 + "x ██  ",  # weight 1 is the darkest shade, 0 is blank
        " " * 13 + "y ▒▒▒▒",
    ]
    assert SHADES[0] == " " and SHADES[-1] == "█"


def test_attention_heatmap_labels_and_height_are_bounded():
    src = ["▁" + "s" * 20]
    heatmap = attention_heatmap(src, ["▁" + "o" * 30], torch.tensor([[0.3]]), label_width=6)
    lines = heatmap.split("\n")
    assert len(lines) == 10 + 1 + 1  # header at most 10 rows, a rule, one row per output piece
    assert lines[-1] == "▁ooooo ░░"
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    rows = attention_heatmap(["a", "b", "c", "d"], ["x", "y", "z"], weights).split("\n")[-3:]
    for row, values in zip(rows, weights.tolist()):
        cells = row[15:]
        assert cells == "".join(SHADES[min(4, int(w * 5))] * 2 for w in values)


def test_translator_takes_a_whole_decode_config_and_exposes_its_model(toy_model, corpus):
    from seq2seq.config import DecodeConfig

    translator = Translator(str(toy_model["checkpoint"]), DecodeConfig(beam=1), device="cpu")
    assert translator.options == DecodeConfig(beam=1) and not translator.model.training
    (translation,) = translator.translate([corpus[0][0]])
    assert translation.best.text == corpus[1][0] and len(translation.hypotheses) == 1


def readme_example(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_api_example_runs_as_written(toy_model, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    shutil.copy(toy_model["checkpoint"], tmp_path / "runs" / "quickstart" / "best.pt")  # the path the example uses
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(readme_example("## Python API"), namespace)  # noqa: S102 (the README example, run as written)
    out, best, scores, samples = (namespace[name] for name in ("out", "best", "scores", "samples"))
    assert len(out) == 1 and len(out[0].hypotheses) == 2 and best is out[0].hypotheses[0]
    assert best.attention.shape == (len(best.pieces), len(out[0].source_pieces))
    assert best.score >= out[0].hypotheses[1].score and scores[0].log_prob < 0
    assert len(samples[0].hypotheses) == 3
    assert best.text in capsys.readouterr().out


def test_loading_once_and_translating_many_times_reads_the_checkpoint_once(toy_model, monkeypatch):
    import seq2seq.checkpoint as checkpoint_module
    from seq2seq import Translator as Exported

    reads = []
    original = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda *a, **k: reads.append(a) or original(*a, **k))
    translator = Exported.load(str(toy_model["checkpoint"]), device="cpu", beam=2)
    model = translator.model
    for n_best in (1, 2):
        (translation,) = translator.translate(["uno dos"], n_best=n_best)
        assert len(translation.hypotheses) == n_best
    translator.score(["uno dos"], ["one two"])
    assert len(reads) == 1 and translator.model is model
    with pytest.raises(UserError, match=r"decoding option top_p \(--top-p\) must be in \(0, 1\], got 2.0"):
        translator.translate(["uno"], sample=True, top_p=2.0)
