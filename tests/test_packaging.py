"""The wheel works outside the checkout: it carries the benchmark specs, the tiny SD model and the expectations
(harness/_shipped/), and the layering holds (no import cycle between any two modules)."""

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The package built as a wheel and installed non-editable (no deps) into a scratch folder."""
    scratch = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(scratch / "dist"),
                    str(REPO)], check=True, capture_output=True)
    wheel, = (scratch / "dist").glob("oodbench-*.whl")
    target = scratch / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    return target


def run_outside(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OODBENCH_HOME"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_lists_and_runs_outside_the_checkout(installed_wheel, tmp_path):
    where = run_outside(installed_wheel, tmp_path, "-c", "import harness, harness.paths as p; "
                        "print(harness.__file__); print(p.DATA_HOME)")
    module_file, data_home = where.stdout.split()
    assert module_file.startswith(str(installed_wheel)) and data_home.endswith("_shipped"), where.stdout
    listing = run_outside(installed_wheel, tmp_path, "-m", "harness", "list")
    assert listing.returncode == 0, listing.stderr
    assert "ncis" in listing.stdout and "dream_ood" in listing.stdout
    run = run_outside(installed_wheel, tmp_path, "-m", "harness", "run", "--methods", "msp", "--benchmark", "mnist5k",
                      "--preset", "quick", "--cache-dir", str(tmp_path / "cache"), "--threads", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "runs" / "records" / "mnist5k").is_dir()
    assert "msp(preset=quick)" in run.stdout


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("harness", "methods")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
