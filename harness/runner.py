"""A run: validate every input up front, then for each seed and method `synthesize -> train -> score`, compute
metrics, write one record per (method, seed) plus a score-histogram PNG, and regenerate the leaderboard."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import Cache
from harness.classifier.training import ClassifierConfig, seed_everything
from harness.config import build_config, changed_fields
from harness.contract import Method, RunContext
from harness.data.benchmarks import Benchmark, load_benchmark
from harness.data.check import DataCheck, check_data, data_problem_message, reads_data_root
from harness.data.spec import BenchmarkSpec, load_spec
from harness.device import resolve_device
from harness.errors import HarnessError
from harness.metrics import METRIC_NAMES, FprRule, Positive, accuracy, ood_metrics
from harness.records.leaderboard import write_leaderboards
from harness.records.plots import save_score_histograms
from harness.records.provenance import environment, numerics_scope, run_settings
from harness.records.results import RunRecord, run_label
from harness.registry import Registered, configure, discover, resolve_methods

CLASSIFIER_SCOPE = "classifier"


@dataclass
class RunRequest:
    methods: list[str]
    benchmark: str = "mnist5k"
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    out_dir: Path = Path("runs")
    cache_dir: Path | None = None
    device: str = "auto"
    fpr_positive: Positive = "id"
    fpr_rule: FprRule = "recall-at-least"
    extra_ood: dict[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    preset: str = "paper"
    allow_incomplete: bool = False
    threads: int | None = None  # torch intra-op threads (None: torch's current value); recorded, changes numerics
    deterministic: bool = False  # deterministic algorithms on GPU (recorded)


def check_writable(directory: Path, option: str) -> None:
    """Fail early, before any work and without creating anything, when `directory` could not be written."""
    existing = Path(directory).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file"
    else:
        try:
            fd, probe = tempfile.mkstemp(dir=existing, prefix=".oodbench-write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            problem = err.strerror
    if problem:
        raise HarnessError(f"cannot write to {directory} ({problem}); choose a writable {option}")


@dataclass
class PlannedMethod:
    cls: type[Method]
    config: Any
    label: str
    registered: Registered  # where the method came from: its identity and what its own stages are keyed by


def preset_classifier(spec: BenchmarkSpec, preset: str) -> dict[str, Any]:
    """The spec's classifier recipe under `preset`: only the epochs are scaled (`epoch_scale`), never below 1."""
    recipe = dict(spec.classifier)
    scale = spec.preset(preset).get("epoch_scale")
    if scale is not None:
        epochs = int(recipe.get("epochs", ClassifierConfig.epochs))
        recipe["epochs"] = max(1, round(epochs * float(scale)))
    return recipe


@dataclass
class Plan:
    methods: list[PlannedMethod]
    classifier: ClassifierConfig
    spec: BenchmarkSpec
    data_root: Path | None
    data: DataCheck


def plan(request: RunRequest) -> Plan:
    """Resolve methods, configs, the benchmark spec and its data on disk; every input error surfaces here, before
    any work (a missing, incomplete or corrupted set stops the run before anything is written)."""
    from harness.data.readers import resolve_data_root

    registry = discover()
    classes = resolve_methods(request.methods, registry)
    spec = load_spec(request.benchmark).with_extra_ood(request.extra_ood)
    spec.preset(request.preset)
    for cls in classes:
        if spec.modality not in cls.modalities:
            raise HarnessError(f"method {cls.info.name} works on {' and '.join(cls.modalities)} benchmarks, but "
                               f"{spec.name} is a {spec.modality} benchmark; pick a {spec.modality} method (see "
                               "`python -m harness list`)")
    scopes = set(request.overrides) - {CLASSIFIER_SCOPE} - {c.info.name for c in classes}
    if scopes:
        raise HarnessError(f"--set {sorted(scopes)[0]}.… names no method in this run; use one of: "
                           f"{', '.join([CLASSIFIER_SCOPE] + [c.info.name for c in classes])}")
    recipe = preset_classifier(spec, request.preset)
    base_classifier = build_config(ClassifierConfig, recipe, f"{spec.name} spec classifier")
    classifier = build_config(ClassifierConfig, {**recipe, **request.overrides.get(CLASSIFIER_SCOPE, {})},
                              CLASSIFIER_SCOPE)
    classifier_changes = {f"classifier.{k}": v for k, v in changed_fields(classifier, base_classifier).items()}
    if request.preset != "paper":
        classifier_changes["preset"] = request.preset
    planned = []
    for cls in classes:
        config, default = configure(cls, spec.family, request.overrides.get(cls.info.name, {}))
        cls.check_config(config, classifier)
        changes = {**changed_fields(config, default), **classifier_changes}
        if getattr(config, "protocol", "paper") != "paper":
            changes["protocol"] = config.protocol
        if request.fpr_positive != "id":
            changes["fpr_positive"] = request.fpr_positive
        if request.fpr_rule != "recall-at-least":
            changes["fpr_rule"] = request.fpr_rule
        if request.extra_ood:  # its averages cover more sets than the benchmark's own: never the same row
            changes["extra_ood"] = "+".join(sorted(request.extra_ood))
        planned.append(PlannedMethod(cls, config, run_label(cls.info.name, changes), registry[cls.info.name]))
    for entry in spec.ood:
        if entry.get("source") == "image_folder" and not Path(entry["path"]).expanduser().is_dir():
            raise HarnessError(f"OOD folder {entry['path']} (set {entry['name']!r}) does not exist; pass an existing "
                               "directory of images")
    if classifier.pretrained and not Path(classifier.pretrained).expanduser().is_file():
        raise HarnessError(f"classifier.pretrained checkpoint {classifier.pretrained} does not exist; pass a local "
                           "checkpoint file")
    data_root = resolve_data_root(request.data_root) if request.data_root or reads_data_root(spec) else None
    data = check_data(spec, data_root)
    problem = data_problem_message(spec, data, request.allow_incomplete)
    if problem:
        raise HarnessError(problem)
    return Plan(planned, classifier, spec, data_root, data)


def checked_scores(method: Method, images: Any, name: str) -> np.ndarray:
    """`method.score(images)` as float64, or one line naming the method, the set and what the contract expects:
    one finite number per item."""
    where = f"{method.info.name}.score on set {name!r}"
    returned = method.score(images)  # an error inside the method is the method's, reported as it is
    try:
        scores = np.asarray(returned, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise HarnessError(f"{where} returned something that is not numbers ({err}); return one float per item") \
            from None
    if scores.shape != (len(images),):
        raise HarnessError(f"{where} returned shape {scores.shape} for {len(images)} items; return one float per "
                           f"item, shape ({len(images)},)")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise HarnessError(f"{where} returned {len(bad)} non-finite scores (first at item {bad[0]}: {scores[bad[0]]}); "
                           "every score must be a finite number, higher = more in-distribution")
    return scores


def evaluate(method: Method, benchmark: Benchmark, positive: Positive,
             rule: FprRule = "recall-at-least") -> tuple[dict, dict, float | None, dict]:
    id_scores = checked_scores(method, benchmark.test, "ID")
    per_set, scores = {}, {"ID": id_scores}
    for name, image_set in benchmark.ood.items():
        ood_scores = checked_scores(method, image_set, name)
        scores[name] = ood_scores
        per_set[name] = ood_metrics(id_scores, ood_scores, positive, rule)
    average = {m: float(np.mean([per_set[s][m] for s in per_set])) for m in METRIC_NAMES}
    predictions = method.predict(benchmark.test)
    if predictions is not None and np.shape(predictions) != (len(benchmark.test),):
        raise HarnessError(f"{method.info.name}.predict returned shape {np.shape(predictions)} for the "
                           f"{len(benchmark.test)} ID test items; return one class index per item, or None")
    id_acc = None if predictions is None else accuracy(predictions, benchmark.test.labels.numpy())
    return per_set, average, id_acc, scores


def execute(request: RunRequest, cache: Cache | None = None) -> list[RunRecord]:
    """Run every (seed, method) of `request` under its thread count and determinism (restored after); `cache`
    defaults to one at `request.cache_dir`."""
    with run_settings(request.threads, request.deterministic):
        return execute_runs(request, cache)


def execute_runs(request: RunRequest, cache: Cache | None) -> list[RunRecord]:
    planned_run = plan(request)
    planned, classifier_config, spec = planned_run.methods, planned_run.classifier, planned_run.spec
    device = resolve_device(request.device)
    out_dir = Path(request.out_dir)
    check_writable(out_dir, "--out")
    if cache is None:
        cache = Cache(request.cache_dir) if request.cache_dir else Cache()
    check_writable(cache.root, "--cache-dir")
    cache = cache.scoped(numerics_scope(device))
    benchmark = load_benchmark(spec, cache, planned_run.data_root, request.preset, planned_run.data)
    incomplete = {row.set: f"{row.count} of {row.expected}" for row in planned_run.data.rows
                  if row.status == "incomplete"}
    data_facts = {**benchmark.provenance, **({"incomplete": incomplete} if incomplete else {})}
    records = []
    for seed in request.seeds:
        context = RunContext(benchmark, seed, device, cache, classifier_config, fpr_positive=request.fpr_positive,
                             fpr_rule=request.fpr_rule)
        for item in planned:
            seed_everything(seed)  # a method's random draws never depend on the methods run before it
            method = item.cls(item.config,
                              dataclasses.replace(context, cache=cache.scoped(*item.registered.cache_scope)))
            timings = {}
            start = time.perf_counter()
            outliers = method.synthesize()
            timings["synthesize"] = time.perf_counter() - start
            seed_everything(seed)
            start = time.perf_counter()
            method.train(outliers)
            timings["train"] = time.perf_counter() - start
            start = time.perf_counter()
            per_set, average, id_acc, scores = evaluate(method, benchmark, request.fpr_positive, request.fpr_rule)
            timings["score"] = time.perf_counter() - start
            record = RunRecord(
                benchmark=spec.name, method=item.cls.info.name, label=item.label, seed=seed,
                paper=item.cls.info.paper, kind=item.cls.info.kind, config=dataclasses.asdict(item.config),
                classifier_config=dataclasses.asdict(classifier_config) if id_acc is not None else None,
                fpr_positive=request.fpr_positive, fpr_rule=request.fpr_rule, metrics=per_set, average=average,
                id_accuracy=id_acc,
                eval_sizes={"ID": len(benchmark.test), **{n: len(s) for n, s in benchmark.ood.items()}},
                stage_seconds={k: round(v, 3) for k, v in timings.items()}, device=str(device),
                details=method.details(), data=data_facts, environment=environment(device),
                plugin=item.registered.identity)
            figure = record.directory(out_dir) / f"seed{seed}_scores.png"
            save_score_histograms(scores, figure, title=f"{item.label} on {spec.name}, seed {seed}")
            extra = method.figures(record.directory(out_dir), f"seed{seed}")
            record.figures = [str(f.relative_to(out_dir)) for f in [figure, *extra]]
            record.save(out_dir)
            records.append(record)
    write_leaderboards(out_dir, [spec.name])
    return records
