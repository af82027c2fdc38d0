"""Leaderboard markdown from result records: per benchmark, methods x OOD sets (FPR95 and AUROC, %, or the metrics
of the spec's `leaderboard_metrics`, e.g. AUROC, AUPR-In and FPR95 for the text benchmarks), the average
over sets, ID accuracy, mean ± std over seeds; best in bold and second underlined per column, as in the papers.
Below the reproduced rows, the numbers the papers report (`results/reference/*.csv`, one table per source table),
marked as reported.

Regeneration is a pure function of the records and the reference files: the same inputs always give the same bytes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cache import atomic_write_bytes
from harness.data.spec import BenchmarkSpec, load_spec
from harness.errors import HarnessError
from harness.paths import DATASETS_DIR, REFERENCE_DIR, check_name, path_under
from harness.records.provenance import NUMERIC_FACTS
from harness.records.results import RunRecord, load_records

LOWER_IS_BETTER = {"FPR95": True, "AUROC": False, "AUPR-In": False, "AUPR-Out": False, "AUPR": False,
                   "ID acc.": False}
# record metric key -> column name (AUPR-In: ID is the positive class; AUPR-Out: OOD is, with score -s)
COLUMN = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
DEFAULT_METRICS = ("fpr95", "auroc")


def benchmark_spec(benchmark: str) -> BenchmarkSpec | None:
    """The spec of `benchmark`: `datasets/<benchmark>.json`, or for a variant's records name (`mnist5k-openood`)
    the family spec with that variant applied (`mnist5k:openood`); None when neither exists and parses (records of a
    spec given by path still make a leaderboard, without the spec's columns and targets)."""
    for cut in [len(benchmark)] + [i for i, char in enumerate(benchmark) if char == "-"]:
        family, variant = benchmark[:cut], benchmark[cut + 1:]
        if not (DATASETS_DIR / f"{family}.json").is_file():
            continue
        try:
            return load_spec(f"{family}:{variant}" if variant else family)
        except HarnessError:
            continue
    return None


def benchmark_metrics(benchmark: str) -> tuple[str, ...]:
    """The leaderboard columns of `benchmark`: its spec's `leaderboard_metrics`, else FPR95 and AUROC."""
    spec = benchmark_spec(benchmark)
    return spec.leaderboard_metrics if spec else DEFAULT_METRICS


def _fmt(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {float(np.std(values, ddof=1)):.2f}"


def summarise(records: list[RunRecord], metrics: tuple[str, ...] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per (label, FPR convention): mean values in columns (set, metric), seeds kept in `n_seeds`. The
    Average column averages the sets every record holds, so rows with extra sets (`--ood`) are never ranked on an
    average over other sets; their extra sets get columns of their own."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.label, record.fpr_positive)].append(record)
    common = [name for name in (records[0].metrics if records else {}) if all(name in r.metrics for r in records)]

    def average(run: RunRecord, key: str) -> float:
        return float(np.mean([run.metrics[name][key] for name in common]))

    rows = []
    for (label, positive), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r.seed)
        row: dict[tuple[str, str], object] = {("", "Method"): label, ("", "seeds"): len(runs),
                                              ("", "kind"): runs[0].kind, ("", "positive"): positive}
        sets = list(runs[0].metrics)
        for name in sets + ["Average"]:
            for key in metrics:
                values = [100 * (average(r, key) if name == "Average" else r.metrics[name][key])
                          for r in runs if name == "Average" or name in r.metrics]
                metric = COLUMN[key]
                row[(name, metric)] = values
        accs = [100 * r.id_accuracy for r in runs if r.id_accuracy is not None]
        row[("", "ID acc.")] = accs
        row[("", "provenance")] = mixed_provenance(runs)
        rows.append(row)
    return pd.DataFrame(rows)


def mixed_provenance(runs: list[RunRecord]) -> str:
    """'' when every run of a row comes from the same code version and environment; otherwise which seeds came
    from which values of the facts that differ (harness.records.provenance.NUMERIC_FACTS)."""
    groups: dict[str, list[int]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run.facts, sort_keys=True, default=str), []).append(run.seed)
    if len(groups) == 1:
        return ""
    facts = [json.loads(key) for key in groups]
    varying = [f for f in NUMERIC_FACTS if len({json.dumps(x.get(f)) for x in facts}) > 1]
    return "; ".join(f"seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))}: " +
                     ", ".join(f"{f} {x.get(f)}" for f in varying) for x, seeds in zip(facts, groups.values(),
                                                                                        strict=True))


def _footnoted(part: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Append a `[^n]` marker to the Method of every row whose seeds mix provenance; its text goes to `notes`."""
    part = part.copy()
    for index, text in part[("", "provenance")].items():
        if text:
            notes.append(f"[^{len(notes) + 1}]: {part.at[index, ('', 'Method')]} averages records of different "
                         f"code versions or environments: {text}.")
            part.at[index, ("", "Method")] = f"{part.at[index, ('', 'Method')]} [^{len(notes)}]"
    return part


STABILITY_COLUMNS = {("Average", "AUROC"): "average_auroc", ("", "ID acc."): "id_accuracy"}


def _unstable(values: list[float], kind: str, column: tuple[str, str], spec: BenchmarkSpec | None) -> bool:
    """Whether a row's seed std in `column` exceeds the benchmark's stability target for the row's method kind."""
    target = spec.stability_target(STABILITY_COLUMNS[column], kind) if spec and column in STABILITY_COLUMNS else None
    return target is not None and len(values) > 1 and float(np.std(values, ddof=1)) > target


def _mark(frame: pd.DataFrame, spec: BenchmarkSpec | None = None) -> pd.DataFrame:
    """Format mean ± std strings, bold the best and underline the second best of each metric column; mark a mean
    AUROC below 50 (◇) and a seed std above `spec`'s stability target (†)."""
    shown = frame.copy()
    for column in frame.columns:
        metric = column[1]
        if metric not in LOWER_IS_BETTER:
            continue
        # A plain list: a pandas Series would turn the None of an empty cell into NaN.
        means = [round(float(np.mean(v)), 2) if isinstance(v, list) and v else None for v in frame[column]]
        distinct = sorted({m for m in means if m is not None}, reverse=not LOWER_IS_BETTER[metric])
        texts = []
        for value, mean, kind in zip(frame[column], means, frame[("", "kind")], strict=True):
            if mean is None:
                texts.append("–")
                continue
            text = _fmt(value)
            if metric == "AUROC" and column[0] not in ("", "Average") and mean < 50:
                text = f"{text} ◇"  # ranks this set above the ID test set: explained in docs/benchmarks.md
            if _unstable(value, kind, column, spec):
                text = f"{text} †"  # too unstable over seeds for the benchmark's target: docs/benchmarks.md
            if len(frame) > 1 and mean == distinct[0]:
                text = f"**{text}**"
            elif len(frame) > 2 and len(distinct) > 1 and mean == distinct[1]:
                text = f"<u>{text}</u>"
            texts.append(text)
        shown[column] = texts
    return shown


def _targets_text(spec: BenchmarkSpec | None) -> str:
    if spec is None or not spec.stability_targets:
        return ""
    parts = []
    for key, name in (("average_auroc", "average AUROC"), ("id_accuracy", "ID accuracy")):
        target = spec.stability_targets.get(key)
        if isinstance(target, dict):
            parts.append(f"{name} " + ", ".join(f"{v:g} pp ({'other kinds' if k == '*' else k})"
                                                 for k, v in target.items()))
        elif target is not None:
            parts.append(f"{name} {target:g} pp")
    return (f"; † a seed std above the benchmark's stability target ({'; '.join(parts)}; docs/benchmarks.md "
            "explains each such row)")


def _legend(metrics: tuple[str, ...], convention: str, spec: BenchmarkSpec | None = None) -> str:
    arrows = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑ (ID positive)",
              "aupr_out": "AUPR-Out ↑ (OOD positive)"}
    names = [arrows[m] for m in metrics]
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    fpr = f", FPR95 with {convention}" if "fpr95" in metrics else ""
    low = ("; ◇ a mean AUROC below 50 (the set scores as more in-distribution than the ID test set; "
           "docs/benchmarks.md explains each such cell)") if "auroc" in metrics else ""
    return (f"{listed} in %{fpr}; mean ± std over seeds; best **bold**, second <u>underlined</u>{low}"
            f"{_targets_text(spec)}.")


def benchmark_markdown(records: list[RunRecord], benchmark: str, metrics: tuple[str, ...] | None = None) -> str:
    metrics = metrics or benchmark_metrics(benchmark)
    frame = summarise(records, metrics)
    spec = benchmark_spec(benchmark)
    lines, notes = [f"# Leaderboard: {benchmark}", ""], []
    for positive, part in frame.groupby(("", "positive"), sort=True):
        convention = ("ID positive (the papers' convention)" if positive == "id"
                      else "OOD positive (OpenOOD's convention since Aug 2023)")
        shown = _mark(_footnoted(part.reset_index(drop=True), notes), spec)
        table = shown[[c for c in shown.columns if c[1] not in ("positive", "kind", "provenance")]]
        table.columns = [c[1] if c[0] == "" else f"{c[0]} {c[1]}" for c in table.columns]
        lines += [_legend(metrics, convention, spec), "",
                  table.to_markdown(index=False, disable_numparse=True), ""]
    if notes:
        lines += notes + [""]
    lines += reported_markdown(benchmark)
    figures = sorted({(r.label, f) for r in records for f in r.figures})
    if figures:
        lines += ["## Figures", ""] + [f"- {label}: [{Path(f).name}](../{f})" for label, f in figures] + [""]
    lines += ["Regenerate with `python -m harness leaderboard`; each row comes from the JSON records under "
              f"`records/{benchmark}/`.", ""]
    return "\n".join(lines)


def load_reference(benchmark: str, directory: Path = REFERENCE_DIR) -> pd.DataFrame:
    """Reported rows for `benchmark` from every CSV under `directory` (long format: one row per method and set),
    as strings so numbers keep the precision the paper printed."""
    files = sorted(Path(directory).glob("*.csv"))
    if not files:
        return pd.DataFrame()
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in files], ignore_index=True)
    return frame[frame["benchmark"] == benchmark].fillna("")  # a column only some files have is empty elsewhere


def _reported(value: str, std: str) -> str:
    """A number exactly as the paper prints it, with its ± std when given."""
    if not value:
        return "–"
    return f"{value} ± {std}" if std else value


def reported_markdown(benchmark: str, directory: Path = REFERENCE_DIR) -> list[str]:
    """One table per (paper, table) of reported numbers, in the papers' row and column order; only the metrics
    the table reports (FPR95, AUROC, AUPR: the `aupr` column, its positive class as the paper states it)."""
    frame = load_reference(benchmark, directory)
    if frame.empty:
        return []
    lines = ["## Reported in the papers (not reproduced here)", ""]
    for (source, table), part in frame.groupby(["source", "table"], sort=True):
        sets = [s for s in dict.fromkeys(part["ood_set"]) if s != "ID accuracy"]
        reported = [(metric, key) for metric, key in (("FPR95", "fpr95"), ("AUROC", "auroc"), ("AUPR", "aupr"))
                    if key in part and (part[key] != "").any()]
        rows = []
        for method in dict.fromkeys(part["method"]):
            mine = part[part["method"] == method].set_index("ood_set")
            row = {"Method": f"{method} (reported)"}
            for name in sets:
                for metric, key in reported:
                    row[f"{name} {metric}"] = (_reported(mine.at[name, key], mine.at[name, f"{key}_std"])
                                               if name in mine.index else "–")
            if "ID accuracy" in mine.index:
                row["ID acc."] = _reported(mine.at["ID accuracy", "id_acc"], mine.at["ID accuracy", "id_acc_std"])
            rows.append(row)
        positive = part["fpr_positive"].iloc[0]
        convention = {"id": "FPR95 with ID positive"}.get(positive, f"FPR95 convention {positive}") \
            if any(key == "fpr95" for _, key in reported) else f"AUPR positive class: {positive}"
        lines += [f"{source}, {table} ({convention}; as printed, mean ± std where given):", "",
                  pd.DataFrame(rows).fillna("–").to_markdown(index=False, disable_numparse=True), ""]
    return lines


def leaderboard_path(out_dir: Path, benchmark: str) -> Path:
    return path_under(out_dir, "leaderboards", f"{check_name(benchmark, 'benchmark name')}.md")


def write_leaderboards(out_dir: Path, benchmarks: list[str] | None = None,
                       metrics: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Regenerate `<out>/leaderboards/<benchmark>.md` for every benchmark with records (or the given ones), with
    the columns `metrics` (default: each benchmark's `leaderboard_metrics`)."""
    records = load_records(out_dir)
    by_benchmark: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_benchmark[record.benchmark].append(record)
    written = {}
    for name in sorted(by_benchmark if benchmarks is None else set(benchmarks) & set(by_benchmark)):
        path = leaderboard_path(out_dir, name)
        atomic_write_bytes(path, benchmark_markdown(by_benchmark[name], name, metrics).encode())
        written[name] = path
    return written
