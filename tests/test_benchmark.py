"""The side-by-side benchmark (scripts/bench/benchmark.py): what it refuses to publish, how it compares with two
peers, and that the committed report and the README's speed table are its rendering of the committed JSON.
(The benchmark itself runs from the command line: about 100 minutes.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import benchmark
import joey

FIXTURES = ROOT / "tests" / "fixtures" / "peer_logs"


def test_publish_is_refused_for_a_quick_run(capsys):
    assert benchmark.main(["--quick", "--publish"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "benchmark: --publish needs a full run: drop --quick, --updates and --budget"


def test_publish_is_refused_from_a_tree_with_uncommitted_changes(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "commit", lambda: {"commit": "f" * 40, "dirty": True})
    assert benchmark.main(["--publish"]) == 2
    assert "uncommitted changes" in capsys.readouterr().err


def test_a_full_run_from_a_clean_tree_may_publish():
    args = benchmark.parse_arguments(["--publish"])
    assert benchmark.publish_refusal(args, {"commit": "f" * 40, "dirty": False}) is None
    assert benchmark.publish_refusal(args, {"commit": "f" * 40, "dirty": True}) is not None
    assert benchmark.publish_refusal(benchmark.parse_arguments(["--publish", "--budget", "5"]), {"dirty": False})
    fixed_only = benchmark.parse_arguments(["--publish", "--budget-runs", ""])
    assert "missing: joey, opennmt, ours-fast-fp32" in benchmark.publish_refusal(fixed_only, {"dirty": False})


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--peers", "marian"], "--peers: unknown peer 'marian'"),
        (["--budget", "nan"], "--budget must be a positive number"),
        (["--updates", "0"], "--updates must be a positive number"),
        (["--peers", "joey", "--budget-runs", "opennmt"], "--budget-runs names opennmt, which --peers leaves out"),
        (["--budget-runs", "ours-fastest"], "--budget-runs: unknown run 'ours-fastest'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, problem, capsys):
    assert benchmark.main(argv) == 2
    error = capsys.readouterr().err
    assert problem in error and error.count("\n") == 1


def test_without_native_bf16_the_bf16_runs_are_left_out():
    assert set(benchmark.our_variants("cpu", bf16=False)) == {"ours-if-fp32", "ours-fast-fp32"}
    with_bf16 = benchmark.our_variants("cpu", bf16=True)
    assert with_bf16["ours-fast-bf16"]["overrides"]["train.precision"] == "bf16"
    assert all(variant["cudnn"] for variant in with_bf16.values())
    assert benchmark.lower_precision_decoding("cpu", {}) == [("int8", ("--quantize", "int8"))]


def test_the_gpu_mode_runs_ours_with_and_without_cudnn():
    variants = benchmark.our_variants("cuda", bf16=True)
    assert variants["ours-fast-fp32-no-cudnn"]["cudnn"] is False
    assert variants["ours-fast-fp32-no-cudnn"]["overrides"] == variants["ours-fast-fp32"]["overrides"]
    assert all(v["overrides"]["train.device"] == "cuda" for v in variants.values())
    assert "int8" not in dict(benchmark.lower_precision_decoding("cuda", variants))  # dynamic int8 is CPU only


def test_targets_hold_against_the_faster_peer_for_each_figure():
    ratios = {
        "ours": {"matmul_peak_share": 0.61, "bf16_peak_rss": 1.3},
        "joey": {"train_tokens_per_s": 4.0, "peak_rss": 0.3, "dev_bleu_delta": 14.0},
        "opennmt": {"train_tokens_per_s": 2.0, "peak_rss": 0.6, "dev_bleu_delta": 9.0},
    }
    rows = {row["key"]: row for row in benchmark.targets(ratios)}
    assert rows["train_tokens_per_s"]["against"] == "opennmt" and rows["train_tokens_per_s"]["value"] == 2.0
    assert rows["train_tokens_per_s"]["met"] is False  # 4x Joey but only 2x OpenNMT-py: not 3x the faster peer
    assert rows["peak_rss"]["against"] == "opennmt" and rows["peak_rss"]["met"] is False  # the leaner peer decides
    assert rows["dev_bleu_delta"]["against"] == "opennmt" and rows["dev_bleu_delta"]["met"] is False
    assert rows["matmul_peak_share"]["met"] is True and rows["matmul_peak_share"]["against"] is None
    assert rows["bf16_peak_rss"]["met"] is False
    assert "train_tokens_per_s_fast" not in rows  # not measured: no row rather than a made-up one


def test_the_speed_ceiling_is_the_matmul_peak_over_the_flops_per_token_against_the_faster_peer():
    results = {
        "matmul_peak_gflops": {"fp32": 200.0},
        "flops_per_target_token": {"ours-fast-fp32": 20e6, "ours-if-fp32": 25e6},
        "fixed_updates": {
            "runs": {
                "ours-fast-fp32": {"tokens_per_s": 6000.0},
                "ours-if-fp32": {"tokens_per_s": 3000.0},
                "joey": {"tokens_per_s": 1000.0},
                "opennmt": {"tokens_per_s": 2500.0},
            }
        },
    }
    ceilings = benchmark.speed_ceilings(results)
    assert ceilings["ours-fast-fp32"] == {
        "target_tokens_per_s": 12500.0,  # 5x the faster peer
        "against": "opennmt",
        "ceiling_tokens_per_s": 10000.0,  # 200 GFLOP/s / 20 MFLOP per token
        "measured_tokens_per_s": 6000.0,
    }
    assert ceilings["ours-if-fp32"]["target_tokens_per_s"] == 7500.0  # 3x
    assert ceilings["ours-if-fp32"]["ceiling_tokens_per_s"] == 8000.0
    assert "| ours-fast-fp32 | 6,000 | 12,500 (OpenNMT-py 3.5.1) | 10,000 | 1.25 |" in benchmark._ceiling_lines(results)
    del results["fixed_updates"]["runs"]["joey"], results["fixed_updates"]["runs"]["opennmt"]
    assert benchmark.speed_ceilings(results) == {} and benchmark._ceiling_lines(results) == []  # no peer, no target


def test_joeys_log_excerpts_parse_with_the_scripts_own_expressions():
    train = (FIXTURES / "joey-train.log").read_text(encoding="utf-8")
    speeds = joey.parse_train_log(train)
    assert speeds == [58.0, 46.0, 45.0, 113.0, 95.0, 110.0]  # captured on a machine busy with other work
    decode = (FIXTURES / "joey-test.log").read_text(encoding="utf-8")
    assert joey.parse_decode_seconds(decode) == 39.0284


def test_the_committed_report_is_the_scripts_rendering_of_the_committed_json():
    """docs/benchmark.md and the README's speed table are written from docs/benchmark.json, a full run from a clean
    tree whose ratios and targets are the script's own computation from the measured figures. Until a run with
    both peers is published, the README's table says so instead of quoting older figures."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[
        readme.index(benchmark.README_BEGIN) : readme.index(benchmark.README_END) + len(benchmark.README_END)
    ]
    published = ROOT / "docs" / "benchmark.json"
    if not published.exists():
        assert table == benchmark.NOT_PUBLISHED
        return
    results = json.loads(published.read_text(encoding="utf-8"))
    assert len(results["commit"]) == 40 and results["dirty"] is False and results["mode"] == "full"
    assert (ROOT / "docs" / "benchmark.md").read_text(encoding="utf-8") == benchmark.markdown(results)
    assert table == benchmark.readme_section(results)
    recomputed = json.loads(json.dumps(results))
    benchmark.complete_results(recomputed)
    assert recomputed["ratios"] == results["ratios"] and recomputed["targets"] == results["targets"]


def test_quickstart_py_runs_exactly_the_readmes_first_command():
    import quickstart

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = quickstart.readme_command(readme)
    assert command.startswith("python3 -m venv .venv") and "seq2seq train configs/quickstart.yaml" in command
    assert command in readme.split("**Run the tests**")[0]  # the first block, not the test command
    table = readme[readme.index(quickstart.BEGIN) : readme.index(quickstart.END) + len(quickstart.END)]
    published = ROOT / "docs" / "quickstart.json"
    if published.exists():  # once published, the README's table is the script's rendering of the JSON
        assert table == quickstart.readme_table(json.loads(published.read_text(encoding="utf-8")))
