"""A run is planned once: its spec is loaded and its preset resolved exactly once, whether by `run`, `regress` or
`publish` (which plans every label once and reads its labels file once), and the plan is an immutable value."""

import dataclasses
import json
from fractions import Fraction

import pytest

import harness.data.spec
import harness.plan
import harness.publish
from harness.cli import main
from harness.data.spec import BenchmarkSpec
from harness.plan import RunRequest, plan
from harness.runner import execute
from tests.regress_helpers import TINY_PRESET, write_tiny_spec


@pytest.fixture
def counted(monkeypatch):
    """Counts of spec loads (from any module), preset resolutions and plans."""
    counts = {"load_spec": 0, "preset": 0, "plan": 0, "labels_file": 0}
    load_spec, preset, planner = harness.data.spec.load_spec, BenchmarkSpec.preset, harness.plan.plan

    def counting_load(*args, **kwargs):
        counts["load_spec"] += 1
        return load_spec(*args, **kwargs)

    def counting_preset(self, name):
        counts["preset"] += 1
        return preset(self, name)

    def counting_plan(*args, **kwargs):
        counts["plan"] += 1
        return planner(*args, **kwargs)

    for module in ("harness.plan", "harness.publish", "harness.data.spec"):
        monkeypatch.setattr(f"{module}.load_spec", counting_load)
    monkeypatch.setattr(BenchmarkSpec, "preset", counting_preset)
    monkeypatch.setattr("harness.publish.plan", counting_plan)
    return counts


def test_a_run_loads_its_spec_and_resolves_its_preset_once(tmp_path, counted, session_cache):
    spec = write_tiny_spec(tmp_path, epochs=4)
    assert main(["run", "--methods", "msp,energy", "--benchmark", str(spec), "--preset", TINY_PRESET,
                 "--set", "classifier.epochs=2", "--out", str(tmp_path / "out"), "--cache-dir",
                 str(tmp_path / "cache")]) == 0
    assert (counted["load_spec"], counted["preset"]) == (1, 1)


def test_the_plan_is_a_value_holding_every_resolved_input(tmp_path):
    spec = write_tiny_spec(tmp_path, epochs=4)
    planned = plan(RunRequest(methods=["msp", "knn"], benchmark=str(spec), preset=TINY_PRESET,
                              overrides={"classifier": {"epochs": "2"}, "knn": {"k": "5"}}))
    assert planned.preset.name == TINY_PRESET and planned.preset.max_train == 256
    assert planned.classifier.epochs == 2 and planned.epoch_ratio == Fraction(1, 2)
    assert planned.labels == ["msp(classifier.epochs=2,preset=tiny)",
                              "knn(classifier.epochs=2,k=5,preset=tiny)"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        planned.classifier = None
    assert planned.with_request(seeds=[3, 4]).request.seeds == [3, 4] and planned.request.seeds == [0]
    with pytest.raises(ValueError, match="change the plan itself"):
        planned.with_request(methods=["knn"])


def test_a_method_recipe_scales_its_own_epochs_like_the_run_recipe(tmp_path, session_cache):
    from harness.context import RunContext

    spec = write_tiny_spec(tmp_path, epochs=4)
    planned = plan(RunRequest(methods=["msp"], benchmark=str(spec), overrides={"classifier": {"epochs": "2"}}))
    context = RunContext(None, 0, None, session_cache, planned.classifier, epoch_ratio=planned.epoch_ratio)
    assert context.recipe(epochs=250).epochs == 125 and context.recipe(epochs=1).epochs == 1
    assert context.recipe(batch_size=7).batch_size == 7 and context.recipe() == planned.classifier


def test_publish_reads_its_labels_once_and_plans_each_label_once(tmp_path, counted, monkeypatch):
    spec = write_tiny_spec(tmp_path)
    labels = tmp_path / "published.json"
    labels.write_text(json.dumps({"tiny5k": {"seeds": [0, 1], "threads": 1, "preset": TINY_PRESET, "labels": [
        {"method": "msp"}, {"method": "energy"}, {"method": "energy", "set": ["energy.temperature=2"]}]}}))
    reads = []
    read_published = harness.publish.read_published

    def counting_read(*args):
        reads.append(args)
        return read_published(*args)

    monkeypatch.setattr(harness.publish, "read_published", counting_read)
    records, _ = harness.publish.publish(str(spec), tmp_path / "results", labels, tmp_path / "cache",
                                         slow_checks=False, drift_threads=0)
    assert len(records) == 6 and len(reads) == 1
    assert (counted["load_spec"], counted["plan"], counted["preset"]) == (1, 3, 3)  # a preset per label's plan


def test_execute_takes_a_plan_and_runs_it_without_planning_again(tmp_path, monkeypatch, session_cache):
    spec = write_tiny_spec(tmp_path)
    planned = plan(RunRequest(methods=["msp"], benchmark=str(spec), preset=TINY_PRESET, out_dir=tmp_path / "out"))
    monkeypatch.setattr(harness.plan, "discover", lambda: pytest.fail("execute planned again"))
    [record] = execute(planned, cache=session_cache)
    assert record.label == "msp(preset=tiny)" and record.data["preset"] == TINY_PRESET


def test_smoke_applies_each_method_s_smoke_settings_under_the_user_s_and_labels_the_run(tmp_path):
    spec = write_tiny_spec(tmp_path)
    smoke = plan(RunRequest(methods=["knn", "msp"], benchmark=str(spec), smoke=True))
    assert smoke.methods[0].config.k == 5 and smoke.labels == ["knn(k=5,smoke=True)", "msp(smoke=True)"]
    mine = plan(RunRequest(methods=["knn"], benchmark=str(spec), smoke=True, overrides={"knn": {"k": "7"}}))
    assert mine.methods[0].config.k == 7 and mine.labels == ["knn(k=7,smoke=True)"]
