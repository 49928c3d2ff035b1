"""Every measured figure the README and the prose docs quote comes from a committed JSON file.

A figure is a number written the way measurements are: with decimals (15.50), a thousands separator
(4,998), a ratio (0.54x), a percentage (+8.1%) or a unit of memory or time (0.79 GiB, 119 ms, 75.5 s).
A passage that quotes figures starts with a marker naming the JSON files they come from,

    <!-- figures: docs/decoding.json docs/serving.json -->

and runs to the next marker or heading (`<!-- figures: -->`, naming none, ends one). A marker may also name a
page a script rendered from the JSON beside it (docs/benchmark.md beside docs/benchmark.json): the figures the
script derived for the page count too, since a test of their own checks the page is that rendering. Each figure in it must be the rounding, at the precision
written, of a number in one of those files, and each of those files must record the full commit hash of
a clean tree it was written at (a committed script wrote it, nothing edited it). Numbers that are not
measurements are skipped where the text marks them as such: inline code (`0.0005`), a version after a
package's name, or a phrase of NOT_FIGURES. Blocks a script writes between its markers
(`<!-- ... written by ... -->` to `<!-- end of ... -->`) are skipped here: their own tests render the
JSON again and compare.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The prose pages: every other page under docs/ is a script's rendering of its JSON, checked by its own test.
PROSE = ["README.md", "docs/performance.md", "docs/architecture.md", "docs/attention.md"]

# Phrases whose numbers are settings, limits, versions or targets, not measurements.
NOT_FIGURES = {
    "README.md": [
        "Python ≥ 3.10",
        "torch ≥ 2.4",
        "(0.18)",
        "a high learning rate of 3e-3",
        "4,000-piece vocabulary",
        "constant lr 0.0005",
        "{alpha: 0.1, nbest: -1}",
        "{alpha: 0.3, nbest: -1}",
        "`train.ema_decay: 0.999`",
        "weight: 0.5}]",
        "above 1 repeats: 2.5 is",
        "beam 5, alpha 1.0, output ratio 1.5, 4,000 tokens a batch",
        "(up to 15% of that batch's time, at most 100 ms)",
        "(`--max-chars`, 2,000)",
        "127.0.0.1",
        "(step 1,000)",
        "steps 800 and 1,000",
        "steps 600, 800 and 1,000",
        "for 1,000 updates",
        "(the target: 0.7x; missed)",
        "(the target: ±10%;",
        "up to 10% in speed",
        "sorts all 1,591 by length and fills batches of 4,000 padded source pieces",
    ],
    "docs/performance.md": [
        "dropout 0.1",
        "Adam (0.9, 0.98)",
        "label smoothing 0.1",
        "dev BLEU 0.0 after 20 minutes",
        "(alpha 1.0)",
        "over 4,000 pieces",
    ],
    "docs/architecture.md": [],
    "docs/attention.md": [
        "4,000-piece SentencePiece",
        "of 2,500 tokens",
        "Test: 1,591 verses",
        "about 3.5 hours for all seven",
    ],
}

NUMBER = re.compile(
    r"(?<![\w.,/-])"  # not inside a word, a version, a path or a range's second half
    r"(?P<sign>[+-]?)(?P<digits>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<decimals>\d+))?"
    r"(?![\w.]?\d)(?!\.\d)"  # not a version's first part (2.13.0)
    r"(?P<unit>x(?!\w)|%| ?GiB| ?MiB| ?ms(?!\w)| s(?!\w))?"
)
MARKER = re.compile(r"<!-- figures:(?P<files>[^>]*?)-->")
GENERATED = re.compile(r"<!-- [^>]*written by [^>]*-->.*?<!-- end of [^>]*-->", re.DOTALL)
SKIPPED = [
    re.compile(r"```.*?```", re.DOTALL),  # code blocks
    re.compile(r"`[^`\n]+`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<!--.*?-->", re.DOTALL),  # comments (the markers are read before this)
    re.compile(r"!\[[^\]]*\]"),  # image alt texts
    re.compile(r"\b(?:torch|Python|OpenNMT-py|Joey NMT|cuDNN|sacreBLEU|glibc) \d+(?:\.\d+)+"),  # versions
]


@dataclass(frozen=True)
class Figure:
    text: str
    line: int
    value: float
    decimals: int
    unit: str

    def scales(self) -> list[float]:
        """What a JSON number is multiplied by to be written in this figure's unit."""
        return {
            "%": [100.0, 1.0],
            "GiB": [1.0, 1 / 1024, 1 / 2**30],
            "MiB": [1.0, 1024.0, 1 / 2**20],
            "ms": [1.0, 1000.0],
        }.get(self.unit, [1.0])

    def matches(self, number: float) -> bool:
        """Whether `number` (from a JSON file) rounds to this figure at the precision it is written with."""
        tolerance = 0.5 * 10.0**-self.decimals + 1e-9
        return any(abs(abs(number * scale) - abs(self.value)) <= tolerance for scale in self.scales())


def figures(text: str) -> list[Figure]:
    """The measured-looking numbers of `text` outside code, links, comments and versions, with their lines."""
    for pattern in SKIPPED:
        text = blank_out(text, pattern)
    found = []
    for match in NUMBER.finditer(text):
        decimals, unit = match["decimals"] or "", (match["unit"] or "").strip()
        if not (decimals or "," in match["digits"] or unit):
            continue
        value = float(match["digits"].replace(",", "") + (f".{decimals}" if decimals else ""))
        line = text.count("\n", 0, match.start()) + 1
        found.append(Figure(match.group().strip(), line, value, len(decimals), unit))
    return found


def json_numbers(path: Path) -> list[float]:
    """Every number in a JSON file, at any depth."""

    def walk(node) -> list[float]:
        if isinstance(node, bool):
            return []
        if isinstance(node, int | float):
            return [float(node)] if math.isfinite(node) else []
        if isinstance(node, dict):
            return [n for value in node.values() for n in walk(value)]
        if isinstance(node, list):
            return [n for value in node for n in walk(value)]
        return []

    return walk(json.loads(path.read_text(encoding="utf-8")))


def page_numbers(path: Path) -> list[float]:
    """The figures of a page a script rendered from the JSON beside it (a test of its own compares the page with
    the rendering), as numbers: what the page derives from the JSON, such as a ratio of two of its figures."""
    return [figure.value for figure in figures(path.read_text(encoding="utf-8"))]


def blank_out(text: str, pattern: re.Pattern) -> str:
    """`text` with each match of `pattern` turned into spaces (its line breaks kept, so line numbers hold)."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def passages(text: str) -> list[tuple[list[str], str]]:
    """(sources, text) pieces: each marker's passage runs to the next marker or heading; text outside any
    passage has no sources. Offsets and line numbers are kept (everything else is blanked)."""
    text = blank_out(text, GENERATED)
    pieces, sources, start = [], [], 0
    boundaries = sorted(
        [(m.start(), m["files"].split()) for m in MARKER.finditer(text)]
        + [(m.start(), []) for m in re.finditer(r"^#", text, re.MULTILINE)]
    )
    for offset, following in [*boundaries, (len(text), [])]:
        pieces.append((sources, re.sub(r"[^\n]", " ", text[:start]) + text[start:offset]))
        sources, start = following, offset
    return pieces


def without_phrases(text: str, phrases: list[str]) -> str:
    """`text` with the numbers of each phrase blanked; a phrase not found is an error (the list went stale)."""
    flat = re.sub(r"\s+", " ", text)
    for phrase in phrases:
        assert phrase in flat, f"NOT_FIGURES phrase no longer in the text: {phrase!r}"
    for phrase in phrases:
        words = [re.escape(word) for word in phrase.split()]
        pattern = re.compile(r"\s+".join(words))
        text = pattern.sub(lambda m: re.sub(r"\d", " ", m.group()), text)
    return text


def unsourced(text: str, phrases: list[str], root: Path = ROOT) -> list[str]:
    """Every figure of `text` that its passage's JSON files do not hold, as 'line N: figure (why)'."""
    problems = []
    for sources, passage in passages(without_phrases(text, phrases)):
        numbers = []
        for source in sources:
            path = root / source
            record_path = path.with_suffix(".json")  # a page's figures count only beside the JSON it renders
            if not (path.is_file() and record_path.is_file()):
                problems.append(f"marker names {source}, which does not exist or has no JSON beside it")
                continue
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if not (len(str(record.get("commit"))) == 40 and record.get("dirty") is False):
                problems.append(f"{record_path.relative_to(root)} does not record the full commit of a clean tree")
            numbers += json_numbers(path) if path.suffix == ".json" else page_numbers(path)
        for figure in figures(passage):
            if not sources:
                problems.append(f"line {figure.line}: {figure.text} (no <!-- figures: ... --> marker names its JSON)")
            elif not any(figure.matches(number) for number in numbers):
                problems.append(f"line {figure.line}: {figure.text} (not in {', '.join(sources)})")
    return problems


@pytest.mark.parametrize("page", PROSE)
def test_every_figure_of_the_page_comes_from_a_committed_json_file(page: str):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert unsourced(text, NOT_FIGURES[page]) == []


def test_a_figure_is_found_at_the_precision_it_is_written_with(tmp_path: Path):
    (tmp_path / "run.json").write_text(
        json.dumps({"commit": "a" * 40, "dirty": False, "bleu": 17.4012, "speedup": 0.5437, "peak_mib": 812.0})
    )
    good = "<!-- figures: run.json -->\nBLEU 17.40 at 0.54x, 0.79 GiB, +54.4%.\n"
    assert unsourced(good, [], tmp_path) == []
    wrong = "<!-- figures: run.json -->\nBLEU 17.43 at 0.54x.\n"
    assert unsourced(wrong, [], tmp_path) == ["line 2: 17.43 (not in run.json)"]


def test_a_figure_without_a_marker_or_from_an_unclean_run_is_reported(tmp_path: Path):
    (tmp_path / "edited.json").write_text(json.dumps({"commit": "d18e67b", "bleu": 21.7}))
    assert unsourced("Intro.\n\nIt ran at 4,998 tokens/s.\n", [], tmp_path) == [
        "line 3: 4,998 (no <!-- figures: ... --> marker names its JSON)"
    ]
    assert unsourced("<!-- figures: edited.json -->\nBLEU 21.70.\n", [], tmp_path) == [
        "edited.json does not record the full commit of a clean tree"
    ]
    assert unsourced("<!-- figures: gone.json -->\nBLEU 21.70.\n", [], tmp_path)[0].startswith("marker names gone")
    (tmp_path / "orphan.md").write_text("BLEU 21.70\n")
    assert "no JSON beside it" in unsourced("<!-- figures: orphan.md -->\nBLEU 21.70.\n", [], tmp_path)[0]


def test_a_rendered_page_beside_its_json_supplies_the_figures_it_derives(tmp_path: Path):
    (tmp_path / "run.json").write_text(json.dumps({"commit": "a" * 40, "dirty": False, "ours": 6000, "peer": 2500}))
    (tmp_path / "run.md").write_text("| ours / peer | 2.40x |\n")
    assert unsourced("<!-- figures: run.md -->\nWe are 2.40x the peer.\n", [], tmp_path) == []
    assert unsourced("<!-- figures: run.json -->\nWe are 2.40x the peer.\n", [], tmp_path) == [
        "line 2: 2.40x (not in run.json)"
    ]


def test_a_heading_ends_a_passage_and_settings_are_not_figures(tmp_path: Path):
    (tmp_path / "run.json").write_text(json.dumps({"commit": "a" * 40, "dirty": False, "bleu": 17.4}))
    text = (
        "<!-- figures: run.json -->\nBLEU 17.40 with `lr: 0.0005` on torch 2.13.0 and Python 3.11.\n"
        "## Next\nBLEU 17.40 again.\n<!-- quickstart table: written by x.py -->\n1.23x\n<!-- end of table -->\n"
    )
    assert unsourced(text, [], tmp_path) == ["line 4: 17.40 (no <!-- figures: ... --> marker names its JSON)"]
    assert unsourced(text.replace("again", "at batch 2,500"), ["batch 2,500"], tmp_path)[0].startswith("line 4: 17")
    with pytest.raises(AssertionError, match="no longer in the text"):
        unsourced(text, ["a phrase that is not there"], tmp_path)
