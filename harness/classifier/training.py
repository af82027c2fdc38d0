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
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from harness.cache import atomic_torch_save, load_or_none, write_entry
from harness.classifier.augment import augment, random_resized_crop, to_unit
from harness.classifier.hooks import Stateful, StepBatch, TrainingHook
from harness.classifier.models import Classifier
from harness.data.sets import AnyImageSet, ImageSet
from harness.errors import HarnessError

# Version of the code that trains a classifier and extracts its outputs (cache stages `classifier`, `outputs`):
# bump it when a change alters what they compute (tests/test_stage_versions.py holds it to the sources).
CLASSIFIER_VERSION = 1


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
    grad_clip: float | None = None  # max global gradient norm per step; None = no clipping (the papers' recipes)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"epochs, batch_size and eval_batch_size must be >= 1 (got {self.epochs}, "
                             f"{self.batch_size}, {self.eval_batch_size})")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0 pixels (got {self.crop_padding})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0 (got {self.lr})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or none (got {self.grad_clip})")
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


def save_epoch_checkpoint(path: Path, epoch: int, step: int, model: nn.Module, hooks: Sequence[Stateful],
                          optimizer: torch.optim.Optimizer, generator: torch.Generator, device: torch.device) -> None:
    """Everything needed to continue after `epoch` exactly as an uninterrupted run would (a classifier's or a
    flow's): weights, the states of the hooks (or any `Stateful` the loop keeps, e.g. a loss history),
    optimizer (momentum), the step (the cosine schedule is a function of it), the data-order/augmentation generator
    and the global torch/numpy RNG states; written atomically."""
    write_entry({
        "epoch": epoch, "step": step, "model": model.state_dict(), "hooks": [h.state_dict() for h in hooks],
        "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy_rng": np.random.get_state()}, path)


def resume_epoch_checkpoint(path: Path, model: nn.Module, hooks: Sequence[Stateful],
                            optimizer: torch.optim.Optimizer, generator: torch.Generator,
                            device: torch.device) -> tuple[int, int]:
    """Restore a `save_epoch_checkpoint` state; returns (first epoch to run, step). (0, 0) when there is none (a
    corrupted one is reported in one line and ignored)."""
    state = load_or_none(path, "training checkpoint")
    if state is None:
        return 0, 0
    model.load_state_dict(state["model"])
    for hook, hook_state in zip(hooks, state["hooks"], strict=True):
        hook.load_state_dict(hook_state)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    np.random.set_state(state["numpy_rng"])
    return state["epoch"] + 1, state["step"]


def train_classifier(model: Classifier, train_set: AnyImageSet, config: ClassifierConfig, device: torch.device,
                     seed: int, hooks: Sequence[TrainingHook] = (), desc: str = "train classifier",
                     failure_checkpoint: Path | None = None, checkpoint: Path | None = None) -> Classifier:
    """Train `model` on `train_set` with cross-entropy plus the hooks' losses; returns the model in eval mode.

    On a non-finite loss training stops with a HarnessError naming the epoch, step and loss terms; with
    `failure_checkpoint`, the last good state (model and hook modules at the end of the last finished epoch, or
    the initial state) is first written there. With `checkpoint`, the full training state is written there at the
    end of every epoch and a rerun resumes after the last finished epoch, ending with the same weights as an
    uninterrupted run (the caller removes the file once it has stored the result).
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
    first, step = 0, 0
    if checkpoint is not None:
        first, step = resume_epoch_checkpoint(checkpoint, model, hooks, optimizer, generator, device)
        if first:
            print(f"{desc}: resuming after epoch {first} of {config.epochs} from {checkpoint}", file=sys.stderr)
    last_good = {"epoch": first - 1, **snapshot(model, hooks)} if failure_checkpoint else None
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", leave=False)
    for epoch in range(first, config.epochs):
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
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               config.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        for hook in hooks:
            hook.on_epoch_end(epoch)
        if failure_checkpoint is not None:
            last_good = {"epoch": epoch, **snapshot(model, hooks)}
        if checkpoint is not None and epoch + 1 < config.epochs:
            save_epoch_checkpoint(checkpoint, epoch, step, model, hooks, optimizer, generator, device)
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
