#!/usr/bin/env python3
"""Fine-tuning on the bundled corpus: train on the Old Testament, fine-tune on the New, score both books' dev sets.

    python scripts/bench/finetune.py                 # about 20 minutes on 2 CPU cores

The bundled training file is in canonical order, so the New Testament starts at Matthew 1:1; the
dev split's New Testament books (Philemon, Hebrews, Jude) start at Philemon 1:1. The script cuts
both there (into OUTPUT_DIR/data), then runs, one after another, with configs/quickstart.yaml:
1. `base`: the Old Testament lines only, for --base-time, validated on the dev split's Old Testament books;
2. `finetuned`: `--init-from base/best.pt` on the New Testament lines for --finetune-time (lr --finetune-lr,
   a new optimizer and schedule), validated on the dev split's New Testament books;
3. `scratch`: the New Testament lines alone from random weights, for the same time as the fine-tuning
   (what the fine-tuning's minutes would buy without the base model).
Each best.pt is scored with beam 5 on the dev split's New and Old Testament books (`seq2seq evaluate`).
Writes OUTPUT.json (with the full commit hash and whether the tree was dirty) and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, evaluate, provenance, train, write_results

MATTHEW_1_1 = "The book of the genealogy of Jesus Christ, the son of David, the son of Abraham."
PHILEMON_1_1 = "Paul, a prisoner of Christ Jesus, and Timothy our brother, to Philemon, our beloved fellow worker,"
CONFIG = "configs/quickstart.yaml"

log = logging.getLogger("bench")


def first_line(path: Path, text: str) -> int:
    """The 0-based number of the line of `path` that is `text`; an error if there is none."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line == text:
            return number
    raise SystemExit(f"finetune.py: {path} has no line {text[:40]!r}...: is data/ the bundled corpus?")


def cut(prefix: Path, at: int, before: Path, after: Path) -> dict:
    """Split prefix.es/.en at line `at` into before.* and after.*; returns the pair counts."""
    counts = {}
    for lang in ("es", "en"):
        lines = Path(f"{prefix}.{lang}").read_text(encoding="utf-8").splitlines(keepends=True)
        Path(f"{before}.{lang}").write_text("".join(lines[:at]), encoding="utf-8")
        Path(f"{after}.{lang}").write_text("".join(lines[at:]), encoding="utf-8")
        counts = {"before": at, "after": len(lines) - at}
    return counts


def split_testaments(directory: Path) -> dict:
    """OT and NT training files and dev files under `directory`; returns their prefixes and sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    data = ROOT / "data"
    splits = {name: directory / name for name in ("train_ot", "train_nt", "dev_ot", "dev_nt")}
    train_counts = cut(
        data / "train", first_line(data / "train.en", MATTHEW_1_1), splits["train_ot"], splits["train_nt"]
    )
    dev_counts = cut(data / "dev", first_line(data / "dev.en", PHILEMON_1_1), splits["dev_ot"], splits["dev_nt"])
    sizes = {
        "train_ot": train_counts["before"],
        "train_nt": train_counts["after"],
        "dev_ot": dev_counts["before"],
        "dev_nt": dev_counts["after"],
    }
    log.info("Splits: %s", sizes)
    return {"prefixes": {k: str(v) for k, v in splits.items()}, "pairs": sizes}


def scores(checkpoint: Path, splits: dict) -> dict:
    """Beam-5 BLEU of a checkpoint on the dev split's New and Old Testament books."""
    return {
        book: evaluate(
            checkpoint, Path(f"{splits['prefixes'][f'dev_{book}']}.es"), Path(f"{splits['prefixes'][f'dev_{book}']}.en")
        )
        for book in ("nt", "ot")
    }


def measure(output_dir: Path, base_time: str, finetune_time: str, finetune_lr: float) -> dict:
    """The three runs of the module docstring and their scores."""
    splits = split_testaments(output_dir / "data")
    prefixes = splits["prefixes"]
    common = ["data.test=null", f"data.cache_dir={output_dir / 'cache'}"]
    runs = {}
    base_dir = output_dir / "base"
    runs["base"] = train(
        CONFIG,
        base_dir,
        [
            *common,
            f"data.train={prefixes['train_ot']}",
            f"data.dev={prefixes['dev_ot']}",
            f"train.max_time={base_time}",
        ],
    )
    nt = [
        *common,
        f"data.train={prefixes['train_nt']}",
        f"data.dev={prefixes['dev_nt']}",
        f"train.max_time={finetune_time}",
    ]
    finetuning = [f"train.lr={finetune_lr}", "train.schedule.warmup_steps=0", "train.schedule.type=constant"]
    runs["finetuned"] = train(
        CONFIG, output_dir / "finetuned", [*nt, *finetuning], extra=["--init-from", str(base_dir / "best.pt")]
    )
    runs["scratch"] = train(CONFIG, output_dir / "scratch", nt)
    results = {"splits": splits, "config": CONFIG, "base_time": base_time, "finetune_time": finetune_time}
    results["finetune_settings"] = finetuning
    results["runs"] = {}
    for name, summary in runs.items():
        run_dir = output_dir / name
        results["runs"][name] = {
            "minutes": summary["minutes"],
            "wall_minutes": summary["wall_minutes"],
            "steps": summary["steps"],
            "epochs": summary["epochs"],
            "best_step": summary["best_step"],
            "init_from": summary.get("init_from"),
            "dev_bleu_beam5": scores(run_dir / "best.pt", splits),
        }
        log.info("%s: %s", name, results["runs"][name])
    return results


def markdown(results: dict) -> str:
    """The table the README quotes."""
    runs, pairs = results["runs"], results["splits"]["pairs"]
    base_minutes = runs["base"]["minutes"]
    rows = [
        ("Old Testament only (`base`)", runs["base"], f"{base_minutes:.1f}"),
        (
            "`base` fine-tuned on the New Testament",
            runs["finetuned"],
            f"{base_minutes:.1f} + {runs['finetuned']['minutes']:.1f}",
        ),
        ("New Testament only, from scratch", runs["scratch"], f"{runs['scratch']['minutes']:.1f}"),
    ]
    lines = [
        f"# Fine-tuning from the Old to the New Testament ({results['date']}, commit {results['commit']})",
        "",
        (
            f"`{results['config']}` on {results['machine']['cpu']} ({results['machine']['cores']} cores). Training "
            f"pairs: {pairs['train_ot']:,} (Old Testament), {pairs['train_nt']:,} (New Testament). Dev BLEU with "
            f"beam 5 on the dev split's New Testament books (Philemon, Hebrews, Jude: {pairs['dev_nt']} pairs) and "
            f"Old Testament books (Ruth, Ecclesiastes, Joel, Jonah, Zechariah: {pairs['dev_ot']} pairs). "
            f"Fine-tuning settings: {', '.join(results['finetune_settings'])}."
        ),
        "",
        "| model | minutes of training | updates | dev BLEU, New Testament | dev BLEU, Old Testament |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {minutes} | {run['steps']:,} | {run['dev_bleu_beam5']['nt']['bleu']:.2f} | "
            f"{run['dev_bleu_beam5']['ot']['bleu']:.2f} |"
            for name, run, minutes in rows
        ),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-time", default="8m", help="training time of the Old Testament model")
    parser.add_argument("--finetune-time", default="4m", help="training time of the fine-tuning (and of scratch)")
    parser.add_argument("--finetune-lr", type=float, default=0.0005, help="constant learning rate of the fine-tuning")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "finetune"), help="splits, caches and runs")
    parser.add_argument("--output", default=str(ROOT / "docs" / "finetune"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    results.update(measure(Path(args.work_dir), args.base_time, args.finetune_time, args.finetune_lr))
    write_results(results, Path(args.output), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
