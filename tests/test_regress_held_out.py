"""The published mnist5k labels rerun from empty caches under thread counts that no drift run measured
(results/held_out/mnist5k/threads-N, written by `regress --threads N`) pass `regress` against the committed
expectations: the unmodified records pass in a different environment, not only as relabelled copies of the stored
values. After a `publish` these reruns are stale and this test fails until they are regenerated (docs/regression.md
gives the commands)."""

import json
import shutil

import pytest

from harness.cli import main
from harness.paths import RESULTS_DIR
from harness.records.regression import (
    compare,
    detectable_effects,
    false_alarms,
    unmeasured_environment_checks,
    with_factors,
)
from harness.records.results import load_record_tree

HELD_OUT = sorted((RESULTS_DIR / "held_out" / "mnist5k").glob("threads-*"))
EXPECTATIONS = json.loads((RESULTS_DIR / "expectations" / "mnist5k.json").read_text())
# Known gap, measured and explained in docs/regression.md: a cell whose value the floating-point reduction order
# sets beyond what the 2- and 3-thread drifts measured (the MLE flow's complexity-minus-NLL score on textures).
KNOWN_FAILURES = {f"threads-{n}": {"flow(score=complexity,variant=mle)"} for n in (5, 6)}


def test_held_out_reruns_exist():
    assert len(HELD_OUT) >= 2, "results/held_out/mnist5k holds fewer than two thread counts"


def _regress(paths, into):
    for path in paths:
        (into / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, into / path.parent.name / path.name)
    return main(["regress", "--benchmark", "mnist5k", "--records", str(into)])


@pytest.mark.parametrize("directory", HELD_OUT, ids=lambda p: p.name)
def test_a_rerun_under_an_unmeasured_thread_count_passes_but_for_its_known_gaps(directory, tmp_path, capsys):
    paths = sorted(directory.rglob("seed*.json"))
    records = [json.loads(p.read_text()) for p in paths]
    labels = {r["label"] for r in records}
    threads = {r["environment"]["torch_threads"] for r in records}
    assert threads == {int(directory.name.removeprefix("threads-"))}
    for label in labels:
        entry = EXPECTATIONS["methods"][label]
        measured = {e["torch_threads"] for e in entry["environments"]}
        measured |= {d["environment"]["torch_threads"] for d in entry["drifts"]}
        assert threads.isdisjoint(measured), f"{label} at {threads} threads is a measured environment"
        assert sorted(r["seed"] for r in records if r["label"] == label) == entry["seeds"]
    known = KNOWN_FAILURES.get(directory.name, set())
    failing = [p for p, r in zip(paths, records, strict=True) if r["label"] in known]
    assert _regress([p for p in paths if p not in failing], tmp_path / "rest") == 0
    out = capsys.readouterr().out
    assert "paired mean" in out and "torch_threads: 1 -> " in out
    if known:  # strict: a known gap that closes must be removed from KNOWN_FAILURES
        assert _regress(failing, tmp_path / "known") == 1


def test_calibration_finds_the_known_gaps_and_meets_the_detectable_effect_targets(capsys):
    """`regress --calibrate` (docs/regression.md's table) on the committed reruns: at the committed factors exactly
    the known gaps fail; tighter factors raise more false alarms; every label's minimal detectable effect in a new
    environment is within the targets (5 pp average AUROC, 1 pp ID accuracy) and equals what `regress` prints for
    the published records relabelled to an unmeasured thread count."""
    records = load_record_tree(HELD_OUT[0].parent, "mnist5k")
    factors = EXPECTATIONS["drift_factor"], EXPECTATIONS["paired_drift_factor"]
    alarms = false_alarms(EXPECTATIONS, records)
    assert len(alarms) == len(HELD_OUT)
    for alarm in alarms:
        threads = alarm.environment.removeprefix("torch_threads: 1 -> ")
        assert set(alarm.labels) == KNOWN_FAILURES.get(f"threads-{threads}", set()), alarm
    tight = false_alarms(with_factors(EXPECTATIONS, 1.0, 1.0), records)
    assert all(t.failed_per_seed > a.failed_per_seed for t, a in zip(tight, alarms, strict=True))
    effects = detectable_effects(unmeasured_environment_checks(EXPECTATIONS))
    assert set(effects) == set(EXPECTATIONS["methods"])
    assert all(e["average AUROC"] <= 5 and e.get("ID accuracy", 0) <= 1 for e in effects.values()), effects
    published = load_record_tree(RESULTS_DIR / "records" / "mnist5k", "mnist5k")
    for record in published:
        record.environment["torch_threads"] = 7
    assert detectable_effects(compare(EXPECTATIONS, published)) == effects
    assert main(["regress", "--benchmark", "mnist5k", "--records", str(HELD_OUT[0].parent), "--calibrate",
                 "1x1,{:g}x{:g}".format(*factors)]) == 0
    assert str(alarms[0]) in capsys.readouterr().out
    for bad, message in [("4y2", "is not DRIFTxPAIRED"), ("0x2", "finite numbers > 0")]:
        assert main(["regress", "--benchmark", "mnist5k", "--records", str(HELD_OUT[0].parent), "--calibrate",
                     bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["regress", "--benchmark", "mnist5k", "--methods", "msp", "--calibrate", "4x2"]) == 2
    assert "pass them with --records" in capsys.readouterr().err
    for flag in (["--calibrate", "4x2"], ["--update"], ["--add-drift"]):  # refused before anything is read or written
        assert main(["regress", "--benchmark", "mnist5k", "--records", str(HELD_OUT[0].parent), "--tolerance", "3",
                     "--expectations", "/nonexistent/expectations.json", *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert f"which {flag[0]} does not make" in err and len(err.splitlines()) == 1
