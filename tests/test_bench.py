"""The side-by-side benchmark's set-up: the Joey config really is equivalent to ours, the vocabularies
agree id for id, and the scoring helpers score; the committed decoding table is the script's rendering of its
JSON. (The benchmarks themselves run from the command line.)"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))

import benchmark
import decoding
import experiments
import finetune
import joey
import launch_loop
import ours
import reliability
import serve_load
import training_options


@pytest.fixture
def quickstart() -> dict:
    return yaml.safe_load(ours.BASE_CONFIG.read_text())


def test_joey_config_matches_ours_setting_for_setting(tmp_path: Path, quickstart: dict):
    path = joey.joey_config(tmp_path, "joey-x", Path("spm.model"), Path("vocab.txt"), 150, quick=False)
    config = yaml.safe_load(path.read_text())
    model, train = quickstart["model"], quickstart["train"]
    encoder, decoder, training = config["model"]["encoder"], config["model"]["decoder"], config["training"]
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
        assert config["data"][side]["tokenizer_cfg"]["model_file"] == "spm.model"
        assert config["data"][side]["voc_file"] == "vocab.txt"
        assert config["data"][side]["max_length"] == quickstart["data"]["max_src_length"]


def test_our_config_applies_overrides_and_keeps_the_rest(tmp_path: Path, quickstart: dict):
    path = ours.our_config(tmp_path, "ours-x", {"model.input_feeding": True, "train.max_steps": 7})
    config = yaml.safe_load(path.read_text())
    assert config["model"]["input_feeding"] is True and config["train"]["max_steps"] == 7
    assert config["train"]["run_dir"] == str(tmp_path / "runs" / "ours-x")
    assert config["model"]["attention"] == quickstart["model"]["attention"]
    assert config["train"]["lr"] == quickstart["train"]["lr"]


def test_joey_vocabulary_lists_the_pieces_in_id_order(tmp_path: Path, tokenizer):
    import sentencepiece as spm

    model = tmp_path / "spm.joint.model"
    model.write_bytes(tokenizer.state_dict()["src_model"])
    vocabulary = joey.joey_vocabulary(tmp_path, model).read_text(encoding="utf-8").splitlines()
    processor = spm.SentencePieceProcessor(model_file=str(model))
    assert len(vocabulary) == processor.get_piece_size()
    assert vocabulary[:4] == ["<unk>", "<pad>", "<s>", "</s>"]  # Joey's specials land on our ids
    assert all(processor.piece_to_id(piece) == index for index, piece in enumerate(vocabulary))


def test_scoring_helpers(tmp_path: Path):
    hyps = tmp_path / "hyps.txt"
    refs = tmp_path / "refs.txt"
    hyps.write_text("the cat sat on the mat\nhello there\n", encoding="utf-8")
    refs.write_text("the cat sat on the mat\nhello there\n", encoding="utf-8")
    assert benchmark.bleu_of(hyps, refs) == pytest.approx(100.0)
    assert benchmark.mean_words(hyps) == 4.0
    refs.write_text("a dog ran far away\ngood bye\n", encoding="utf-8")
    assert benchmark.bleu_of(hyps, refs) < 5.0


def test_split_files_cut_to_a_limit(tmp_path: Path):
    src, ref = benchmark.split_files(tmp_path, "test", 7)
    assert len(src.read_text(encoding="utf-8").splitlines()) == 7
    assert len(ref.read_text(encoding="utf-8").splitlines()) == 7
    full_src, _ = benchmark.split_files(tmp_path, "test", None)
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
        ("bf16_shapes", "bf16_shapes"),
        ("profile", "profile_step"),
        ("prepare_large", "prepare_large"),
        ("profile_decode", "profile_decode"),
    ],
)
def test_the_committed_tables_are_the_scripts_rendering_of_the_committed_json(name: str, script):
    """docs/NAME.md is written from docs/NAME.json by its script (never by hand), from a clean tree."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    script = importlib.import_module(script) if isinstance(script, str) else script
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


def test_the_attention_comparison_is_the_scripts_rendering_of_the_committed_json():
    """docs/attention.md's tables and docs/attention/comparison.md are attention_compare.py's rendering of
    docs/attention/comparison.json, a run of `seq2seq compare` from a clean tree."""
    attention_compare = importlib.import_module("attention_compare")
    directory = Path(__file__).resolve().parent.parent / "docs" / "attention"
    results = json.loads((directory / "comparison.json").read_text(encoding="utf-8"))
    assert (directory / "comparison.md").read_text(encoding="utf-8") == attention_compare.markdown(results)
    assert attention_compare.section(results) in (directory.parent / "attention.md").read_text(encoding="utf-8")
    assert len(results["commit"]) == 40 and results["dirty"] is False
    assert [v["variant"] for v in results["variants"]] == attention_compare.VARIANTS.split(",")
    assert all((directory / f"heatmap-{v['variant']}.png").is_file() for v in results["variants"])


def test_the_reliability_rows_name_tests_that_exist():
    """Each row of the record selects at least one test of the suite (a renamed test would empty a row)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    rows = json.loads((docs / "reliability.json").read_text(encoding="utf-8"))["rows"]
    assert [row["what"] for row in rows] == [row.what for row in reliability.ROWS]
    assert all(row["tests"] > 0 and row["passed"] == row["tests"] for row in rows)


# --- bf16_shapes.py: where bf16 pays, shape by shape -----------------------------------------------------------


def _bf16_shapes():
    """The script's module (imported here so that these tests only append to this file)."""
    import bf16_shapes

    return bf16_shapes


def _recurrent_calls(recorder, op: str, shapes: list[tuple]) -> int:
    """How many times the recorder saw `op` on operands of these shapes (whatever their strides or dtype)."""
    return sum(call.count for call in recorder.calls.values() if (call.op, list(_shapes(call))) == (op, shapes))


def _shapes(call) -> list[tuple]:
    return [shape for shape, _, _ in call.operands]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_shapes_capture_counts_each_recurrent_step_of_each_layer_and_direction(precision: str):
    """The recurrent matmul [B,H]x[H,3H] runs once per time step, layer and direction (the backward's twin too)."""
    import torch

    from seq2seq.config import config_from_dict
    from seq2seq.data import collate
    from seq2seq.device import native_bf16
    from seq2seq.model import Seq2Seq
    from seq2seq.tokenizer import EOS_ID

    if precision == "bf16" and not native_bf16():
        pytest.skip("no native bf16 on this CPU")
    bf16_shapes = _bf16_shapes()
    model_settings = {"embedding_size": 16, "encoder_hidden_size": 8, "encoder_layers": 2, "decoder_hidden_size": 12}
    config = config_from_dict({"model": {**model_settings, "dropout": 0.0}, "train": {"max_steps": 1}})
    torch.manual_seed(0)
    model = Seq2Seq(config.model, 30, 40)
    sentences = [(5, 4), (7, 6), (3, 2)]  # (source, target) lengths, EOS included: S = 7, T = 6
    pairs = [
        (torch.cat([torch.randint(4, 30, (s - 1,)), torch.tensor([EOS_ID])]),
         torch.cat([torch.randint(4, 40, (t - 1,)), torch.tensor([EOS_ID])]))
        for s, t in sentences
    ]  # fmt: skip
    recorder = bf16_shapes.capture(model, config, [collate(pairs)], precision)
    batch, source_steps, target_steps = 3, 7, 6
    encoder = source_steps * 2 * 2  # time steps x layers x directions
    assert _recurrent_calls(recorder, "addmm", [(24,), (batch, 8), (8, 24)]) == encoder
    assert _recurrent_calls(recorder, "mm", [(batch, 24), (24, 8)]) == encoder  # the backward's step
    assert _recurrent_calls(recorder, "addmm", [(36,), (batch, 12), (12, 36)]) == target_steps
    assert _recurrent_calls(recorder, "mm", [(batch, 36), (36, 12)]) == target_steps
    forward = next(call for call in recorder.calls.values() if _shapes(call) == [(24,), (batch, 8), (8, 24)])
    assert forward.pattern == "addmm [B,8]x[8,24] + [24]"
    assert forward.group.startswith("GRU recurrent step")
    assert {call.operands[0][2] for call in recorder.calls.values()} == {
        "float32" if precision == "fp32" else "bfloat16"
    }


def _bf16_shapes_results(bf16: bool) -> dict:
    """A small synthetic results dict of the shape bf16_shapes.py writes (fp32 only when `bf16` is False)."""
    bf16_shapes = _bf16_shapes()
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    step_ms = {"fp32": 400.0, "bf16": 380.0}
    ms = {"fp32": 120.0, "bf16": 60.0, "bf16+casts": 80.0} if bf16 else {"fp32": 120.0}
    row = {
        "group": "GRU recurrent step",
        "pattern": "addmm [B,256]x[256,768] + [768]",
        "calls_per_step": dict.fromkeys(precisions, 129.0),
        "ms_per_step": ms,
        "distinct_shapes": 4,
        **({"speedup_bf16": 2.0, "speedup_bf16_with_casts": 1.5} if bf16 else {}),
    }
    groups = bf16_shapes.group_totals([row])
    casts = None
    if bf16:
        casts = {
            "charged_to_matmuls": {"per_step": 500.0, "ms_per_step": 20.0},
            "other": {"per_step": 40.0, "ms_per_step": 10.0},
            "weight_shaped": {
                "per_step": 129.0,
                "ms_per_step": 5.0,
                "most_cast": [{"shape": [256, 768], "direction": "float32->bfloat16", "per_step": 129.0}],
            },
        }
    steps = {
        p: {"first_pass_step_ms": 900.0, "pass_step_ms": [step_ms[p]], "step_ms": step_ms[p], "tokens_per_s": 5000.0}
        | {"median_step_ms": step_ms[p] + 10}
        for p in precisions
    }
    profile = {p: {"step_ms": 500.0, "matmul_ms": 150.0, "cast_ms": 30.0, "matmul_share": 0.3} for p in precisions}
    memory = [
        {"steps": 30, "variant": p, "peak_rss_mib": peak, "rss_before_steps_mib": 360.0, "step_ms_new_batches": 450.0,
         "saved_for_backward_mib": {"float32": 120.0}, "allocations_per_step_mib": {"total": 900.0, "largest": {}}}
        for p, peak in (("fp32", 685.0), ("bf16", 1141.0))[: len(precisions)]
    ]  # fmt: skip
    mode = {
        "batches": [],
        "steps": steps,
        "profile": profile,
        "groups": groups,
        "patterns": [row],
        "casts": casts,
        "projection": bf16_shapes.projection({p: step_ms[p] for p in precisions}, groups["all matmuls"], casts or {}),
    }
    return {
        "date": "2026-11-30",
        "command": "python scripts/bench/bf16_shapes.py",
        "commit": "0" * 40,
        "dirty": False,
        "machine": {"cpu": "Some CPU", "cores": 2, "python": "3.12", "torch": "2.13.0+cpu"},
        "cpu": {"capability": "AVX512", "flags": {"avx512_bf16": bf16}, "native_bf16": bf16, "threads": 2},
        "batches": 4,
        "rounds": 3,
        **({} if bf16 else {"bf16_skipped": "this CPU (AVX2) has no native bf16"}),
        "modes": {"fast_path": mode},
        "elementwise": [
            {"tensor": "GRU gates [B,3H]", "op": "sigmoid", "fp32_us": 10.0, "bf16_us": 12.5, "speedup_bf16": 0.8},
            {"tensor": "logits [N,V]", "op": "log_softmax", "fp32_us": 4e4, "bf16_us": 1e4, "speedup_bf16": 4.0},
            {"tensor": "logits [N,V]", "op": "mul", "fp32_us": 4e4, "bf16_us": 5e3, "speedup_bf16": 8.0},
            {
                "tensor": "logits [N,V]",
                "op": "mul into an existing tensor",
                "fp32_us": 1e4,
                "bf16_us": 4.5e3,
                "speedup_bf16": 2.22,
            },
        ]
        if bf16
        else None,
        "memory": memory,
    }


def test_bf16_shapes_markdown_renders_the_key_figures_from_the_json():
    """The page shows the projection against the measured speedup, the shapes, casts and memory (from JSON alone)."""
    bf16_shapes = _bf16_shapes()
    results = _bf16_shapes_results(bf16=True)
    projection = results["modes"]["fast_path"]["projection"]
    # step 400 ms, matmuls 120 -> 60 ms in bf16 (80 with their casts, other casts 10): rest 280 ms
    assert projection["projected_speedup"] == pytest.approx(400 / 340, abs=1e-3)
    assert projection["projected_speedup_with_casts"] == pytest.approx(400 / 370, abs=1e-3)
    assert projection["measured_speedup"] == pytest.approx(400 / 380, abs=1e-3)
    assert projection["rest_speedup_needed"] == pytest.approx(280 / (400 / 1.4 - 60), abs=0.01)
    page = bf16_shapes.markdown(json.loads(json.dumps(results)))  # what a reader of the JSON file gets
    for figure in (
        "1.18x at best",  # Amdahl with bf16 matmuls
        "1.08x with all casts",
        "measured 1.05x",
        "1.4x is not reachable by matmuls alone",
        "1.24x faster",  # what the non-matmul rest would need
        "`addmm [B,256]x[256,768] + [768]` | 129.0 | 120.00 | 60.0 | 80.0 | 2.00x | 1.50x |",
        "[256, 768] float32->bfloat16 129x",
        "| bf16 | 1,141 | 360 |",
        "| fp32 | 685 | 360 |",
        "commit 000000000000",
        "| bf16 | 380 (390) | 5,000 | 900 |",
        "| GRU gates [B,3H] | sigmoid | 10.0 | 12.5 | 0.80x |",
        "GRU's per-step tensors run 0.80-0.80x in bf16",
        "arithmetic alone runs 2.22-2.22x",
        "costs 30.0 ms more than writing into an existing tensor in fp32, 0.5 ms in bf16",
    ):
        assert figure in page, figure


def test_bf16_shapes_projects_nothing_when_the_matmuls_alone_outlast_the_step():
    """Shape timings above the measured step (a busy machine) give no Amdahl projection, and the page says so."""
    bf16_shapes = _bf16_shapes()
    results = _bf16_shapes_results(bf16=True)
    mode = results["modes"]["fast_path"]
    matmuls = {"ms_per_step": {"fp32": 450.0, "bf16": 200.0, "bf16+casts": 300.0}}
    mode["projection"] = bf16_shapes.projection({"fp32": 400.0, "bf16": 380.0}, matmuls, mode["casts"])
    assert mode["projection"]["consistent"] is False and "projected_speedup" not in mode["projection"]
    page = bf16_shapes.markdown(results)
    assert "the machine was busy, no projection" in page and "Amdahl:" not in page


def test_bf16_shapes_markdown_without_native_bf16_says_why_and_shows_fp32_only():
    bf16_shapes = _bf16_shapes()
    page = bf16_shapes.markdown(_bf16_shapes_results(bf16=False))
    assert "**bf16 not measured:** this CPU (AVX2) has no native bf16" in page
    assert "| fp32 | 685 | 360 |" in page and "| bf16 |" not in page
    assert "measured" not in page.split("## Conclusion")[1].split("##")[0]  # no speedup claimed


# --- opennmt.py: OpenNMT-py 3.5.1 as a second peer --------------------------------------------------------------

PEER_LOGS = Path(__file__).resolve().parent / "fixtures" / "peer_logs"


def _opennmt():
    """The peer's module (imported here so that these tests only append to this file)."""
    import opennmt

    return opennmt


def test_opennmt_config_matches_ours_setting_for_setting(tmp_path: Path, quickstart: dict):
    from seq2seq.config import ScheduleConfig
    from seq2seq.schedule import LearningRateSchedule

    opennmt = _opennmt()
    path = opennmt.opennmt_config(tmp_path, "opennmt-x", Path("spm.model"), Path("vocab.txt"), 150, quick=False)
    onmt = yaml.safe_load(path.read_text())
    model, train, data = quickstart["model"], quickstart["train"], quickstart["data"]
    assert onmt["encoder_type"] == "brnn" and onmt["decoder_type"] == "rnn" and onmt["rnn_type"] == "GRU"
    # OpenNMT needs encoder and decoder of one size (brnn: half per direction): the decoder is ours
    assert onmt["hidden_size"] == model["decoder_hidden_size"]
    assert onmt["word_vec_size"] == model["embedding_size"] and onmt["dropout"] == [model["dropout"]]
    assert onmt["enc_layers"] == model["encoder_layers"] and onmt["dec_layers"] == model["decoder_layers"]
    assert onmt["global_attention"] == "mlp" and model["attention"]["type"] == "additive"  # Bahdanau
    assert onmt["input_feed"] == 1 and onmt["bridge"] is True
    assert onmt["optim"] == train["optimizer"] and [onmt["adam_beta1"], onmt["adam_beta2"]] == train["adam_betas"]
    assert onmt["decay_method"] == "noam" and onmt["warmup_steps"] == train["schedule"]["warmup_steps"]
    ours = LearningRateSchedule(ScheduleConfig(**train["schedule"]), train["lr"], None)
    for step in (1, 20, 149, 150, 151, 1000, 50_000):  # OpenNMT's noam_decay, times its learning_rate
        noam = onmt["hidden_size"] ** -0.5 * min(step**-0.5, step * onmt["warmup_steps"] ** -1.5)
        assert onmt["learning_rate"] * noam == pytest.approx(ours.lr(step), rel=1e-9)
    assert onmt["batch_type"] == "tokens" and onmt["batch_size"] == train["batch_tokens"]
    assert onmt["normalization"] == "tokens" and onmt["accum_count"] == [1]
    assert onmt["label_smoothing"] == train["label_smoothing"] and onmt["max_grad_norm"] == train["clip_grad_norm"]
    assert onmt["seed"] == train["seed"] and onmt["num_workers"] == data["num_workers"]
    assert onmt["train_steps"] == 150 and onmt["report_every"] == train["log_every"]
    assert list(onmt["data"]) == ["corpus_1"] and onmt["valid_steps"] >= 10**9  # no validation
    corpus = onmt["data"]["corpus_1"]
    root = Path(__file__).resolve().parents[1]
    assert corpus["path_src"] == str(root / f"{data['train']}.{data['src_lang']}")
    assert corpus["path_tgt"] == str(root / f"{data['train']}.{data['tgt_lang']}")
    assert corpus["transforms"] == ["sentencepiece", "filtertoolong"]
    assert onmt["bucket_size"] == len(Path(corpus["path_src"]).read_bytes().splitlines())  # one pass a bucket
    assert onmt["src_seq_length"] == data["max_src_length"] - 1  # OpenNMT's sources have no EOS
    assert onmt["tgt_seq_length"] - 2 == data["max_tgt_length"] - 1  # it keeps tgt_seq_length - 2 pieces
    assert onmt["src_subword_model"] == onmt["tgt_subword_model"] == "spm.model"
    assert onmt["src_vocab"] == "vocab.txt" and onmt["share_vocab"] is True and onmt["vocab_size_multiple"] == 1
    assert onmt["gpu_ranks"] == [] and onmt["save_model"] == str(tmp_path / "runs" / "opennmt-x" / "model")
    path = opennmt.opennmt_config(tmp_path, "opennmt-y", Path("spm.model"), Path("v.txt"), None, True, "cuda")
    cuda = yaml.safe_load(path.read_text())
    assert cuda["gpu_ranks"] == [0] and cuda["train_steps"] >= 10**9 and cuda["report_every"] == 5


def test_opennmt_logs_parse_with_the_modules_own_expressions():
    """Excerpts of real OpenNMT-py 3.5.1 logs: 40 updates through opennmt_wrapper.py, and greedy decoding."""
    opennmt = _opennmt()
    train_log = (PEER_LOGS / "opennmt-train.log").read_text(encoding="utf-8")
    target_tokens_per_s = [119.0, 163.0, 109.0, 106.0, 143.0, 76.0, 53.0, 68.0]  # the tgt of "src/tgt tok/s"
    assert opennmt.parse_train_log(train_log) == target_tokens_per_s
    assert opennmt.FIRST_BATCH.search(train_log) is not None
    assert opennmt.parse_checkpoint(train_log) == ("/work/main/.cache/bench/runs/opennmt-fixed/model_step_40.pt", 40)
    translate_log = (PEER_LOGS / "opennmt-translate.log").read_text(encoding="utf-8")
    assert opennmt.parse_translate_log(translate_log) == (41.8, 418.2)
    with pytest.raises(ValueError):
        opennmt.parse_translate_log(train_log)
    with pytest.raises(ValueError):
        opennmt.parse_checkpoint(translate_log)


def test_opennmt_vocabulary_lists_our_pieces_with_its_specials_on_our_ids(tmp_path: Path, tokenizer):
    import sentencepiece as spm

    model = tmp_path / "spm.joint.model"
    model.write_bytes(tokenizer.state_dict()["src_model"])
    text = _opennmt().opennmt_vocabulary(tmp_path, model).read_text(encoding="utf-8")
    vocabulary = text.split("\n")[:-1]  # OpenNMT reads it so: what follows the last newline is dropped
    assert text.endswith("\n")
    processor = spm.SentencePieceProcessor(model_file=str(model))
    assert len(vocabulary) == processor.get_piece_size()
    assert vocabulary[:4] == ["<unk>", "<blank>", "<s>", "</s>"]  # OpenNMT's unk, pad, bos, eos: it adds none
    assert all(processor.piece_to_id(piece) == index for index, piece in enumerate(vocabulary[4:], start=4))
    assert all(len(line.split()) == 1 for line in vocabulary)  # one token a line and no counts


def test_opennmt_translates_with_our_decode_settings(tmp_path: Path, quickstart: dict):
    opennmt = _opennmt()
    config = opennmt.opennmt_config(tmp_path, "opennmt-x", Path("spm.model"), Path("vocab.txt"), 150, quick=False)
    decode = quickstart["decode"]

    def options(beam: int) -> dict:
        command = opennmt.translate_command(Path("python"), config, "m.pt", Path("in.es"), Path("out.txt"), beam)
        assert command[:3] == ["python", str(opennmt.WRAPPER), "translate"] and "-report_time" in command
        pairs = [word for word in command[3:] if word != "-report_time"]  # every other flag takes one value
        return dict(zip(pairs[::2], pairs[1::2]))

    greedy, beam5 = options(1), options(5)
    assert greedy["-random_sampling_topk"] == "1" and greedy["-beam_size"] == "1"  # argmax
    assert "-random_sampling_topk" not in beam5 and beam5["-beam_size"] == "5"
    assert int(greedy["-batch_size"]) == decode["batch_tokens"] == 5 * int(beam5["-batch_size"])
    assert beam5["-length_penalty"] == "wu" and float(beam5["-alpha"]) == decode["alpha"]  # ((5 + length) / 6) ** alpha
    assert float(beam5["-max_length_ratio"]) == decode["max_output_ratio"]
    assert beam5["-src_subword_model"] == beam5["-tgt_subword_model"] == "spm.model"
    assert beam5["-transforms"] == "sentencepiece" and beam5["-src"] == "in.es" and "-gpu" not in beam5
