"""Joey NMT 2.3.0 as a peer in the side-by-side benchmark: its environment, an equivalent config, training, decoding.

Joey runs in its own virtual environment (WORK/joey-venv), pinned to the torch installed here so that nothing
downloads another torch, through joey_wrapper.py (two patches for current torch and sentencepiece).
Everything read from Joey's logs is read with the regular expressions below (tests parse captured excerpts).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from processes import ROOT, Run, median_after_first, pinned_venv, run_process

log = logging.getLogger("bench")
JOEY_VERSION = "2.3.0"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
TOKENS_PER_S = re.compile(r"Tokens per Sec:\s*([\d.]+)")  # real target tokens/s of one logging interval
GENERATION_SECONDS = re.compile(r"Generation took ([\d.]+)\[sec\]")  # its decoding loop, model loading excluded


def parse_train_log(text: str) -> list[float]:
    """The target tokens/s of each logged interval of a Joey train.log."""
    return [float(speed) for speed in TOKENS_PER_S.findall(text)]


def parse_decode_seconds(text: str) -> float:
    """Seconds Joey's `test` mode spent generating (the last report in the log)."""
    return float(GENERATION_SECONDS.findall(text)[-1])


def joey_python(work: Path) -> Path:
    """Joey NMT in its own virtual environment, pinned to our torch version (set up once)."""
    probe = ["-c", "import joeynmt, torch; print(joeynmt.__version__, torch.__version__)"]
    python, pip = pinned_venv(work / "joey-venv", probe)
    if pip is not None:
        # Joey imports importlib_metadata without declaring it.
        subprocess.run([*pip, f"joeynmt=={JOEY_VERSION}", "importlib_metadata"], check=True)
        subprocess.run([str(python), *probe], check=True)
    return python


def joey_vocabulary(work: Path, spm_model: Path) -> Path:
    """Joey's vocabulary file: the SentencePiece model's pieces in id order (so ids agree)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces[:4] == ["<unk>", "<pad>", "<s>", "</s>"], pieces[:4]
    path = work / "joey-vocab.txt"
    path.write_text("".join(piece + "\n" for piece in pieces), encoding="utf-8")
    return path


def joey_config(
    work: Path, name: str, spm_model: Path, vocabulary: Path, updates: int | None, quick: bool, device: str = "cpu"
) -> Path:
    """A Joey config equivalent to our quickstart config with input feeding (on `device`: cpu or cuda)."""
    ours = yaml.safe_load(BASE_CONFIG.read_text())
    model, train, data = ours["model"], ours["train"], ours["data"]
    side = {
        "max_length": data["max_src_length"],
        "level": "bpe",
        "tokenizer_type": "sentencepiece",
        "tokenizer_cfg": {"model_file": str(spm_model)},
        "voc_file": str(vocabulary),
        "lowercase": False,
    }
    layers = {
        "rnn_type": "gru",
        "type": "recurrent",
        "hidden_size": model["encoder_hidden_size"],
        "embeddings": {"embedding_dim": model["embedding_size"]},
        "dropout": model["dropout"],
        "num_layers": model["encoder_layers"],
    }
    schedule = train["schedule"]
    config = {
        "name": name,
        "joeynmt_version": JOEY_VERSION,
        "model_dir": str(work / "runs" / name),
        "use_cuda": device == "cuda",
        "random_seed": train["seed"],
        "data": {
            "train": str(ROOT / data["train"]),
            "dev": str(ROOT / data["dev"]),
            "dataset_type": "plain",
            "src": {"lang": data["src_lang"], **side},
            "trg": {"lang": data["tgt_lang"], **side},
            "special_symbols": {
                "unk_token": "<unk>",
                "unk_id": 0,
                "pad_token": "<pad>",
                "pad_id": 1,
                "bos_token": "<s>",
                "bos_id": 2,
                "eos_token": "</s>",
                "eos_id": 3,
            },
        },
        "testing": {
            "beam_size": 1,
            "beam_alpha": 1.0,
            "batch_size": 4000,
            "batch_type": "token",
            "eval_metrics": ["bleu"],
            "sacrebleu_cfg": {"tokenize": "13a"},
        },
        "training": {
            "optimizer": train["optimizer"],
            "adam_betas": train["adam_betas"],
            "learning_rate": train["lr"],
            "learning_rate_min": schedule["min_lr"],
            "scheduling": "warmupinversesquareroot",
            "learning_rate_warmup": schedule["warmup_steps"],
            "weight_decay": train["weight_decay"],
            "label_smoothing": train["label_smoothing"],
            "clip_grad_norm": train["clip_grad_norm"],
            "loss": "crossentropy",
            "batch_size": train["batch_tokens"],
            "batch_type": "token",
            "normalization": "tokens",
            "epochs": 10_000,
            "updates": updates if updates is not None else 10**9,
            "validation_freq": 10**9,
            "logging_freq": 5 if quick else train["log_every"],
            "early_stopping_metric": "bleu",
            "shuffle": True,
            "overwrite": True,
            "num_workers": 0,
            "keep_best_ckpts": 1,
            "print_valid_sents": [],
        },
        "model": {
            "initializer": "xavier_uniform",
            "bias_initializer": "zeros",
            "encoder": {**layers, "bidirectional": True},
            "decoder": {
                **layers,
                "hidden_size": model["decoder_hidden_size"],
                "num_layers": model["decoder_layers"],
                "hidden_dropout": model["dropout"],
                "input_feeding": True,
                "init_hidden": "bridge",
                "attention": "bahdanau",
            },
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_joey(python: Path, work: Path, config: Path, budget_s: float | None = None) -> Run:
    """Train Joey; tokens/s is the median of its logged intervals after the first."""
    name = config.stem
    model_dir = work / "runs" / name
    train_log = model_dir / "train.log"
    shutil.rmtree(model_dir, ignore_errors=True)  # an old train.log would look like a start

    def began() -> bool:
        return train_log.exists() and "EPOCH 1" in train_log.read_text(errors="replace")

    command = [str(python), str(ROOT / "scripts" / "bench" / "joey_wrapper.py"), "train", str(config), "--skip-test"]
    run = run_process(command, work / f"{name}.log", budget_s, began)
    run.name = name
    text = train_log.read_text(errors="replace")
    speeds = parse_train_log(text)
    run.tokens_per_s = median_after_first(speeds)
    checkpoints = sorted(model_dir.glob("[0-9]*.ckpt"), key=lambda p: int(p.stem))
    run.extra["checkpoint"] = str(checkpoints[-1])
    run.updates = int(checkpoints[-1].stem)  # Joey names its checkpoints by update
    return run


def decode_joey(
    python: Path, work: Path, train_config: Path, checkpoint: str, src: Path, ref: Path, beam: int, tag: str
) -> dict:
    """Joey's decoding of src (its `test` mode; the caller scores against `ref`): hypotheses, its own timing."""
    config = yaml.safe_load(train_config.read_text())
    prefix = str(src.with_suffix(""))
    config["data"].pop("dev", None)
    config["data"]["test"] = prefix
    config["testing"].update({"beam_size": beam, "load_model": checkpoint})
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = work / "hyps" / tag
    output.parent.mkdir(exist_ok=True)
    command = [str(python), str(ROOT / "scripts" / "bench" / "joey_wrapper.py"), "test", str(path)]
    run_process([*command, "--output-path", str(output)], work / f"{tag}.log")
    text = (work / f"{tag}.log").read_text(errors="replace")
    seconds = parse_decode_seconds(text)
    sentences = len(src.read_text(encoding="utf-8").splitlines())
    return {"hypotheses": Path(f"{output}.test"), "seconds": seconds, "sentences_per_s": sentences / seconds}
