"""Your own classifier in place of the baseline one: a timm model name with a checkpoint, a factory
`package.module:function`, a TorchScript .pt/.ts file, or an `nn.Module`, resolved once (`resolve_model`) into a
`ModelSpec` whose `ExternalClassifier` `extract_outputs` reads as it reads the baseline classifier: images in [0, 1]
normalised here, penultimate `features` and the final linear layer `fc`.

The features come from `feature_layer` when one is named (a forward hook on that submodule's output, flattened), else
from OpenOOD's convention (`forward(x, return_feature=True)` -> (logits, features), `get_fc()`), else from timm's
(`forward_features`, `forward_head(x, pre_logits=True)`, `get_classifier()`). The final linear layer is the one the
convention names, else the submodule whose weights map the features to the model's own logits on a probe batch; a
model without one still gives its own logits, and reading `fc.weight` (as ViM and ReAct do) is a one-line error.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from harness.config import content_hash
from harness.errors import HarnessError
from harness.paths import file_sha256

FEATURE_OPTIONS = ("give the model OpenOOD's forward(x, return_feature=True) and get_fc(), or timm's forward_features, "
                   "forward_head(x, pre_logits=True) and get_classifier(), or pass --feature-layer NAME (the submodule "
                   "whose output is the penultimate features)")
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")
ModelKind = Literal["timm", "factory", "torchscript", "module"]


@dataclass(frozen=True)
class ModelRequest:
    """What a person names: a timm model name, a factory `package.module:function` (called with no arguments), a
    TorchScript file or an `nn.Module`; optionally a checkpoint of its weights, the submodule whose output is the
    features, and the normalisation it was trained with (else the model's own, timm's `pretrained_cfg`)."""

    model: str | nn.Module
    checkpoint: Path | None = None
    feature_layer: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ModelLogits(nn.Module):
    """The final layer of a model whose linear head cannot be found: it returns the logits of the forward pass that
    produced the features it is given; `weight` and `bias` are the one-line error `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.last is None or self.last[0] is not features:
            raise RuntimeError("ModelLogits takes the features of the forward pass that ran just before")
        return self.last[1]

    @property
    def weight(self) -> torch.Tensor:
        raise HarnessError(self.reason)

    bias = weight


class OpenOODFeatures:
    """OpenOOD's convention: `forward(x, return_feature=True)` returns (logits, features)."""

    name = "openood"

    def __call__(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        returned = net(x, return_feature=True)
        if not (isinstance(returned, tuple | list) and len(returned) == 2):
            raise HarnessError(f"forward(x, return_feature=True) returned {type(returned).__name__}, not (logits, "
                               f"features); {FEATURE_OPTIONS}")
        logits, features = returned
        return features.flatten(1), logits

    def linear(self, net: nn.Module) -> Any:
        return net.get_fc()


class TimmFeatures:
    """timm's convention: `forward_head(forward_features(x), pre_logits=True)`."""

    name = "timm"

    def __call__(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = net.forward_features(x)
        return net.forward_head(feature_map, pre_logits=True).flatten(1), net.forward_head(feature_map)

    def linear(self, net: nn.Module) -> Any:
        return net.get_classifier() if hasattr(net, "get_classifier") else None


class LayerFeatures:
    """The output of the submodule `layer`, flattened, read by a forward hook during the model's forward pass."""

    def __init__(self, net: nn.Module, layer: str, spec: str) -> None:
        if isinstance(net, torch.jit.ScriptModule):
            raise HarnessError(f"--feature-layer cannot read a submodule of the TorchScript model {spec} (TorchScript "
                               f"takes no forward hooks); {FEATURE_OPTIONS}")
        modules = dict(net.named_modules())
        if not layer or layer not in modules:
            some = ", ".join(name for name, _ in net.named_children())
            raise HarnessError(f"--feature-layer {layer!r} names no submodule of {spec} (its top-level ones: {some}); "
                               f"{FEATURE_OPTIONS}")
        self.layer, self.spec, self.outputs = layer, spec, []
        modules[layer].register_forward_hook(lambda _module, _inputs, output: self.outputs.append(output))

    @property
    def name(self) -> str:
        return f"layer:{self.layer}"

    def __call__(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.outputs.clear()
        logits = net(x)
        if len(self.outputs) != 1 or not isinstance(self.outputs[0], torch.Tensor):
            ran = f"runs {len(self.outputs)} times in one forward pass" if len(self.outputs) != 1 else \
                f"returns a {type(self.outputs[0]).__name__}, not a tensor"
            raise HarnessError(f"--feature-layer {self.layer} of {self.spec} is ambiguous: it {ran}; {FEATURE_OPTIONS}")
        return self.outputs.pop().flatten(1), logits

    def linear(self, net: nn.Module) -> Any:
        return None


FeatureRule = OpenOODFeatures | TimmFeatures | LayerFeatures


class ExternalClassifier(nn.Module):
    """A user's model behind the `Classifier` interface: `features` of images in [0, 1] (normalised here with the
    model's mean/std) found by `rule`, and `fc`, its final linear layer (a `ModelLogits` when there is none)."""

    def __init__(self, net: nn.Module, rule: FeatureRule, fc: nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.net, self.rule, self.fc = net, rule, fc
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1]."""
        features, logits = self.rule(self.net, (x - self.mean) / self.std)
        if isinstance(self.fc, ModelLogits):
            self.fc.last = (features, logits)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    """A user's classifier as a run resolved it: what was named, the SHA-256 its outputs are keyed by, the rule that
    found its features, its final linear layer, its normalisation, and the wrapped model (`classifier`)."""

    spec: str  # the timm name, the factory, the TorchScript file, or the module's class
    kind: ModelKind
    weights_sha256: str  # of the checkpoint, of the TorchScript file, or (no checkpoint) of the state dict
    checkpoint: str | None
    feature_rule: str  # "openood", "timm" or "layer:NAME"
    linear_layer: str | None  # where the final linear layer was found; None: the model's own logits, no fc weights
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalisation: str  # where mean/std come from: "given" or "pretrained_cfg"
    classifier: ExternalClassifier = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        """The model's short name, for run labels: the timm name, the factory function, the file stem, or a module's
        timm architecture or class."""
        if self.kind == "timm":
            return self.spec
        if self.kind == "torchscript":
            return Path(self.spec).stem
        if self.kind == "factory":
            return self.spec.rpartition(":")[2]
        config = getattr(self.classifier.net, "pretrained_cfg", None)  # a timm module names its architecture
        return config["architecture"] if isinstance(config, dict) and config.get("architecture") else \
            self.spec.rpartition(".")[2]

    @property
    def key(self) -> str:
        """The content key of the model's cached outputs: its weights, code, feature rule and normalisation."""
        code = "" if self.kind == "torchscript" else self.spec  # a TorchScript file's hash covers its code
        return content_hash("external-classifier", self.kind, code, self.weights_sha256, self.feature_rule,
                            self.mean, self.std)

    def facts(self) -> dict[str, Any]:
        """What a record states about the model."""
        return {"spec": self.spec, "kind": self.kind, "checkpoint": self.checkpoint,
                "weights_sha256": self.weights_sha256, "feature_rule": self.feature_rule,
                "linear_layer": self.linear_layer, "mean": list(self.mean), "std": list(self.std),
                "normalisation": self.normalisation}


def state_sha256(net: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(net: nn.Module, path: Path, spec: str, num_classes: int, benchmark: str) -> None:
    """Load a state dict (or a checkpoint holding one under `state_dict`) into `net`, every weight, strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the user's to replace)
        raise HarnessError(f"cannot read checkpoint {path} ({type(err).__name__}); pass a torch state dict") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(f"checkpoint {path} holds no state dict (name -> tensor); pass one, or a checkpoint with "
                           "its state dict under 'state_dict'")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        which = f"lacks {len(missing)} weights of it (e.g. {missing[0]})" if missing else \
            f"has {len(unexpected)} weights it lacks (e.g. {unexpected[0]})"
        raise HarnessError(f"checkpoint {path} does not fit {spec}: it {which}; pass a checkpoint of this model")
    for key, value in own.items():
        stored = state[key].shape
        if stored == value.shape:
            continue
        if value.ndim and value.shape[0] == num_classes and stored[1:] == value.shape[1:]:
            raise HarnessError(f"checkpoint {path} has a {stored[0]}-class head ({key}) but {benchmark} has "
                               f"{num_classes} classes; pass a checkpoint trained on {benchmark}'s classes")
        raise HarnessError(f"checkpoint {path} does not fit {spec}: {key} is {tuple(stored)} there, "
                           f"{tuple(value.shape)} in the model; pass a checkpoint of this model")
    net.load_state_dict(state)


def _forward_arguments(net: nn.Module) -> set[str]:
    if isinstance(net, torch.jit.ScriptModule):
        return {argument.name for argument in net.forward.schema.arguments}
    return set(inspect.signature(net.forward).parameters)


def _as_linear(source: Any) -> nn.Linear | None:
    """An `nn.Linear` copy of a layer with a 2-D `weight` (and `bias`) or of a (weight, bias) pair; None otherwise."""
    weight, bias = source if isinstance(source, tuple | list) else (getattr(source, "weight", None),
                                                                  getattr(source, "bias", None))
    if weight is None:
        return None
    weight = torch.as_tensor(weight).detach().float().cpu()
    if weight.ndim != 2:
        return None
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(bias).detach().float())
    return linear


def _maps(linear: nn.Linear, features: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether `linear` maps the probe's features to the model's own logits."""
    if linear.weight.shape != (logits.shape[1], features.shape[1]):
        return False
    mapped = F.linear(features.float(), linear.weight, linear.bias)
    return torch.allclose(mapped, logits.float(), rtol=1e-4, atol=1e-4 * max(1.0, float(logits.abs().max())))


def _final_linear(net: nn.Module, rule: FeatureRule, features: torch.Tensor, logits: torch.Tensor,
                  spec: str) -> tuple[str | None, nn.Module]:
    """(where it was found, the final linear layer), or (None, `ModelLogits`) when no layer maps the features to the
    logits."""
    named = rule.linear(net)
    if named is not None:
        linear = _as_linear(named)
        accessor = "get_fc()" if rule.name == "openood" else "get_classifier()"
        if linear is None or not _maps(linear, features, logits):
            raise HarnessError(f"{accessor} of {spec} does not map its features to its logits; return the final "
                               "linear layer (or its weight and bias), or pass --feature-layer NAME")
        return accessor, linear
    shape = (logits.shape[1], features.shape[1])
    for name, module in net.named_modules():
        weight = getattr(module, "weight", None)  # only a layer of the right shape is copied and tried
        if name and isinstance(weight, torch.Tensor) and tuple(weight.shape) == shape:
            linear = _as_linear(module)
            if _maps(linear, features, logits):
                return name, linear
    return None, ModelLogits(f"no linear layer of {spec} maps its {rule.name} features to its logits, and the "
                             "methods vim and react need its weights; run msp, energy or knn, or name the layer that "
                             "feeds the final linear layer (--feature-layer)")


def _build(request: ModelRequest, channels: int, num_classes: int, benchmark: str) -> tuple[nn.Module, ModelKind, str]:
    """The named model on the CPU, with its checkpoint loaded: (module, kind, spec)."""
    model, checkpoint = request.model, request.checkpoint
    if isinstance(model, nn.Module):
        return copy.deepcopy(model).cpu(), "module", f"{type(model).__module__}.{type(model).__qualname__}"
    if model.endswith(TORCHSCRIPT_SUFFIXES):
        file = Path(model).expanduser()
        if checkpoint is not None:
            raise HarnessError(f"the TorchScript file {model} holds its own weights; drop --checkpoint")
        if not file.is_file():
            raise HarnessError(f"TorchScript file {model} does not exist; pass a file written by torch.jit.save")
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is torch's, not the user's to act on
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(file), map_location="cpu"), "torchscript", str(file.resolve())
        except RuntimeError:
            raise HarnessError(f"{model} is not a TorchScript file (torch.jit.save); for a state dict pass --model "
                               f"NAME --checkpoint {model}") from None
    if ":" in model:
        module_name, _, function = model.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except ModuleNotFoundError as err:
            raise HarnessError(f"cannot import {err.name} for --model {model}; pass package.module:function of an "
                               "importable module") from None
        except AttributeError:
            raise HarnessError(f"module {module_name} has no {function!r} for --model {model}; pass "
                               "package.module:function") from None
        net = factory()
        if not isinstance(net, nn.Module):
            raise HarnessError(f"--model {model} returned a {type(net).__name__}, not a torch nn.Module")
        return net.cpu(), "factory", model
    import timm

    if not timm.is_model(model):
        raise HarnessError(f"--model {model!r} is neither a timm model name, a package.module:function factory, nor a "
                           f"{'/'.join(TORCHSCRIPT_SUFFIXES)} TorchScript file (a checkpoint goes with --checkpoint)")
    if checkpoint is None:
        raise HarnessError(f"timm model {model} needs --checkpoint with its weights (nothing is downloaded; to "
                           "evaluate random weights, pass the module itself to harness.evaluate)")
    return timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=channels), "timm", model


def _normalisation(net: nn.Module, request: ModelRequest, channels: int, spec: str,
                   benchmark: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they come from): the given ones, else the model's `pretrained_cfg`."""
    if (request.mean is None) != (request.std is None):
        raise HarnessError("pass both --mean and --std (mean= and std= in harness.evaluate), one value per channel")
    if request.mean is not None:
        mean, std, source = tuple(request.mean), tuple(request.std), "given"
    else:
        config = getattr(net, "pretrained_cfg", None)
        if not isinstance(config, dict) or not config.get("mean") or not config.get("std"):
            raise HarnessError(f"{spec} declares no normalisation (timm's pretrained_cfg mean/std); pass the mean and "
                               f"std it was trained with, {channels} values each: --mean m1,... --std s1,...")
        mean, std, source = tuple(config["mean"]), tuple(config["std"]), "pretrained_cfg"
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise HarnessError(f"the {source} mean {list(mean)} / std {list(std)} of {spec} do not fit {benchmark}'s "
                           f"{channels}-channel images; pass --mean and --std with one value per channel, std > 0")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), source


def resolve_model(request: ModelRequest, channels: int, image_size: int, num_classes: int,
                  benchmark: str) -> ModelSpec:
    """Build the named model, load its checkpoint, find its features and final linear layer on a probe batch of the
    benchmark's image shape and check its class count: every problem is one line, before any work."""
    net, kind, spec = _build(request, channels, num_classes, benchmark)
    checkpoint = Path(request.checkpoint).expanduser() if request.checkpoint is not None else None
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise HarnessError(f"checkpoint {request.checkpoint} does not exist; pass a local state-dict file")
        load_checkpoint(net, checkpoint, spec, num_classes, benchmark)
    weights = file_sha256(Path(spec)) if kind == "torchscript" else \
        file_sha256(checkpoint) if checkpoint is not None else state_sha256(net)
    mean, std, normalisation = _normalisation(net, request, channels, spec, benchmark)
    net.eval()
    if request.feature_layer is not None:
        rule: FeatureRule = LayerFeatures(net, request.feature_layer, spec)
    elif "return_feature" in _forward_arguments(net) and hasattr(net, "get_fc"):
        rule = OpenOODFeatures()
    elif hasattr(net, "forward_features") and hasattr(net, "forward_head"):
        rule = TimmFeatures()
    else:
        raise HarnessError(f"cannot find the penultimate features of {spec}: {FEATURE_OPTIONS}")
    probe = torch.rand(2, channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    normalised = (probe - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    try:
        with torch.no_grad():
            features, logits = rule(net, normalised)
    except HarnessError:
        raise
    except Exception as err:  # noqa: BLE001  (a model that cannot take the benchmark's images is the user's to fix)
        message = str(err).strip().splitlines()[-1][:160] if str(err).strip() else ""
        raise HarnessError(f"{spec} fails on {benchmark}'s {channels}x{image_size}x{image_size} images "
                           f"({type(err).__name__}: {message}); pass a model that takes them") from None
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise HarnessError(f"{spec} gives {tuple(logits.shape[1:])} logits per image but {benchmark} has "
                           f"{num_classes} classes; pass a classifier whose head has {num_classes} outputs")
    linear_layer, fc = _final_linear(net, rule, features, logits, spec)
    return ModelSpec(spec, kind, weights, str(checkpoint) if checkpoint else None, rule.name, linear_layer, mean, std,
                     normalisation, ExternalClassifier(net, rule, fc, mean, std).eval())
