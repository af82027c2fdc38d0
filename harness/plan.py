"""A run's plan: the request, the benchmark spec and its preset, the classifier recipe and every method's config,
each resolved once, and the data found on disk. Every input error surfaces while planning, before any work; the
plan is an immutable value that `harness.runner.execute`, `publish` and the regression checks take."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic

from harness.classifier.external import ModelRequest, ModelSpec, resolve_model
from harness.classifier.training import ClassifierConfig
from harness.config import build_config, changed_fields
from harness.contract import ConfigT, Method
from harness.data.check import DataCheck, check_data, data_problem_message, reads_data_root
from harness.data.spec import BenchmarkSpec, Preset, load_spec
from harness.errors import HarnessError
from harness.metrics import FprRule, Positive
from harness.records.results import run_label
from harness.registry import Registered, configure, discover, resolve_methods, smoke_settings

CLASSIFIER_SCOPE = "classifier"
# The request fields that say where and how a planned run executes; every other field enters the plan.
RUN_FIELDS = frozenset({"seeds", "out_dir", "cache_dir", "device", "threads", "deterministic", "save_scores"})


@dataclass(frozen=True)
class RunRequest:
    """What a person asks for: methods, a benchmark, seeds, `--set` overrides by scope, and where and how to run."""

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
    ood_groups: dict[str, str] = field(default_factory=dict)  # extra OOD set name -> "near" or "far"
    id_set: tuple[str, str] | None = None  # (NAME, DIR): the user's own ID set (`BenchmarkSpec.with_id`)
    data_root: Path | None = None
    preset: str = "paper"
    allow_incomplete: bool = False
    threads: int | None = None  # torch intra-op threads (None: torch's current value); recorded, changes numerics
    deterministic: bool = False  # deterministic algorithms on GPU (recorded)
    smoke: bool = False  # every method's smoke settings under the overrides (`Method.smoke_settings`)
    model: ModelRequest | None = None  # your own classifier instead of the baseline one (post-hoc methods only)
    save_scores: bool = False  # write each run's per-sample scores next to its record (harness.records.scores)


@dataclass(frozen=True)
class PlannedMethod(Generic[ConfigT]):
    cls: type[Method[ConfigT]]
    config: ConfigT
    label: str
    registered: Registered  # where the method came from: its identity and what its own stages are keyed by


@dataclass(frozen=True)
class Plan:
    request: RunRequest
    spec: BenchmarkSpec
    preset: Preset
    classifier: ClassifierConfig
    epoch_ratio: Fraction  # the run recipe's epochs over the spec's (`RunContext.recipe`)
    methods: tuple[PlannedMethod, ...]
    data_root: Path | None
    data: DataCheck
    model: ModelSpec | None = None  # the user's classifier (`RunRequest.model`), resolved

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.methods]

    def with_request(self, **changes: Any) -> Plan:
        """The same plan with request fields that do not enter planning changed (`RUN_FIELDS`)."""
        planned = sorted(set(changes) - RUN_FIELDS)
        if planned:
            raise ValueError(f"{planned} change the plan itself: plan the new request")
        return replace(self, request=replace(self.request, **changes))


def plan(request: RunRequest, spec: BenchmarkSpec | None = None) -> Plan:
    """Resolve methods, the benchmark spec (`spec`, when the caller has loaded it already) and its preset, the
    classifier recipe, every method's config and label, and the benchmark's data on disk; every input error
    surfaces here (a missing, incomplete or corrupted set stops the run before anything is written)."""
    from harness.data.readers import resolve_data_root

    registry = discover()
    classes = resolve_methods(request.methods, registry)
    spec = spec or load_spec(request.benchmark)
    if request.id_set:
        spec = spec.with_id(*request.id_set)
    spec = spec.with_extra_ood(request.extra_ood, request.ood_groups)
    preset = spec.preset(request.preset)
    for cls in classes:
        if spec.modality not in cls.modalities:
            raise HarnessError(f"method {cls.info.name} works on {' and '.join(cls.modalities)} benchmarks, but "
                               f"{spec.name} is a {spec.modality} benchmark; pick a {spec.modality} method (see "
                               "`python -m harness list`)")
    trains = [cls.info for cls in classes if cls.info.kind != "post-hoc"]
    if request.model is not None and trains:
        post_hoc = sorted(name for name, entry in registry.items() if entry.cls.info.kind == "post-hoc")
        raise HarnessError(f"method {trains[0].name} trains its own classifier ({trains[0].kind}), so it cannot "
                           f"evaluate your model; with --model run post-hoc methods: {', '.join(post_hoc)} (to start "
                           "it from a checkpoint of the benchmark's backbone: --set classifier.pretrained=PATH)")
    scopes = set(request.overrides) - {CLASSIFIER_SCOPE} - {c.info.name for c in classes}
    if scopes:
        raise HarnessError(f"--set {sorted(scopes)[0]}.… names no method in this run; use one of: "
                           f"{', '.join([CLASSIFIER_SCOPE] + [c.info.name for c in classes])}")
    spec_epochs = int(spec.classifier.get("epochs", ClassifierConfig.epochs))
    recipe = {**spec.classifier, "epochs": preset.scale_epochs(spec_epochs)}
    base_classifier = build_config(ClassifierConfig, recipe, f"{spec.name} spec classifier")
    classifier = build_config(ClassifierConfig, {**recipe, **request.overrides.get(CLASSIFIER_SCOPE, {})},
                              CLASSIFIER_SCOPE)
    common = {f"classifier.{k}": v for k, v in changed_fields(classifier, base_classifier).items()}
    if preset.name != "paper":
        common["preset"] = preset.name
    if request.fpr_positive != "id":
        common["fpr_positive"] = request.fpr_positive
    if request.fpr_rule != "recall-at-least":
        common["fpr_rule"] = request.fpr_rule
    if request.extra_ood:  # its averages cover more sets than the benchmark's own: never the same row
        common["extra_ood"] = "+".join(sorted(request.extra_ood))
    if request.smoke:
        common["smoke"] = True
    model = None
    if request.model is not None:  # its rows never mix with the baseline classifier's, nor other weights'
        if spec.modality != "image":
            raise HarnessError(f"--model evaluates image classifiers, but {spec.name} is a {spec.modality} benchmark")
        model = resolve_model(request.model, spec.channels, spec.image_size, spec.num_classes, spec.name)
        common.update(model=model.name, weights=model.weights_sha256[:8])
    planned = []
    for cls in classes:
        overrides = {**(smoke_settings(cls, spec.family) if request.smoke else {}),
                     **request.overrides.get(cls.info.name, {})}
        config, default = configure(cls, spec.family, overrides)
        cls.check_config(config, classifier)
        changes = {**changed_fields(config, default), **common}
        if getattr(config, "protocol", "paper") != "paper":
            changes["protocol"] = config.protocol
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
    return Plan(request, spec, preset, classifier, Fraction(classifier.epochs, spec_epochs), tuple(planned),
                data_root, data, model)
