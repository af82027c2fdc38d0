"""The method pages' mnist5k tables quote the committed records: a publish that changes a number fails here until
the page is updated (the 3-seed tables of an old publish once stayed in three pages as 'published records')."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from harness.records.results import load_records

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| method | glyphs | textures | photos | faces | noise | average | ID acc. |"
SETS = ("glyphs", "textures", "photos", "faces", "noise")
PUBLISHED_SEEDS = json.loads((ROOT / "results" / "published.json").read_text())["mnist5k"]["seeds"]


def published_tables() -> list[tuple[str, int, list[str]]]:
    """(page, line number, cells of one row) for every row of a published-records table in docs/."""
    rows = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() != HEADER:
                continue
            for offset, row in enumerate(lines[number + 2:], start=number + 3):
                if not row.startswith("|"):
                    break
                rows.append((page.name, offset, [cell.strip() for cell in row.strip().strip("|").split("|")]))
    return rows


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def expected_cells(label: str, records) -> list[str]:
    runs = sorted((r for r in records if r.label == label), key=lambda r: r.seed)
    assert [r.seed for r in runs] == PUBLISHED_SEEDS, f"{label}: committed seeds differ from results/published.json"
    cells = [f"{_mean_std([100 * r.metrics[s]['fpr95'] for r in runs])} / "
             f"{_mean_std([100 * r.metrics[s]['auroc'] for r in runs])}" for s in SETS]
    cells.append(f"{_mean_std([100 * r.average['fpr95'] for r in runs])} / "
                 f"{_mean_std([100 * r.average['auroc'] for r in runs])}")
    accuracies = [100 * r.id_accuracy for r in runs if r.id_accuracy is not None]
    cells.append(_mean_std(accuracies) if accuracies else "-")
    return cells


ROWS = published_tables()


@cache
def committed_records():
    return load_records(ROOT / "results", "mnist5k")


def test_the_pages_hold_published_tables():
    pages = {page for page, _, _ in ROWS}
    assert {"dream_ood.md", "flow.md", "vos_npos.md"} <= pages
    assert len(ROWS) >= 10


@pytest.mark.parametrize(("page", "line", "cells"), ROWS, ids=[f"{p}:{n}" for p, n, _ in ROWS])
def test_published_table_row_matches_the_records(page, line, cells):
    label = re.sub(r"`", "", cells[0])
    assert cells[1:] == expected_cells(label, committed_records()), (
        f"docs/{page}:{line}: the {label} row differs from results/records/mnist5k; update the page after a publish")
