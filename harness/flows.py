"""Normalizing-flow building blocks (seed 004): FrEIA `AllInOneBlock` flows, log-likelihoods, the dual loss.

Data scaling (fixed; it matters because the softplus margin of eq. 3 sits at log p = 0 nats):
uint8 pixels v in {0..255} become x = (v + u) / 256 in [0, 1]^D, with u ~ U(0, 1) during training (uniform
dequantization) and u = 0.5 at evaluation. log p(x) is the continuous density on [0, 1]^D in nats, so
bits/dim of the discrete image = -log p(x) / (D ln 2) + 8, and the margin log p(x') = 0 sits exactly at 8 bits/dim.

Commands (core only, no plugin import):
  python -m harness.flows toy --out DIR          Figure 2 / Appendix A on moons and circles (PNG + numbers)
  python -m harness.flows lipschitz KEY|PATH     Table 4: max input-gradient norm of log p over 1,000 samples
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError, run_command

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
               config: FlowTrainConfig, desc: str = "flow") -> list[float]:
    """Adam on the dual loss. `batches(epoch)` yields (x_id, x_outliers or None) already scaled and on-device.

    Returns the mean loss per epoch. A non-finite loss stops training with a HarnessError naming step and terms.
    """
    from tqdm.auto import tqdm

    optimizer = torch.optim.Adam(flow.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    flow.train()
    history, step = [], 0
    bar = tqdm(range(config.epochs), desc=desc, leave=False, disable=None)
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
    flow.eval()
    return history


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


# --- Figure 2 / Appendix A toy ---------------------------------------------------------------------------------------

TOY_GRID = 120
TOY_OOD_DISTANCE = 0.2  # grid points farther than this from every ID sample form the "OOD region"
TOY_SCALE = 0.25  # the flows see coordinates x * 0.25: ID log p rises by 2 ln 4 = 2.8 nats, above the softplus
# margin at log p = 0 (on the raw make_moons scale the ID data itself sits near log p = -1, below the margin).
# Reported log p is converted back to the raw coordinates, so the numbers do not depend on this choice.


def toy_data(name: str, n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_circles, make_moons

    if name == "moons":
        return make_moons(n, noise=0.05, random_state=seed)[0].astype(np.float32)
    if name == "circles":
        return make_circles(n, noise=0.03, factor=0.5, random_state=seed)[0].astype(np.float32)
    raise HarnessError(f"unknown toy dataset {name!r}; use moons or circles")


def toy_outliers(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Appendix A: moons: uniform in (-0.5, 1.5)^2; circles: half uniform in (-0.3, 0.3)^2, half in the ring
    0.6 < r < 0.9 between the circles (uniform in area)."""
    if name == "moons":
        return rng.uniform(-0.5, 1.5, size=(n, 2)).astype(np.float32)
    inner = rng.uniform(-0.3, 0.3, size=(n // 2, 2))
    radius = np.sqrt(rng.uniform(0.6 ** 2, 0.9 ** 2, size=n - n // 2))
    angle = rng.uniform(0, 2 * np.pi, size=n - n // 2)
    ring = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    return np.concatenate([inner, ring]).astype(np.float32)


def toy_grid(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A grid over the data's bounding box (+0.5 margin) and the mask of its OOD region: grid points inside the
    data's convex hull farther than `TOY_OOD_DISTANCE` from every ID point (between the moons; the circles' centre
    and the gap between the rings). Points outside the hull are left out: there every flow extrapolates wildly and
    would dominate a mean of log p."""
    from scipy.spatial import Delaunay, cKDTree

    lo, hi = data.min(0) - 0.5, data.max(0) + 0.5
    xs, ys = np.linspace(lo[0], hi[0], TOY_GRID), np.linspace(lo[1], hi[1], TOY_GRID)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    inside = Delaunay(data).find_simplex(grid) >= 0
    far = cKDTree(data).query(grid)[0] > TOY_OOD_DISTANCE
    return xs, ys, grid, inside & far


def train_toy(name: str, dual: bool, steps: int, seed: int, n: int = 2000, blocks: int = 8, hidden: int = 256
              ) -> tuple[Flow, np.ndarray]:
    """Appendix A: 8 AllInOneBlocks with 3 x 256 ReLU MLP subnets, Adam 1e-3, batch 128 (ID; as many outliers)."""
    torch.manual_seed(seed)
    data = toy_data(name, n, seed)
    rng = np.random.default_rng(seed + 1)
    flow = Flow(FlowSpec((2,), blocks=blocks, hidden=hidden, haar=False, subnet_layers=3))
    tensor = torch.from_numpy(data * TOY_SCALE)
    batch = 128
    batches_per_epoch = max(1, n // batch)
    epochs = max(1, steps // batches_per_epoch)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = torch.from_numpy(rng.permutation(n))
        for i in range(batches_per_epoch):
            x = tensor[order[i * batch:(i + 1) * batch]]
            yield x, torch.from_numpy(toy_outliers(name, batch, rng) * TOY_SCALE) if dual else None

    # as many outliers as ID points in every batch: the two weightings differ only by a factor 1/2 on the loss
    train_flow(flow, batches, FlowTrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, weight_decay=0.0,
                                              outlier_weighting="per-term"),
               desc=f"toy {name} {'dual' if dual else 'nll'}")
    return flow, data


def _log_mean_exp(log_p: np.ndarray) -> float:
    return float(np.logaddexp.reduce(log_p) - math.log(len(log_p)))


def toy_experiment(out: Path, steps: int = 1500, seed: int = 0, datasets: tuple[str, ...] = ("moons", "circles"),
                   blocks: int = 8, hidden: int = 256) -> dict[str, dict[str, float]]:
    """Train NLL-only and dual-loss flows on each toy set; write `toy_densities.png` and `toy_numbers.json`.

    Number per model (`*_ood_minus_id`): log of the mean likelihood over the OOD region (see `toy_grid`) minus log of
    the mean likelihood at the ID data (nats); the paper's claim (Fig. 2) is that the dual loss lowers it. The
    plain difference of mean log p is stored too (`*_mean_log_p_ood_minus_id`), but it is dominated by the few
    grid points where a flow's log p dives towards -inf, not by the high-likelihood bridges Fig. 2 is about.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, dict[str, float]] = {}
    fig, axes = plt.subplots(len(datasets), 2, figsize=(9, 4.2 * len(datasets)), squeeze=False)
    for row, name in enumerate(datasets):
        numbers[name] = {}
        for col, dual in enumerate((False, True)):
            flow, data = train_toy(name, dual, steps, seed, blocks=blocks, hidden=hidden)
            xs, ys, grid, ood_mask = toy_grid(data)
            log_jacobian = 2 * math.log(TOY_SCALE)  # density of the raw coordinates
            grid_lp = log_prob_batched(flow, torch.from_numpy(grid * TOY_SCALE)) + log_jacobian
            id_lp = log_prob_batched(flow, torch.from_numpy(data * TOY_SCALE)) + log_jacobian
            key = "dual" if dual else "nll_only"
            numbers[name][f"{key}_ood_minus_id"] = float(_log_mean_exp(grid_lp[ood_mask]) - _log_mean_exp(id_lp))
            numbers[name][f"{key}_mean_log_p_ood_minus_id"] = float(grid_lp[ood_mask].mean() - id_lp.mean())
            numbers[name][f"{key}_id_mean_log_p"] = float(id_lp.mean())
            ax = axes[row, col]
            ax.pcolormesh(xs, ys, np.exp(np.clip(grid_lp, -30, 30)).reshape(len(ys), len(xs)), shading="auto")
            ax.scatter(data[::10, 0], data[::10, 1], s=1, c="white", alpha=0.5)
            ax.set_title(f"{name}: {'dual loss (eq. 2+3)' if dual else 'NLL only'}\n"
                         f"log mean p(OOD region) - log mean p(ID) = {numbers[name][key + '_ood_minus_id']:.2f}")
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "toy_densities.png", dpi=110)
    plt.close(fig)
    (out / "toy_numbers.json").write_text(json.dumps(numbers, indent=2))
    return numbers


# --- command line ----------------------------------------------------------------------------------------------------

def _lipschitz_command(args: argparse.Namespace) -> None:
    from harness.cache import Cache
    from harness.data import load_image_folder

    cache = Cache(args.cache_dir) if args.cache_dir else Cache()
    path = Path(args.checkpoint).expanduser()
    if not path.is_file() and "/" not in args.checkpoint:  # a flow key from a record's details.flow_key
        path = cache.path("flow", args.checkpoint)
    if not path.is_file():
        raise HarnessError(f"flow checkpoint {path} does not exist; pass a .pt path or the flow_key of a flow run's "
                           "record (with the --cache-dir that run used)")
    stored = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(stored, dict) or "spec" not in stored:
        raise HarnessError(f"{path} is not a flow checkpoint (no 'spec'); pass the file a flow run recorded")
    flow = Flow.from_checkpoint(stored)
    c, h, w = flow.spec.input_shape
    if args.images:
        images = load_image_folder(args.images, "lipschitz", h, c, limit=args.samples, seed=args.seed).images
    else:
        from harness.benchmarks import load_benchmark, load_spec

        spec = load_spec(args.benchmark)
        bench = load_benchmark(spec, cache)
        images = bench.test.images
        if images.shape[1:] != (c, h, w):
            raise HarnessError(f"benchmark {spec.name} images are {tuple(images.shape[1:])} but the flow was built for "
                               f"{(c, h, w)}; pass the benchmark it was trained on")
        idx = np.random.default_rng(args.seed).permutation(len(images))[:args.samples]
        images = images[np.sort(idx)]
    result = lipschitz_estimate(flow, scale_pixels(images))
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.flows", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="Figure 2 / Appendix A: moons and circles, NLL-only vs dual loss")
    toy.add_argument("--out", type=Path, required=True)
    toy.add_argument("--steps", type=int, default=1500, help="optimizer steps per model (paper: 1,000/5,000 epochs)")
    toy.add_argument("--seed", type=int, default=0)
    lip = sub.add_parser("lipschitz", help="Table 4: max ||grad_x log p(x)|| over samples of a trained flow")
    lip.add_argument("checkpoint", help="a flow checkpoint .pt, or the details.flow_key of a flow run's record")
    lip.add_argument("--benchmark", default="mnist5k", help="take samples from this benchmark's ID test set")
    lip.add_argument("--images", default=None, help="or from this image folder")
    lip.add_argument("--samples", type=int, default=1000)
    lip.add_argument("--seed", type=int, default=0)
    lip.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    def command() -> None:
        if args.command == "toy":
            if args.steps < 1:
                raise HarnessError("--steps must be at least 1")
            numbers = toy_experiment(args.out, args.steps, args.seed)
            print(json.dumps(numbers, indent=2))
            print(f"wrote {args.out / 'toy_densities.png'} and {args.out / 'toy_numbers.json'}")
        else:
            _lipschitz_command(args)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
