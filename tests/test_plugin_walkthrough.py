"""docs/plugins.md's two example plugins (examples/plugins/) as a plugin author meets them: the doc prints every file
of both packages in full, and the packages install into a fresh environment, show up in `list`, run on a tiny
benchmark, and write and hold their own expectations."""

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.regress_helpers import TINY_PRESET, write_tiny_spec

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "examples" / "plugins"
DOC = REPO / "docs" / "plugins.md"
# a fenced block whose first line is a comment naming an example file: the doc's copy of that file
FILE_BLOCK = re.compile(r"^```\w+\n# (examples/plugins/\S+)\n(.*?)^```$", re.S | re.M)


def example_sources() -> list[str]:
    """The example packages' .py and .toml files, outside the build/ folder a local pip install leaves."""
    return sorted(str(p.relative_to(REPO)) for p in PLUGINS.rglob("*")
                  if p.suffix in (".py", ".toml") and "build" not in p.relative_to(PLUGINS).parts)


def test_the_doc_prints_every_example_file_as_it_is():
    blocks = FILE_BLOCK.findall(DOC.read_text())
    printed = dict(blocks)
    assert len(printed) == len(blocks), "a file is printed twice in docs/plugins.md"
    assert sorted(printed) == example_sources()
    for path, text in printed.items():
        assert text == (REPO / path).read_text(), f"docs/plugins.md's copy of {path} differs from the file"


def harness(venv: Path, *args: str, env: dict[str, str]) -> str:
    """`python -m harness ARGS` in `venv`; its stdout, or a failure showing its stderr's end."""
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "harness", *args], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"harness {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv that sees this environment's site directories (torch, the harness, pip, setuptools) through a
    .pth file, with both example packages pip-installed from copies (a build writes build/ and *.egg-info next to
    the sources). `venv --system-site-packages` would not do: run from a venv, it exposes the base interpreter's
    packages, not this environment's."""
    root = tmp_path_factory.mktemp("walkthrough")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (venv_site / "this-environment.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))
    packages = shutil.copytree(PLUGINS, root / "packages",
                               ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                              "--no-build-isolation", "--no-index", str(packages / "maxlogit"),
                              str(packages / "outlier_exposure")], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "OODBENCH_CACHE": str(root / "cache")}
    return {"root": root, "venv": venv, "packages": packages, "env": env}


def test_both_plugins_are_listed_with_their_settings(installed):
    listing = harness(installed["venv"], "list", env=installed["env"])
    assert "maxlogit  [post-hoc]  Hendrycks et al., ICML 2022" in listing
    assert "(entry point maxlogit = oodbench_maxlogit:MaxLogit (oodbench-maxlogit))" in listing
    assert "oe  [pixel-synthesis]  Hendrycks et al., ICLR 2019" in listing
    assert "oe.synthesis: 'pixel-shuffle' | 'uniform-noise' = 'pixel-shuffle'" in listing
    assert "    on mnist5k: count=4000" in listing


def test_both_plugins_run_and_outlier_exposure_acts(installed):
    root = installed["root"]
    spec = write_tiny_spec(root, epochs=10)
    harness(installed["venv"], "run", "--methods", "maxlogit,oe", "--benchmark", str(spec), "--preset", TINY_PRESET,
            "--threads", "1", "--cache-dir", str(root / "cache"), "--out", str(root / "runs"), env=installed["env"])
    records = {}
    for path in (root / "runs" / "records" / "tiny5k").glob("*/seed0.json"):
        record = json.loads(path.read_text())
        records[record["method"]] = record
    assert sorted(records) == ["maxlogit", "oe"]
    for record in records.values():
        assert set(record["metrics"]) == {"glyphs", "textures", "photos", "faces", "noise"}
        assert 0 <= record["average"]["auroc"] <= 1 and 0 <= record["average"]["fpr95"] <= 1
        assert record["id_accuracy"] > 0.1  # above chance on 10 classes
    assert records["maxlogit"]["plugin"]["distribution"] == "oodbench-maxlogit"
    assert records["oe"]["plugin"]["distribution"] == "oodbench-outlier-exposure"
    details = records["oe"]["details"]
    assert details["synthesis"] == "pixel-shuffle" and details["outliers"] == 5000
    assert len(details["uniform_ce_per_epoch"]) == 10
    msp = details["outlier_mean_max_softmax"]
    assert msp["oe"] < msp["baseline"], msp  # the OE classifier is less confident on the outliers it was shown
    assert any(f.endswith("seed0_outliers.png") for f in records["oe"]["figures"])


def test_a_plugin_writes_and_holds_its_own_expectations(installed):
    root, tests = installed["root"], installed["packages"] / "maxlogit" / "tests"
    harness(installed["venv"], "regress", "--methods", "maxlogit", "--benchmark", "mnist5k", "--preset", "quick",
            "--threads", "1", "--expectations", str(tests / "expectations.json"), "--update", "--cache-dir",
            str(root / "cache"), "--out", str(root / "regress"), env=installed["env"])
    assert "maxlogit(preset=quick)" in json.loads((tests / "expectations.json").read_text())["methods"]
    held = subprocess.run([str(installed["venv"] / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tests)], cwd=tests.parent, env=installed["env"], capture_output=True, text=True)
    assert held.returncode == 0 and "1 passed" in held.stdout, held.stdout[-3000:] + held.stderr[-2000:]
