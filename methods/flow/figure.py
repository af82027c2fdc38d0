"""The flow paper's Figure 2 / Appendix A toy (moons and circles, NLL-only vs the dual loss) and Table 4's Lipschitz
estimate of a trained flow, with their command line:

  python -m methods.flow.figure toy --out DIR          Figure 2 / Appendix A (PNG + numbers)
  python -m methods.flow.figure lipschitz KEY|PATH     Table 4: max input-gradient norm of log p over 1,000 samples
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from harness.components.flows import (
    Flow,
    FlowSpec,
    FlowTrainConfig,
    lipschitz_estimate,
    log_prob_batched,
    scale_pixels,
    train_flow,
)
from harness.errors import HarnessError, run_command

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
    from harness.cache import Cache, load_or_none
    from harness.data.sets import load_image_folder

    cache = Cache(args.cache_dir) if args.cache_dir else Cache()
    path = Path(args.checkpoint).expanduser()
    if not path.is_file() and "/" not in args.checkpoint:  # a flow key from a record's details.flow_key
        path = cache.path("flow", args.checkpoint)
    if not path.is_file():
        raise HarnessError(f"flow checkpoint {path} does not exist; pass a .pt path or the flow_key of a flow run's "
                           "record (with the --cache-dir that run used)")
    stored = load_or_none(path, "flow checkpoint")
    if not isinstance(stored, dict) or "spec" not in stored:
        raise HarnessError(f"{path} is not a flow checkpoint (no 'spec'); pass the file a flow run recorded")
    flow = Flow.from_checkpoint(stored)
    c, h, w = flow.spec.input_shape
    if args.images:
        images = load_image_folder(args.images, "lipschitz", h, c, limit=args.samples, seed=args.seed).images
    else:
        from harness.data.benchmarks import load_benchmark
        from harness.data.spec import load_spec

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
    parser = argparse.ArgumentParser(prog="python -m methods.flow.figure", description=__doc__.split("\n")[0])
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
