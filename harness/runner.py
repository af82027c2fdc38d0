"""Executing a plan (`harness.plan`): for each seed and method `synthesize -> train -> score`, compute metrics,
write one record per (method, seed) plus a score-histogram PNG, and regenerate the leaderboard."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.cache import Cache
from harness.classifier.training import seed_everything
from harness.context import RunContext
from harness.contract import Method
from harness.data.benchmarks import Benchmark, load_benchmark
from harness.data.fingerprints import ID_SET, evaluated_sets, identify_sets
from harness.device import resolve_device
from harness.errors import HarnessError
from harness.metrics import FprRule, Positive, accuracy, average_metrics, ood_metrics
from harness.plan import Plan
from harness.records.cost import CostMeter
from harness.records.leaderboard_files import write_leaderboards
from harness.records.plots import save_score_histograms
from harness.records.provenance import environment, numerics_scope, run_settings
from harness.records.results import RunRecord
from harness.records.scores import save_scores
from harness.records.statistics import group_averages


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
    id_scores = checked_scores(method, benchmark.test, ID_SET)
    per_set, scores = {}, {ID_SET: id_scores}
    for name, image_set in benchmark.ood.items():
        ood_scores = checked_scores(method, image_set, name)
        scores[name] = ood_scores
        per_set[name] = ood_metrics(id_scores, ood_scores, positive, rule)
    average = average_metrics(per_set)
    predictions = method.predict(benchmark.test)
    if predictions is not None and np.shape(predictions) != (len(benchmark.test),):
        raise HarnessError(f"{method.info.name}.predict returned shape {np.shape(predictions)} for the "
                           f"{len(benchmark.test)} ID test items; return one class index per item, or None")
    id_acc = None if predictions is None else accuracy(predictions, benchmark.test.labels.numpy())
    return per_set, average, id_acc, scores


def execute(plan: Plan, cache: Cache | None = None) -> list[RunRecord]:
    """Run every (seed, method) of `plan` under its request's thread count and determinism (restored after);
    `cache` defaults to one at the request's `cache_dir`."""
    with run_settings(plan.request.threads, plan.request.deterministic):
        return execute_runs(plan, cache)


def execute_runs(plan: Plan, cache: Cache | None) -> list[RunRecord]:
    request, spec, classifier_config = plan.request, plan.spec, plan.classifier
    device = resolve_device(request.device)
    out_dir = Path(request.out_dir)
    check_writable(out_dir, "--out")
    if cache is None:
        cache = Cache(request.cache_dir) if request.cache_dir else Cache()
    check_writable(cache.root, "--cache-dir")
    cache = cache.scoped(numerics_scope(device))
    benchmark = load_benchmark(spec, cache, plan.data_root, plan.preset, plan.data)
    identities = identify_sets(benchmark, cache, plan.data_root) if request.save_scores else None
    incomplete = {row.set: f"{row.count} of {row.expected}" for row in plan.data.rows if row.status == "incomplete"}
    data_facts = {**benchmark.provenance, **({"incomplete": incomplete} if incomplete else {})}
    # a user's model is recorded instead of the classifier recipe, with the precision its outputs were extracted in
    model_facts = {**plan.model.facts(), "precision": classifier_config.precision} if plan.model else {}
    records = []
    for seed in request.seeds:
        for item in plan.methods:
            context = RunContext(benchmark, seed, device, cache.scoped(*item.registered.cache_scope),
                                 classifier_config, fpr_positive=request.fpr_positive, fpr_rule=request.fpr_rule,
                                 shared_cache=cache, epoch_ratio=plan.epoch_ratio, model=plan.model)
            seed_everything(seed)  # a method's random draws never depend on the methods run before it
            method = item.cls(item.config, context)
            meter = CostMeter(device, cache)
            with meter.stage("synthesize"):
                outliers = method.synthesize()
            seed_everything(seed)
            with meter.stage("train"):
                method.train(outliers)
            with meter.stage("score"):
                per_set, average, id_acc, scores = evaluate(method, benchmark, request.fpr_positive,
                                                            request.fpr_rule)
            record = RunRecord(
                benchmark=spec.name, method=item.cls.info.name, label=item.label, seed=seed,
                paper=item.cls.info.paper, kind=item.cls.info.kind, config=dataclasses.asdict(item.config),
                classifier_config=dataclasses.asdict(classifier_config) if id_acc is not None and plan.model is None
                else None,
                fpr_positive=request.fpr_positive, fpr_rule=request.fpr_rule, metrics=per_set, average=average,
                id_accuracy=id_acc, group_average=group_averages(per_set, spec.ood_groups),
                eval_sizes={name: len(data_set) for name, data_set in evaluated_sets(benchmark).items()},
                stage_seconds=meter.seconds(), cost=meter.as_record(), device=str(device),
                details={**(outliers.facts if outliers is not None else {}), **method.details()},
                data=data_facts, environment=environment(device),
                plugin=item.registered.identity, model=model_facts)
            figure = record.directory(out_dir) / f"seed{seed}_scores.png"
            save_score_histograms(scores, figure, title=f"{item.label} on {spec.name}, seed {seed}")
            extra = method.figures(record.directory(out_dir), f"seed{seed}")
            record.figures = [str(f.relative_to(out_dir)) for f in [figure, *extra]]
            if identities is not None:
                record.scores_file = save_scores(record, out_dir, scores, identities)
            record.save(out_dir)
            records.append(record)
    write_leaderboards(out_dir, [spec.name])
    return records
