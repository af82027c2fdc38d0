"""Reported reference rows (results/reference/*.csv): complete, internally consistent, shown in leaderboards."""

import pandas as pd
import pytest

from harness.records.leaderboard import REFERENCE_DIR, load_reference, reported_markdown

FILES = sorted(REFERENCE_DIR.glob("*.csv"))
COLUMNS = ["source", "table", "benchmark", "method", "group", "ood_set", "fpr95", "fpr95_std", "auroc", "auroc_std",
           "id_acc", "id_acc_std", "fpr_positive", "note"]
AUPR_COLUMNS = ["aupr", "aupr_std"]  # only the text table (the flow paper's Table 6) reports AUPR
# each paper by a part of the title its rows' `source` holds
PAPERS = {"NCIS": "Non-Linear Outlier Synthesis", "Dream-OOD": "Dream the Impossible",
          "flow": "Correcting the Bias of Normalizing Flows"}


def paper(source: str) -> str:
    """The PAPERS name of a row's `source`."""
    (name,) = [name for name, title in PAPERS.items() if title in source]
    return name


@pytest.fixture(scope="module")
def rows():
    return pd.concat([pd.read_csv(f) for f in FILES], ignore_index=True)


def test_every_source_table_is_there_with_its_rows(rows):
    assert all(list(pd.read_csv(f).columns) in (COLUMNS, COLUMNS + AUPR_COLUMNS) for f in FILES)
    counts = rows.groupby(["source", "table"]).method.nunique()
    got = {(paper(s), t): n for (s, t), n in counts.items()}
    assert got == {("NCIS", "Table 1"): 8, ("NCIS", "Table 2"): 8, ("Dream-OOD", "Table 1"): 13,
                   ("Dream-OOD", "Table 3"): 13, ("flow", "Table 2"): 10, ("flow", "Table 3"): 10,
                   ("flow", "Table 6"): 2}
    values = rows[["fpr95", "auroc", "id_acc", "aupr"]].stack().dropna()
    assert ((values >= 0) & (values <= 100)).all()
    assert set(rows.fpr_positive) == {"id", "not stated"}


def test_reported_averages_equal_the_mean_over_sets(rows):
    """A transcription error in any set or average would break the papers' own arithmetic (to print rounding)."""
    checked = 0
    for _, part in rows[rows.ood_set == "Average"].groupby(["source", "table", "method"]):
        source, table, method = part.iloc[0][["source", "table", "method"]]
        sets = rows[(rows.source == source) & (rows.table == table) & (rows.method == method)
                    & ~rows.ood_set.isin(["Average", "ID accuracy"])]
        for metric in ("fpr95", "auroc"):
            assert abs(sets[metric].mean() - part.iloc[0][metric]) <= 0.06, (table, method, metric)
            checked += 1
    assert checked == 2 * (8 + 8 + 13 + 13)


def test_spot_values_against_the_papers(rows):
    def value(name, table, method, ood_set, column, benchmark=None):
        hit = rows[rows.source.str.contains(PAPERS[name]) & (rows.table == table) & (rows.method == method)
                   & (rows.ood_set == ood_set) & ((rows.benchmark == benchmark) if benchmark else True)]
        assert len(hit) == 1
        return hit.iloc[0][column]

    assert value("NCIS", "Table 1", "NCIS", "svhn", "fpr95") == 14.43
    assert value("NCIS", "Table 1", "NCIS", "svhn", "fpr95_std") == 3.5
    assert value("NCIS", "Table 2", "NCIS", "ID accuracy", "id_acc") == 87.24
    assert value("Dream-OOD", "Table 1", "Dream-OOD", "places", "fpr95") == 39.87
    assert value("Dream-OOD", "Table 3", "Mahalanobis", "isun", "auroc") == 86.46
    assert value("flow", "Table 2", "CCM+Gaussian", "isun", "fpr95", "cifar100") == 0.3
    assert value("flow", "Table 2", "CCM+Gaussian", "isun", "fpr95", "cifar10") == 0.2
    assert value("flow", "Table 3", "RO", "lsun", "auroc") == 99.8


def test_leaderboard_section_shows_reported_rows_marked_as_such():
    board = "\n".join(reported_markdown("imagenet100"))
    assert board.startswith("## Reported in the papers (not reproduced here)")
    dream = [line.split("|")[1:3] for line in board.splitlines() if "Dream-OOD (reported)" in line]
    assert [[cell.strip() for cell in pair] for pair in dream] == [
        ["Dream-OOD (reported)", "24.10"],         # NCIS Table 2 (copied from Dream-OOD, without std)
        ["Dream-OOD (reported)", "24.10 ± 0.2"]]   # Dream-OOD Table 1, its own runs
    assert "Table 1 (FPR95 with ID positive" in board
    assert load_reference("mnist5k").empty and reported_markdown("mnist5k") == []


def test_table6_shows_auroc_and_aupr_only():
    board = "\n".join(reported_markdown("imdb"))
    assert "Table 6 (AUPR positive class: not stated" in board
    header = next(line for line in board.splitlines() if line.startswith("| Method"))
    assert "sst2 AUROC" in header and "sst2 AUPR" in header and "FPR95" not in header
    with_row = next(line for line in board.splitlines() if line.startswith("| With synthetic outliers (reported)"))
    assert [c.strip() for c in with_row.split("|")[1:-1]] == ["With synthetic outliers (reported)", "93.9", "91.4",
                                                              "91.8", "91.6", "98.2", "98.8", "79.2", "81.8"]
