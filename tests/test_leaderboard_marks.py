"""The leaderboard's marks: ◇ on a set whose mean AUROC is below 50, † on a row whose seed std exceeds the spec's
stability target for the method's kind (datasets/mnist5k.json: average AUROC 2 pp post-hoc, 3 pp otherwise; ID
accuracy 0.5 pp)."""

import json
from dataclasses import replace

import pytest

from harness.data.spec import load_spec
from harness.errors import HarnessError
from harness.paths import RESULTS_DIR
from harness.records.leaderboard import benchmark_markdown
from harness.records.results import load_records


def msp_records():
    return sorted((r for r in load_records(RESULTS_DIR, "mnist5k") if r.label == "msp"), key=lambda r: r.seed)


def shifted(records, offsets, kind="post-hoc", label="msp", acc_offsets=None, faces=None):
    """Copies whose average AUROC is moved by offsets[i] / 100, every set's AUROC by as much (the leaderboard averages
    the sets), and faces AUROC set to faces[i]."""
    out = []
    for i, r in enumerate(records):
        average = {**r.average, "auroc": r.average["auroc"] + offsets[i] / 100}
        metrics = {name: {**values, "auroc": values["auroc"] + offsets[i] / 100} for name, values in r.metrics.items()}
        if faces is not None:
            metrics["faces"] = {**metrics["faces"], "auroc": faces[i]}
        acc = r.id_accuracy + (acc_offsets[i] / 100 if acc_offsets else 0)
        out.append(replace(r, average=average, metrics=metrics, kind=kind, label=label, id_accuracy=acc))
    return out


def row(board, label):
    return next(line for line in board.splitlines() if line.startswith(f"| {label} "))


def test_the_target_of_the_row_kind_decides_the_dagger():
    base = msp_records()
    # offsets with a sample std of about 2.5 pp on top of msp's own 0.28
    spread = [-3.0, -1.5, 0.0, 1.5, 3.0]
    post_hoc = shifted(base, spread)
    synthesis = shifted(base, spread, kind="feature-synthesis", label="synth")
    wide = shifted(base, [2 * x for x in spread], kind="feature-synthesis", label="wide")
    board = benchmark_markdown(post_hoc + synthesis + wide, "mnist5k")
    average = -3  # the Average AUROC cell (then ID acc. and the empty tail)
    assert "†" in row(board, "msp").split("|")[average]
    assert "†" not in row(board, "synth")
    assert "†" in row(board, "wide").split("|")[average]
    assert "† a seed std above the benchmark's stability target" in board
    assert "†" not in benchmark_markdown(base, "mnist5k").split("\n", 3)[3]  # msp's own rows meet the target


def test_id_accuracy_std_above_target_and_low_set_auroc_are_marked():
    base = msp_records()
    records = shifted(base, [0] * 5, acc_offsets=[-1.0, 0, 1.0, 0, -1.0], faces=[0.3, 0.35, 0.4, 0.3, 0.35])
    cells = [c.strip() for c in row(benchmark_markdown(records, "mnist5k"), "msp").split("|")]
    assert "†" in cells[-2]  # ID acc.
    assert [c for c in cells if c.endswith("◇")] == [cells[4]]  # faces AUROC only, not the average


def test_a_spec_without_targets_marks_nothing(tmp_path):
    spread = shifted(msp_records(), [-6.0, -3.0, 0.0, 3.0, 6.0])
    assert "†" not in benchmark_markdown(spread, "no-such-benchmark")


@pytest.mark.parametrize("targets, problem", [
    ({"average_auroc": -1}, "stability_targets.average_auroc must be a positive number"),
    ({"average_auroc": {"post-hoc": "2"}}, "stability_targets.average_auroc must be a positive number"),
    ({"auroc": 2}, "stability_targets has unknown keys ['auroc']"),
])
def test_bad_stability_targets_are_one_line_errors(tmp_path, targets, problem):
    raw = json.loads((RESULTS_DIR.parent / "datasets" / "mnist5k.json").read_text())
    raw["stability_targets"] = targets
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(HarnessError, match=problem.replace("[", r"\[").replace("]", r"\]")) as error:
        load_spec(str(path))
    assert "\n" not in str(error.value)


def test_a_variants_records_take_the_variants_targets():
    """Records of `mnist5k:openood` are named `mnist5k-openood`: its board marks knn's average AUROC (std 3.28 pp
    over the committed seeds, above the variant's 2 pp post-hoc target), as the family's board would."""
    records = load_records(RESULTS_DIR, "mnist5k-openood")
    board = benchmark_markdown(records, "mnist5k-openood")
    assert "† a seed std above the benchmark's stability target" in board
    assert "†" in row(board, "knn").split("|")[-3]
    assert "†" not in row(board, "energy")


@pytest.mark.parametrize("name, expected", [
    ("mnist5k", ("mnist5k", "mnist5k", 32)), ("mnist5k-openood", ("mnist5k-openood", "mnist5k", 28)),
    ("mnist5k-resnet-bn", ("mnist5k-resnet-bn", "mnist5k", 32)), ("mnist5k-nope", None), ("nope-openood", None)])
def test_benchmark_spec_resolves_variant_names(name, expected):
    from harness.records.leaderboard import benchmark_spec
    spec = benchmark_spec(name)
    assert (None if spec is None else (spec.name, spec.family, spec.image_size)) == expected
