"""Leaderboard exports (docs/leaderboards.md): the tidy CSV/JSON read back by pandas with no arguments and hold the
records' numbers; OpenOOD's CSV schema; rows of different classifier recipes ranked apart; where `leaderboard`
reads and writes, and each file's footer regenerating it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.paths import RESULTS_DIR
from harness.records.exports import OPENOOD_COLUMNS, long_table, render_csv, render_json, render_openood
from harness.records.leaderboard import build_leaderboard, render_markdown
from harness.records.results import RunRecord, load_records

SETS = {"letters": "near", "noise": "far", "photos": "far"}


def record(label: str, seed: int, auroc: float, *, method: str | None = None, kind: str = "post-hoc",
           epochs: int | None = 12, acc: float | None = 0.9, sets: dict[str, str] = SETS, **fields) -> RunRecord:
    """A record whose set AUROCs are `auroc` + a small per-set offset (FPR95 = 1 - AUROC, AUPRs near AUROC)."""
    metrics = {name: {"auroc": auroc + 0.01 * i, "fpr95": 1 - auroc - 0.01 * i, "aupr_in": auroc, "aupr_out": auroc}
               for i, name in enumerate(sets)}
    average = {key: float(np.mean([m[key] for m in metrics.values()])) for key in metrics[next(iter(sets))]}
    return RunRecord(
        benchmark="toy", method=method or label.split("(")[0], label=label, seed=seed, paper="", kind=kind, config={},
        classifier_config=None if epochs is None else {"backbone": "lenet", "epochs": epochs},
        fpr_positive="id", metrics=metrics, average=average, id_accuracy=acc, eval_sizes={},
        stage_seconds={"synthesize": 0.0, "train": 1.0 + seed, "score": 0.5}, device="cpu", code_version="test",
        libraries={}, data={"sets": {name: {"group": group} for name, group in sets.items()}}, **fields)


def committed(benchmark="mnist5k"):
    return load_records(RESULTS_DIR, benchmark)


def test_csv_and_json_read_back_with_pandas_defaults_and_hold_the_records_numbers(tmp_path):
    records = committed()
    board = build_leaderboard(records, "mnist5k")
    (tmp_path / "b.csv").write_text(render_csv(board))
    (tmp_path / "b.json").write_text(render_json(board))
    table = pd.read_csv(tmp_path / "b.csv")
    from_json = pd.read_json(tmp_path / "b.json")
    pd.testing.assert_frame_equal(table.fillna(""), from_json.fillna("").astype(table.dtypes.to_dict()),
                                  check_dtype=False)
    labels = sorted({r.label for r in records})
    assert sorted(table["label"].unique()) == labels
    near = [name for name, group in board.groups.items() if group == "near"]
    for label in ("knn", "dream_ood", "flow"):
        runs = sorted((r for r in records if r.label == label), key=lambda r: r.seed)
        expected = {
            ("glyphs", "fpr95"): [100 * r.metrics["glyphs"]["fpr95"] for r in runs],
            ("noise", "aupr_out"): [100 * r.metrics["noise"]["aupr_out"] for r in runs],
            ("Average", "auroc"): [100 * np.mean([m["auroc"] for m in r.metrics.values()]) for r in runs],
            ("Near-OOD", "auroc"): [100 * np.mean([r.metrics[s]["auroc"] for s in near]) for r in runs],
            ("cost", "train.seconds"): [r.stage_seconds["train"] for r in runs],
        }
        if runs[0].id_accuracy is not None:
            expected[("ID", "id_accuracy")] = [100 * r.id_accuracy for r in runs]
        else:
            assert not ((table["label"] == label) & (table["set"] == "ID")).any()
        for (name, metric), values in expected.items():
            mine = (table["label"] == label) & (table["set"] == name) & (table["metric"] == metric)
            (row,) = table[mine].itertuples()
            assert row.n == len(values) == 5
            assert row.mean == pytest.approx(np.mean(values), abs=1e-9)
            assert row.std == pytest.approx(np.std(values, ddof=1), abs=1e-9)
            assert [getattr(row, f"seed_{r.seed}") for r in runs] == pytest.approx(values, abs=1e-9)
    glyphs = table[(table["set"] == "glyphs")]
    assert set(glyphs["group"]) == {"near"} and set(table[table["set"] == "noise"]["group"]) == {"far"}
    conventions = table.drop_duplicates(["metric"]).set_index("metric")[["positive", "definition", "unit"]]
    assert conventions.loc["fpr95"].tolist() == ["id", "recall-at-least", "%"]
    assert conventions.loc["aupr_out"].tolist() == ["ood", "average-precision", "%"]
    assert conventions.loc["train.seconds", "unit"] == "s"


def test_one_seed_has_no_std_and_a_run_missing_a_set_keeps_its_seeds_apart():
    records = [record("msp", 0, 0.9), record("knn", 0, 0.8), record("knn", 3, 0.7)]
    records[2].metrics.pop("photos")  # seed 3 lacks a set: its other cells still line up by seed
    table = long_table(build_leaderboard(records, "toy"))
    msp = table[(table["label"] == "msp") & (table["set"] == "noise") & (table["metric"] == "auroc")].iloc[0]
    assert msp["n"] == 1 and pd.isna(msp["std"]) and msp["seed_0"] == pytest.approx(91.0)
    photos = table[(table["label"] == "knn") & (table["set"] == "photos") & (table["metric"] == "auroc")].iloc[0]
    assert photos["n"] == 1 and photos["seed_0"] == pytest.approx(82.0) and pd.isna(photos["seed_3"])
    cost = table[(table["label"] == "knn") & (table["metric"] == "train.seconds")].iloc[0]
    assert (cost["seed_0"], cost["seed_3"]) == (1.0, 4.0)


def test_cost_facts_of_the_records_become_rows():
    cost = {"stages": {"train": {"seconds": 2.0, "peak_rss_mb": 300.0, "peak_cuda_mb": None}},
            "images_generated": 40, "images_embedded": None,
            "computed": {"images_generated": 0, "images_embedded": None}}  # a cached rerun made none of the 40
    table = long_table(build_leaderboard([record("msp", 0, 0.9, cost=cost)], "toy"))
    rows = table[table["set"] == "cost"].set_index("metric")
    assert sorted(rows.index) == ["computed.images_generated", "images_generated", "train.peak_rss_mb",
                                  "train.seconds"]  # None: not measured
    assert rows.loc["computed.images_generated", ["mean", "unit"]].tolist() == [0.0, "images"]
    assert rows.loc["train.peak_rss_mb", ["mean", "unit"]].tolist() == [300.0, "MB"]
    assert rows.loc["images_generated", "unit"] == "images"


def test_openood_csv_follows_openoods_schema(tmp_path):
    records = committed()
    (tmp_path / "board.csv").write_text(render_openood(build_leaderboard(records, "mnist5k")))
    frame = pd.read_csv(tmp_path / "board.csv", dtype=str, keep_default_na=False)
    assert tuple(frame.columns) == OPENOOD_COLUMNS and len(frame) == len({r.label for r in records})
    rows = frame.to_dict("records")
    msp = next(row for row in rows if (row["Training"], row["Postprocessor"]) == ("CrossEntropy", "MSP"))
    runs = [r for r in records if r.label == "msp"]
    near = [100 * r.metrics["glyphs"]["auroc"] for r in runs]
    far = [100 * np.mean([r.metrics[s]["auroc"] for s in ("textures", "photos", "faces", "noise")]) for r in runs]
    assert msp["Near-OOD_AUROC"] == f"{np.mean(near):.2f} ± {np.std(near, ddof=1):.2f}"
    assert msp["Far-OOD_AUROC"] == f"{np.mean(far):.2f} ± {np.std(far, ddof=1):.2f}"
    assert (msp["ID_Accuracy"], msp["Outlier_Data"], msp["Arch"]) == ("97.60 ± 0.39", "No", "lenet")
    assert msp["Additional_Description"] == "12 epochs; 5 seeds"
    pairs = {(row["Training"], row["Postprocessor"]) for row in rows}
    assert {("VOS", "EBO"), ("NPOS", "KNN"), ("Flow", "NLL"), ("CrossEntropy", "EBO")} <= pairs
    flow = [row for row in rows if row["Training"] == "Flow"]
    assert {row["ID_Accuracy"] for row in flow} == {"/"} and {row["Arch"] for row in flow} == {"/"}


def test_openood_needs_groups_and_writes_nothing_without(tmp_path):
    plain = [record("msp", 0, 0.9, sets={"a": "", "b": ""})]
    for r in plain:
        r.data = {}
        r.save(tmp_path)
    with pytest.raises(HarnessError, match="needs near/far OOD groups"):
        from harness.records.leaderboard_files import write_leaderboards
        write_leaderboards(tmp_path, formats=("md", "openood"))
    assert not (tmp_path / "leaderboards").exists()


def seeds(label: str, auroc: float, noise: tuple[float, ...] = (0.0, 0.002, -0.002), **fields) -> list[RunRecord]:
    """Three seeds of `label` around `auroc` (a paired interval needs at least two)."""
    return [record(label, seed, auroc + offset, **fields) for seed, offset in enumerate(noise)]


def test_rows_of_different_recipes_are_ranked_only_against_their_own_and_marked():
    """A 1-epoch classifier's msp beats the 12-epoch rows; it is bold among the 1-epoch rows only, and the density
    row (no classifier) is ranked against every row, so the 12-epoch knn is not bold: flow beats it."""
    records = [*seeds("knn", 0.80), *seeds("msp", 0.70), *seeds("msp(classifier.epochs=1)", 0.95, epochs=1),
               *seeds("knn(classifier.epochs=1)", 0.60, epochs=1),
               *seeds("flow", 0.85, kind="density", epochs=None, acc=None)]
    board = render_markdown(build_leaderboard(records, "toy"))
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in board.splitlines()
             if line.startswith("| ") and not line.startswith("| Method")}
    header = next(line for line in board.splitlines() if line.startswith("| Method"))
    columns = [c.strip() for c in header.split("|")[2:-1]]
    average = columns.index("Average AUROC")
    assert columns[:2] == ["seeds", "Recipe"]
    assert lines["knn"][1] == "lenet, 12 epochs" and lines["flow"][1] == "–"
    assert lines["msp(classifier.epochs=1)"][average] == "**96.00 ± 0.20**"
    assert lines["knn"][average] == "81.00 ± 0.20"  # flow (86) beats it: flow is ranked against every row
    assert lines["flow"][average] == "86.00 ± 0.20"  # beaten by the 1-epoch msp (96) among all rows
    assert lines["msp"][average] == "71.00 ± 0.20" and lines["knn(classifier.epochs=1)"][average] == "61.00 ± 0.20"
    assert "ranked only against rows of the same recipe" in board
    same = render_markdown(build_leaderboard([r for r in records if "epochs=1" not in r.label], "toy"))
    assert "Recipe" not in same and "| knn " in same


def test_bold_only_beyond_the_paired_interval_else_the_tied_rows_in_italics():
    """Two rows 0.1 pp apart with 0.2 pp seed noise are tied (neither bold, both italic); a row 5 pp below is not;
    with the noise shared (paired) the same 0.1 pp gap is beyond the interval, and the better row is bold."""
    noisy = [*seeds("a", 0.901, (0.0, 0.002, -0.002)), *seeds("b", 0.900, (0.002, -0.002, 0.0)),
             *seeds("c", 0.85)]
    cells = {row: cell for row, cell in markdown_cells(noisy, "Average AUROC").items()}
    assert cells["a"].startswith("*") and not cells["a"].startswith("**") and cells["b"].startswith("*")
    assert not cells["c"].startswith("*")
    paired = [*seeds("a", 0.901), *seeds("b", 0.900), *seeds("c", 0.85)]
    cells = markdown_cells(paired, "Average AUROC")
    assert cells["a"].startswith("**") and not cells["b"].startswith("*") and not cells["c"].startswith("*")


def markdown_cells(records: list[RunRecord], column: str) -> dict[str, str]:
    board = render_markdown(build_leaderboard(records, "toy")).splitlines()
    header = [c.strip() for c in next(line for line in board if line.startswith("| Method")).split("|")[1:-1]]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in board
            if line.startswith("| ") and not line.startswith("| Method")]
    return {row[0]: row[header.index(column)] for row in rows}


def test_the_committed_markdown_is_what_the_records_regenerate():
    """The committed leaderboards are regenerated by the command their footer names (run from the repo root)."""
    for path in sorted((RESULTS_DIR / "leaderboards").glob("*.md")):
        board = build_leaderboard(committed(path.stem), path.stem, out_dir=Path("results"))
        text = render_markdown(board)
        assert f"`python -m harness leaderboard --out results --benchmark {path.stem} --format md`" in text
        assert text == path.read_text(), f"{path} is stale: python -m harness leaderboard --out results"


def test_leaderboard_reads_runs_by_default_and_each_footer_regenerates_its_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard"]) == 2
    assert "no records under runs/records" in capsys.readouterr().err
    source = RESULTS_DIR / "records" / "movie_reviews"
    shutil.copytree(source, tmp_path / "runs" / "records" / "movie_reviews", ignore=shutil.ignore_patterns("*.png"))
    assert main(["leaderboard", "--format", "md,csv,json,openood", "--metrics", "auroc,fpr95"]) == 0
    written = sorted(p.name for p in (tmp_path / "runs" / "leaderboards").iterdir())
    assert written == ["movie_reviews.csv", "movie_reviews.json", "movie_reviews.md", "movie_reviews.openood.csv"]
    md = (tmp_path / "runs" / "leaderboards" / "movie_reviews.md").read_text()
    command = md.rsplit("Regenerate with `", 1)[1].split("`")[0]
    assert command == ("python -m harness leaderboard --out runs --benchmark movie_reviews --metrics auroc,fpr95 "
                       "--format md")
    before = md
    (tmp_path / "runs" / "leaderboards" / "movie_reviews.md").unlink()
    assert main(command.split()[3:]) == 0
    assert (tmp_path / "runs" / "leaderboards" / "movie_reviews.md").read_text() == before
    assert json.loads((tmp_path / "runs" / "leaderboards" / "movie_reviews.json").read_text())[0]["metric"] in (
        "auroc", "fpr95")
    assert main(["leaderboard", "--format", "md,pdf"]) == 2
    assert "--format pdf: choose from md,html,csv,json,openood" in capsys.readouterr().err
