import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.registry import discover, method_config, resolve_methods

REPO = Path(__file__).resolve().parent.parent

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from harness.contract import BaselineClassifierMethod, MethodInfo


@dataclass(frozen=True)
class MaxLogitConfig:
    scale: float = 1.0


class MaxLogit(BaselineClassifierMethod[MaxLogitConfig]):
    info = MethodInfo("{name}", "Hendrycks et al., ICML 2022", "post-hoc", "maximum logit (out-of-tree test plugin)")
    Config = MaxLogitConfig

    def score_outputs(self, outputs):
        return self.config.scale * outputs["logits"].max(axis=1)
'''


def make_plugin(root: Path, name: str) -> Path:
    """An installed-looking distribution: a module plus a dist-info with a `harness.methods` entry point."""
    module = f"{name}_plugin"  # distinct per test: Python caches imported modules by name
    (root / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[harness.methods]\n{name} = {module}:MaxLogit\n")
    return root


def test_builtin_methods_are_found():
    registry = discover()
    assert {"msp", "energy", "knn", "vim", "react"} <= set(registry)
    assert registry["knn"].source == "methods.knn"


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path, "maxlogit")))
    registry = discover()
    assert "maxlogit" in registry and "entry point maxlogit" in registry["maxlogit"].source
    assert method_config(registry["maxlogit"].cls, "mnist5k", {"scale": "2"}).scale == 2.0


def test_duplicate_name_names_both_sources(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin(tmp_path, "msp")))
    with pytest.raises(HarnessError, match=r"'msp' is defined twice: by methods.msp and by entry point msp"):
        discover()


def test_unknown_and_empty_method_lists():
    registry = discover()
    listed = re.escape(", ".join(sorted(registry)))
    with pytest.raises(HarnessError, match=f"unknown method 'nope'; available methods: {listed}$"):
        resolve_methods(["nope"], registry)
    with pytest.raises(HarnessError, match="no methods given"):
        resolve_methods([], registry)


@pytest.mark.slow
def test_plugin_appears_in_list_and_runs(tmp_path):
    make_plugin(tmp_path, "maxlogit")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    listing = subprocess.run([sys.executable, "-m", "harness", "list"], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert "maxlogit  [post-hoc]" in listing and "maxlogit.scale: float = 1.0" in listing
    run = subprocess.run([sys.executable, "-m", "harness", "run", "--methods", "maxlogit", "--set",
                          "classifier.epochs=1", "--out", str(tmp_path / "out"), "--cache-dir",
                          str(tmp_path / "cache")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| maxlogit(classifier.epochs=1)" in run.stdout
    assert list((tmp_path / "out" / "records" / "mnist5k").glob("maxlogit*/seed0.json"))
