"""Publishing the curated results: every published method label of a benchmark (the reviewed list in
`results/published.json`) for its seeds, from a clean cache, into `results/`, replacing that benchmark's records
as a whole, then its leaderboard and its expectations (`harness.records.regression`). Every published record keeps
its per-sample scores in their published form (`harness.records.scores.published_form`; docs/submissions.md).

`results/published.json` maps a benchmark name to `{"seeds": [...], "threads": N, "drift_threads": [M, ...],
"preset": "paper", "labels": [{"method": NAME, "set": ["SCOPE.FIELD=VALUE", ...]}, ...]}`: one line per label.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_bytes
from harness.config import parse_set_options
from harness.data.spec import BenchmarkSpec, load_spec
from harness.errors import HarnessError
from harness.paths import CODE_ROOT, PUBLISHED_FILE, path_under
from harness.plan import Plan, RunRequest, plan
from harness.records.leaderboard_files import write_leaderboards
from harness.records.regression import build_expectations, changes, expectations_path, write_expectations
from harness.records.results import RunRecord, load_records
from harness.records.scores import published_form, read_scores
from harness.runner import execute

CACHE_MARKER = ".oodbench-publish"
SLOW_CHECKS = ["-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Published:
    """A benchmark's entry of the published-labels file: its seeds, thread count, drift thread counts (unchecked),
    preset, and labels as (method, `--set` items)."""

    seeds: list[int]
    threads: int | None
    drift_threads: Any
    preset: str
    labels: list[tuple[str, list[str]]]


def read_published(name: str, published_file: Path) -> Published:
    """The entry of benchmark `name` in `published_file`, or one line naming what is wrong."""
    try:
        entries: dict[str, Any] = json.loads(Path(published_file).read_text())[name]
        return Published([int(s) for s in entries["seeds"]], entries.get("threads"),
                         entries.get("drift_threads", []), entries.get("preset", "paper"),
                         [(e["method"], list(e.get("set", []))) for e in entries["labels"]])
    except FileNotFoundError:
        raise HarnessError(f"published-labels file {published_file} does not exist; pass --labels FILE") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise HarnessError(f"{published_file} has no valid entry for {name!r} ({type(err).__name__}: {err}); give "
                           '{"seeds": [...], "labels": [{"method": ..., "set": [...]}]} for it') from None


def published_plans(spec: BenchmarkSpec, benchmark: str, published: Published, out_dir: Path, cache_dir: Path,
                    threads: int | None, device: str) -> list[Plan]:
    """One plan per published label (`benchmark` as given: a name or spec path, planned from the loaded `spec`)."""
    threads = threads if threads is not None else published.threads
    return [plan(RunRequest(methods=[method], benchmark=benchmark, seeds=published.seeds,
                            overrides=parse_set_options(sets), out_dir=out_dir, cache_dir=cache_dir, device=device,
                            threads=threads, preset=published.preset, save_scores=True), spec)
            for method, sets in published.labels]


def check_drift_threads(value: Any, where: str, threads: int | None) -> list[int]:
    """Drift thread counts: a list of distinct integers >= 1 other than the published `threads` (an integer is a
    list of one; 0 or [] measures no drift)."""
    counts = [] if value == 0 else [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                               for c in counts) or len(set(counts)) != len(counts):
        raise HarnessError(f"{where} {value!r} must be distinct thread counts >= 1, e.g. [2, 3] (0 or [] skips "
                           "the drift runs)")
    if threads in counts:
        raise HarnessError(f"{where} {value!r} holds the published thread count {threads}; choose others (e.g. 2 "
                           "and 3 for records published at 1)")
    return counts


def clean_cache_dir(cache_dir: Path | None, benchmark: str) -> Path:
    """A new empty cache directory, or `cache_dir` if it is empty or an earlier publish's (then it resumes)."""
    if cache_dir is None:
        return Path(tempfile.mkdtemp(prefix=f"oodbench-publish-{benchmark}-"))
    cache_dir = Path(cache_dir)
    if cache_dir.is_dir() and any(cache_dir.iterdir()) and not (cache_dir / CACHE_MARKER).exists():
        raise HarnessError(f"--cache-dir {cache_dir} already holds a cache; publish runs from a clean one: pass an "
                           "empty or new directory (or one an interrupted publish used, to resume)")
    return cache_dir


def seed_tasks(plans: list[Plan]) -> list[Plan]:
    """One plan per (label, seed), seeds innermost: parallel workers then start on different seeds (each trains
    its own seed's shared classifier) instead of waiting on one cache lock."""
    return [p.with_request(seeds=[seed]) for p in plans for seed in p.request.seeds]


def run_tasks(tasks: list[Plan], jobs: int) -> None:
    if jobs == 1:
        for task in tasks:
            execute(task)
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(execute, tasks))


def describe(task: Plan) -> str:
    return f"{task.methods[0].label} seed {task.request.seeds[0]}"


def drift_records(plans: list[Plan], staging: Path, cache_dir: Path, threads: int, jobs: int) -> list[RunRecord]:
    """Every published (label, seed) again under `threads` torch threads, from its own clean cache (every stage
    recomputed): the records whose differences from the published ones are the measured drift of a change of
    environment (harness.records.regression)."""
    tasks = [task.with_request(threads=threads, out_dir=staging, cache_dir=cache_dir, save_scores=False)
             for task in seed_tasks(plans)]
    for task in tasks:
        print(f"publish drift: {describe(task)} at {threads} threads")
    run_tasks(tasks, jobs)
    records = load_records(staging, plans[0].spec.name)
    shutil.rmtree(staging)
    return records


def run_slow_checks(tests_dir: Path = CODE_ROOT / "tests") -> dict[str, Any]:
    """The suite's heavy checks (`python -m pytest -m slow`: the end-to-end runs that train small models), which
    `publish` runs before any work, so that numbers are published only from code that passes them. Their output is
    streamed; returns the command, pytest's summary line and the duration, for the expectations file."""
    skip = "publish from a checkout with the dev extra (pip install -e '.[dev]'), or pass --skip-checks"
    if not tests_dir.is_dir():
        raise HarnessError(f"publish runs the slow checks of {tests_dir}, which does not exist: {skip}")
    if importlib.util.find_spec("pytest") is None:
        raise HarnessError(f"publish runs the slow checks with pytest, which is not installed: {skip}")
    command = [sys.executable, *SLOW_CHECKS, tests_dir.name]
    shown = " ".join(["python", *command[1:]])
    print(f"publish: {shown} (in {tests_dir.parent})", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=tests_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    summary = ""
    for line in process.stdout:
        print(line, end="", flush=True)
        summary = line.strip(" =\n") or summary
    if process.wait() != 0:
        raise HarnessError(f"publish: the slow checks did not pass ({summary}); nothing was run or written: fix "
                           "them, or pass --skip-checks to publish anyway")
    return {"command": shown, "summary": summary, "seconds": round(time.perf_counter() - start, 1)}


def publish(benchmark: str, out_dir: Path, published_file: Path = PUBLISHED_FILE, cache_dir: Path | None = None,
            threads: int | None = None, device: str = "auto", jobs: int = 1,
            drift_threads: int | list[int] | None = None, slow_checks: bool = True
            ) -> tuple[list[RunRecord], list[str]]:
    """Run every published label into a staging directory, then replace `<out>/records/<benchmark>` with it and
    rewrite the leaderboard and `<out>/expectations/<benchmark>.json`; returns the records and what changed.

    `jobs` > 1 runs (label, seed) tasks in that many worker processes sharing the cache (its file locks make each
    entry computed once); every task still runs with the labels file's thread count, so the numbers equal a
    one-job publish's. Then every task runs again under each of `drift_threads` thread counts (default: the labels
    file's `drift_threads`; 0 or [] skips them) from a clean cache of its own, and the per-seed differences are
    stored as the expectations' drifts, one per thread count. Before any of it, once every input is validated,
    `run_slow_checks` (unless `slow_checks` is false); the expectations record what it ran and its result."""
    if jobs < 1:
        raise HarnessError(f"--jobs {jobs} must be at least 1")
    spec = load_spec(benchmark)
    name = spec.name
    published = read_published(name, published_file)
    cache_dir = clean_cache_dir(cache_dir, name)
    staging = Path(out_dir) / f".publish-{name}"
    plans = published_plans(spec, benchmark, published, staging, cache_dir, threads, device)
    threads = plans[0].request.threads
    drift_counts = (check_drift_threads(published.drift_threads, f"{published_file}: drift_threads", threads)
                    if drift_threads is None else check_drift_threads(drift_threads, "--drift-threads", threads))
    checks = run_slow_checks() if slow_checks else {"command": "skipped (--skip-checks)"}
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / CACHE_MARKER).touch()
    shutil.rmtree(staging, ignore_errors=True)
    tasks = seed_tasks(plans)
    for task in tasks:
        print(f"publish {name}: {describe(task)} (cache {cache_dir})")
    run_tasks(tasks, jobs)
    drift = []
    for count in drift_counts:
        drift += drift_records(plans, Path(out_dir) / f".publish-{name}-drift", cache_dir / f"drift-{count}",
                               count, max(1, jobs * (threads or 1) // count))
    target = path_under(out_dir, "records", name)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(staging / "records" / name, target)
    shutil.rmtree(staging)
    write_leaderboards(out_dir, [name])
    records = load_records(out_dir, name)
    for record in records:
        path = Path(out_dir) / record.scores_file
        atomic_write_bytes(path, published_form(record, read_scores(path)))
    path = expectations_path(name, Path(out_dir) / "expectations")
    old = json.loads(path.read_text()) if path.is_file() else None
    labels = {r.label for r in records}
    kept = {**(old or {}), "methods": {k: v for k, v in (old or {}).get("methods", {}).items() if k in labels}}
    doc = {**build_expectations(name, records, kept, drift), "slow_checks": checks}
    write_expectations(path, doc)
    return records, changes(old, doc)
