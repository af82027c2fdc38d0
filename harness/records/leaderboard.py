"""Leaderboards from result records: one table model (`Leaderboard`, built on `summarise`) rendered as markdown
(here), a self-contained HTML page (`harness.records.html`), tidy CSV/JSON and OpenOOD's leaderboard CSV
(`harness.records.exports`); docs/leaderboards.md describes every format.

Per benchmark: methods x OOD sets (FPR95 and AUROC, %, or the metrics of the spec's `leaderboard_metrics`, e.g.
AUROC, AUPR-In and FPR95 for the text benchmarks), the averages over sets, ID accuracy, mean ± std over seeds; a
cell bold when it beats every other row beyond the paired 95 % interval over seeds, else the rows tied with the best
in italics (`statistics.rank_column`), each row ranked only against the rows trained with the same classifier recipe
(and the rows that train none). Below the reproduced rows, the numbers the papers report
(`results/reference/*.csv`, one table per source table), marked as reported.

Regeneration is a pure function of the records, the reference files and the command's options: the same inputs
always give the same bytes.
"""

from __future__ import annotations

import json
import math
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.spec import OOD_GROUPS, BenchmarkSpec, load_spec
from harness.errors import HarnessError
from harness.metrics import METRIC_NAMES
from harness.paths import DATASETS_DIR, REFERENCE_DIR
from harness.records.provenance import NUMERIC_FACTS
from harness.records.results import RunRecord
from harness.records.statistics import (
    HEADLINE_GROUP,
    MAX_UNITS,
    BaselineDelta,
    PairedDifference,
    baseline_deltas,
    group_averages,
    rank_column,
    set_groups,
)

LOWER_IS_BETTER = {"FPR95": True, "AUROC": False, "AUPR-In": False, "AUPR-Out": False, "AUPR": False,
                   "ID acc.": False}
# record metric key -> column name (AUPR-In: ID is the positive class; AUPR-Out: OOD is, with score -s)
COLUMN = {"fpr95": "FPR95", "auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
DEFAULT_METRICS = ("fpr95", "auroc")
# the per-group averages' column names (OpenOOD's), beside the overall "Average"
GROUP_COLUMN = {"near": "Near-OOD", "far": "Far-OOD"}
AVERAGES = (*GROUP_COLUMN.values(), "Average")


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


def recipe_key(record: RunRecord) -> str:
    """What a row's classifier is, as JSON: the user's model (`--model`: its spec and weights), the shared
    classifier recipe (`classifier_config`), or '' for a method that trains no classifier (a density model)."""
    if record.model:
        return json.dumps({"model": record.model.get("spec"), "weights": record.model.get("weights_sha256")})
    if record.classifier_config:
        return json.dumps({"classifier": record.classifier_config}, sort_keys=True)
    return ""


def describe_recipes(keys: list[str]) -> dict[str, str]:
    """A short name per recipe key: `resnet18 (weights 1a2b3c4d)` for a user's model, `lenet, 12 epochs` for a
    classifier recipe, plus each setting in which the table's classifier recipes differ; '' for no classifier."""
    recipes = {key: json.loads(key) for key in keys if key}
    configs = [recipe["classifier"] for recipe in recipes.values() if "classifier" in recipe]
    varying = sorted({name for config in configs for name in config
                      if len({json.dumps(c.get(name)) for c in configs}) > 1} - {"backbone", "epochs"})
    names = {}
    for key in keys:
        recipe = recipes.get(key, {})
        if "classifier" in recipe:
            config, epochs = recipe["classifier"], recipe["classifier"].get("epochs")
            names[key] = ", ".join([f"{config.get('backbone')}, {epochs} epoch{'s' * (epochs != 1)}",
                                    *(f"{name}={config.get(name)}" for name in varying)])
        elif "model" in recipe:
            names[key] = f"{Path(str(recipe['model'])).name} (weights {str(recipe['weights'])[:8]})"
        else:
            names[key] = ""
    return names


def record_costs(record: RunRecord) -> dict[str, float]:
    """The record's cost (`cost`: per stage seconds and peak memory, images generated and embedded), flattened to
    `stage.fact` names; a record without `cost` gives its `stage_seconds`. Unmeasured (None) facts are left out."""
    stages = record.cost.get("stages") or {stage: {"seconds": s} for stage, s in record.stage_seconds.items()}
    flat = {f"{stage}.{name}": value for stage, facts in stages.items() for name, value in facts.items()}
    for name, value in record.cost.items():
        if isinstance(value, dict) and name != "stages":  # e.g. `computed`: the images this process made
            flat.update({f"{name}.{key}": inner for key, inner in value.items()})
        elif name != "stages":
            flat[name] = value
    return {name: float(value) for name, value in flat.items() if isinstance(value, int | float)}


class SeedValues(list):
    """A cell's per-seed values, in seed order, that know their seeds (`seeds`)."""

    def __init__(self, pairs: list[tuple[int, float]]) -> None:
        super().__init__(value for _, value in pairs)
        self.seeds = tuple(seed for seed, _ in pairs)


def summarise(records: list[RunRecord], metrics: tuple[str, ...] = DEFAULT_METRICS,
              groups: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per (label, FPR convention, classifier recipe): per-seed values in % (`SeedValues`) in columns
    (set, metric), the number of seeds in `seeds`. The Average column averages the sets every record holds, so rows
    with extra sets (`--ood`) are never ranked on an average over other sets; their extra sets get columns of their
    own. `groups` (set -> near/far) adds the Near-OOD and Far-OOD averages over each group's common sets; `cost`
    columns hold each record's `record_costs`."""
    rows_of: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        rows_of[(record.label, record.fpr_positive, recipe_key(record))].append(record)
    common = [name for name in (records[0].metrics if records else {}) if all(name in r.metrics for r in records)]
    in_groups = {name: group for name, group in (groups or {}).items() if name in common}
    recipes = describe_recipes(sorted({key for _, _, key in rows_of}))

    def average(run: RunRecord, key: str) -> float:
        return float(np.mean([run.metrics[name][key] for name in common]))

    def group_average(run: RunRecord) -> dict[str, dict[str, float]]:
        return group_averages({name: run.metrics[name] for name in in_groups}, in_groups)

    rows = []
    for (label, positive, key), runs in sorted(rows_of.items()):
        runs.sort(key=lambda r: r.seed)
        row: dict[tuple[str, str], object] = {
            ("", "Method"): label, ("", "seeds"): len(runs), ("", "kind"): runs[0].kind, ("", "positive"): positive,
            ("", "method"): runs[0].method, ("", "recipe"): recipes[key], ("", "recipe key"): key,
            ("", "fpr_rule"): runs[0].fpr_rule}
        for name in runs[0].metrics:
            for metric in metrics:
                row[(name, COLUMN[metric])] = SeedValues([(r.seed, 100 * r.metrics[name][metric])
                                                          for r in runs if name in r.metrics])
        grouped = [(r.seed, group_average(r)) for r in runs]
        for group in OOD_GROUPS:
            if group in in_groups.values():
                for metric in metrics:
                    row[(GROUP_COLUMN[group], COLUMN[metric])] = SeedValues(
                        [(seed, 100 * by_group[group][metric]) for seed, by_group in grouped])
        for metric in metrics:
            row[("Average", COLUMN[metric])] = SeedValues([(r.seed, 100 * average(r, metric)) for r in runs])
        row[("", "ID acc.")] = SeedValues([(r.seed, 100 * r.id_accuracy) for r in runs if r.id_accuracy is not None])
        row[("", "provenance")] = mixed_provenance(runs)
        costs = {run.seed: record_costs(run) for run in runs}
        for name in dict.fromkeys(n for c in costs.values() for n in c):
            row[("cost", name)] = SeedValues([(r.seed, costs[r.seed][name]) for r in runs if name in costs[r.seed]])
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


STABILITY_COLUMNS = {("Average", "AUROC"): "average_auroc", ("", "ID acc."): "id_accuracy"}


def _unstable(values: list[float], kind: str, column: tuple[str, str], spec: BenchmarkSpec | None) -> bool:
    """Whether a row's seed std in `column` exceeds the benchmark's stability target for the row's method kind."""
    target = spec.stability_target(STABILITY_COLUMNS[column], kind) if spec and column in STABILITY_COLUMNS else None
    return target is not None and len(values) > 1 and float(np.std(values, ddof=1)) > target


BEST, TIED = 1, 2


@dataclass(frozen=True)
class Cell:
    """One metric cell of a row: its per-seed values (%), its marks (◇, †) and its rank among the rows it is ranked
    against by the bold rule (`statistics.rank_column`): BEST (better than every other row beyond the paired 95 %
    interval), TIED (not told apart from the best row, the best row itself included when no row is clearly best),
    else None."""

    values: list[float]
    marks: tuple[str, ...] = ()
    rank: int | None = None

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def spread(self) -> str:
        """The seed std (ddof=1) to two decimals, '' below two seeds."""
        return f"{float(np.std(self.values, ddof=1)):.2f}" if len(self.values) > 1 else ""

    @property
    def text(self) -> str:
        """`mean ± std` (the mean alone for one seed) and its marks, or '–' when the cell is empty."""
        if not self.values:
            return "–"
        return " ".join([f"{self.mean:.2f}", *(["±", self.spread] if self.spread else []), *self.marks])


def comparable(recipes: list[str]) -> list[list[int]]:
    """For each row, the rows it is ranked against: those of its classifier recipe and those that train no
    classifier ('' recipe, ranked against every row)."""
    return [[j for j, other in enumerate(recipes) if not mine or not other or other == mine] for mine in recipes]


def metric_cells(part: pd.DataFrame, column: tuple[str, str], spec: BenchmarkSpec | None) -> list[Cell]:
    """The cells of a metric column of `part` (rows of one FPR convention), each ranked by the bold rule
    (`statistics.rank_column`, paired over seeds) among the rows it is ranked against; mark a mean AUROC below 50 on
    a set (◇) and a seed std above `spec`'s stability target (†)."""
    metric = column[1]
    # A plain list: a pandas Series would turn the None of an empty cell into NaN.
    values = [v if isinstance(v, list) else [] for v in part[column]] if column in part else [[]] * len(part)
    cells = []
    for i, rows in enumerate(comparable(list(part[("", "recipe")]))):
        if not values[i]:
            cells.append(Cell([]))
            continue
        marks = []
        if metric == "AUROC" and column[0] not in ("", *AVERAGES) and np.mean(values[i]) < 50:
            marks.append("◇")  # ranks this set above the ID test set: explained in docs/benchmarks.md
        if _unstable(values[i], part[("", "kind")].iloc[i], column, spec):
            marks.append("†")  # too unstable over seeds for the benchmark's target: docs/benchmarks.md
        rank = None
        if len([j for j in rows if values[j]]) > 1:
            ranking = rank_column({j: dict(zip(seeds_of(values[j]), values[j], strict=True)) for j in rows
                                   if values[j]}, higher_is_better=not LOWER_IS_BETTER[metric])
            rank = BEST if ranking.clear and ranking.best == i else TIED if i in ranking.tied and not ranking.clear \
                else None
        cells.append(Cell(values[i], tuple(marks), rank))
    return cells


def seeds_of(values: list[float]) -> tuple[int, ...]:
    """The seeds of a cell's values (`SeedValues`), or their positions for a plain list."""
    return getattr(values, "seeds", tuple(range(len(values))))


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


@dataclass(frozen=True)
class ReportedTable:
    """One source table of numbers a paper reports: its caption and its rows as printed (strings)."""

    caption: str
    frame: pd.DataFrame


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


def reported_tables(benchmark: str, directory: Path = REFERENCE_DIR) -> list[ReportedTable]:
    """One table per (paper, table) of reported numbers, in the papers' row and column order; only the metrics
    the table reports (FPR95, AUROC, AUPR: the `aupr` column, its positive class as the paper states it)."""
    frame = load_reference(benchmark, directory)
    if frame.empty:
        return []
    tables = []
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
        tables.append(ReportedTable(f"{source}, {table} ({convention}; as printed, mean ± std where given)",
                                    pd.DataFrame(rows).fillna("–")))
    return tables


def reported_markdown(benchmark: str, directory: Path = REFERENCE_DIR) -> list[str]:
    """The reported tables (`reported_tables`) as markdown lines, under their heading."""
    tables = reported_tables(benchmark, directory)
    if not tables:
        return []
    lines = ["## Reported in the papers (not reproduced here)", ""]
    for table in tables:
        lines += [f"{table.caption}:", "", table.frame.to_markdown(index=False, disable_numparse=True), ""]
    return lines


def shown_directory(out_dir: Path) -> str:
    """`out_dir` as a command names it: relative to the working directory when under it, else as given."""
    path = Path(out_dir)
    if path.is_absolute() and path.resolve().is_relative_to(Path.cwd().resolve()):
        path = path.resolve().relative_to(Path.cwd().resolve())
    return shlex.quote(str(path))


@dataclass(frozen=True)
class Leaderboard:
    """The table model every format renders: the records' summary (`summarise`: every metric the records carry, or
    the given `--metrics`), the metric columns markdown and HTML show, the sets' near/far groups, the spec (its
    stability targets and baselines) and where the files go (for each file's regeneration command)."""

    benchmark: str
    records: list[RunRecord] = field(repr=False)
    metrics: tuple[str, ...]  # the columns markdown and HTML show
    exported: tuple[str, ...]  # the metrics the summary holds (CSV, JSON)
    metrics_given: bool  # `--metrics` chose them (the regeneration command repeats it)
    groups: dict[str, str]
    spec: BenchmarkSpec | None
    out_dir: Path

    @cached_property
    def frame(self) -> pd.DataFrame:
        return summarise(self.records, self.exported, self.groups)

    @property
    def sets(self) -> list[str]:
        """The OOD sets with columns, in the rows' order (a row's extra `--ood` sets after the others)."""
        names = [c[0] for c in self.frame.columns if c[0] not in ("", "cost", *AVERAGES)]
        return list(dict.fromkeys(names))

    @property
    def recipes_differ(self) -> bool:
        """Whether rows of different classifier recipes share the table (it then shows a Recipe column)."""
        return len({r for r in self.frame[("", "recipe")] if r}) > 1

    def parts(self) -> list[tuple[str, pd.DataFrame]]:
        """The rows per FPR convention (`id` first), each ranked and rendered as a table of its own."""
        return [(str(positive), part.reset_index(drop=True))
                for positive, part in self.frame.groupby(("", "positive"), sort=True)]

    def row_records(self, row: pd.Series) -> list[RunRecord]:
        """The records a summary row averages."""
        return [r for r in self.records if (r.label, r.fpr_positive, recipe_key(r)) ==
                (row[("", "Method")], row[("", "positive")], row[("", "recipe key")])]

    def averages(self) -> list[str]:
        """The average columns the table has: Near-OOD and Far-OOD (where a group has common sets), Average."""
        return [name for name in AVERAGES if any(c[0] == name for c in self.frame.columns)]

    def cells(self, part: pd.DataFrame, column: tuple[str, str]) -> list[Cell]:
        return metric_cells(part, column, self.spec)

    @property
    def headline_name(self) -> str:
        """The metric Δ compares (`harness.records.statistics`): near-OOD AUROC, or average AUROC without near
        sets."""
        return ("near-OOD AUROC" if HEADLINE_GROUP in self.groups.values() else "average AUROC")

    @cached_property
    def deltas(self) -> dict[str, BaselineDelta]:
        """Per label, its headline metric against its kind's baseline (`harness.records.statistics`)."""
        return baseline_deltas(self.records, self.spec)

    def legend(self, convention: str, bold: str = "**bold**", tied: str = "*italic*") -> str:
        arrows = {"fpr95": "FPR95 ↓", "auroc": "AUROC ↑", "aupr_in": "AUPR-In ↑ (ID positive)",
                  "aupr_out": "AUPR-Out ↑ (OOD positive)"}
        names = [arrows[m] for m in self.metrics]
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        fpr = f", FPR95 with {convention}" if "fpr95" in self.metrics else ""
        low = ("; ◇ a mean AUROC below 50 (the set scores as more in-distribution than the ID test set; "
               "docs/benchmarks.md explains each such cell)") if "auroc" in self.metrics else ""
        recipes = ("; rows of different classifier recipes (Recipe) are ranked only against rows of the same recipe "
                   "and rows that train no classifier (–)") if self.recipes_differ else ""
        rule = (f"{bold} when better than every other row beyond the 95 % paired t-interval over seeds, else the rows "
                f"not told apart from the best in {tied} (docs/statistics.md)")
        return (f"{listed} in %{fpr}; mean ± std over seeds; {rule}{recipes}{low}"
                f"{_targets_text(self.spec)}.")

    @property
    def figures(self) -> list[tuple[str, str]]:
        """(label, path relative to the out directory) of every figure the records list."""
        return sorted({(r.label, f) for r in self.records for f in r.figures})

    @property
    def reported(self) -> list[ReportedTable]:
        return reported_tables(self.benchmark)

    def command(self, fmt: str) -> str:
        """The command that regenerates this benchmark's `fmt` file."""
        metrics = f" --metrics {','.join(self.metrics)}" if self.metrics_given else ""
        return (f"python -m harness leaderboard --out {shown_directory(self.out_dir)} --benchmark "
                f"{shlex.quote(self.benchmark)}{metrics} --format {fmt}")


def build_leaderboard(records: list[RunRecord], benchmark: str, metrics: tuple[str, ...] | None = None,
                      out_dir: Path = Path("runs")) -> Leaderboard:
    """The leaderboard of `records` (all of `benchmark`): columns `metrics` (default: the spec's
    `leaderboard_metrics`), the summary holding those or, by default, every metric all records carry."""
    spec = benchmark_spec(benchmark)
    carried = tuple(m for m in METRIC_NAMES if all(m in v for r in records for v in r.metrics.values()))
    shown = tuple(metrics) if metrics else (spec.leaderboard_metrics if spec else DEFAULT_METRICS)
    missing = [m for m in shown if m not in carried]
    if missing:
        raise HarnessError(f"records of {benchmark} lack metric {missing[0]}; choose --metrics from "
                           f"{','.join(carried)}")
    groups: dict[str, str] = {}
    for record in records:
        groups = {**set_groups(record, spec), **groups}
    return Leaderboard(benchmark, records, shown, shown if metrics else carried, bool(metrics), groups, spec,
                       Path(out_dir))


def _footnoted(part: pd.DataFrame, notes: list[str]) -> list[str]:
    """The Method texts of `part`, with a `[^n]` marker on every row whose seeds mix provenance; its text goes to
    `notes`."""
    methods = []
    for label, text in zip(part[("", "Method")], part[("", "provenance")], strict=True):
        if text:
            notes.append(f"[^{len(notes) + 1}]: {label} averages records of different code versions or "
                         f"environments: {text}.")
            label = f"{label} [^{len(notes)}]"
        methods.append(label)
    return methods


def render_markdown(board: Leaderboard) -> str:
    lines, notes = [f"# Leaderboard: {board.benchmark}", ""], []
    for positive, part in board.parts():
        convention = ("ID positive (the papers' convention)" if positive == "id"
                      else "OOD positive (OpenOOD's convention since Aug 2023)")
        table = {"Method": _footnoted(part, notes), "seeds": list(part[("", "seeds")])}
        if board.recipes_differ:
            table["Recipe"] = [recipe or "–" for recipe in part[("", "recipe")]]
        for name in board.sets + board.averages():
            for metric in board.metrics:
                table[f"{name} {COLUMN[metric]}"] = [cell_markdown(c) for c in board.cells(part,
                                                                                         (name, COLUMN[metric]))]
        table["ID acc."] = [cell_markdown(c) for c in board.cells(part, ("", "ID acc."))]
        lines += [board.legend(convention), "",
                  pd.DataFrame(table).to_markdown(index=False, disable_numparse=True), ""]
    if notes:
        lines += notes + [""]
    lines += deltas_markdown(board)
    lines += reported_markdown(board.benchmark)
    if board.figures:
        lines += ["## Figures", ""] + [f"- {label}: [{Path(f).name}](../{f})" for label, f in board.figures] + [""]
    lines += [f"Regenerate with `{board.command('md')}`; each row comes from the JSON records under "
              f"`records/{board.benchmark}/`.", ""]
    return "\n".join(lines)


def deltas_markdown(board: Leaderboard) -> list[str]:
    """Each label's headline metric against its baseline (`statistics.baseline_deltas`): Δ with its 95 % paired
    t-interval, the paired difference's minimal detectable effect and the seeds that bring it to 1 pp."""
    if not board.deltas:
        return []
    rows = []
    for label, delta in sorted(board.deltas.items(), key=lambda item: -item[1].difference.mean):
        difference = delta.difference
        rows.append({"Method": label, "baseline": delta.baseline, "seeds": difference.n,
                     f"Δ {board.headline_name} (pp)": difference_text(difference),
                     "MDE (pp)": mde_text(difference), "seeds for MDE ≤ 1 pp": seeds_needed_text(difference)})
    return [f"## Δ vs baseline on the {board.headline_name}", "",
            f"Each label's {board.headline_name} minus its baseline label's (the spec's `baselines`, per method "
            "kind), paired by seed: mean [95 % paired t-interval]; MDE: the smallest true difference the paired test "
            "detects with power 0.8 at α = 0.05 from these seeds' spread (docs/statistics.md).", "",
            pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def interval_text(difference: PairedDifference) -> str:
    """The 95 % paired interval as `[+0.10, +2.36]`; '' below two seeds."""
    low, high = difference.interval()
    return "" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"


def difference_text(difference: PairedDifference) -> str:
    """`+1.23 [+0.10, +2.36]`; the mean alone below two seeds."""
    return " ".join(filter(None, [f"{difference.mean:+.2f}", interval_text(difference)]))


def mde_text(difference: PairedDifference) -> str:
    mde = difference.minimal_detectable_effect()
    return "–" if math.isnan(mde) else f"{mde:.2f}"


def seeds_needed_text(difference: PairedDifference) -> str:
    needed = difference.units_needed()
    return "–" if difference.n < 2 else f"> {MAX_UNITS}" if needed is None else str(needed)


def cell_markdown(cell: Cell) -> str:
    return {BEST: f"**{cell.text}**", TIED: f"*{cell.text}*"}.get(cell.rank, cell.text)


def benchmark_markdown(records: list[RunRecord], benchmark: str, metrics: tuple[str, ...] | None = None) -> str:
    return render_markdown(build_leaderboard(records, benchmark, metrics))
