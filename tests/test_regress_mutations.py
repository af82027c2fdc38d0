"""Mutation tests of `regress` against the committed mnist5k records and expectations: a broken method fails the
check, the unmodified records pass, in the stored environment, in the drift run's (second thread count) and in an
environment never measured (where the tolerance comes from the measured drift)."""

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


def _as_environment(record, environment):
    """The record as it would come from `environment`: "stored" as committed, "drift" rebuilt from the stored
    drift (the second thread count), "unmeasured" with a thread count no run used."""
    record = json.loads(json.dumps(record))
    if environment == "drift":
        entry = EXPECTATIONS["methods"][record["label"]]
        drift, seed = entry["drift"]["per_seed"], str(record["seed"])
        record["environment"]["torch_threads"] = entry["drift"]["environment"]["torch_threads"]
        for name, metrics in [*record["metrics"].items(), ("Average", record["average"])]:
            for metric in ("fpr95", "auroc"):
                metrics[metric] += drift[name][metric][seed] / 100
        if record["id_accuracy"] is not None:
            record["id_accuracy"] += drift["ID"]["accuracy"][seed] / 100
    elif environment == "unmeasured":
        record["environment"]["torch_threads"] = 3
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


# Known gap (issue 17 target missed): NCIS's far-OOD AUROCs moved by up to 8.9 pp (faces, seed 4) and 6.5 pp (noise,
# textures) between 1 and 2 threads, so in an environment never measured their tolerances are 13-18 pp and a 5 pp
# drop passes. Strict, as below.
NCIS_AUROC_DRIFT = pytest.mark.xfail(strict=True, reason="ncis far-OOD AUROC drift up to 8.9 pp across thread counts")
AVERAGE_CASES = [pytest.param(label, environment, marks=NCIS_AUROC_DRIFT)
                 if (label, environment) == ("ncis", "unmeasured") else (label, environment)
                 for label in sorted({r["label"] for r in ORIGINAL.values()}) for environment in ENVIRONMENTS]


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


# Known gaps (issue 17 target missed): NPOS's ID accuracy moved by up to 1.5 pp between 1 and 2 threads, NCIS's by
# 1.1 pp, so in an environment never measured their tolerances are 3.0 / 2.2 pp and a 2 pp drop passes. Strict:
# fixing the drift makes the xfail an error, so the mark must then go.
ACCURACY_DRIFT = {"npos": pytest.mark.xfail(strict=True, reason="npos ID accuracy drift 1.5 pp: MDE 3.0 pp"),
                  "ncis": pytest.mark.xfail(strict=True, reason="ncis ID accuracy drift 1.1 pp: MDE 2.2 pp")}
ACCURACY_CASES = [pytest.param(label, environment, marks=ACCURACY_DRIFT[label])
                  if label in ACCURACY_DRIFT and environment == "unmeasured" else (label, environment)
                  for label in sorted({r["label"] for r in ORIGINAL.values() if r["id_accuracy"] is not None})
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
