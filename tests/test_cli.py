import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError, run_command

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def bad_input_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    from PIL import Image

    Image.new("L", (40, 40), 128).save(broken / "good.png")
    (broken / "bad.jpg").write_bytes(b"not a jpeg at all")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return [
        (["--methods", "nope"], "unknown method 'nope'; available methods:"),
        (["--methods", ""], "no methods given; pass --methods with one or more of:"),
        (["--methods", "msp", "--benchmark", "cifar999"], "unknown benchmark 'cifar999'; available: "),
        (["--methods", "knn", "--set", "knn.kk=3"], "unknown setting knn.kk; valid settings are: knn.k"),
        (["--methods", "knn", "--set", "knn.k=many"], "knn.k='many' is not an integer"),
        (["--methods", "knn", "--set", "vim.dim=3"], "--set vim.… names no method in this run"),
        (["--methods", "msp", "--ood", f"mine={tmp_path / 'missing'}"], "does not exist; pass an existing directory"),
        (["--methods", "msp", "--ood", f"mine={empty}"], "holds no images"),
        (["--methods", "msp", "--ood", f"mine={broken}"], f"cannot read image {broken / 'bad.jpg'}"),
        (["--methods", "msp", "--out", str(blocker / "sub")], "cannot write to"),
        (["--methods", "msp", "--seeds", "a,b"], "must be comma-separated integers"),
    ]


def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, capsys, session_cache):
    for args, message in bad_input_cases(tmp_path):
        out = tmp_path / "out"
        full = ["run", *args] + ([] if "--out" in args else ["--out", str(out)])
        full += ["--cache-dir", str(session_cache.root), "--set", "classifier.epochs=1"] \
            if "--set" not in args else ["--cache-dir", str(session_cache.root)]
        code, stdout, stderr = run_cli(capsys, *full)
        assert code == 2, (args, stderr)
        assert stderr.startswith("error: ") and message in stderr, (args, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
        assert not out.exists(), f"{args} wrote {list(out.rglob('*'))}"


def test_errors_exit_nonzero_without_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--methods", "nope"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown method 'nope'")
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_list_shows_kind_paper_and_defaults(capsys):
    code, stdout, _ = run_cli(capsys, "list")
    assert code == 0
    assert "knn  [post-hoc]  Sun et al., ICML 2022" in stdout
    assert "knn.k: int = 50" in stdout and "on cifar100: k=200" in stdout


def test_leaderboard_without_records_is_a_clear_error(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "leaderboard", "--out", str(tmp_path))
    assert code == 2 and "no records under" in stderr


def test_run_command_maps_errors_and_interrupts_to_one_line_and_an_exit_code(capsys):
    def interrupted():
        raise KeyboardInterrupt

    def refused():
        raise HarnessError("bad input; do this instead")

    assert run_command(lambda: None) == 0 and run_command(lambda: 1) == 1
    assert run_command(refused) == 2 and capsys.readouterr().err == "error: bad input; do this instead\n"
    assert run_command(interrupted, "interrupted; rerun to resume") == 130
    assert capsys.readouterr().err == "error: interrupted; rerun to resume\n"


def test_run_writes_scratch_runs_by_default_and_publish_writes_results():
    from harness.cli import build_parser

    assert build_parser().parse_args(["run", "--methods", "msp"]).out == Path("runs")
    assert build_parser().parse_args(["publish"]).out == Path("results")
    assert "/runs/" in (REPO / ".gitignore").read_text().splitlines()
