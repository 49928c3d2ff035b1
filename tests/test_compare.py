"""`seq2seq compare` end to end on a toy corpus; its budget parsing and BLEU by source length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_toy_config, write_toy_corpus, write_yaml
from sacrebleu.metrics import BLEU, CHRF

from seq2seq.attention import LocationOptions, MultiHeadOptions
from seq2seq.cli import main
from seq2seq.compare import bleu_by_length, parse_budget, source_length_bucket, variant_configs
from seq2seq.config import config_from_dict
from seq2seq.errors import UserError
from seq2seq.rundir import read_records


def test_compare_two_variants_writes_table_plot_and_heatmaps(tmp_path: Path, capsys):
    corpus = write_toy_corpus(tmp_path)
    config = make_toy_config(tmp_path, corpus)
    config["data"]["test"] = corpus["dev"]
    config["model"]["decoder_hidden_size"] = 64  # = 2 x encoder_hidden_size, so 'dot' can run
    config_file = write_yaml(tmp_path / "base.yaml", config)
    output = tmp_path / "report"
    status = main(
        [
            "compare",
            str(config_file),
            "--attention",
            "none,dot",
            "--budget",
            "12",
            "--output",
            str(output),
            "--heatmaps",
            "2",
        ]
    )
    assert status == 0
    report = (output / "report.md").read_text()
    assert "| none |" in report and "| dot |" in report and "dev BLEU" in report
    results = json.loads((output / "results.json").read_text())
    assert [r["variant"] for r in results] == ["none", "dot"]
    references = Path(f"{corpus['dev']}.en").read_text(encoding="utf-8").splitlines()
    for result in results:
        run_dir = output / "runs" / result["variant"]
        assert result["steps"] == 12 and result["parameters"] > 0 and result["train_tokens_per_s"] > 0
        # The scores are those of the test translations the run wrote, against the references.
        hypotheses = (run_dir / "test.hyp").read_text(encoding="utf-8").splitlines()
        assert len(hypotheses) == len(references)
        test_bleu = BLEU().corpus_score(hypotheses, [references]).score
        assert result["test_bleu"] == round(test_bleu, 2)
        assert result["test_chrf"] == round(CHRF().corpus_score(hypotheses, [references]).score, 2)
        # Every toy sentence has 3 to 6 words: the 1-10 bucket is the whole test set.
        assert result["bleu_by_length"] == {
            "1-10": pytest.approx(test_bleu),
            **dict.fromkeys(["11-20", "21-30", "31-40", "41-50", "51+"]),
        }
        assert result["dev_bleu"] == max(m["dev_bleu"] for m in read_records(run_dir / "metrics.jsonl"))
    assert (output / "bleu_by_length.png").stat().st_size > 1000
    heatmaps = sorted(p.name for p in (output / "heatmaps").glob("*.png"))
    assert heatmaps == ["sentence1-dot.png", "sentence1-none.png", "sentence2-dot.png", "sentence2-none.png"]
    # Everything but the attention type was equal: the runs share one SentencePiece model.
    models = {(output / "runs" / v / "spm.joint.model").read_bytes() for v in ("none", "dot")}
    assert len(models) == 1


def test_compare_refuses_unknown_variant_and_unfit_sizes_before_training(tmp_path: Path, capsys):
    corpus = write_toy_corpus(tmp_path)
    config = make_toy_config(tmp_path, corpus)
    config["data"]["test"] = corpus["dev"]
    config_file = write_yaml(tmp_path / "base.yaml", config)
    assert main(["compare", str(config_file), "--attention", "additive,fancy", "--output", str(tmp_path / "r")]) == 2
    assert "unknown attention variant(s) fancy: choose from none, dot, " in capsys.readouterr().err
    # encoder 32 x 2 = 64 = decoder 64 here; make them differ so 'dot' cannot compare them
    assert (
        main(
            [
                "compare",
                str(config_file),
                "--attention",
                "additive,dot",
                "--set",
                "model.decoder_hidden_size=48",
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert (
        "'dot' attention compares decoder and encoder states directly: set model.decoder_hidden_size (48) "
        "to 2 x model.encoder_hidden_size (64), or use 'general' or 'additive'"
    ) in capsys.readouterr().err
    assert not (tmp_path / "r" / "runs").exists()


def test_budget_parsing():
    assert parse_budget("20m") == {"max_time": "20m", "max_steps": None}
    assert parse_budget("500") == {"max_steps": 500, "max_time": None}
    assert parse_budget("500 steps") == {"max_steps": 500, "max_time": None}
    with pytest.raises(UserError):
        parse_budget("soon")


def test_length_buckets_and_bleu_by_length():
    assert source_length_bucket("a " * 5) == "1-10"
    assert source_length_bucket("a " * 15) == "11-20"
    assert source_length_bucket("a " * 60) == "51+"
    sources = ["a b c", "a " * 25]
    scores = bleu_by_length(sources, ["the cat sat on the mat", "x y z"], ["the cat sat on the mat", "p q r"])
    assert scores["1-10"] == pytest.approx(100.0)
    assert scores["21-30"] == pytest.approx(0.0)
    assert scores["31-40"] is None


def test_each_variant_keeps_the_bases_options_for_its_own_type_only(tmp_path: Path):
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["data"]["test"] = config["data"]["dev"]
    config["model"]["attention"] = {"type": "multihead", "heads": 2}
    configs = variant_configs(config_from_dict(config), ["multihead", "location", "additive"], "5", tmp_path / "r")
    assert configs["multihead"].model.attention.options == MultiHeadOptions(heads=2)
    assert configs["location"].model.attention.options == LocationOptions()
    assert configs["additive"].train.max_steps == 5 and configs["additive"].train.run_dir == str(
        tmp_path / "r/runs/additive"
    )
