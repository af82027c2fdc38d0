"""The energy regulariser shared by VOS, Dream-OOD and NCIS, as one `TrainingHook`.

    L = CE(f(x), y) + beta * CE(phi(E(x)), b),   b = 1 for ID inputs, 0 for outliers

(VOS eq. 5 in its logistic form; Dream-OOD eq. 7; NCIS sec. 3.5). E is the negative free energy logsumexp of the
logits, or VOS's learnable weighted logsumexp log sum_k relu(w_k) exp(f_k) (`weighted_energy=True`); phi maps the
scalar energy to two logits: `Linear(1, 2)` ("linear", the CIFAR scripts), `Linear(1,512)-ReLU-Linear(512,2)`
("mlp", the Dream-OOD/NCIS ImageNet scripts) or three linear layers `Linear(1,512)-ReLU-Linear(512,512)-ReLU-
Linear(512,2)` ("mlp3", the "three-layer nonlinear MLP" of the Dream-OOD paper below eq. 7; the paper gives no width).

Outliers come from one of two sources, each a callable of the step's `StepBatch`:

- `outlier_images(batch) -> Tensor | None`: images in [0, 1] (N, C, H, W) at the ID resolution. They are appended
  to the ID batch through `TrainingHook.extra_images`, so ID and outliers share ONE forward pass (and batch norm),
  as in the Dream-OOD/NCIS training scripts; their logits arrive as `batch.extra_logits`.
- `outlier_features(batch, model) -> Tensor | None`: penultimate feature vectors (VOS, NPOS-style synthesis); their
  logits are `model.fc(features)`, so the gradient reaches the classifier head through them.

A source returns None while it has nothing to give (e.g. its feature queues are not full yet); the step then has no
regularisation term. The term is active from epoch `start_epoch` on (0-based, as in the official scripts); a
method whose config sets it as `start_epoch` / `start_fraction` (VOS, NPOS) resolves it through
`DelayedRegulariserMethod`.

The regulariser leaves the classifier's own random stream alone: phi and the energy weights are initialised from a
generator of their own (`seed`, the run seed, through `hook_seed`), never from torch's global generator. With
`beta == 0` the term is computed for the record only (no graph), so the classifier's gradients are exactly those of
the cross-entropy and training is bit-identical to the plain baseline classifier's.

Per epoch the hook records the mean term CE(phi(E), b) and phi's binary accuracy (ID vs outlier) over the steps that
used the term (`history`, None for epochs without any, e.g. before `start_epoch`); the record is cached with the
trained classifier (`training_record`), so a cache hit still reports it.

At test time `score(logits)` returns the configured `test_score`: "energy" (plain logsumexp of the logits, what the
VOS and Dream-OOD test scripts use) or "phi" (the ID-vs-outlier logit of phi(E(x)), phi's log-odds of b = 1, the score
the Dream-OOD/NCIS papers describe). Methods record the choice in their config.

Typical use (a method plugin):

    reg = EnergyRegularizer(num_classes, beta=2.5, phi="linear", outlier_images=my_outlier_batch)
    trained = context.train_classifier("dream-ood", hooks=[reg], key_parts=[config, outliers_fingerprint])
    scores = reg.score(trained.model(images))   # after training, reg's modules hold the trained phi / weights
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness.classifier.hooks import StepBatch, TrainingHook, hook_seed, regulariser_start_epoch
from harness.classifier.models import Classifier
from harness.classifier.training import ClassifierConfig
from harness.components.outlier_images import OutlierImageSource
from harness.components.scores import energy_score
from harness.context import TrainedClassifier
from harness.contract import ConfigT, Method, Outliers
from harness.data.sets import AnyImageSet
from harness.errors import HarnessError
from harness.records.plots import save_regulariser_curves

PhiKind = Literal["linear", "mlp", "mlp3"]
TestScore = Literal["energy", "phi"]
ImageSource = Callable[[StepBatch], torch.Tensor | None]
FeatureSource = Callable[[StepBatch, Classifier], torch.Tensor | None]
# Part of every energy-regularised classifier's cache key: 2 = phi / energy weights from their own seeded generator
# (was: torch's global stream), beta = 0 without a graph; a classifier trained by older code is not reused.
REGULARIZER_VERSION = 2


def build_phi(kind: PhiKind, hidden: int = 512) -> nn.Module:
    """The energy-to-logits map: Linear(1, 2), or an MLP with one ("mlp") or two ("mlp3") hidden ReLU layers."""
    if kind == "linear":
        return nn.Linear(1, 2)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    if kind == "mlp3":
        return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 2))
    raise HarnessError(f"unknown phi {kind!r}; choose linear, mlp or mlp3")


PhiOrientation = Literal["free", "anchored"]


class MonotonePhi(nn.Module):
    """phi with the papers' intended orientation built in: its log-odds of "ID", g(E), is non-decreasing in E (the
    logsumexp), so a higher logsumexp can only mean more ID. Same depth and width as `build_phi(kind)`; every weight
    is softplus of a free parameter divided by the layer's fan-in, and the activations are ReLU (monotone), so
    g' >= 0. The first layer's biases start uniform on [-10, 10], spreading the units' kinks over the range of
    logsumexps a classifier produces. Outputs the two logits (-g/2, g/2), whose difference is g, for the same
    cross-entropy as the free phi."""

    def __init__(self, kind: PhiKind, hidden: int = 512) -> None:
        super().__init__()
        widths = {"linear": [1, 1], "mlp": [1, hidden, 1], "mlp3": [1, hidden, hidden, 1]}.get(kind)
        if widths is None:
            raise HarnessError(f"unknown phi {kind!r}; choose linear, mlp or mlp3")
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(n_out, n_in)) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(n)) for n in widths[1:]])
        if len(widths) > 2:
            nn.init.uniform_(self.biases[0], -10.0, 10.0)

    def forward(self, energies: torch.Tensor) -> torch.Tensor:
        h = energies
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = F.linear(h, F.softplus(weight) / weight.shape[1], bias)
            if i < len(self.weights) - 1:
                h = F.relu(h)
        return torch.cat([-h / 2, h / 2], dim=1)


class WeightedLogSumExp(nn.Module):
    """VOS's learnable energy log sum_k relu(w_k) exp(f_k) (official `log_sum_exp` with `weight_energy`,
    a Linear(C, 1) whose weight is initialised uniform on [0, 1))."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(1, num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        peak = logits.max(dim=1, keepdim=True).values
        weighted = (F.relu(self.weight) * torch.exp(logits - peak)).sum(dim=1)
        return peak.squeeze(1) + torch.log(weighted)


class EnergyRegularizer(TrainingHook):
    """beta * CE(phi(E(x)), b) over the ID batch and the step's outliers (module docstring has the full API)."""

    def __init__(self, num_classes: int, beta: float, phi: PhiKind = "linear", weighted_energy: bool = False,
                 start_epoch: int = 0, test_score: TestScore = "energy",
                 outlier_images: ImageSource | None = None, outlier_features: FeatureSource | None = None,
                 seed: int = 0, orientation: PhiOrientation = "free") -> None:
        if beta < 0:
            raise HarnessError(f"energy regulariser weight beta={beta} is negative; use beta >= 0")
        if start_epoch < 0:
            raise HarnessError(f"energy regulariser start epoch {start_epoch} is negative; use 0 or more")
        if (outlier_images is None) == (outlier_features is None):
            raise HarnessError("the energy regulariser needs exactly one outlier source: images or features")
        if test_score not in ("energy", "phi"):
            raise HarnessError(f"unknown test score {test_score!r}; choose energy or phi")
        if orientation not in ("free", "anchored"):
            raise HarnessError(f"unknown phi orientation {orientation!r}; choose free (the papers' phi) or anchored")
        self.beta = beta
        self.start_epoch = start_epoch
        self.test_score = test_score
        with torch.random.fork_rng(devices=[]):  # the global stream (the classifier's) is left where it was
            torch.manual_seed(hook_seed(seed, "energy-regulariser"))
            self.phi = build_phi(phi) if orientation == "free" else MonotonePhi(phi)
            self.weighted = WeightedLogSumExp(num_classes) if weighted_energy else None
        self.outlier_images = outlier_images
        self.outlier_features = outlier_features
        self.history: list[dict[str, Any]] = []   # one entry per finished epoch
        self._loss_sum = 0.0
        self._accuracy_sum = 0.0
        self._steps = 0

    def modules(self) -> Sequence[nn.Module]:
        return [self.phi] if self.weighted is None else [self.phi, self.weighted]

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """E(x) used inside the regulariser: plain or weighted logsumexp of the logits."""
        return torch.logsumexp(logits, dim=1) if self.weighted is None else self.weighted(logits)

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def extra_images(self, batch: StepBatch) -> torch.Tensor | None:
        if self.outlier_images is None or not self.active(batch.epoch):
            return None
        return self.outlier_images(batch)

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not self.active(batch.epoch):
            return None, {}
        if self.outlier_features is not None:
            features = self.outlier_features(batch, model)
            outlier_logits = None if features is None else model.fc(features)
        else:
            outlier_logits = batch.extra_logits
        if outlier_logits is None or len(outlier_logits) == 0:
            return None, {}
        if self.beta == 0:  # for the record only: no graph, so the classifier's gradients are exactly CE's
            with torch.no_grad():
                term, accuracy = self._binary(batch.logits.detach(), outlier_logits.detach())
        else:
            term, accuracy = self._binary(batch.logits, outlier_logits)
        self._loss_sum = self._loss_sum + term.detach()  # tensors: no device sync per step
        self._accuracy_sum = self._accuracy_sum + accuracy
        self._steps += 1
        return (None if self.beta == 0 else self.beta * term), {"energy_reg": term.detach()}

    def binary_loss(self, id_logits: torch.Tensor, outlier_logits: torch.Tensor) -> torch.Tensor:
        """CE(phi(E), b) averaged over ID (b = 1) and outlier (b = 0) rows together, as in the official scripts."""
        return self._binary(id_logits, outlier_logits)[0]

    def _binary(self, id_logits: torch.Tensor, outlier_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The term CE(phi(E), b) and phi's (detached) accuracy at telling ID (b = 1) from outliers (b = 0)."""
        energies = self.energy(torch.cat([id_logits, outlier_logits]))
        targets = torch.cat([torch.ones(len(id_logits), dtype=torch.long, device=id_logits.device),
                             torch.zeros(len(outlier_logits), dtype=torch.long, device=id_logits.device)])
        out = self.phi(energies[:, None])
        accuracy = (out.detach().argmax(1) == targets).float().mean()
        return F.cross_entropy(out, targets), accuracy

    def on_epoch_end(self, epoch: int) -> None:
        """Close the epoch's record: mean term and head accuracy over its steps with a term (None without any)."""
        steps = self._steps
        self.history.append({"epoch": epoch, "steps": steps,
                             "loss": float(self._loss_sum) / steps if steps else None,
                             "head_accuracy": float(self._accuracy_sum) / steps if steps else None})
        self._loss_sum, self._accuracy_sum, self._steps = 0.0, 0.0, 0

    @property
    def steps_with_term(self) -> int:
        """Training steps (all epochs so far) that computed the regularisation term."""
        return sum(h["steps"] for h in self.history) + self._steps

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": ("value", [dict(h) for h in self.history])}

    def training_record(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_training_record(self, record: dict[str, Any]) -> None:
        self.history = [dict(h) for h in record.get("history", [])]

    def record(self) -> dict[str, list]:
        """The per-epoch record as lists indexed by epoch (for `details()`): loss, head accuracy, steps."""
        rounded = [None if h["loss"] is None else round(h["loss"], 6) for h in self.history]
        accuracy = [None if h["head_accuracy"] is None else round(h["head_accuracy"], 6) for h in self.history]
        return {"epoch": [h["epoch"] for h in self.history], "loss": rounded, "head_accuracy": accuracy,
                "steps": [h["steps"] for h in self.history], "start_epoch": self.start_epoch, "beta": self.beta}

    @torch.no_grad()
    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Test score, higher = more ID: plain energy, or phi's log-odds of "ID" at E(x)."""
        if self.test_score == "energy":  # float64, the very function the energy method scores with
            return torch.from_numpy(energy_score(logits.detach().cpu().numpy()))
        logits = logits.to(next(self.phi.parameters()).device)
        out = self.phi(self.energy(logits)[:, None])
        return out[:, 1] - out[:, 0]


def check_start_settings(start_epoch: int | None, start_fraction: float) -> None:
    """ValueError unless `start_epoch` is None or >= 0 and `start_fraction` lies in [0, 1): the start settings of a
    `DelayedRegulariserMethod`'s config."""
    if start_epoch is not None and start_epoch < 0:
        raise ValueError(f"start_epoch={start_epoch} must be >= 0")
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start_fraction={start_fraction} must lie in [0, 1)")


class DelayedRegulariserMethod(Method[ConfigT]):
    """A method whose regulariser starts at its config's `start_epoch`, or at `start_fraction` of the classifier's
    epochs when that is None (VOS 40 of 100, NPOS 200 of 500); an explicit start at or after the last epoch is refused
    when the run is planned (`regulariser_start_epoch`)."""

    @classmethod
    def check_config(cls, config: ConfigT, classifier: ClassifierConfig) -> None:
        regulariser_start_epoch(cls.info.name, config.start_epoch, config.start_fraction, classifier.epochs)

    def start_epoch(self) -> int:
        """The regulariser's first (0-based) epoch under the run's classifier recipe."""
        c = self.config
        return regulariser_start_epoch(self.info.name, c.start_epoch, c.start_fraction,
                                       self.context.classifier_config.epochs)


class EnergyRegularizedMethod(Method[ConfigT]):
    """A method whose detector is a classifier trained with an `EnergyRegularizer` (VOS, Dream-OOD, NCIS): `train` sets
    `self.classifier` and `self.regularizer`; scores are the regulariser's test score of the cached logits."""

    classifier: TrainedClassifier
    regularizer: EnergyRegularizer

    def train_with_outlier_images(self, purpose: str, outliers: Outliers | None, recipe: ClassifierConfig,
                                  key_parts: Sequence[Any]) -> None:
        """Pixel-space synthesis training (Dream-OOD eq. 7, NCIS eq. 12-13): `recipe`'s classifier on ID +
        `outliers` in one forward pass per step, outliers brought to the ID size by the config's `outlier_resize`,
        the regulariser with the config's `beta`, `phi`, `test_score`; cached under `purpose` and `key_parts`."""
        if outliers is None:
            raise HarnessError(f"{self.info.name} trains on its synthesised outliers; run synthesize first")
        ctx, c = self.context, self.config
        self.outliers = outliers
        source = OutlierImageSource(outliers.data, recipe.batch_size, ctx.benchmark.spec.image_size,
                                    c.outlier_resize, recipe.crop_padding, recipe.hflip, ctx.seed)
        self.regularizer = EnergyRegularizer(ctx.benchmark.spec.num_classes, c.beta, c.phi, test_score=c.test_score,
                                             outlier_images=source, seed=ctx.seed, orientation=c.phi_orientation)
        self.classifier = ctx.train_classifier(purpose, recipe, hooks=[self.regularizer],
                                               key_parts=[*key_parts, REGULARIZER_VERSION])

    def regulariser_details(self) -> dict[str, Any]:
        """The regulariser's per-epoch record (mean term and head accuracy over the steps using it) and its
        orientation on the ID test set; none before `train` built the regulariser."""
        regularizer = getattr(self, "regularizer", None)
        if regularizer is None:
            return {}
        trained = getattr(self, "classifier", None) is not None
        return {"regulariser": {**regularizer.record(), **(self.orientation() if trained else {})}}

    @torch.no_grad()
    def orientation(self) -> dict[str, float | bool]:
        """Which way phi separates: its log-odds of "ID" at the ID test set's median E(x) +- 1. The loss of eq. 7
        (Dream-OOD) is met equally with ID energies above or below the outliers' (softmax cross-entropy leaves the
        level of the logsumexp free), so a seed can train the inverted orientation, where a higher logsumexp means
        OOD and the plain energy score ranks backwards."""
        energies = self.regularizer.energy(self._logits(self.context.benchmark.test))
        median = float(energies.median())
        grid = torch.tensor([[median - 1.0], [median + 1.0]], dtype=energies.dtype)
        out = self.regularizer.phi(grid.to(next(self.regularizer.phi.parameters()).device)).double().cpu()
        slope = float((out[1, 1] - out[1, 0]) - (out[0, 1] - out[0, 0])) / 2
        return {"id_energy_median": round(median, 4), "phi_log_odds_slope_at_id": round(slope, 4),
                "inverted": slope < 0}

    def regulariser_figure(self, directory: Path, stem: str) -> list[Path]:
        """`<stem>_regulariser.png`: the term and phi's accuracy per epoch; none when no epoch used the term."""
        record = self.regulariser_details().get("regulariser")
        if record is None or all(v is None for v in record["loss"]):
            return []
        path = directory / f"{stem}_regulariser.png"
        save_regulariser_curves(record, path, title=f"{self.info.name} regulariser, beta={record['beta']}")
        return [path]

    def _logits(self, images: AnyImageSet) -> torch.Tensor:
        return torch.from_numpy(self.context.outputs(self.classifier, images).logits)

    def score(self, images: AnyImageSet) -> np.ndarray:
        return self.regularizer.score(self._logits(images)).cpu().double().numpy()

    def predict(self, images: AnyImageSet) -> np.ndarray:
        return self._logits(images).argmax(1).numpy()
