import json

import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.publish import publish, run_slow_checks
from harness.records.results import load_records
from tests.regress_helpers import TINY_PRESET, write_tiny_spec

KNN = "knn(preset=tiny)"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny benchmark published for seeds 0 and 1 (msp, knn, and knn with k=5) into a results directory."""
    root = tmp_path_factory.mktemp("regress")
    spec = write_tiny_spec(root)
    labels = root / "published.json"
    labels.write_text(json.dumps({"tiny5k": {"seeds": [0, 1], "threads": 1, "drift_threads": [2, 3],
                                             "preset": TINY_PRESET,
                                             "labels": [
        {"method": "msp"}, {"method": "knn"}, {"method": "knn", "set": ["knn.k=5"]}]}}))
    records, changed = publish(str(spec), root / "results", labels, root / "cache", slow_checks=False)
    return {"root": root, "spec": spec, "labels": labels, "records": records, "changed": changed,
            "results": root / "results", "expectations": root / "results/expectations/tiny5k.json"}


def regress(tiny, *extra):
    return main(["regress", "--benchmark", str(tiny["spec"]), "--expectations", str(tiny["expectations"]), *extra])


def test_publish_writes_records_leaderboard_and_expectations(tiny):
    records = load_records(tiny["results"], "tiny5k")
    assert sorted({r.label for r in records}) == ["knn(k=5,preset=tiny)", KNN, "msp(preset=tiny)"]
    assert {r.seed for r in records} == {0, 1}
    assert all(r.environment["torch_threads"] == 1 for r in records)
    doc = json.loads(tiny["expectations"].read_text())
    stats = doc["methods"][KNN]["metrics"]["Average"]["fpr95"]
    per_seed = [100 * r.average["fpr95"] for r in sorted(records, key=lambda r: r.seed) if r.label == KNN]
    assert stats["per_seed"] == {"0": per_seed[0], "1": per_seed[1]}
    assert stats["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "+ msp(preset=tiny) (new)" in tiny["changed"]
    assert (tiny["results"] / "leaderboards/tiny5k.md").exists() and not (tiny["results"] / ".publish-tiny5k").exists()


def test_regress_passes_on_unchanged_records_and_fails_naming_the_perturbed_metric(tiny, tmp_path, capsys):
    assert regress(tiny, "--records", str(tiny["results"])) == 0
    assert "all " in capsys.readouterr().out
    perturbed = tmp_path / "records"
    for path in (tiny["results"] / "records").rglob("seed*.json"):
        record = json.loads(path.read_text())
        if record["label"] == KNN:
            record["metrics"]["glyphs"]["auroc"] -= 0.2  # 20 pp, beyond any tolerance here
            record["environment"]["torch_threads"] = 7
        target = perturbed / path.relative_to(tiny["results"] / "records")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record))
    assert regress(tiny, "--records", str(perturbed)) == 1
    out = capsys.readouterr().out
    assert f"{KNN} seed 0 glyphs auroc" in out and "| FAIL" in out
    assert f"{KNN}: torch_threads: 1 -> 7" in out  # the mismatch explained by provenance
    assert "measured drift" in out and "minimal detectable effect" in out
    assert regress(tiny, "--records", str(perturbed), "--tolerance", "auroc=25") == 0
    copy = tmp_path / "expectations.json"
    copy.write_text(tiny["expectations"].read_text())
    update = ["regress", "--benchmark", str(tiny["spec"]), "--expectations", str(copy), "--records", str(perturbed)]
    assert main([*update, "--update"]) == 0
    assert f"~ {KNN} glyphs auroc" in capsys.readouterr().out
    assert main([*update, "--tolerance", "0"]) == 0


def test_rerun_from_the_cache_reproduces_the_expectations_exactly(tiny, tmp_path, capsys):
    common = ["--methods", "msp,knn", "--seeds", "0,1", "--preset", TINY_PRESET, "--cache-dir",
              str(tiny["root"] / "cache"), "--out", str(tmp_path / "runs")]
    assert regress(tiny, *common, "--tolerance", "0") == 0  # same threads (read from the expectations): exact
    assert "provenance differs" not in capsys.readouterr().out


@pytest.mark.parametrize("problem, args, message", [
    ("missing", ["--expectations", "nowhere.json"], "no expectations file nowhere.json"),
    ("malformed", None, "is not valid JSON"),
    ("negative", ["--tolerance", "-1"], "must be a finite number >= 0"),
    ("text", ["--tolerance", "fpr95=abc"], "is not a number"),
    ("label", ["--methods", "energy", "--seeds", "0", "--preset", TINY_PRESET], "no entry for 'energy(preset=tiny)'"),
    ("benchmark", ["--records", "results/records/mnist5k"], "holds records of benchmark 'mnist5k'"),
])
def test_bad_input_is_one_line_and_nonzero(tiny, tmp_path, capsys, problem, args, message):
    expectations = str(tiny["expectations"])
    if problem == "malformed":
        broken = tmp_path / "broken.json"
        broken.write_text("{not json")
        expectations, args = str(broken), ["--records", str(tiny["results"])]
    elif problem in ("negative", "text"):
        args = [*args, "--records", str(tiny["results"])]
    elif problem == "label":
        args = [*args, "--cache-dir", str(tiny["root"] / "cache"), "--out", str(tmp_path / "runs")]
    argv = ["regress", "--benchmark", str(tiny["spec"]), "--expectations", expectations, *args]
    if problem == "missing":
        argv = ["regress", "--benchmark", str(tiny["spec"]), *args, "--records", str(tiny["results"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_publish_refuses_a_cache_that_is_not_clean(tiny, tmp_path, capsys):
    used = tmp_path / "cache"
    (used / "classifier").mkdir(parents=True)
    assert main(["publish", "--benchmark", str(tiny["spec"]), "--labels", str(tiny["labels"]), "--out",
                 str(tmp_path / "out"), "--cache-dir", str(used)]) == 2
    assert "publish runs from a clean one" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_publish_records_that_its_slow_checks_were_skipped(tiny):
    assert json.loads(tiny["expectations"].read_text())["slow_checks"] == {"command": "skipped (--skip-checks)"}


SLOW_TEST = """import pytest


@pytest.mark.slow
def test_heavy():
    assert {value}


def test_fast():
    assert False  # not a slow check: never run by publish
"""


@pytest.mark.parametrize("passes", [True, False])
def test_slow_checks_run_only_the_slow_tests_and_refuse_on_a_failure(tmp_path, capsys, passes):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_heavy.py").write_text(SLOW_TEST.format(value=passes))
    if passes:
        checks = run_slow_checks(tmp_path / "tests")
        assert checks["command"].startswith("python -m pytest -m slow") and checks["seconds"] > 0
        assert checks["summary"].startswith("1 passed, 1 deselected")
    else:
        with pytest.raises(HarnessError, match=r"slow checks did not pass \(1 failed, 1 deselected.*--skip-checks"):
            run_slow_checks(tmp_path / "tests")
        assert "test_heavy" in capsys.readouterr().out  # pytest's own report was streamed
    with pytest.raises(HarnessError, match="does not exist: publish from a checkout"):
        run_slow_checks(tmp_path / "missing")


def test_publish_writes_nothing_when_its_slow_checks_fail(tiny, tmp_path, capsys, monkeypatch):
    def failing():
        raise HarnessError("publish: the slow checks did not pass (1 failed in 0.1s); nothing was run or written")

    monkeypatch.setattr("harness.publish.run_slow_checks", failing)
    assert main(["publish", "--benchmark", str(tiny["spec"]), "--labels", str(tiny["labels"]), "--out",
                 str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert "slow checks did not pass" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.heavy
def test_publish_with_two_jobs_gives_the_one_job_numbers(tiny, tmp_path):
    """(label, seed) tasks in two worker processes sharing one cache: same metrics as the sequential publish."""
    records, _ = publish(str(tiny["spec"]), tmp_path / "results", tiny["labels"], tmp_path / "cache", jobs=2,
                         slow_checks=False)
    parallel = {(r.label, r.seed): (r.metrics, r.id_accuracy) for r in records}
    sequential = {(r.label, r.seed): (r.metrics, r.id_accuracy) for r in tiny["records"]}
    assert parallel == sequential


def _records(tiny):
    return {p: json.loads(p.read_text()) for p in sorted((tiny["results"] / "records").rglob("seed*.json"))}


def _write(records, directory, root):
    for path, record in records.items():
        target = directory / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record))
    return directory


def test_expectations_store_per_seed_drift_under_each_drift_thread_count(tiny):
    doc = json.loads(tiny["expectations"].read_text())
    entry = doc["methods"][KNN]
    assert [d["environment"]["torch_threads"] for d in entry["drifts"]] == [2, 3]
    assert all(set(d["per_seed"]["Average"]["auroc"]) == {"0", "1"} for d in entry["drifts"])
    assert doc["same_environment_pp"] == 0.01


def test_records_of_the_drift_environment_are_held_exactly_to_their_own_values(tiny, tmp_path, capsys):
    """The unmodified records pass in the stored environment and, rebuilt as the drift run gave them, under the
    second thread count; a 0.05 pp change then fails (tolerance 0.01 in a known environment)."""
    doc = json.loads(tiny["expectations"].read_text())
    records = _records(tiny)
    for record in records.values():
        drift = doc["methods"][record["label"]]["drifts"][0]
        record["environment"]["torch_threads"] = 2
        seed = str(record["seed"])
        for name, metrics in [*record["metrics"].items(), ("Average", record["average"])]:
            for metric in ("fpr95", "auroc"):
                metrics[metric] += drift["per_seed"][name][metric][seed] / 100
        if record["id_accuracy"] is not None:
            record["id_accuracy"] += drift["per_seed"]["ID"]["accuracy"][seed] / 100
    shifted = _write(records, tmp_path / "threads2", tiny["results"] / "records")
    assert regress(tiny, "--records", str(shifted)) == 0
    assert "drift environment" in capsys.readouterr().out
    first = next(r for r in records.values() if r["label"] == KNN)
    first["metrics"]["glyphs"]["auroc"] += 0.0005
    assert regress(tiny, "--records", str(_write(records, tmp_path / "nudged", tiny["results"] / "records"))) == 1


def _shifted(tiny, threads, offset_pp, seeds=(0, 1)):
    """The tiny records as if run under `threads` threads, every metric moved by `offset_pp`."""
    records = {}
    for path, record in _records(tiny).items():
        if record["seed"] not in seeds:
            continue
        record["environment"]["torch_threads"] = threads
        for metrics in [*record["metrics"].values(), record["average"]]:
            for metric in ("fpr95", "auroc"):
                metrics[metric] += offset_pp / 100
        if record["id_accuracy"] is not None:
            record["id_accuracy"] += offset_pp / 100
        records[path] = record
    return records


def test_add_drift_stores_another_environment_and_then_holds_it_exactly(tiny, tmp_path, capsys):
    copy = tmp_path / "expectations.json"
    copy.write_text(tiny["expectations"].read_text())
    base = ["regress", "--benchmark", str(tiny["spec"]), "--expectations", str(copy), "--records"]
    five = str(_write(_shifted(tiny, 5, 0.3), tmp_path / "five", tiny["results"] / "records"))
    assert main([*base, five, "--add-drift"]) == 0
    assert f"+ {KNN}: drift of torch_threads: 1 -> 5" in capsys.readouterr().out
    entry = json.loads(copy.read_text())["methods"][KNN]
    assert [d["environment"]["torch_threads"] for d in entry["drifts"]] == [2, 3, 5]
    assert entry["drifts"][2]["per_seed"]["glyphs"]["auroc"]["1"] == pytest.approx(0.3)
    assert main([*base, five]) == 0  # a drift environment: held to its own values
    assert "drift environment" in capsys.readouterr().out
    nudged = str(_write(_shifted(tiny, 5, 0.35), tmp_path / "nudged", tiny["results"] / "records"))
    assert main([*base, nudged]) == 1  # 0.05 pp off in a known environment


@pytest.mark.parametrize("records, message", [
    ((5, 0.3, (0,)), "lack seeds 1 of its expectations; a drift needs every stored seed"),
    ((1, 0.3, (0, 1)), "already hold the environment of these records"),
    ((2, 0.3, (0, 1)), "already hold the environment of these records"),
])
def test_add_drift_refuses_incomplete_or_known_environments(tiny, tmp_path, capsys, records, message):
    copy = tmp_path / "expectations.json"
    copy.write_text(tiny["expectations"].read_text())
    before = copy.read_text()
    directory = _write(_shifted(tiny, *records), tmp_path / "records", tiny["results"] / "records")
    assert main(["regress", "--benchmark", str(tiny["spec"]), "--expectations", str(copy), "--records",
                 str(directory), "--add-drift"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert copy.read_text() == before


@pytest.mark.parametrize("value, message", [
    ("1", "holds the published thread count 1"), ("2,2", "must be distinct thread counts >= 1"),
    ("x", "must be comma-separated integers"), ("-1", "must be distinct thread counts >= 1")])
def test_publish_refuses_bad_drift_thread_counts(tiny, tmp_path, capsys, value, message):
    assert main(["publish", "--benchmark", str(tiny["spec"]), "--labels", str(tiny["labels"]), "--out",
                 str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--drift-threads", value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_add_drift_refuses_records_of_two_environments(tiny, tmp_path, capsys):
    records = {**_shifted(tiny, 5, 0.3, seeds=(0,)), **_shifted(tiny, 6, 0.3, seeds=(1,))}
    copy = tmp_path / "expectations.json"
    copy.write_text(tiny["expectations"].read_text())
    directory = _write(records, tmp_path / "records", tiny["results"] / "records")
    assert main(["regress", "--benchmark", str(tiny["spec"]), "--expectations", str(copy), "--records",
                 str(directory), "--add-drift"]) == 2
    err = capsys.readouterr().err.strip()
    assert "come from 2 environments; give one drift at a time" in err and len(err.splitlines()) == 1
    assert copy.read_text() == tiny["expectations"].read_text()


def test_publish_keeps_every_records_scores_in_their_published_form(tiny):
    from harness.records.scores import check_against_record, published_form, read_scores

    records = load_records(tiny["results"], "tiny5k")
    stored = set()
    for record in records:
        path = tiny["results"] / record.scores_file
        scores = read_scores(path)
        assert path.parent == record.directory(tiny["results"]) and not check_against_record(record, scores)
        assert path.read_bytes() == published_form(record, scores)
        with np.load(path) as npz:
            stored.add((record.method, str(npz["scores_0"].dtype)))
    assert ("knn", "float32") in stored  # faiss distances are float32: rounding them loses nothing
