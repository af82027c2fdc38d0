"""Normalizing-flow building blocks (the flow paper, "Correcting the Bias of Normalizing Flows by Synthetic
Outliers"): FrEIA `AllInOneBlock` flows, log-likelihoods, the dual loss.

Data scaling (fixed; it matters because the softplus margin of eq. 3 sits at log p = 0 nats):
uint8 pixels v in {0..255} become x = (v + u) / 256 in [0, 1]^D, with u ~ U(0, 1) during training (uniform
dequantization) and u = 0.5 at evaluation. log p(x) is the continuous density on [0, 1]^D in nats, so
bits/dim of the discrete image = -log p(x) / (D ln 2) + 8, and the margin log p(x') = 0 sits exactly at 8 bits/dim.

The Figure 2 toy and the Table 4 command line are in `methods.flow.figure`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError

PIXEL_LEVELS = 256
LOG_2PI = math.log(2 * math.pi)


# --- architecture ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlowSpec:
    """Everything needed to rebuild a flow: input shape (C, H, W) for images or (D,) for vectors, depth, width."""

    input_shape: tuple[int, ...]
    blocks: int = 8
    hidden: int = 128
    haar: bool = True
    subnet_layers: int = 2  # images: number of 3x3 convs; vectors: number of linear layers

    def __post_init__(self) -> None:
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"flow input_shape must be (C, H, W) or (D,), got {self.input_shape}")
        if self.blocks < 1 or self.hidden < 1 or self.subnet_layers < 2:
            raise ValueError("flow needs blocks >= 1, hidden >= 1 and subnet_layers >= 2")
        split_dim = self.input_shape[0] * (4 if self.haar and len(self.input_shape) == 3 else 1)
        if split_dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 channels/features to split, got {split_dim}; "
                             "enable haar downsampling for 1-channel images")
        if self.haar and len(self.input_shape) == 3 and (self.input_shape[1] % 2 or self.input_shape[2] % 2):
            raise ValueError(f"haar downsampling needs even height and width, got {self.input_shape[1:]}")

    @property
    def dims(self) -> int:
        return int(np.prod(self.input_shape))


def conv_subnet(hidden: int, layers: int) -> Callable[[int, int], nn.Module]:
    """Paper: 3x3 convs with ReLU between them; the last conv starts at zero so every block starts as identity."""
    def make(c_in: int, c_out: int) -> nn.Module:
        mods: list[nn.Module] = []
        width = c_in
        for _ in range(layers - 1):
            mods += [nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU()]
            width = hidden
        last = nn.Conv2d(width, c_out, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(*mods, last)
    return make


def linear_subnet(hidden: int, layers: int) -> Callable[[int, int], nn.Module]:
    """Vectors (paper: width 768 on text features; Appendix A toy: 3 x 256 with ReLU); last layer zero-initialised."""
    def make(c_in: int, c_out: int) -> nn.Module:
        mods: list[nn.Module] = []
        width = c_in
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        last = nn.Linear(width, c_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return nn.Sequential(*mods, last)
    return make


def build_flow(spec: FlowSpec) -> nn.Module:
    """FrEIA SequenceINN: [HaarDownsampling] + `blocks` x AllInOneBlock (affine coupling, soft permutation off)."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    flow = Ff.SequenceINN(*spec.input_shape)
    if len(spec.input_shape) == 3:
        if spec.haar:
            flow.append(Fm.HaarDownsampling)
        subnet = conv_subnet(spec.hidden, spec.subnet_layers)
    else:
        subnet = linear_subnet(spec.hidden, spec.subnet_layers)
    for _ in range(spec.blocks):
        flow.append(Fm.AllInOneBlock, subnet_constructor=subnet, affine_clamping=2.0)
    return flow


class Flow(nn.Module):
    """A flow plus its spec; `log_prob(x)` is log p(x) in nats (standard normal base, eq. 2)."""

    def __init__(self, spec: FlowSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inn = build_flow(spec)

    def forward_with_logdet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_jac = self.inn(x)
        if not torch.is_tensor(log_jac):  # FrEIA 0.2 returns a Python float 0.0 when every block is volume-preserving
            log_jac = torch.full((x.shape[0],), float(log_jac), device=x.device, dtype=x.dtype)
        return z, log_jac

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, log_jac = self.forward_with_logdet(x)
        z = z.flatten(1)
        return -0.5 * (z.pow(2).sum(1) + z.shape[1] * LOG_2PI) + log_jac

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x, _ = self.inn(z, rev=True)
        return x

    def checkpoint(self) -> dict[str, Any]:
        """A state_dict plus the spec (FrEIA modules do not pickle reliably: never save the whole model)."""
        return {"spec": asdict(self.spec), "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_checkpoint(cls, stored: dict[str, Any]) -> Flow:
        spec = dict(stored["spec"])
        spec["input_shape"] = tuple(spec["input_shape"])
        flow = cls(FlowSpec(**spec))
        flow.load_state_dict(stored["state_dict"])
        return flow.eval()


# --- scaling and units -----------------------------------------------------------------------------------------------

def scale_pixels(images: torch.Tensor, dequantize: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (or float in 0..255) -> x = (v + u)/256 in [0, 1]; u ~ U(0,1) from `dequantize`, else u = 0.5."""
    v = images.float()
    if dequantize is None:
        return (v + 0.5) / PIXEL_LEVELS
    return (v + torch.rand(v.shape, generator=dequantize, device="cpu").to(v.device)) / PIXEL_LEVELS


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats (e.g. synthesised outliers) -> pixel values in 0..255 (float), for `scale_pixels`."""
    return (x * (PIXEL_LEVELS - 1)).clamp(0, PIXEL_LEVELS - 1)


def bits_per_dim(log_prob: torch.Tensor | np.ndarray, dims: int) -> torch.Tensor | np.ndarray:
    """Discrete bits/dim of 8-bit data from the continuous log p (nats) of x = (v+u)/256: -log p/(D ln 2) + 8."""
    return -log_prob / (dims * math.log(2)) + math.log2(PIXEL_LEVELS)


# --- loss (eq. 2-3) --------------------------------------------------------------------------------------------------

@dataclass
class DualLoss:
    """Terms of one step: mean NLL of ID samples (eq. 2) and mean softplus(log p(x')) of outliers (eq. 3)."""

    id_nll: torch.Tensor
    outlier_softplus: torch.Tensor | None

    @property
    def total(self) -> torch.Tensor:
        return self.id_nll if self.outlier_softplus is None else self.id_nll + self.outlier_softplus

    def describe(self) -> str:
        sp = "none" if self.outlier_softplus is None else f"{self.outlier_softplus.item():.4g}"
        return f"ID NLL {self.id_nll.item():.4g} nats, outlier softplus {sp}"


OutlierWeighting = Literal["batch", "per-term"]


def dual_loss(flow: Flow, x_id: torch.Tensor, x_out: torch.Tensor | None,
              weighting: OutlierWeighting = "batch") -> DualLoss:
    """L_total = L_ID + L_OOD (eq. 2 + eq. 3, no weight), in nats per sample, one forward pass over the batch.

    `batch` (the paper's reading, Sec. 2.3: "instead of utilizing weights ... we adjust the random probability of
    generating outlier points"): both terms are sums over their samples divided by the whole batch size, so the
    outlier probability p sets their balance (p / (1 - p) in expectation). `per-term`: each term is the mean over
    its own samples, so p only changes the noise of the two means, not their weight.
    """
    if x_out is None or len(x_out) == 0:
        return DualLoss(-flow.log_prob(x_id).mean(), None)
    log_p = flow.log_prob(torch.cat([x_id, x_out]))
    nll, penalty = -log_p[: len(x_id)], F.softplus(log_p[len(x_id):])
    if weighting == "per-term":
        return DualLoss(nll.mean(), penalty.mean())
    if weighting != "batch":
        raise ValueError(f"unknown outlier weighting {weighting!r}; choose batch or per-term")
    return DualLoss(nll.sum() / len(log_p), penalty.sum() / len(log_p))


def check_finite(loss: DualLoss, step: int) -> None:
    if not torch.isfinite(loss.total):
        raise HarnessError(f"flow training produced a non-finite log-likelihood at step {step} ({loss.describe()}); "
                           "lower the learning rate or check the input scaling")


# --- training --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlowTrainConfig:
    epochs: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 100.0  # global norm clip; guards the first steps of deep affine flows
    outlier_weighting: OutlierWeighting = "batch"


def train_flow(flow: Flow, batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor | None]]],
               config: FlowTrainConfig, desc: str = "flow", checkpoint: Path | None = None,
               generator: torch.Generator | None = None) -> list[float]:
    """Adam on the dual loss. `batches(epoch)` yields (x_id, x_outliers or None) already scaled and on-device,
    drawing from `generator`.

    With `checkpoint`, the classifier's epoch checkpoints (`save_epoch_checkpoint`: the flow, optimizer, step,
    `generator`, the global RNG states, and the loss history) are written there after every epoch, and a rerun
    resumes after the last finished epoch, ending with the same flow as an uninterrupted run (the caller removes the
    file once it has stored the result). Returns the mean loss per epoch. A non-finite loss stops training with a
    HarnessError naming step and terms.
    """
    import sys

    from tqdm.auto import tqdm

    from harness.classifier.training import resume_epoch_checkpoint, save_epoch_checkpoint

    optimizer = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    flow.train()
    device, generator = next(flow.parameters()).device, generator or torch.Generator()
    history, step, first = LossHistory(), 0, 0
    if checkpoint is not None:
        first, step = resume_epoch_checkpoint(checkpoint, flow, [history], optimizer, generator, device)
        if first:
            print(f"{desc}: resuming after epoch {first} of {config.epochs} from {checkpoint}", file=sys.stderr)
    bar = tqdm(range(first, config.epochs), desc=desc, leave=False, disable=None)
    for epoch in bar:
        total, count = 0.0, 0
        for x_id, x_out in batches(epoch):
            loss = dual_loss(flow, x_id, x_out, config.outlier_weighting)
            check_finite(loss, step)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.total.item()
            count += 1
            step += 1
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:.3f}")
        if checkpoint is not None and epoch + 1 < config.epochs:
            save_epoch_checkpoint(checkpoint, epoch, step, flow, [history], optimizer, generator, device)
    flow.eval()
    return list(history)


class LossHistory(list):
    """The mean loss per finished epoch, carried by `train_flow`'s epoch checkpoints (`Stateful`)."""

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self[:] = state["losses"]


@torch.no_grad()
def log_prob_batched(flow: Flow, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    device = next(flow.parameters()).device
    return np.concatenate([flow.log_prob(x[i:i + batch_size].to(device)).double().cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def lipschitz_estimate(flow: Flow, x: torch.Tensor, batch_size: int = 100) -> dict[str, float]:
    """Table 4: L = max_i ||grad_x log p(x_i)||_2 over the given samples (mean and median reported alongside).

    The paper differentiates "the model's output f(x)"; we use the scalar the detector outputs, log p(x) in nats
    on the [0, 1] scale documented above.
    """
    device = next(flow.parameters()).device
    norms = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        (grad,) = torch.autograd.grad(flow.log_prob(xb).sum(), xb)
        norms.append(grad.flatten(1).norm(dim=1).detach().cpu())
    n = torch.cat(norms).double()
    return {"lipschitz_max": float(n.max()), "grad_norm_mean": float(n.mean()), "grad_norm_median": float(n.median()),
            "samples": len(n)}

