"""Classifier training (SGD + Nesterov + per-step cosine schedule) with method hooks, and output extraction.

The trainer knows nothing about any method. A method that regularises training (VOS, NPOS, Dream-OOD, NCIS)
passes `TrainingHook`s: extra trainable modules, extra images to append to each batch (one forward pass over
ID + outliers, shared batch norm), and an extra loss computed from the step's features and logits.

Fast path (any device, used automatically on CUDA): an in-memory training set is moved to the device once as uint8
and augmented there in batches; a file-backed set (ImageNet scale) is decoded by threads one batch ahead into pinned
memory and copied with non-blocking transfers; the model runs in channels_last with bf16 autocast
(`precision: auto` = bf16 on CUDA, fp32 elsewhere), losses in fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from harness.cache import atomic_torch_save
from harness.data import AnyImageSet, ImageSet
from harness.errors import HarnessError
from harness.models import Classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """Training recipe of a classifier (protocols.md: SGD, Nesterov, lr 0.1, cosine per step, wd 5e-4)."""

    backbone: str = "resnet34_cifar"
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    final_lr: float = 1e-6
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    crop_padding: int = 4
    hflip: bool = True
    random_resized_crop: bool = False
    eval_batch_size: int = 500
    pretrained: str = ""
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0 (got {self.lr})")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16 (got {self.precision!r})")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16`, and for `auto` on CUDA; None (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device copy; pinned and non-blocking when the target is a GPU."""
    if batch.device == device:
        return batch
    if device.type == "cuda" and batch.device.type == "cpu":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def augment(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched RandomCrop(size, padding) + optional horizontal flip on a (N, C, H, W) tensor (any dtype; uint8 is
    cheapest), on its device: each image picks one of the (2p+1)^2 windows of its zero-padded copy."""
    n, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W), a view
        images = windows[torch.arange(n, device=images.device), :, dy, dx]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Batched RandomResizedCrop to the input size: per image a box of area fraction U(scale) and log-uniform aspect
    ratio (clamped to the image), resampled bilinearly with `roi_align` (adaptive sampling: one bilinear sample per
    output pixel when enlarging, an average of ceil(box/size)^2 samples when shrinking, which stands in for PIL's
    antialiasing). Unlike torchvision there is no 10-try rejection loop; oversize boxes are clamped instead."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    bw = torch.sqrt(area * torch.exp(log_r)).clamp(1, w)
    bh = torch.sqrt(area / torch.exp(log_r)).clamp(1, h)
    x0 = torch.rand(n, generator=generator) * (w - bw)
    y0 = torch.rand(n, generator=generator) * (h - bh)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + bw, y0 + bh], 1)
    return roi_align(images, boxes.to(images.device, images.dtype), (h, w), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def augmented(images_u8: torch.Tensor, config: ClassifierConfig, generator: torch.Generator) -> torch.Tensor:
    """One training augmentation of a uint8 batch, in [0, 1]: RandomResizedCrop + flip, or RandomCrop + flip."""
    if config.random_resized_crop:
        return augment(random_resized_crop(to_unit(images_u8), generator), 0, config.hflip, generator)
    return to_unit(augment(images_u8, config.crop_padding, config.hflip, generator))


def _prefetched(train_set: AnyImageSet, order: torch.Tensor, batch_size: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, uint8 images on `device`) per batch. In-memory sets are gathered on the device; file-backed sets
    are decoded one batch ahead by a background thread."""
    starts = range(0, len(order), batch_size)
    if isinstance(train_set, ImageSet):
        for start in starts:
            idx = order[start:start + batch_size]
            yield idx, train_set.gather(idx)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(train_set.gather, order[0:batch_size])
        for start in starts:
            idx = order[start:start + batch_size]
            batch = pending.result()
            if start + batch_size < len(order):
                pending = pool.submit(train_set.gather, order[start + batch_size:start + 2 * batch_size])
            yield idx, to_device(batch, device)


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


def cosine_lr(step: int, total_steps: int, lr: float, final_lr: float) -> float:
    return final_lr + 0.5 * (lr - final_lr) * (1 + math.cos(math.pi * step / total_steps))


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def snapshot(model: Classifier, hooks: Sequence[TrainingHook]) -> dict:
    """CPU copy of the classifier's and the hooks' module states."""
    def cpu(state: dict) -> dict:
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    return {"state_dict": cpu(model.state_dict()), "hooks": [[cpu(m.state_dict()) for m in h.modules()] for h in hooks]}


def train_classifier(model: Classifier, train_set: AnyImageSet, config: ClassifierConfig, device: torch.device,
                     seed: int, hooks: Sequence[TrainingHook] = (), desc: str = "train classifier",
                     failure_checkpoint: Path | None = None) -> Classifier:
    """Train `model` on `train_set` with cross-entropy plus the hooks' losses; returns the model in eval mode.

    On a non-finite loss training stops with a HarnessError naming the epoch, step and loss terms; with
    `failure_checkpoint`, the last good state (model and hook modules at the end of the last finished epoch, or
    the initial state) is first written there.
    """
    if train_set.labels is None:
        raise HarnessError(f"training set {train_set.name} has no labels; a classifier needs labelled ID data")
    generator = seed_everything(seed)
    model.to(device, memory_format=torch.channels_last).train()
    params = list(model.parameters()) + [p for hook in hooks for m in hook.modules() for p in m.parameters()]
    for hook in hooks:
        for module in hook.modules():
            module.to(device).train()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    dtype = autocast_dtype(config.precision, device)
    if isinstance(train_set, ImageSet):  # CIFAR scale: the whole uint8 set lives on the device
        train_set = ImageSet(train_set.name, to_device(train_set.images, device), train_set.labels)
    labels = to_device(train_set.labels, device)
    views = max([1, *(hook.views for hook in hooks)])
    probe_only = any(hook.detach_classifier for hook in hooks)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = config.epochs * steps_per_epoch
    step = 0
    last_good = {"epoch": -1, **snapshot(model, hooks)} if failure_checkpoint else None
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    for epoch in range(config.epochs):
        order = torch.randperm(len(train_set), generator=generator)
        for idx, images_u8 in _prefetched(train_set, order, config.batch_size, device):
            x = torch.cat([augmented(images_u8, config, generator) for _ in range(views)])
            batch = StepBatch(epoch, step, x, labels[idx.to(device)].repeat(views))
            extras = [e for e in (hook.extra_images(batch) for hook in hooks) if e is not None]
            inputs = (torch.cat([x, *extras]) if extras else x).contiguous(memory_format=torch.channels_last)
            with autocast(dtype, device):
                features = model.features(inputs)
                logits = model.fc(features)
            features, logits = features.float(), logits.float()
            n = len(x)
            batch.features, batch.logits = features[:n], logits[:n]
            if extras:
                batch.extra_features, batch.extra_logits = features[n:], logits[n:]
            class_logits = model.fc(batch.features.detach()) if probe_only else batch.logits
            loss = F.cross_entropy(class_logits, batch.labels)
            terms = {"ce": loss.detach()}
            for hook in hooks:
                extra, named = hook.loss(batch, model)
                if extra is not None:
                    loss = loss + extra
                terms.update(named)
            if not torch.isfinite(loss):
                shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                kept = ""
                if failure_checkpoint is not None:
                    atomic_torch_save(last_good, failure_checkpoint)
                    kept = f"; last good state (end of epoch {last_good['epoch']}) saved to {failure_checkpoint}"
                bar.close()
                raise HarnessError(f"{desc}: non-finite loss at epoch {epoch} step {step} ({shown}){kept}; "
                                   "lower the learning rate or the regulariser weight")
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total, config.lr, config.final_lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        for hook in hooks:
            hook.on_epoch_end(epoch)
        if failure_checkpoint is not None:
            last_good = {"epoch": epoch, **snapshot(model, hooks)}
    bar.close()
    return model.eval()


@torch.no_grad()
def extract_outputs(model: Classifier, images: AnyImageSet, device: torch.device, batch_size: int = 500,
                    desc: str | None = None, precision: str = "auto") -> dict[str, np.ndarray]:
    """Penultimate features and logits of every image, as float32 numpy arrays."""
    model.to(device, memory_format=torch.channels_last).eval()
    dtype = autocast_dtype(precision, device)
    feats, logits = [], []
    batches = images.batches(batch_size)
    if desc:
        batches = tqdm(batches, total=math.ceil(len(images) / batch_size), desc=desc, leave=False)
    for batch in batches:
        x = to_unit(to_device(batch, device)).contiguous(memory_format=torch.channels_last)
        with autocast(dtype, device):
            f = model.features(x)
            out = model.fc(f)
        feats.append(f.float().cpu())
        logits.append(out.float().cpu())
    return {"features": torch.cat(feats).numpy(), "logits": torch.cat(logits).numpy()}
