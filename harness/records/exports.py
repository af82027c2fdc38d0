"""Machine-readable leaderboards, rendered from the one table model (`harness.records.leaderboard.Leaderboard`):

- `render_csv` / `render_json`: the tidy table (`long_table`), one row per (label, set, metric) with mean, std
  (ddof=1), n, the per-seed values (`seed_<n>` columns), the set's near/far group and the metric's convention;
  `pd.read_csv(path)` and `pd.read_json(path)` read them back with no arguments.
- `render_openood`: OpenOOD's leaderboard CSV (`results/<benchmark>.csv` of its leaderboard site), one row per
  label, near- and far-OOD AUROC and ID accuracy as `mean ± std` in % with two decimals, `/` where there is none.

docs/leaderboards.md lists every column and how each oodbench label maps to OpenOOD's Training and Postprocessor.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.records.leaderboard import COLUMN, GROUP_COLUMN, Leaderboard, SeedValues

# column name -> the tidy table's `metric`: the record's metric key, `id_accuracy` for ID accuracy
METRIC_KEYS = {**{name: key for key, name in COLUMN.items()}, "ID acc.": "id_accuracy"}
# each metric's positive class ("" where none applies); fpr95's is the record's own `fpr_positive`
POSITIVE = {"auroc": "id", "aupr_in": "id", "aupr_out": "ood", "id_accuracy": ""}
# how each metric is computed (harness.metrics); fpr95's threshold rule is the record's own `fpr_rule`
DEFINITION = {"auroc": "mann-whitney", "aupr_in": "average-precision", "aupr_out": "average-precision",
              "id_accuracy": "top-1"}
COST_UNITS = {"seconds": "s", "peak_rss_mb": "MB", "peak_cuda_mb": "MB", "images_generated": "images",
              "images_embedded": "images"}


def _stats(values: SeedValues) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), **{f"seed_{seed}": value for seed, value in zip(values.seeds, values, strict=True)}}


def long_table(board: Leaderboard) -> pd.DataFrame:
    """The tidy table: per row of the summary, each set's (then Near-OOD, Far-OOD and Average's) metrics, ID
    accuracy (set `ID`, metric `id_accuracy`) and cost (set `cost`, metric `stage.fact`); values in % (cost in its
    `unit`), `std` empty below two seeds."""
    rows = []
    for _, row in board.frame.iterrows():
        head = {"benchmark": board.benchmark, "label": row[("", "Method")], "method": row[("", "method")],
                "kind": row[("", "kind")], "recipe": row[("", "recipe")]}
        for column, values in row.items():
            if not isinstance(values, list) or not values:
                continue
            name, metric = column
            if name == "cost":
                rows.append({**head, "set": "cost", "group": "", "metric": metric, "unit":
                             COST_UNITS.get(metric.rpartition(".")[2], ""), "positive": "", "definition": "",
                             **_stats(values)})
                continue
            key = METRIC_KEYS[metric]
            group = {title: group for group, title in GROUP_COLUMN.items()}.get(name, board.groups.get(name, ""))
            rows.append({**head, "set": name or "ID", "group": group, "metric": key, "unit": "%",
                         "positive": row[("", "positive")] if key == "fpr95" else POSITIVE[key],
                         "definition": row[("", "fpr_rule")] if key == "fpr95" else DEFINITION[key],
                         **_stats(values)})
    table = pd.DataFrame(rows)
    seeds = sorted((c for c in table.columns if c.startswith("seed_")), key=lambda c: int(c[5:]))
    return table[[c for c in table.columns if not c.startswith("seed_")] + seeds]


def render_csv(board: Leaderboard) -> str:
    return long_table(board).to_csv(index=False)


def render_json(board: Leaderboard) -> str:
    """The tidy table as a JSON array of row objects (null where a value is missing)."""
    rows = long_table(board).astype(object).where(lambda t: t.notna(), None).to_dict(orient="records")
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


# OpenOOD's names of the methods both know (its postprocessor and training-method names); others keep their own
OPENOOD_NAMES = {"msp": "MSP", "energy": "EBO", "knn": "KNN", "vim": "VIM", "react": "ReAct", "vos": "VOS",
                 "npos": "NPOS", "dream_ood": "Dream-OOD", "ncis": "NCIS", "flow": "Flow", "text_flow": "TextFlow"}
# a training method's test score, named by its config's `test_score` or `score`, in OpenOOD's names
SCORE_NAMES = {"energy": "EBO", "phi": "Phi", "knn": "KNN", "nll": "NLL", "complexity": "NLL-Complexity"}
# the test score of training methods whose config names none
OWN_SCORE = {"npos": "knn"}
OPENOOD_COLUMNS = ("Training", "Postprocessor", "Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy", "Outlier_Data",
                   "Arch", "Additional_Description")


def _openood_value(values: Any) -> str:
    """`mean ± std` in % with two decimals (the mean alone for one seed), `/` for none, as OpenOOD writes them."""
    if not isinstance(values, list) or not values:
        return "/"
    mean = f"{np.mean(values):.2f}"
    return f"{mean} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else mean


def openood_row(board: Leaderboard, row: pd.Series) -> dict[str, str]:
    """One label in OpenOOD's schema (docs/leaderboards.md, "OpenOOD CSV")."""
    record = board.row_records(row)[0]
    method = record.method
    settings = record.label[len(method) + 1:-1] if record.label != method else ""
    notes = [f"{row[('', 'seeds')]} seed{'s' * (row[('', 'seeds')] > 1)}"]
    if record.model:
        training, arch = "External", str(record.model.get("spec"))
        notes.insert(0, f"weights sha256 {str(record.model.get('weights_sha256'))[:12]}")
    else:
        training = "CrossEntropy" if record.kind == "post-hoc" else OPENOOD_NAMES.get(method, method)
        arch = str(record.classifier_config.get("backbone")) if record.classifier_config else "/"
        if record.classifier_config:
            notes.insert(0, f"{record.classifier_config.get('epochs')} epochs")
    if record.kind == "post-hoc":
        postprocessor = OPENOOD_NAMES.get(method, method)
    else:
        score = record.config.get("test_score") or record.config.get("score") or OWN_SCORE.get(method)
        postprocessor = SCORE_NAMES.get(score, score) if score else OPENOOD_NAMES.get(method, method)
    synthesis = {"pixel-synthesis": "synthetic image outliers", "feature-synthesis": "synthetic feature outliers",
                 "density": "density model"}.get(record.kind)
    if synthesis:
        generator = record.config.get("model")
        notes.append(f"{synthesis} ({generator})" if generator else synthesis)
    if settings:
        notes.append(settings)
    return {"Training": training, "Postprocessor": postprocessor,
            "Near-OOD_AUROC": _openood_value(row.get(("Near-OOD", "AUROC"))),
            "Far-OOD_AUROC": _openood_value(row.get(("Far-OOD", "AUROC"))),
            "ID_Accuracy": _openood_value(row[("", "ID acc.")]),
            "Outlier_Data": "Yes" if record.config.get("real_set") else "No", "Arch": arch,
            "Additional_Description": "; ".join(notes)}


def render_openood(board: Leaderboard) -> str:
    if not set(board.groups.values()):
        raise HarnessError(f"--format openood needs near/far OOD groups and {board.benchmark}'s sets have none; give "
                           "each OOD set of its spec a \"group\" (or --ood near:NAME=PATH)")
    if "auroc" not in board.exported:
        raise HarnessError("--format openood reports AUROC; add auroc to --metrics")
    rows = [openood_row(board, row) for _, row in board.frame.iterrows()]
    return pd.DataFrame(rows, columns=list(OPENOOD_COLUMNS)).to_csv(index=False)
