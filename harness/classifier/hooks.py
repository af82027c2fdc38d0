"""What a method adds to classifier training: `TrainingHook` (extra modules, extra images in the same forward pass,
extra loss, checkpointable state), the `StepBatch` it sees, and the start epoch of a regulariser."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from harness.classifier.models import Classifier
from harness.errors import HarnessError


@dataclass
class StepBatch:
    """What a hook sees at each training step."""

    epoch: int
    step: int
    images: torch.Tensor          # ID images in [0, 1] after augmentation
    labels: torch.Tensor
    features: torch.Tensor | None = None     # penultimate features of ID images
    logits: torch.Tensor | None = None       # logits of ID images
    extra_features: torch.Tensor | None = None  # features of the hook's extra images (same forward pass)
    extra_logits: torch.Tensor | None = None


class TrainingHook:
    """Base class for a method's additions to classifier training; every method is optional.

    Two class attributes change the step itself: `views` (each ID image enters the batch as this many independent
    augmentations, labels repeated; the trainer uses the largest over its hooks) and `detach_classifier` (the
    cross-entropy trains `fc` alone on detached features, a linear probe, so only the hooks' losses train the
    encoder; used by CIDER-style objectives)."""

    views: int = 1
    detach_classifier: bool = False

    def modules(self) -> Sequence[nn.Module]:
        """Extra trainable modules, optimised together with the classifier."""
        return ()

    def extra_images(self, batch: StepBatch) -> torch.Tensor | None:
        """Images in [0, 1] to append to the ID batch (one forward pass), or None."""
        return None

    def loss(self, batch: StepBatch, model: Classifier) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Extra loss term added to the cross-entropy, with named (detached) terms for logging and error messages."""
        return None, {}

    def on_epoch_end(self, epoch: int) -> None:
        return None

    def training_record(self) -> dict[str, Any] | None:
        """Facts about the finished training the hook wants kept with the cached classifier (e.g. a per-epoch
        loss record), JSON-like; None by default. `load_training_record` restores them on a cache hit."""
        return None

    def load_training_record(self, record: dict[str, Any]) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """What an epoch checkpoint stores to resume the hook: its modules' states, the states of the components it
        holds (any attribute that implements `Stateful`, e.g. an outlier source with its own generator), and its
        attributes that are tensors, generators, plain values or lists and dicts of them (queues, counters, RNGs,
        per-epoch histories). Override both methods for other state."""
        state: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, nn.Module):
                state[name] = ("module", value.state_dict())
            elif isinstance(value, Stateful):
                state[name] = ("component", value.state_dict())
            elif isinstance(value, torch.Generator):
                state[name] = ("generator", value.get_state())
            elif isinstance(value, torch.Tensor):
                state[name] = ("tensor", value.detach().clone())
            elif _plain(value):
                state[name] = ("value", copy.deepcopy(value))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, (kind, value) in state.items():
            if kind in ("module", "component"):
                getattr(self, name).load_state_dict(value)
            elif kind == "generator":
                getattr(self, name).set_state(value)
            else:
                setattr(self, name, value)


@runtime_checkable
class Stateful(Protocol):
    """A component a hook holds whose state an epoch checkpoint must carry (its random generators above all): it
    says what that state is, so nothing nested is missed by looking only at the hook's own attributes."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _plain(value: Any) -> bool:
    """None, a bool, number or string, or a list, tuple or str-keyed dict of plain values."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def hook_seed(seed: int, name: str) -> int:
    """A seed of its own for a hook's random draws (module initialisation, sampling), derived from the run seed and
    the draw's name: the hook never consumes torch's global stream, which the classifier's initialisation uses, nor
    shares a stream with the trainer's data-order generator (seeded with the run seed itself)."""
    digest = hashlib.sha256(f"{name}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def regulariser_start_epoch(method: str, start_epoch: int | None, start_fraction: float, epochs: int) -> int:
    """First (0-based) epoch of a regulariser: `start_epoch` when given, else `floor(start_fraction * epochs)`, so
    the papers' schedules (VOS 40 of 100, NPOS 200 of 500) scale with any recipe. An explicit start at or after the
    last epoch is a HarnessError (no outlier would ever be used)."""
    if start_epoch is None:
        return int(start_fraction * epochs)
    if start_epoch >= epochs:
        raise HarnessError(f"{method}.start_epoch={start_epoch} is not before the classifier's {epochs} epochs, so "
                           f"no outlier would ever be used; lower {method}.start_epoch or leave it unset "
                           f"({method}.start_fraction={start_fraction} of the epochs)")
    return start_epoch
