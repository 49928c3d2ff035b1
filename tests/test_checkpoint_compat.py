"""Checkpoints of format 1 keep loading, translating, scoring and resuming exactly as they did.

tests/fixtures/checkpoint-v1 holds a tiny run written by the code of format 1 (the commit is in
its README.md) and what that code printed for it. The tests use only the command line, the
stable surface, on a copy of the folder; the config's paths are relative to it. Do not regenerate
the fixture to make these tests pass: a failure means old checkpoints changed behaviour.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.checkpoint import FORMAT_VERSION
from seq2seq.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint-v1"
EXPECTED = FIXTURE / "expected"


def expected_json(name: str) -> dict:
    return json.loads((EXPECTED / name).read_text(encoding="utf-8"))


def read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def cli(*argv: str) -> None:
    status = main(list(argv))
    assert status == 0, f"seq2seq {' '.join(argv)} exited with {status}"


def _fixture_script():
    """make_fixture.py, which wrote expected/: its checksum is the one the test compares against."""
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


weight_checksums = _fixture_script().weight_checksums  # shape, dtype, sums and sha256 of each model tensor


@pytest.fixture
def run_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the fixture (corpus, config.yaml, run/) as the working directory, torch on one thread."""
    copy = tmp_path / "checkpoint-v1"
    shutil.copytree(FIXTURE, copy, ignore=shutil.ignore_patterns("expected", "__pycache__", "*.py", "*.md"))
    monkeypatch.chdir(copy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as when the expected outputs were written
    yield copy
    torch.set_num_threads(threads)


def test_fixture_is_checkpoint_format_1():
    """The committed checkpoints are the old format: regenerating them with newer code defeats these tests."""
    for name in ("last.pt", "best.pt"):
        payload = torch.load(FIXTURE / "run" / name, map_location="cpu", weights_only=True)
        assert payload["kind"] == "seq2seq-checkpoint"
        assert payload["format_version"] == 1, f"{name} was rewritten: restore it from git"
    expected = expected_json("resumed.json")
    assert expected["step"] > expected["start_step"]


# expected/translate.<name>.txt: `seq2seq translate run/best.pt -i corpus/test.es` with these options
# (n-best lines carry each hypothesis's score to 4 decimals).
TRANSLATIONS = {"greedy": ["--beam", "1"], "beam3": ["--beam", "3"], "beam3.nbest3": ["--beam", "3", "--n-best", "3"]}


@pytest.mark.parametrize("name", sorted(TRANSLATIONS))
def test_translate_gives_the_same_lines(run_copy: Path, name: str):
    cli("translate", "run/best.pt", "-i", "corpus/test.es", "-o", "translations.txt", *TRANSLATIONS[name])
    expected = read_lines(EXPECTED / f"translate.{name}.txt")
    assert len(expected) == len(read_lines(Path("corpus/test.es")))
    assert read_lines(Path("translations.txt")) == expected


def test_evaluate_gives_the_same_scores(run_copy: Path):
    cli("evaluate", "run/best.pt", "--beam", "1", "--output", "test.hyp", "--report", "report.json")
    report = json.loads(Path("report.json").read_text(encoding="utf-8"))
    scores = {
        "bleu": round(report["bleu"], 2),
        "chrf": round(report["chrf"], 2),
        "sentences": report["test_set"]["sentences"],
    }
    assert scores == expected_json("evaluate.json")
    assert read_lines(Path("test.hyp")) == read_lines(EXPECTED / "translate.greedy.txt")


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_info_reads_the_checkpoint(run_copy: Path, capsys: pytest.CaptureFixture, name: str):
    capsys.readouterr()
    cli("info", f"run/{name}")
    shown = json.loads(capsys.readouterr().out)
    assert {"step": shown["step"], "best_bleu": shown["best_bleu"]} == expected_json("info.json")[name]


def test_resume_continues_exactly(run_copy: Path, capsys: pytest.CaptureFixture):
    expected = expected_json("resumed.json")
    cli("train", "config.yaml", "--resume", "--set", f"train.max_steps={expected['max_steps']}")

    capsys.readouterr()
    cli("info", "run/last.pt")
    assert json.loads(capsys.readouterr().out)["step"] == expected["step"]

    got = weight_checksums(Path("run/last.pt"))
    assert sorted(got) == sorted(expected["weights"]), "the resumed model has different parameter names"
    different = [name for name in got if got[name] != expected["weights"][name]]
    assert not different, f"resumed weights differ from what format-1 code trained: {different}"

    cli("translate", "run/last.pt", "-i", "corpus/test.es", "-o", "resumed.txt", "--beam", "1")
    assert read_lines(Path("resumed.txt")) == expected["translate_greedy"]


def test_resume_with_the_resolved_config_format_1_wrote(run_copy: Path, capsys: pytest.CaptureFixture):
    """Format-1 code saved every option in the run's config.yaml, attention options of other variants and
    train.max_output_ratio included; resuming with such a file still continues exactly."""
    config = yaml.safe_load(Path("config.yaml").read_text(encoding="utf-8"))
    config["model"]["attention"].update(heads=4, max_source_length=128)
    config["train"]["max_output_ratio"] = 1.5
    Path("old-style.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    expected = expected_json("resumed.json")
    cli("train", "old-style.yaml", "--resume", "--set", f"train.max_steps={expected['max_steps']}")
    got = weight_checksums(Path("run/last.pt"))
    assert all(got[name] == expected["weights"][name] for name in expected["weights"])


def test_info_says_which_format_is_on_disk(run_copy: Path, capsys: pytest.CaptureFixture):
    capsys.readouterr()
    cli("info", "run/last.pt")
    shown = json.loads(capsys.readouterr().out)
    assert (shown["format_version"], shown["read_as_format"], shown["contents"]) == (1, FORMAT_VERSION, "training")
