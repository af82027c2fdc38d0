"""What a run cost, per stage: wall-clock seconds, peak resident memory, peak CUDA memory, and the images the
diffusion stages generated or embedded (`CostMeter`, stored as a record's `cost`).

Peak resident memory per stage is Linux's high-water mark (VmHWM) reset before the stage by writing "5" to
/proc/self/clear_refs; where that is refused or missing, the process-lifetime peak (`getrusage` ru_maxrss) is
recorded instead, marked `"peak_rss_scope": "process"`. Memory of worker processes is not included.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.cache import Cache

MIB = 1024 * 1024
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
COUNTED = ("images_generated", "images_embedded")  # the `ItemTally` names a run's cost reports

RssScope = Literal["stage", "process"]


def reset_peak_rss() -> RssScope:
    """Reset the process's resident-memory high-water mark; "process" when the kernel refuses it (the peak read
    after is then the process-lifetime one)."""
    try:
        with CLEAR_REFS.open("w") as handle:
            handle.write("5")
    except OSError:
        return "process"
    return "stage"


def peak_rss_mib(scope: RssScope) -> float:
    """The resident-memory peak since `reset_peak_rss` (scope "stage": VmHWM) or over the process's life."""
    if scope == "stage":
        found = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1)) * 1024 / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB


@dataclass
class CostMeter:
    """Measures the stages of one (method, seed) run on `device`; `cache` is the run's cache, whose `tallies`
    the diffusion stages append to while the meter is live."""

    device: torch.device
    cache: Cache
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_tally: int = field(init=False)  # the tallies logged before this run are not its own

    def __post_init__(self) -> None:
        self.first_tally = len(self.cache.tallies)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage `name` (seconds, peak RSS, peak CUDA memory)."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        scope = reset_peak_rss()
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.stages[name] = {
            "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mib(scope), 1), "peak_rss_scope": scope,
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated(self.device) / MIB, 1) if cuda else None}

    def seconds(self) -> dict[str, float]:
        return {name: stage["seconds"] for name, stage in self.stages.items()}

    def as_record(self) -> dict[str, Any]:
        """{"stages": per stage {seconds, peak_rss_mb, peak_rss_scope, peak_cuda_mb}, "images_generated" and
        "images_embedded": the images the run's stages returned (None when no stage of that kind ran),
        "computed": how many of those this process computed rather than read from the cache}. MB are MiB."""
        tallies = self.cache.tallies[self.first_tally:]
        ran = {name: [t for t in tallies if t.name == name] for name in COUNTED}
        return {"stages": self.stages,
                **{name: sum(t.items for t in found) if found else None for name, found in ran.items()},
                "computed": {name: sum(t.computed for t in found) if found else None for name, found in ran.items()}}
