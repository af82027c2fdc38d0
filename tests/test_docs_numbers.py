"""The method pages' mnist5k tables quote the committed records: a publish that changes a number fails here until
the page is updated (the 3-seed tables of an old publish once stayed in three pages as 'published records')."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest

from harness.paths import CODE_ROOT, PUBLISHED_FILE, RESULTS_DIR
from harness.records.leaderboard import summarise
from harness.records.results import load_records

HEADER = "| method | glyphs | textures | photos | faces | noise | average | ID acc. |"
SETS = tuple(cell.strip() for cell in HEADER.strip("|").split("|")[1:-2])  # glyphs .. noise, as the pages order them


def published_tables() -> list[tuple[str, int, list[str]]]:
    """(page, line number, cells of one row) for every row of a published-records table in docs/."""
    rows = []
    for page in sorted((CODE_ROOT / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != HEADER:
                continue
            for offset, row in enumerate(lines[number + 2:], start=number + 3):
                if not row.startswith("|"):
                    break
                rows.append((page.name, offset, [cell.strip() for cell in row.strip().strip("|").split("|")]))
    return rows


ROWS = published_tables()


@cache
def committed_summary():
    """The leaderboard's per-label value lists of the committed mnist5k records, indexed by label."""
    records = load_records(RESULTS_DIR, "mnist5k")
    seeds = json.loads(PUBLISHED_FILE.read_text())["mnist5k"]["seeds"]
    for label in {r.label for r in records}:
        assert sorted(r.seed for r in records if r.label == label) == seeds, f"{label}: seeds differ from published"
    return summarise(records).set_index(("", "Method"))


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def expected_cells(label: str) -> list[str]:
    row = committed_summary().loc[label]
    cells = [f"{_mean_std(row[(name, 'FPR95')])} / {_mean_std(row[(name, 'AUROC')])}" for name in (*SETS, "Average")]
    return cells + [_mean_std(row[("", "ID acc.")]) if row[("", "ID acc.")] else "-"]


def test_the_pages_hold_published_tables():
    pages = {page for page, _, _ in ROWS}
    assert {"dream_ood.md", "flow.md", "vos_npos.md"} <= pages
    assert len(ROWS) >= 10


@pytest.mark.parametrize(("page", "line", "cells"), ROWS, ids=[f"{p}:{n}" for p, n, _ in ROWS])
def test_published_table_row_matches_the_records(page, line, cells):
    label = cells[0].strip("`")
    assert cells[1:] == expected_cells(label), (
        f"docs/{page}:{line}: the {label} row differs from results/records/mnist5k; update the page after a publish")
