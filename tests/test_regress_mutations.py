"""Mutation tests of `regress` against the committed mnist5k records and expectations: a broken method fails the
check, the unmodified records pass, in the stored environment, in the drift run's (second thread count) and in an
environment never measured (where the tolerances come from the measured drift: per seed, and for the paired mean
over the seeds of the summary metrics)."""

import json

import numpy as np
import pytest

from harness.cli import main
from harness.data.spec import load_spec
from harness.paths import RESULTS_DIR

RECORDS = RESULTS_DIR / "records" / "mnist5k"
EXPECTATIONS = json.loads((RESULTS_DIR / "expectations" / "mnist5k.json").read_text())
SPEC = load_spec("mnist5k")
FAR = [e["name"] for e in SPEC.ood if not e.get("note", "").startswith("near-OOD")]
ORIGINAL = {p: json.loads(p.read_text()) for p in sorted(RECORDS.rglob("seed*.json"))}
POST_HOC = sorted({r["label"] for r in ORIGINAL.values() if r["kind"] == "post-hoc"})


def _as_environment(record, environment, drift_index=0):
    """The record as it would come from `environment`: "stored" as committed, "drift" rebuilt from a stored drift
    (the first by default: the second thread count), "unmeasured" with a thread count no run used."""
    record = json.loads(json.dumps(record))
    if environment == "drift":
        entry = EXPECTATIONS["methods"][record["label"]]
        drift, seed = entry["drifts"][drift_index]["per_seed"], str(record["seed"])
        record["environment"]["torch_threads"] = entry["drifts"][drift_index]["environment"]["torch_threads"]
        for name, metrics in [*record["metrics"].items(), ("Average", record["average"])]:
            for metric in ("fpr95", "auroc"):
                metrics[metric] += drift[name][metric][seed] / 100
        if record["id_accuracy"] is not None:
            record["id_accuracy"] += drift["ID"]["accuracy"][seed] / 100
    elif environment == "unmeasured":
        record["environment"]["torch_threads"] = 7
    return record


def _regress(tmp_path, records):
    for path, record in records.items():
        target = tmp_path / "records" / path.relative_to(RECORDS.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record))
    return main(["regress", "--benchmark", "mnist5k", "--records", str(tmp_path / "records")])


def _reaverage(record):
    for metric in ("fpr95", "auroc"):
        record["average"][metric] = float(np.mean([m[metric] for m in record["metrics"].values()]))


ENVIRONMENTS = ["stored", "drift", "unmeasured"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_unmodified_records_pass(tmp_path, environment):
    assert _regress(tmp_path, {p: _as_environment(r, environment) for p, r in ORIGINAL.items()}) == 0


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("label", POST_HOC)
@pytest.mark.parametrize("far_set", FAR)
def test_one_inverted_far_ood_set_fails(tmp_path, environment, label, far_set):
    records = {}
    for path, record in ORIGINAL.items():
        record = _as_environment(record, environment)
        if record["label"] == label:
            record["metrics"][far_set]["auroc"] = 1.0 - record["metrics"][far_set]["auroc"]
            _reaverage(record)
        records[path] = record
    assert _regress(tmp_path, records) == 1


LABELS = sorted({r["label"] for r in ORIGINAL.values()})
AVERAGE_CASES = [(label, environment) for label in LABELS for environment in ENVIRONMENTS]


@pytest.mark.parametrize("label, environment", AVERAGE_CASES)
def test_average_auroc_five_points_lower_through_far_sets_fails(tmp_path, environment, label):
    records = {}
    for path, record in ORIGINAL.items():
        record = _as_environment(record, environment)
        if record["label"] == label:
            share = 0.05 * len(record["metrics"]) / len(FAR)
            for name in FAR:
                record["metrics"][name]["auroc"] -= share
            _reaverage(record)
        records[path] = record
    assert _regress(tmp_path, records) == 1


ACCURACY_CASES = [(label, environment) for label in sorted({r["label"] for r in ORIGINAL.values()
                                                                 if r["id_accuracy"] is not None})
                  for environment in ENVIRONMENTS]


@pytest.mark.parametrize("label, environment", ACCURACY_CASES)
def test_id_accuracy_two_points_lower_fails(tmp_path, environment, label):
    records = {}
    for path, record in ORIGINAL.items():
        record = _as_environment(record, environment)
        if record["label"] == label:
            record["id_accuracy"] -= 0.02
        records[path] = record
    assert _regress(tmp_path, records) == 1


@pytest.mark.parametrize("index", range(len(next(iter(EXPECTATIONS["methods"].values()))["drifts"])))
def test_each_drift_runs_own_values_pass_as_an_unmeasured_environment(tmp_path, capsys, index):
    """What another thread count did to every label is what a new environment is expected to do: those values,
    presented as a thread count never measured, pass both the per-seed and the paired-mean checks (the paired
    tolerance covers the run's systematic part: flow and knn moved the same way on 4 of 5 seeds at 2 threads)."""
    records = {}
    for path, record in ORIGINAL.items():
        record = _as_environment(record, "drift", index)
        record["environment"]["torch_threads"] = 7
        records[path] = record
    assert _regress(tmp_path, records) == 0
    assert "paired mean" in capsys.readouterr().out


@pytest.mark.parametrize("label", LABELS)
def test_one_seed_moved_by_the_largest_measured_drift_passes(tmp_path, label):
    """The paired mean check cannot fail on one seed's excursion as large as the worst the drift run saw: the
    label's average AUROC and ID accuracy move by their largest measured drift, each on the seed that had it."""
    drifts = [d["per_seed"] for d in EXPECTATIONS["methods"][label]["drifts"]]
    records = {}
    for path, record in ORIGINAL.items():
        record = _as_environment(record, "unmeasured")
        if record["label"] == label:
            for name, metric, into in (("Average", "auroc", record["average"]), ("ID", "accuracy", None)):
                values = [(d, s) for drift in drifts for s, d in drift.get(name, {}).get(metric, {}).items()]
                if not values or (into is None and record["id_accuracy"] is None):
                    continue
                worst, seed = max(values, key=lambda pair: abs(pair[0]))
                if str(record["seed"]) == seed:
                    if into is None:
                        record["id_accuracy"] += worst / 100
                    else:
                        into[metric] += worst / 100
        records[path] = record
    assert _regress(tmp_path, records) == 0


def test_the_paired_mean_sets_the_detectable_effect(tmp_path, capsys):
    """In an unmeasured environment ncis's minimal detectable effect on the average AUROC is paired_drift_factor x
    sqrt(systematic^2 + rms^2 / 5 seeds), not drift_factor x the largest drift; with one seed there is no paired
    check."""
    runs = [list(d["per_seed"]["Average"]["auroc"].values()) for d in EXPECTATIONS["methods"]["ncis"]["drifts"]]
    drift = [v for run in runs for v in run]
    rms = float(np.sqrt(np.mean(np.square(drift))))
    shared = max(abs(float(np.mean(run))) for run in runs)
    records = {p: _as_environment(r, "unmeasured") for p, r in ORIGINAL.items()}
    assert _regress(tmp_path / "all", records) == 0
    out = capsys.readouterr().out
    paired = EXPECTATIONS["paired_drift_factor"] * np.hypot(shared, rms / np.sqrt(5))
    assert f"ncis: average AUROC {max(EXPECTATIONS['drift_floor_pp'], paired):.2f}," in out
    one = {p: r for p, r in records.items() if r["seed"] == 0}
    assert _regress(tmp_path / "one", one) == 0
    out = capsys.readouterr().out
    assert "paired mean" not in out
    per_seed = EXPECTATIONS["drift_factor"] * max(abs(d) for d in drift)
    assert f"ncis: average AUROC {max(EXPECTATIONS['drift_floor_pp'], per_seed):.2f}," in out  # the per-seed check's
