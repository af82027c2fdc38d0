"""`harness.evaluate`: your own classifier on a benchmark in one call, through the very plan and execute a
`python -m harness run --model ...` takes, so its numbers are the records' (docs/own_model.md).

    import timm, harness
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    print(harness.evaluate(model, benchmark="mnist5k", methods=["msp", "energy", "knn"], mean=[0.1307], std=[0.3081]))

The model's features are extracted once, cached by its weights' SHA-256, and shared by every post-hoc method.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from harness.classifier.external import ModelRequest
from harness.metrics import METRIC_NAMES
from harness.plan import RunRequest, plan
from harness.records.results import RunRecord
from harness.registry import discover
from harness.runner import execute

AVERAGE = "Average"


def results_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (method, seed, OOD set) and each (method, seed)'s `Average` row: the metrics as fractions, the ID
    accuracy and the run label."""
    rows = [{"method": r.method, "seed": r.seed, "set": name, **{m: metrics[m] for m in METRIC_NAMES},
             "id_accuracy": r.id_accuracy, "label": r.label}
            for r in records for name, metrics in [*r.metrics.items(), (AVERAGE, r.average)]]
    return pd.DataFrame(rows, columns=["method", "seed", "set", *METRIC_NAMES, "id_accuracy", "label"])


def evaluate(model: nn.Module | str, benchmark: str = "mnist5k", methods: Sequence[str] | None = None, *,
             checkpoint: str | Path | None = None, device: str = "auto", data_root: str | Path | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None, feature_layer: str | None = None,
             seeds: Sequence[int] = (0,), preset: str = "paper", out_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, save_scores: bool = False) -> pd.DataFrame:
    """Run post-hoc `methods` (default: every registered post-hoc method) on `model` (an `nn.Module`, or a
    `--model` SPEC: a timm name with `checkpoint`, a factory `package.module:function`, a TorchScript file) over
    `benchmark`; return `results_table` of the records.

    `mean`/`std`: the normalisation the model was trained with (default: timm's `pretrained_cfg`); `feature_layer`:
    the submodule whose output is the features (default: OpenOOD's or timm's convention); `out_dir`: where the
    records and leaderboard go (None: a temporary directory, removed after); `cache_dir`: the stage cache (None:
    $OODBENCH_CACHE or ~/.cache/oodbench); `save_scores`: write each run's per-sample scores next to its record
    (`run --save-scores`; keep them with an `out_dir`). Input problems raise `HarnessError` with a one-line message."""
    if methods is None:
        methods = sorted(name for name, entry in discover().items() if entry.cls.info.kind == "post-hoc")
    request = ModelRequest(model, Path(checkpoint) if checkpoint is not None else None, feature_layer,
                           tuple(mean) if mean is not None else None, tuple(std) if std is not None else None)
    with tempfile.TemporaryDirectory(prefix="oodbench-evaluate-") as scratch:
        planned = plan(RunRequest(methods=list(methods), benchmark=benchmark, seeds=list(seeds),
                                  out_dir=Path(out_dir if out_dir is not None else scratch),
                                  cache_dir=Path(cache_dir) if cache_dir is not None else None, device=device,
                                  data_root=Path(data_root) if data_root is not None else None, preset=preset,
                                  model=request, save_scores=save_scores))
        return results_table(execute(planned))
