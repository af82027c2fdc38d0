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


def make_plugin(root: Path, name: str, groups: tuple[str, ...] = ("oodbench.methods",)) -> Path:
    """An installed-looking distribution: a module plus a dist-info with its entry point in each of `groups`."""
    module = f"{name}_plugin"  # distinct per test: Python caches imported modules by name
    (root / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(f"[{group}]\n{name} = {module}:MaxLogit\n" for group in groups))
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


def test_plugins_under_the_deprecated_group_are_found_with_one_warning_each(tmp_path, monkeypatch, capsys):
    from harness import registry

    make_plugin(tmp_path, "newgroup")
    make_plugin(tmp_path, "oldgroup", groups=("harness.methods",))
    make_plugin(tmp_path, "bothgroups", groups=("harness.methods", "oodbench.methods"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "WARNED", set())
    found = discover()
    assert {"newgroup", "oldgroup", "bothgroups"} <= set(found)
    assert found["oldgroup"].distribution == "oldgroup_plugin"
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["warning: plugin oldgroup (oldgroup_plugin) registers under the deprecated entry-point group "
                     "'harness.methods'; rename it to [project.entry-points.\"oodbench.methods\"] in its "
                     "pyproject.toml"]
    assert "oldgroup" in discover() and capsys.readouterr().err == ""  # once per process


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


def test_protocol_reference_sets_departures_and_fields_still_override():
    from dataclasses import dataclass

    from harness.config import Protocol
    from harness.contract import BaselineClassifierMethod, MethodInfo
    from harness.registry import configure

    @dataclass(frozen=True)
    class ToyConfig:
        protocol: Protocol = "paper"
        sigma: float = 0.07
        k: int = 10

    class Toy(BaselineClassifierMethod[ToyConfig]):
        info = MethodInfo("toy", "-", "post-hoc")
        Config = ToyConfig
        benchmark_defaults = {"mnist5k": {"k": 5}}
        reference_settings = {"*": {"sigma": 0.5}, "cifar100": {"k": 300}}

        def score_outputs(self, outputs):
            return outputs["logits"].max(axis=1)

    assert method_config(Toy, "mnist5k", {}) == ToyConfig("paper", 0.07, 5)
    assert method_config(Toy, "mnist5k", {"protocol": "reference"}) == ToyConfig("reference", 0.5, 5)
    assert method_config(Toy, "cifar100", {"protocol": "reference"}) == ToyConfig("reference", 0.5, 300)
    assert method_config(Toy, "cifar100", {"protocol": "reference", "sigma": "0.2"}).sigma == 0.2
    reference = method_config(Toy, "cifar100", {"protocol": "reference"})
    assert configure(Toy, "cifar100", {"protocol": "reference"}) == (reference, reference)
    assert configure(Toy, "cifar100", {"protocol": "reference", "k": "7"})[1] == reference
    with pytest.raises(HarnessError, match="toy.protocol='code' is not allowed"):
        method_config(Toy, "mnist5k", {"protocol": "code"})


def test_every_reference_setting_names_a_field_of_its_method():
    from harness.config import config_fields

    for entry in discover().values():
        fields = {f.name for f in config_fields(entry.cls.Config)}
        for benchmark, settings in entry.cls.reference_settings.items():
            assert "protocol" in fields, f"{entry.name} has reference_settings but no protocol field"
            unknown = set(settings) - fields
            assert not unknown, f"{entry.name}.reference_settings[{benchmark!r}] names unknown fields {unknown}"


BROKEN_PLUGINS = {
    "shadowed": ("raise ImportError('a folder shadows this module')\n", "failed to import (ImportError: a folder"),
    "notdata": ("from harness.contract import BaselineClassifierMethod, MethodInfo\n\n\nclass NotData:\n    pass\n\n\n"
                "class Bad(BaselineClassifierMethod):\n    info = MethodInfo('notdata', 'x', 'post-hoc')\n"
                "    Config = NotData\n\n    def score_outputs(self, outputs):\n"
                "        return outputs['logits'][:, 0]\n",
                "Bad.Config must be a dataclass"),
    "oddkind": ("from dataclasses import dataclass\n\n"
                "from harness.contract import BaselineClassifierMethod, MethodInfo\n\n\n"
                "@dataclass\nclass C:\n    pass\n\n\nclass Bad(BaselineClassifierMethod):\n"
                "    info = MethodInfo('oddkind', 'x', 'posthoc')\n    Config = C\n\n"
                "    def score_outputs(self, outputs):\n        return outputs['logits'][:, 0]\n",
                "kind 'posthoc' of method 'oddkind' is not one of post-hoc, feature-synthesis"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_PLUGINS))
def test_a_broken_plugin_is_skipped_with_one_warning_and_stops_only_runs_that_name_it(name, tmp_path, monkeypatch,
                                                                                      capsys):
    from harness import registry

    source, message = BROKEN_PLUGINS[name]
    module = f"{name}_plugin"
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    target = f"{module}:Bad" if name != "shadowed" else module
    (dist / "entry_points.txt").write_text(f"[oodbench.methods]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BROKEN", {})
    found = discover()
    assert name not in found and {"msp", "energy"} <= set(found)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: plugin skipped: ") and message in warning and warning.count("\n") == 1
    discover()
    assert capsys.readouterr().err == ""  # once per process
    with pytest.raises(HarnessError, match=f"method '{name}' cannot run: .*{re.escape(message)}"):
        resolve_methods(["msp", name], found)
    assert resolve_methods(["msp"], found)


def test_list_shows_the_classifier_settings(capsys):
    from harness.cli import main

    assert main(["list"]) == 0
    shown = capsys.readouterr().out
    assert "classifier.epochs: int = 100" in shown and "classifier.eval_batch_size: int = 500" in shown


SCORES = {
    "wrong shape": ("return np.zeros((len(outputs['logits']), 10))", "returned shape (200, 10) for 200 items"),
    "nan": ("s = outputs['logits'].max(1).astype(float); s[3] = np.nan; return s",
            "returned 1 non-finite scores (first at item 3: nan)"),
    "strings": ("return np.array(['a'] * len(outputs['logits']))", "returned something that is not numbers"),
}


@pytest.mark.parametrize("case", sorted(SCORES))
def test_a_score_breaking_the_contract_is_one_line_naming_method_and_set(case, tmp_path, monkeypatch, capsys,
                                                                         session_cache):
    from harness import registry
    from harness.cli import main
    from tests.regress_helpers import TINY_PRESET, write_tiny_spec

    body, message = SCORES[case]
    module = f"contract_{case.replace(' ', '_')}_plugin"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f'''
        from dataclasses import dataclass

        import numpy as np

        from harness.contract import BaselineClassifierMethod, MethodInfo


        @dataclass(frozen=True)
        class C:
            pass


        class Bad(BaselineClassifierMethod[C]):
            info = MethodInfo("badscore", "none", "post-hoc")
            Config = C

            def score_outputs(self, outputs):
                {body}
        '''))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[oodbench.methods]\nbadscore = {module}:Bad\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "BROKEN", {})
    spec = write_tiny_spec(tmp_path, epochs=1)
    code = main(["run", "--methods", "badscore", "--benchmark", str(spec), "--preset", TINY_PRESET, "--out",
                 str(tmp_path / "out"), "--cache-dir", str(session_cache.root)])
    err = capsys.readouterr().err
    line = err[err.find("error: "):]  # after the training's progress bars
    assert code == 2 and line.count("\n") == 1 and "Traceback" not in err, err
    assert line.startswith("error: badscore.score on set 'ID' ") and message in line, err
    assert not list((tmp_path / "out").rglob("*.json"))


def test_the_readme_plugin_example_installs_and_is_listed(tmp_path):
    """The README's worked example, its module and pyproject exactly as printed, installs with pip and registers."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Adding a method", 1)[1]
    module = re.search(r"```python\n# maxlogit_plugin.py\n(.*?)```", section, re.S).group(1)
    pyproject = re.search(r"```toml\n# your package's pyproject.toml\n(.*?)```", section, re.S).group(1)
    package = tmp_path / "maxlogit-plugin"
    package.mkdir()
    (package / "maxlogit_plugin.py").write_text(module)
    (package / "pyproject.toml").write_text(pyproject)
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(package)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    listing = subprocess.run([sys.executable, "-m", "harness", "list"], env=env, capture_output=True, text=True)
    assert listing.returncode == 0 and "warning" not in listing.stderr, listing.stderr
    assert "maxlogit  [post-hoc]" in listing.stdout and "(maxlogit-plugin)" in listing.stdout
    assert "maxlogit.scale: float = 1.0" in listing.stdout
