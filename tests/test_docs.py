"""The documents say what the code does: the paper's numbers, the data sets, the files they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_models import PAPER_MACS, PAPER_PARAMS

from ablate.data import DATA_SOURCES

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs/REFERENCE.md"


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``heading``, cells stripped."""
    lines: list[str] = []
    for line in text.split(heading, 1)[1].splitlines()[1:]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:  # the table has ended
            break
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]  # past header and rule


def number(cell: str) -> int | None:
    return int(cell.replace(",", "")) if cell else None


def test_reference_exact_counts_are_the_ones_the_tests_check():
    rows = table_rows(REFERENCE.read_text(), "## Exact counts")
    params = {int(depth): number(count) for depth, _n, count, _macs in rows}
    macs = {int(depth): number(value) for depth, _n, _count, value in rows if value}
    assert params == PAPER_PARAMS and macs == PAPER_MACS


def test_reference_data_sets_are_the_catalogs():
    rows = table_rows(REFERENCE.read_text(), "## Data sets")
    documented = {title: (int(classes), tuple(int(d) for d in image.split(" x ")), number(train), number(test))
                  for title, classes, image, train, test in rows}
    declared = {s.title: (s.num_classes, s.shape, s.train_images, s.test_images) for s in DATA_SOURCES.values()}
    assert documented == declared


@pytest.mark.parametrize("doc", ["README.md", "docs/ARCHITECTURE.md", "docs/REFERENCE.md", "docs/BENCHMARKS.md",
                                 "docs/RELIABILITY.md"])
def test_files_the_docs_name_exist(doc):
    named = set(re.findall(r"`((?:ablate|tests|docs|studies|scripts)/[\w./-]+\.(?:py|md|yaml|sh))`", (ROOT / doc).read_text()))
    assert named, doc
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


def test_readme_suggests_no_address_the_runner_refuses():
    assert "ray://" not in (ROOT / "README.md").read_text().replace("`ray://` addresses are refused", "")
