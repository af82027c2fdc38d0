"""Portable kernels (harness.numerics): what a record says about the kernels that made it, how regress compares those
facts, and how they and a plugin's code key the cache."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.cache import Cache
from harness.cli import main
from harness.errors import HarnessError
from harness.numerics import MODE_ENV, PORTABLE, check_mode, cpu_identity, kernel_facts, unsupported
from harness.plan import RunRequest, plan
from harness.records.regression import build_expectations, compare, stored_environment
from harness.records.results import RunRecord
from harness.registry import discover
from harness.runner import execute
from tests.regress_helpers import TINY_PRESET, write_tiny_spec

REPO = Path(__file__).resolve().parent.parent
KERNELS = {"mode": "avx2", "aten": "AVX2", "onednn": "Intel AVX2", "onednn_float32": True, "mkl_cbwr": "COMPATIBLE",
           "blas": {"torch": "mkl", "numpy:openblas": "Haswell"}, "faiss": "AVX2"}
INTEL = {"vendor": "GenuineIntel", "family": "6", "model": "207", "flags": ["avx2", "avx512f"]}
AMD = {"vendor": "AuthenticAMD", "family": "25", "model": "17", "flags": ["avx2"]}


def record(seed=0, auroc=90.0, kernels=KERNELS, cpu=INTEL):
    return RunRecord(benchmark="b", method="m", label="m", seed=seed, paper="", kind="post-hoc", config={},
                     classifier_config=None, fpr_positive="id", metrics={"far": {"fpr95": 0.1, "auroc": auroc / 100}},
                     average={"fpr95": 0.1, "auroc": auroc / 100}, id_accuracy=None, eval_sizes={}, stage_seconds={},
                     device="cpu", code_version="abc", libraries={"torch": "2"},
                     environment={"torch_threads": 1, "device": "cpu", "cpu": cpu["vendor"], "cpu_id": cpu,
                                  "kernels": kernels})


def test_the_suite_runs_with_the_portable_kernels_and_records_them():
    facts = kernel_facts()
    assert facts["mode"] == os.environ[MODE_ENV]  # the mode conftest chose is the one records name
    if os.environ[MODE_ENV] == "avx2":
        assert facts["aten"] == "AVX2" and facts["mkl_cbwr"] == "COMPATIBLE" and facts["faiss"] == "AVX2"
        assert "AVX2" in facts["onednn"] and set(facts["blas"].values()) <= {"mkl", "Haswell"}
    assert torch.backends.cpu.get_cpu_capability() == facts["aten"]


def test_two_environments_that_differ_only_in_the_instruction_set_are_not_the_same():
    doc = build_expectations("b", [record()])
    other = record(auroc=90.004, kernels={**KERNELS, "aten": "AVX512"})
    assert stored_environment(doc["methods"]["m"], other) is None
    [per_set, *_] = compare(doc, [other])
    assert per_set.tolerance > 0.01 and "environment" not in per_set.basis


def test_portable_kernels_make_the_cpu_irrelevant_native_kernels_do_not():
    doc = build_expectations("b", [record()])
    assert stored_environment(doc["methods"]["m"], record(cpu=AMD)) == ("stored", None)
    native = {**KERNELS, "mode": "native"}
    doc = build_expectations("b", [record(kernels=native)])
    assert stored_environment(doc["methods"]["m"], record(kernels=native, cpu=AMD)) is None
    assert stored_environment(doc["methods"]["m"], record(kernels=native)) == ("stored", None)


def test_a_reproduction_is_held_exactly_and_widens_no_tolerance():
    from harness.records.regression import add_drift, unmeasured_environment_checks

    doc = build_expectations("b", [record(seed=s, auroc=90 + s, kernels={**KERNELS, "mode": "native"})
                                   for s in range(3)])
    before = [c.tolerance for c in unmeasured_environment_checks(doc)]
    added = add_drift(doc, [record(seed=s, auroc=89 + s) for s in range(3)], into="reproductions")
    assert added == ["+ m: reproduction of kernels.mode: native -> avx2"]
    assert [c.tolerance for c in unmeasured_environment_checks(doc)] == before
    checks = compare(doc, [record(seed=1, auroc=90.0)])
    assert all(c.passed and c.tolerance == 0.01 for c in checks)
    assert not compare(doc, [record(seed=1, auroc=90.05)])[0].passed


@pytest.mark.parametrize("argv, env, message", [
    (["--kernels", "avx3"], {}, "error: --kernels 'avx3' is not a kernel mode: choose one of avx2, avx512, native"),
    ([], {MODE_ENV: "sse9"}, "error: OODBENCH_KERNELS 'sse9' is not a kernel mode"),
])
def test_an_unknown_kernel_mode_is_one_line_and_exit_2(tmp_path, argv, env, message):
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--methods", "msp", "--out", str(tmp_path / "o"),
                          *argv], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith(message) and len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    with pytest.raises(HarnessError, match="not a kernel mode"):
        check_mode("avx3")


def test_a_portable_mode_the_cpu_cannot_run_is_refused_with_the_reason():
    assert unsupported("avx2", {**cpu_identity(), "flags": ["sse4_2"]}) == "this CPU lacks avx2, fma"
    assert unsupported("native", {}) is None


def test_kernels_already_loaded_differently_is_one_line_error(monkeypatch, capsys):
    if os.environ.get(MODE_ENV) != "avx2":
        pytest.skip("the suite runs with native kernels")
    monkeypatch.setenv(MODE_ENV, "avx2")
    for name in PORTABLE["avx512"]:
        monkeypatch.setenv(name, os.environ.get(name, ""))
    if "avx512f" not in cpu_identity().get("flags", []):
        pytest.skip("no AVX-512 on this CPU")
    assert main(["run", "--methods", "msp", "--kernels", "avx512"]) == 2
    assert "must be chosen before torch loads, but this process already computes with avx2" in \
        capsys.readouterr().err


def test_a_rerun_under_another_thread_count_misses_every_numeric_stage(tmp_path):
    spec = write_tiny_spec(tmp_path, epochs=1)
    cache = Cache(tmp_path / "cache")
    for threads in (1, 2, 1):
        execute(plan(RunRequest(methods=["energy"], benchmark=str(spec), preset=TINY_PRESET, threads=threads,
                           out_dir=tmp_path / "out")), cache=cache)
    assert cache.misses("classifier") == 2 and cache.hits("classifier") == 1
    assert cache.misses("benchmark-data") == 2


PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from harness.config import content_hash
from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class ShiftConfig:
    pass


class Shift(BaselineClassifierMethod[ShiftConfig]):
    info = MethodInfo("shiftplug", "none", "post-hoc", "max logit minus a cached training statistic")
    Config = ShiftConfig

    def fit(self, train_outputs):
        key = content_hash(self.context.seed)
        self.shift = self.context.cache.get_or_compute("shift-stat", key,
                                                       lambda: float(train_outputs["logits"].max(1).mean()))

    def score_outputs(self, outputs):
        return outputs["logits"].max(axis=1) - {factor} * self.shift
'''


def test_a_plugin_source_change_without_a_version_change_misses_its_stages(tmp_path, monkeypatch):
    module = tmp_path / "plugins" / "shiftplug_plugin.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(PLUGIN.format(factor=1.0)))
    dist = module.parent / "shiftplug_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shiftplug_plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[oodbench.methods]\nshiftplug = shiftplug_plugin:Shift\n")
    monkeypatch.syspath_prepend(str(module.parent))
    spec = write_tiny_spec(tmp_path, epochs=1)
    cache = Cache(tmp_path / "cache")
    request = RunRequest(methods=["shiftplug"], benchmark=str(spec), preset=TINY_PRESET, threads=1,
                         out_dir=tmp_path / "out")
    [first] = execute(plan(request), cache=cache)
    assert first.plugin["distribution"] == "shiftplug_plugin" and first.plugin["version"] == "0.3"
    execute(plan(request), cache=cache)
    assert (cache.misses("shift-stat"), cache.hits("shift-stat")) == (1, 1)
    module.write_text(textwrap.dedent(PLUGIN.format(factor=0.0)))  # the version stays 0.3
    [changed] = execute(plan(dataclasses.replace(request)), cache=cache)
    assert (cache.misses("shift-stat"), cache.hits("classifier")) == (2, 2)  # the shared classifier is reused
    assert changed.plugin["source_sha256"] != first.plugin["source_sha256"]
    assert discover()["shiftplug"].cache_scope == (changed.plugin,)
    assert discover()["energy"].cache_scope == ()  # built-ins are keyed by their version constants
