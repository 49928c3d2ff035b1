"""OpenNMT-py 3.5.1 as a peer of the side-by-side benchmark: set-up, vocabulary, config, training, decoding.

The functions mirror the Joey ones in joey.py (joey_python, joey_vocabulary, joey_config, train_joey,
decode_joey). OpenNMT runs through scripts/bench/opennmt_wrapper.py, whose docstring lists what the wrapper
changes at run time. Workarounds, all of them:

- OpenNMT-py 3.5.1's metadata asks for torch<2.3; it trains and translates with torch 2.13. It is installed
  with `pip install --no-deps OpenNMT-py==3.5.1` into its own venv whose constraints file pins our torch,
  beside only the packages that training and translation import: configargparse, pyyaml, numpy,
  pyonmttok<2 (its vocabularies), sacrebleu (onmt.scorers imports it at module level) and sentencepiece
  (which the sentencepiece transform needs and the metadata does not list). Not installed, because neither
  entry point uses them: ctranslate2, tensorboard (imported only with `tensorboard: true`), flask and
  waitress (onmt_server), six, and spacy, fasttext-wheel, rapidfuzz and pyahocorasick: four transforms
  the benchmark does not use import those at module level, and the wrapper stands in for them.
- SIGINT: onmt_train dies on it without saving; the wrapper saves the weights of the last finished update
  (a budget run ends with the weights of the moment the budget ran out, like ours and Joey's).
- torch >= 2.6 loads weights_only by default, which OpenNMT's checkpoints do not pass: the wrapper sets
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.

The recipe follows configs/quickstart.yaml with input feeding; what could not be made the same is said at
`opennmt_config`, `train_opennmt` and `decode_opennmt`.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import yaml
from processes import ROOT, Run, median_after_first, pinned_venv, run_process

log = logging.getLogger("bench")
OPENNMT_VERSION = "3.5.1"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
WRAPPER = ROOT / "scripts" / "bench" / "opennmt_wrapper.py"
DEPENDENCIES = ["configargparse", "pyyaml", "numpy", "pyonmttok<2,>=1.37", "sacrebleu", "sentencepiece"]

# "[... INFO] Step  5/   40; acc: 0.1; ppl: 3984.5; xent: 8.3; lr: 0.00012; sents:     384; bsz: 2211/2200/77;
#  119/119 tok/s;     93 sec;" (numbers padded to a width: "Step 30/   40", " 75/ 76 tok/s"): source/target tokens/s
# The `tgt` group is the one compared: real target tokens (padding excluded, EOS included) per second.
TOKENS_PER_S = re.compile(r"Step\s+(?P<step>\d+)(?:/\s*\d+)?; acc: .*?;\s+(?P<src>[\d.]+)/\s*(?P<tgt>[\d.]+) tok/s")
FIRST_BATCH = re.compile(r"First training batch ready")  # logged by opennmt_wrapper.py: the budget starts
SAVED = re.compile(r"Saving checkpoint (?P<path>\S+_step_(?P<step>\d+)\.pt)")  # at the end, or when interrupted
TRANSLATION_SECONDS = re.compile(r"Total translation time \(s\): ([\d.]+)")
TRANSLATION_MS_PER_SENTENCE = re.compile(r"Average translation time \(ms\): ([\d.]+)")


def opennmt_python(work: Path) -> Path:
    """OpenNMT-py in its own virtual environment, pinned to our torch version (set up once)."""
    python, pip = pinned_venv(work / "opennmt-venv", [str(WRAPPER), "versions"])
    if pip is not None:
        subprocess.run([*pip, "--no-deps", f"OpenNMT-py=={OPENNMT_VERSION}"], check=True)  # it asks for torch<2.3
        subprocess.run([*pip, *DEPENDENCIES], check=True)
        subprocess.run([str(python), str(WRAPPER), "versions"], check=True)
    return python


def opennmt_vocabulary(work: Path, spm_model: Path) -> Path:
    """OpenNMT's vocabulary file: our SentencePiece pieces in id order, one per line, without counts.

    OpenNMT's specials are <unk>, <blank> (its padding), <s> and </s>, and it puts any of them that the
    file lacks in front of the file's tokens. Our model's first four pieces are <unk>, <pad>, <s>, </s>:
    writing <blank> for <pad> lists all four, so nothing is added and OpenNMT's ids are our SentencePiece
    ids (4,000 in all, a multiple of vocab_size_multiple, so no filler tokens either). The sentencepiece
    transform hands OpenNMT pieces as strings; a character the model lacks becomes <unk>.
    """
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces[:4] == ["<unk>", "<pad>", "<s>", "</s>"], pieces[:4]
    pieces[1] = "<blank>"
    path = work / "opennmt-vocab.txt"
    path.write_text("".join(piece + "\n" for piece in pieces), encoding="utf-8")
    return path


def opennmt_config(
    work: Path,
    name: str,
    spm_model: Path,
    vocabulary: Path,
    updates: int | None,
    quick: bool,
    device: str = "cpu",
) -> Path:
    """An OpenNMT config equivalent to our quickstart config with input feeding, written to work/name.yaml.

    What differs and why (OpenNMT-py 3.5.1 cannot express ours):
    - sizes: OpenNMT asserts enc_hid_size == dec_hid_size, because its attention needs encoder states as
      wide as the decoder state, and its brnn splits enc_hid_size across the two directions. Ours has a
      256-wide decoder over 512-wide states (256 per direction). `hidden_size` is our decoder_hidden_size:
      the decoder, its attention and its output layer (most of the FLOPs per target token) are ours, and
      the encoder has half our width per direction (128). The other way (512 everywhere) would double the
      decoder's width and more than double its FLOPs per target token.
    - attention `mlp` is Bahdanau's v.tanh(Wq + Uk) as ours, but its query layer and output layer have
      biases, and its attentional vector W[c; h] has no tanh (ours: tanh(W[h; c])). OpenNMT also projects
      the encoder states (Uk) again at every decoder step, where ours projects them once per batch.
    - bridge: OpenNMT's is ReLU(W h + b) applied to each direction's final state with one shared W, then
      concatenated; ours is tanh(W [fwd; bwd] + b). It is the learned layer closest to ours.
    - initialisation: OpenNMT needs param_init (uniform) or xavier (glorot); ours keeps torch's defaults.
      Glorot, as in the Joey config.
    - dropout: embeddings, attentional vectors (and between layers) as ours; ours also drops out the encoder
      states, which OpenNMT does not.
    - source: OpenNMT's has no EOS (ours has), so its length limit is max_src_length - 1 pieces; targets
      are BOS + pieces + EOS, filtered at max_tgt_length + 1 (ours: pieces + EOS <= max_tgt_length).
    - batches: sentences * max(source, target) padded length up to batch_tokens, as ours per side; OpenNMT
      reads one bucket (set to the training file's lines: one pass), tokenizes it, sorts it by length and
      shuffles its batches, every pass again (ours encodes the corpus once, before training); a batch
      skips a pair whose source it already holds.
    - schedule: `noam` is lr * hidden_size^-0.5 * min(step^-0.5, step * warmup^-1.5): with learning_rate =
      our lr * sqrt(hidden_size * warmup) it is exactly ours (linear warm-up to our lr at warmup_steps,
      then lr * sqrt(warmup / step)), except our min_lr floor, reached only after ~13 million updates.
    """
    ours = yaml.safe_load(BASE_CONFIG.read_text())
    model, train, data = ours["model"], ours["train"], ours["data"]
    hidden = model["decoder_hidden_size"]
    warmup = train["schedule"]["warmup_steps"]
    assert train["schedule"]["type"] == "inverse_sqrt" and train["optimizer"] == "adam", train
    corpus = {
        "path_src": str(ROOT / f"{data['train']}.{data['src_lang']}"),
        "path_tgt": str(ROOT / f"{data['train']}.{data['tgt_lang']}"),
        "transforms": ["sentencepiece", "filtertoolong"],
    }
    config = {
        "data": {"corpus_1": corpus},  # no valid corpus: no validation during training
        "src_vocab": str(vocabulary),
        "share_vocab": True,  # one joint SentencePiece model; the embeddings stay separate, as ours
        "vocab_size_multiple": 1,
        "src_subword_model": str(spm_model),
        "tgt_subword_model": str(spm_model),
        "src_seq_length": data["max_src_length"] - 1,
        "tgt_seq_length": data["max_tgt_length"] + 1,
        "model_task": "seq2seq",
        "encoder_type": "brnn",
        "decoder_type": "rnn",
        "rnn_type": "GRU",
        "word_vec_size": model["embedding_size"],
        "hidden_size": hidden,
        "enc_layers": model["encoder_layers"],
        "dec_layers": model["decoder_layers"],
        "global_attention": "mlp",
        "input_feed": 1,
        "bridge": True,
        "dropout": [model["dropout"]],
        "param_init": 0.0,
        "param_init_glorot": True,
        "optim": "adam",
        "adam_beta1": train["adam_betas"][0],
        "adam_beta2": train["adam_betas"][1],
        "learning_rate": train["lr"] * (hidden * warmup) ** 0.5,
        "decay_method": "noam",
        "warmup_steps": warmup,
        "max_grad_norm": train["clip_grad_norm"] or 0.0,
        "label_smoothing": train["label_smoothing"],
        "batch_type": "tokens",
        "batch_size": train["batch_tokens"],
        "normalization": "tokens",
        "accum_count": [1],
        "bucket_size": _lines(Path(corpus["path_src"])),
        "num_workers": data["num_workers"],
        "seed": train["seed"],
        "train_steps": updates if updates is not None else 10**9,
        "valid_steps": 10**9,
        "report_every": 5 if quick else train["log_every"],
        "save_model": str(work / "runs" / name / "model"),
        "save_checkpoint_steps": 10**9,  # only at the end (or when interrupted)
        "keep_checkpoint": 1,
        "gpu_ranks": [0] if device == "cuda" else [],
        "world_size": 1,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def _lines(path: Path) -> int:
    with open(path, "rb") as lines:
        return sum(1 for _ in lines)


def parse_train_log(text: str) -> list[float]:
    """Real target tokens per second of each logged interval, in order (the `tgt` of "src/tgt tok/s")."""
    return [float(match["tgt"]) for match in TOKENS_PER_S.finditer(text)]


def train_opennmt(python: Path, work: Path, config: Path, budget_s: float | None = None) -> Run:
    """Train OpenNMT; tokens/s is the median of its logged intervals after the first.

    OpenNMT logs "src/tgt tok/s" per interval: tgt counts the target tokens that are not padding (EOS
    included, BOS not), the same count as ours and Joey's. With a budget, the clock starts when the first
    batch is ready (after OpenNMT read and tokenized its first bucket) and SIGINT ends the run; the
    wrapper then saves that update's weights.
    """
    name = config.stem
    run_dir = work / "runs" / name
    log_path = work / f"{name}.log"
    for old in run_dir.glob("model_step_*.pt"):
        old.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)

    def began() -> bool:
        return log_path.exists() and FIRST_BATCH.search(log_path.read_text(errors="replace")) is not None

    run = run_process([str(python), str(WRAPPER), "train", "-config", str(config)], log_path, budget_s, began)
    run.name = name
    text = log_path.read_text(errors="replace")
    speeds = parse_train_log(text)
    if speeds:
        run.tokens_per_s = median_after_first(speeds)  # the first interval includes data loading
    else:
        log.warning("%s logged no training interval (report_every is more than its updates)", name)
    run.extra["checkpoint"], run.updates = parse_checkpoint(text)
    return run


def parse_checkpoint(text: str) -> tuple[str, int]:
    """The last checkpoint a training log says it saved, and its update (OpenNMT names them by update)."""
    saved = list(SAVED.finditer(text))
    if not saved:
        raise ValueError("the training log saved no checkpoint")
    return saved[-1]["path"], int(saved[-1]["step"])


def parse_translate_log(text: str) -> tuple[float, float]:
    """OpenNMT's own timing of a translation (-report_time): total seconds and milliseconds per sentence.

    The total is printed to 0.1 s, the average to 0.1 ms: the average is the precise one.
    """
    seconds = TRANSLATION_SECONDS.findall(text)
    per_sentence = TRANSLATION_MS_PER_SENTENCE.findall(text)
    if not seconds or not per_sentence:
        raise ValueError("no -report_time figures in the translation log")
    return float(seconds[-1]), float(per_sentence[-1])


def decode_opennmt(
    python: Path, work: Path, config: Path, checkpoint: str, src: Path, ref: Path, beam: int, tag: str
) -> dict:
    """OpenNMT's decoding of src (the caller scores against `ref`): detokenized hypotheses, its own timing.

    The timing (-report_time) runs from the first batch to the last output line: reading and tokenizing
    the input, search, detokenizing and writing; model loading is excluded. The settings are in
    `translate_command`.
    """
    output = work / "hyps" / f"{tag}.txt"
    output.parent.mkdir(exist_ok=True)
    run_process(translate_command(python, config, checkpoint, src, output, beam), work / f"{tag}.log")
    _, ms_per_sentence = parse_translate_log((work / f"{tag}.log").read_text(errors="replace"))
    sentences = len(src.read_text(encoding="utf-8").splitlines())
    return {
        "hypotheses": output,
        "seconds": ms_per_sentence * sentences / 1000,
        "sentences_per_s": 1000 / ms_per_sentence,
    }


def translate_command(python: Path, config: Path, checkpoint: str, src: Path, output: Path, beam: int) -> list[str]:
    """onmt_translate (through the wrapper) with our decode settings from configs/quickstart.yaml.

    - batches of decode.batch_tokens // beam padded source tokens, sorted by length (ours: batch_tokens
      padded source tokens x beam rows);
    - beam 1 is OpenNMT's GreedySearch with top-1 sampling, i.e. argmax (ours: greedy search);
    - beam search divides scores by the GNMT length penalty ((5 + length) / 6) ** alpha, length counting
      EOS (`-length_penalty wu -alpha` decode.alpha: ours exactly; OpenNMT's default `avg` divides by
      length ** alpha) and ends a sentence once its best hypothesis has ended;
    - outputs stop at decode.max_output_ratio x the batch's longest source + 5 pieces (ours: x each
      sentence's own source); OpenNMT truncates no source (ours: beyond decode.max_src_length).
    The output is detokenized by the sentencepiece transform; the same SentencePiece model as training.
    """
    ours = yaml.safe_load(BASE_CONFIG.read_text())["decode"]
    settings = yaml.safe_load(config.read_text())
    spm_model = settings["src_subword_model"]  # joint: also the target's
    command = [str(python), str(WRAPPER), "translate", "-model", checkpoint, "-src", str(src), "-output", str(output)]
    command += ["-transforms", "sentencepiece", "-src_subword_model", spm_model, "-tgt_subword_model", spm_model]
    command += ["-batch_type", "tokens", "-batch_size", str(max(1, ours["batch_tokens"] // beam))]
    command += ["-beam_size", str(beam), "-length_penalty", "wu", "-alpha", str(ours["alpha"])]
    command += ["-max_length_ratio", str(ours["max_output_ratio"]), "-max_length", "100000", "-report_time"]
    if beam == 1:
        command += ["-random_sampling_topk", "1"]
    if settings["gpu_ranks"]:
        command += ["-gpu", "0"]
    return command
