import json
import socket

import pytest
import torch

from harness.errors import HarnessError
from harness.plan import RunRequest, plan
from harness.records.provenance import apply_run_settings, differences, environment, run_settings
from harness.runner import execute
from tests.regress_helpers import TINY_PRESET, write_tiny_spec


def test_two_fresh_runs_with_the_same_threads_are_bit_identical_and_record_their_environment(tmp_path):
    spec = write_tiny_spec(tmp_path)
    threads = torch.get_num_threads()
    records = []
    for run in ("a", "b"):
        request = RunRequest(methods=["msp", "knn"], benchmark=str(spec), preset=TINY_PRESET, threads=1,
                             out_dir=tmp_path / run / "out", cache_dir=tmp_path / run / "cache")
        records.append(execute(plan(request)))
    assert torch.get_num_threads() == threads  # restored after the run
    first, second = records
    for a, b in zip(first, second, strict=True):
        assert (a.metrics, a.average, a.id_accuracy) == (b.metrics, b.average, b.id_accuracy)  # exact floats
        assert a.environment["torch_threads"] == 1 and a.environment["device"] == "cpu"
        assert a.environment["cpu"] and a.environment["deterministic"] is False and "gpu" in a.environment
    stored = json.loads(first[0].path(tmp_path / "a" / "out").read_text())
    assert stored["environment"]["torch_threads"] == 1
    assert socket.gethostname() not in json.dumps(stored)  # no personal data


def test_thread_count_is_applied_and_a_difference_is_named():
    with run_settings(2, deterministic=False):
        assert environment(torch.device("cpu"))["torch_threads"] == 2
    assert differences({"torch_threads": 1, "torch": "2.15.0"}, {"torch_threads": 2, "torch": "2.15.0"}) == [
        "torch_threads: 1 -> 2"]


def test_bad_thread_count_is_one_line_error():
    with pytest.raises(HarnessError, match="--threads 0 must be >= 1"):
        apply_run_settings(0, deterministic=False)


def test_leaderboard_marks_a_row_averaging_records_of_different_code_or_environments():
    from dataclasses import replace

    from harness.paths import RESULTS_DIR
    from harness.records.leaderboard import benchmark_markdown
    from harness.records.results import load_records

    records = [r for r in load_records(RESULTS_DIR, "mnist5k") if r.method in ("knn", "msp")]
    mixed = [replace(r, code_version="abc123", environment={**r.environment, "torch_threads": 4})
             if r.method == "knn" and r.seed == 0 else r for r in records]
    board = benchmark_markdown(mixed, "mnist5k")
    assert "| knn [^1]" in board and "| msp [^" not in board and "| msp " in board
    note = next(line for line in board.splitlines() if line.startswith("[^1]:"))
    assert "seed 0: code_version abc123, torch_threads 4" in note and "seeds 1,2,3,4: code_version" in note
    assert "[^" not in benchmark_markdown(records, "mnist5k")


def test_deterministic_flag_switches_torch_to_deterministic_algorithms_for_the_run_and_is_recorded():
    before = torch.are_deterministic_algorithms_enabled()
    with run_settings(None, deterministic=True):
        env = environment(torch.device("cpu"))
        assert env["deterministic"] is True and env["cudnn_deterministic"] is True and env["cudnn_benchmark"] is False
    assert torch.are_deterministic_algorithms_enabled() == before
