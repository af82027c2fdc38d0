"""Every training method resumes exactly: a run stopped right after an epoch checkpoint (as `kill -9` would stop it,
before anything else is stored) and rerun on the same cache ends with the metrics of an uninterrupted run from an
empty cache. The stop is injected where checkpoints are written, so it lands at the same point every time; the
regularisers' nested generators (VOS's virtual-outlier sampler, the outlier-image sources of Dream-OOD and NCIS)
and the flows' batch generators are what a checkpoint must carry for this to hold."""

from pathlib import Path

import pytest

import harness.classifier.training
from harness.cache import Cache
from harness.config import parse_set_options
from harness.plan import RunRequest, plan
from harness.registry import discover, smoke_settings
from harness.runner import execute
from tests.regress_helpers import TINY_PRESET, write_tiny_spec

REPO = Path(__file__).resolve().parent.parent


class Killed(BaseException):
    """The process dies: nothing catches it, nothing after it runs."""


def settings(method: str, extra: dict[str, str]) -> list[str]:
    values = {**smoke_settings(discover()[method].cls, "tiny5k"), **extra}
    return [f"{method}.{k}={'none' if v is None else v}" for k, v in values.items()]


# Tiny runs that still reach the part a checkpoint must carry: a regulariser active after the stop, full queues.
CASES = {
    "vos": settings("vos", {"queue_size": "8", "samples_per_class": "64", "start_epoch": "0"}),
    "npos": settings("npos", {"queue_size": "8", "k": "4", "boundary_count": "4", "candidates_per_point": "8",
                              "kept_per_point": "2", "test_k": "5", "start_epoch": "0"}),
    "flow": settings("flow", {"epochs": "3"}),
    "dream_ood": settings("dream_ood", {}),
    "ncis": settings("ncis", {}),
    "text_flow": settings("text_flow", {"epochs": "3"}),
}
# run by publish's slow checks; vos runs every time: its training draws from generators that a resume must restore
SLOW = {"npos", "flow", "dream_ood", "ncis", "text_flow"}
TEXT = {"text_flow"}  # on the embedded text benchmark's quick preset


def kill_after_first_checkpoint(monkeypatch) -> list[Path]:
    """Make the first epoch checkpoint written end the process, right after it is on disk."""
    written: list[Path] = []
    real = harness.classifier.training.write_entry

    def write(obj, path):  # every epoch checkpoint, a classifier's or a flow's, is written through here
        real(obj, path)
        if Path(path).parent.name == "checkpoints":
            written.append(Path(path))
            raise Killed

    monkeypatch.setattr(harness.classifier.training, "write_entry", write)
    return written


def run(method: str, spec: Path, cache: Cache, out: Path):
    benchmark, preset = ("movie_reviews", "quick") if method in TEXT else (str(spec), TINY_PRESET)
    request = RunRequest(methods=[method], benchmark=benchmark, preset=preset, threads=1, out_dir=out,
                         overrides=parse_set_options(CASES[method]))
    return execute(plan(request), cache=cache)


@pytest.mark.parametrize("method", [pytest.param(m, marks=[pytest.mark.slow, pytest.mark.heavy]) if m in SLOW else m
                                    for m in CASES])
def test_a_run_killed_after_an_epoch_checkpoint_resumes_to_the_uninterrupted_metrics(method, tmp_path, monkeypatch,
                                                                                     capsys):
    spec = write_tiny_spec(tmp_path, epochs=3)
    [whole] = run(method, spec, Cache(tmp_path / "whole"), tmp_path / "out-whole")
    cache = Cache(tmp_path / "killed")
    with monkeypatch.context() as patch:
        written = kill_after_first_checkpoint(patch)
        with pytest.raises(Killed):
            run(method, spec, cache, tmp_path / "out-killed")
    assert written and written[0].exists()
    capsys.readouterr()
    [resumed] = run(method, spec, cache, tmp_path / "out-resumed")
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err
    assert (resumed.metrics, resumed.average, resumed.id_accuracy) == (whole.metrics, whole.average, whole.id_accuracy)
    assert not written[0].exists()  # the finished result is stored; its checkpoint is gone
