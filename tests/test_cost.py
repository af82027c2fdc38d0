"""A run's cost (`harness.records.cost`): per-stage peak resident memory is the stage's own peak (the high-water
mark is reset between stages), with the process-lifetime fallback marked; the diffusion stages' images are counted
with how many this run computed, so a cached rerun reports the same images and zero computed."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest
import torch

import harness.records.cost as cost
from harness.cache import Cache
from harness.distributed import ShardedStage
from harness.records.cost import CostMeter

CPU = torch.device("cpu")


def _touch(mib: int) -> int:
    """Allocate and write `mib` MiB, so they become resident; returns a checksum so the work is not skipped."""
    block = np.ones(mib * 1024 * 1024, dtype=np.uint8)
    return int(block[::4096].sum())


@pytest.mark.skipif(not os.access(cost.CLEAR_REFS, os.W_OK), reason="no writable /proc/self/clear_refs (not Linux)")
def test_each_stage_reports_its_own_resident_peak(tmp_path):
    meter = CostMeter(CPU, Cache(tmp_path))
    with meter.stage("train"):
        _touch(200)
    with meter.stage("score"):
        pass
    train, score = meter.stages["train"], meter.stages["score"]
    assert train["peak_rss_scope"] == score["peak_rss_scope"] == "stage"
    assert train["peak_rss_mb"] - score["peak_rss_mb"] > 150  # the 200 MiB block is freed before "score" starts
    assert train["peak_cuda_mb"] is None and meter.seconds() == {"train": train["seconds"], "score": score["seconds"]}


def test_a_refused_reset_records_the_process_lifetime_peak(tmp_path, monkeypatch):
    monkeypatch.setattr(cost, "CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    meter = CostMeter(CPU, Cache(tmp_path))
    with meter.stage("synthesize"):
        pass
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert meter.stages["synthesize"]["peak_rss_scope"] == "process"
    assert meter.stages["synthesize"]["peak_rss_mb"] == pytest.approx(lifetime, abs=0.1)


def test_counted_items_and_a_cached_rerun_that_computes_none(tmp_path):
    cache = Cache(tmp_path)
    calls = []

    def compute(batch: list[int]) -> list[torch.Tensor]:
        calls.append(len(batch))
        return [torch.tensor(i) for i in batch]

    def synthesize() -> dict:
        meter = CostMeter(CPU, cache)
        with meter.stage("synthesize"):
            ShardedStage(cache, "generation", "k", tally="images_generated").run_batches(
                {f"{i}": i for i in range(5)}, compute, 2)
            ShardedStage(cache, "other", "k").run_batches({"a": 0}, compute, 1)  # no tally: not counted
        return meter.as_record()

    first, rerun = synthesize(), synthesize()
    assert calls == [2, 2, 1, 1]  # the rerun computed nothing
    assert first["images_generated"] == rerun["images_generated"] == 5 and first["images_embedded"] is None
    assert first["computed"] == {"images_generated": 5, "images_embedded": None}
    assert rerun["computed"] == {"images_generated": 0, "images_embedded": None}
    assert set(first["stages"]) == {"synthesize"}
    later = CostMeter(CPU, cache.scoped("plugin"))  # a scoped view shares the tallies; earlier ones are not its run's
    ShardedStage(cache.scoped("plugin"), "generation", "k", tally="images_generated").run_batches({"x": 1}, compute, 1)
    assert later.as_record()["images_generated"] == 1 and later.as_record()["computed"]["images_generated"] == 1
