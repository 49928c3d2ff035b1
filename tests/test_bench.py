"""The side-by-side benchmark's set-up: the Joey config really is equivalent to ours, the vocabularies
agree id for id, and the scoring helpers score; the committed decoding table is the script's rendering of its
JSON. (The benchmarks themselves run from the command line.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))

import decoding
import experiments
import finetune
import launch_loop
import reliability
import serve_load
import training_options
import versus_joey


@pytest.fixture
def quickstart() -> dict:
    return yaml.safe_load(versus_joey.BASE_CONFIG.read_text())


def test_joey_config_matches_ours_setting_for_setting(tmp_path: Path, quickstart: dict):
    path = versus_joey.joey_config(tmp_path, "joey-x", Path("spm.model"), Path("vocab.txt"), 150, quick=False)
    joey = yaml.safe_load(path.read_text())
    model, train = quickstart["model"], quickstart["train"]
    encoder, decoder, training = joey["model"]["encoder"], joey["model"]["decoder"], joey["training"]
    assert encoder["rnn_type"] == decoder["rnn_type"] == "gru"
    assert encoder["bidirectional"] is True and encoder["hidden_size"] == model["encoder_hidden_size"]
    assert decoder["hidden_size"] == model["decoder_hidden_size"]
    assert encoder["embeddings"]["embedding_dim"] == decoder["embeddings"]["embedding_dim"] == model["embedding_size"]
    assert encoder["dropout"] == decoder["dropout"] == decoder["hidden_dropout"] == model["dropout"]
    assert decoder["attention"] == "bahdanau" and model["attention"]["type"] == "additive"
    assert decoder["input_feeding"] is True and decoder["init_hidden"] == "bridge"
    assert training["learning_rate"] == train["lr"] and training["adam_betas"] == train["adam_betas"]
    assert training["scheduling"] == "warmupinversesquareroot" and train["schedule"]["type"] == "inverse_sqrt"
    assert training["learning_rate_warmup"] == train["schedule"]["warmup_steps"]
    assert training["batch_size"] == train["batch_tokens"] and training["batch_type"] == "token"
    assert training["label_smoothing"] == train["label_smoothing"]
    assert training["clip_grad_norm"] == train["clip_grad_norm"]
    assert training["updates"] == 150
    for side in ("src", "trg"):
        assert joey["data"][side]["tokenizer_cfg"]["model_file"] == "spm.model"
        assert joey["data"][side]["voc_file"] == "vocab.txt"
        assert joey["data"][side]["max_length"] == quickstart["data"]["max_src_length"]


def test_our_config_applies_overrides_and_keeps_the_rest(tmp_path: Path, quickstart: dict):
    path = versus_joey.our_config(tmp_path, "ours-x", {"model.input_feeding": True, "train.max_steps": 7})
    ours = yaml.safe_load(path.read_text())
    assert ours["model"]["input_feeding"] is True and ours["train"]["max_steps"] == 7
    assert ours["train"]["run_dir"] == str(tmp_path / "runs" / "ours-x")
    assert ours["model"]["attention"] == quickstart["model"]["attention"]
    assert ours["train"]["lr"] == quickstart["train"]["lr"]


def test_joey_vocabulary_lists_the_pieces_in_id_order(tmp_path: Path, tokenizer):
    import sentencepiece as spm

    model = tmp_path / "spm.joint.model"
    model.write_bytes(tokenizer.state_dict()["src_model"])
    vocabulary = versus_joey.joey_vocabulary(tmp_path, model).read_text(encoding="utf-8").splitlines()
    processor = spm.SentencePieceProcessor(model_file=str(model))
    assert len(vocabulary) == processor.get_piece_size()
    assert vocabulary[:4] == ["<unk>", "<pad>", "<s>", "</s>"]  # Joey's specials land on our ids
    assert all(processor.piece_to_id(piece) == index for index, piece in enumerate(vocabulary))


def test_scoring_helpers(tmp_path: Path):
    hyps = tmp_path / "hyps.txt"
    refs = tmp_path / "refs.txt"
    hyps.write_text("the cat sat on the mat\nhello there\n", encoding="utf-8")
    refs.write_text("the cat sat on the mat\nhello there\n", encoding="utf-8")
    assert versus_joey.bleu_of(hyps, refs) == pytest.approx(100.0)
    assert versus_joey.mean_words(hyps) == 4.0
    refs.write_text("a dog ran far away\ngood bye\n", encoding="utf-8")
    assert versus_joey.bleu_of(hyps, refs) < 5.0


def test_split_files_cut_to_a_limit(tmp_path: Path):
    src, ref = versus_joey.split_files(tmp_path, "test", 7)
    assert len(src.read_text(encoding="utf-8").splitlines()) == 7
    assert len(ref.read_text(encoding="utf-8").splitlines()) == 7
    full_src, _ = versus_joey.split_files(tmp_path, "test", None)
    assert src.read_text(encoding="utf-8").splitlines() == full_src.read_text(encoding="utf-8").splitlines()[:7]


def test_the_committed_decoding_table_is_the_scripts_rendering_of_the_committed_json():
    """docs/decoding.md is written from docs/decoding.json by scripts/bench/decoding.py, never edited by hand."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    results = json.loads((docs / "decoding.json").read_text(encoding="utf-8"))
    assert (docs / "decoding.md").read_text(encoding="utf-8") == decoding.markdown(results)
    assert len(results["commit"]) == 40 and results["dirty"] is False


def test_the_testaments_split_where_the_new_testament_starts(tmp_path: Path):
    """finetune.py cuts the bundled training file at Matthew 1:1 and the dev file at Philemon 1:1."""
    splits = finetune.split_testaments(tmp_path)
    assert splits["pairs"] == {"train_ot": 21142, "train_nt": 7007, "dev_ot": 623, "dev_nt": 353}
    prefixes = splits["prefixes"]
    assert (tmp_path / "train_nt.en").read_text(encoding="utf-8").startswith(finetune.MATTHEW_1_1 + "\n")
    assert (tmp_path / "dev_nt.en").read_text(encoding="utf-8").startswith(finetune.PHILEMON_1_1 + "\n")
    for lang in ("es", "en"):
        data = Path(__file__).resolve().parents[1] / "data"
        whole = (data / f"train.{lang}").read_text(encoding="utf-8")
        parts = [Path(f"{prefixes[name]}.{lang}").read_text(encoding="utf-8") for name in ("train_ot", "train_nt")]
        assert "".join(parts) == whole


def test_mean_speed_is_the_harmonic_mean_of_the_records_after_the_first(tmp_path: Path):
    records = [{"tokens_per_s": 1.0}, {"tokens_per_s": 100.0}, {"tokens_per_s": 300.0}]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert experiments.mean_speed(tmp_path) == 150.0  # 2 / (1/100 + 1/300)


@pytest.mark.parametrize(
    "name, script",
    [
        ("finetune", finetune),
        ("training_options", training_options),
        ("reliability", reliability),
        ("launch_loop", launch_loop),
    ],
)
def test_the_committed_tables_are_the_scripts_rendering_of_the_committed_json(name: str, script):
    """docs/NAME.md is written from docs/NAME.json by its script (never by hand), from a clean tree."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    results = json.loads((docs / f"{name}.json").read_text(encoding="utf-8"))
    assert (docs / f"{name}.md").read_text(encoding="utf-8") == script.markdown(results)
    assert len(results["commit"]) == 40 and results["dirty"] is False


def test_the_committed_serving_table_and_the_readmes_figures_come_from_the_committed_json():
    """docs/serving.md is serve_load.py's rendering of docs/serving.json, and the README quotes that JSON."""
    root = Path(__file__).resolve().parent.parent
    results = json.loads((root / "docs" / "serving.json").read_text(encoding="utf-8"))
    assert (root / "docs" / "serving.md").read_text(encoding="utf-8") == serve_load.markdown(results)
    assert len(results["commit"]) == 40 and results["dirty"] is False
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())  # line breaks as spaces
    for level in results["levels"]:
        latency = level["latency_ms"]
        row = (
            f"| {level['clients']} | {level['sentences_per_s']:.1f} | {level['vs_batch_mode']:.2f}x | "
            f"{latency['p50']:.0f} ms | {latency['p99']:.0f} ms | {level['failed']} |"
        )
        assert row in readme, row
    top, memory = results["levels"][-1], results["memory"]
    for figure in (
        f"at {results['batch_mode']['sentences_per_s']:.1f} sentences/s",
        f"ran at {results['batch_mode_whole_batches']['sentences_per_s']:.1f} sentences/s",
        f"reaches {top['vs_batch_mode_whole_batches']:.2f}x",
        f"stayed within {memory['rss_kept_largest_change']:+.1%} of the {memory['rss_mib_after_warm_up']:.0f} MiB",
        f"within {memory['rss_in_flight_largest_change']:+.1%} with a batch in flight",
        f"commit `{results['commit'][:7]}`",
        f"Over {memory['requests']:,} more requests",
    ):
        assert figure in readme, figure


def test_the_reliability_rows_name_tests_that_exist():
    """Each row of the record selects at least one test of the suite (a renamed test would empty a row)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    rows = json.loads((docs / "reliability.json").read_text(encoding="utf-8"))["rows"]
    assert [row["what"] for row in rows] == [row.what for row in reliability.ROWS]
    assert all(row["tests"] > 0 and row["passed"] == row["tests"] for row in rows)
