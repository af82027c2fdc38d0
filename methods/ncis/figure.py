"""Fig. 2 of the NCIS paper as a CPU toy: where three outlier samplers put their outliers around curved classes.

ID data: three classes of noisy half circles with different centres in the (x1, x2) plane of a 3-D space, with
Gaussian noise (std 0.05) along the radius and along x3: a curved 1-D manifold per class with K = 2 invariants.
In 2-D alone the sampler's extremes concentrate in one direction (the lowest-likelihood of 3,330 draws lie at
3.4 sigma) where in the paper's 768-D they spread over all dimensions; the third axis softens that. The plot shows
(x1, x2); all distances are 3-D. Samplers, 100 outliers per class:
(a) Dream-OOD style: L2-normalised embeddings, boundary points + Gaussian noise, candidates normalised and kept by
    k-NN distance (`harness.components.boundary.sample_boundary_outliers`), then scaled by the class's mean norm
    (Dream-OOD multiplies by the class token's norm);
(b) linear invariants: the NCIS pipeline with a per-class PCA rotation instead of the cVPN (`LinearInvariants`);
(c) the cVPN (`methods.ncis.cvpn`), K = D - 1 = 2 for (b) and (c): the true codimension (the paper's p-rule counts
    variance, and no direction of a half circle holds under 2 % of it, so it would give K = 1 here).
(b) and (c) use `low_likelihood_samples` with ridge lambda = 1e-5, 10 rounds x 333 draws, keep 10 (the official ratio).

Numbers per sampler: `median_nn_over_spacing` = median distance from an outlier to its nearest ID point divided
by the median ID nearest-neighbour spacing (near the support: small; 1 would be "as close as ID points are to each
other"), and `inside_fraction` = fraction of outliers whose distance to their `SUPPORT_K`-th nearest ID point is
below the 95th percentile of the same distance among ID points (inside the support: a failed outlier).

  python -m methods.ncis.figure toy [--out docs/ncis_toy_invariants.png]   (the JSON goes next to the PNG)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from harness.components.boundary import sample_boundary_outliers
from harness.errors import HarnessError, run_command
from methods.ncis.cvpn import CVPNConfig, LinearInvariants, train_cvpn
from methods.ncis.invariant_sampling import low_likelihood_samples, map_back

ARCS = ((-1.2, -0.45, 0.0), (-0.2, 0.05, np.pi), (1.2, 0.45, 0.0))  # centre x, centre y, start angle of a half circle
SUPPORT_K = 5
SUPPORT_QUANTILE = 0.95
TOY_CVPN = CVPNConfig(hidden_multiplier=32, activation="silu", epochs=60, lr=3e-3)  # width 32: D = 2 is tiny


def toy_arcs(per_class: int, seed: int, noise: float = 0.05, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Three noisy unit half circles (radial noise `noise`) in (x1, x2), Gaussian noise `noise` on the other
    dim - 2 axes: float32 points (3 * per_class, dim) and labels."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for c, (cx, cy, start) in enumerate(ARCS):
        angle = rng.uniform(start, start + np.pi, per_class)
        radius = 1.0 + noise * rng.standard_normal(per_class)
        points.append(np.concatenate([np.stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)], 1),
                                      noise * rng.standard_normal((per_class, dim - 2))], 1))
        labels.append(np.full(per_class, c))
    return torch.tensor(np.concatenate(points), dtype=torch.float32), torch.tensor(np.concatenate(labels))


def dream_ood_outliers(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator
                       ) -> torch.Tensor:
    """(a): Dream-OOD's sampling on the normalised class embeddings, rescaled by each class's mean norm."""
    bank = torch.stack([x[y == c] for c in range(num_classes)])
    out = sample_boundary_outliers(F.normalize(bank, dim=2), k=30, boundary_count=20, points_per_class=20,
                                   candidates_per_point=50, kept_per_point=5, noise_std=0.07, generator=generator)
    return F.normalize(out, dim=2) * bank.norm(dim=2).mean(1)[:, None, None]


def support_numbers(x_id: torch.Tensor, outliers: torch.Tensor) -> dict[str, float]:
    """`median_nn_over_spacing` and `inside_fraction` (module doc) of outliers (M, D) around ID points (N, D)."""
    from scipy.spatial import cKDTree

    x, o = x_id.double().numpy(), outliers.double().numpy()
    tree = cKDTree(x)
    id_dist = tree.query(x, k=SUPPORT_K + 1)[0]  # column 0 is the point itself
    spacing = float(np.median(id_dist[:, 1]))
    radius = float(np.quantile(id_dist[:, SUPPORT_K], SUPPORT_QUANTILE))
    out_dist = tree.query(o, k=SUPPORT_K)[0]
    return {"median_nn_over_spacing": float(np.median(out_dist[:, 0]) / spacing),
            "inside_fraction": float(np.mean(out_dist[:, SUPPORT_K - 1] <= radius)),
            "outliers": len(o)}


def toy_experiment(out: Path, seed: int = 0, per_class: int = 300, config: CVPNConfig = TOY_CVPN
                   ) -> dict[str, dict[str, float]]:
    """Run the three samplers, write the 3-panel PNG at `out` and the numbers as JSON beside it; return them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = toy_arcs(per_class, seed)
    classes, k = len(ARCS), x.shape[1] - 1
    generator = torch.Generator().manual_seed(seed)
    sampling = dict(ridge=1e-5, rounds=10, candidates_per_round=333, kept_per_round=10)
    linear = LinearInvariants.fit(x, y, classes, k=k)
    cvpn, history = train_cvpn(x, y, classes, k, config, seed)
    outliers = {"(a) Dream-OOD: normalised spherical sampling": (
                    dream_ood_outliers(x, y, classes, generator).reshape(-1, x.shape[1]),
                    torch.arange(classes).repeat_interleave(100))}
    for name, model in (("(b) linear invariants (PCA)", linear), ("(c) cVPN (NCIS)", cvpn)):
        with torch.no_grad():
            v = model(x, y)
        samples, labels, _ = low_likelihood_samples(v, y, classes, generator=generator, **sampling)
        outliers[name] = (map_back(model, samples, labels), labels)
    numbers = {name: support_numbers(x, o) for name, (o, _) in outliers.items()}
    with torch.no_grad():
        numbers["cvpn_training"] = {"final_invariant_mse": history["loss"][-1],
                                    "linear_invariant_mse": float(linear.invariant_part(linear(x, y)).pow(2).mean())}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True, sharey=True)
    colours = ("tab:blue", "tab:orange", "tab:green")
    for ax, (name, (o, labels)) in zip(axes, outliers.items(), strict=True):
        for c in range(classes):
            ax.scatter(*x[y == c, :2].T, s=3, c=colours[c], alpha=0.35)
            ax.scatter(*o[labels == c, :2].T, s=14, marker="x", c=colours[c])
        n = numbers[name]
        ax.set_title(f"{name}\nmedian NN dist / ID spacing {n['median_nn_over_spacing']:.2f}, "
                     f"inside support {100 * n['inside_fraction']:.0f} %", fontsize=9)
        ax.set_aspect("equal")
    axes[0].set_xlim(-3.2, 3.2)
    axes[0].set_ylim(-2.2, 2.4)
    fig.suptitle("NCIS Fig. 2 toy: ID half circles (dots) and synthesised outliers (x) per class colour, "
                 "(x1, x2) of 3-D")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m methods.ncis.figure", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="Fig. 2 of the NCIS paper: Dream-OOD vs linear invariants vs cVPN outliers")
    toy.add_argument("--out", type=Path, default=Path("docs/ncis_toy_invariants.png"))
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--epochs", type=int, default=TOY_CVPN.epochs, help="cVPN training epochs")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.out.suffix.lower() != ".png":
            raise HarnessError(f"--out {args.out} must be a .png path (the numbers go next to it as .json)")
        config = CVPNConfig(**{**TOY_CVPN.__dict__, "epochs": args.epochs})
        numbers = toy_experiment(args.out, args.seed, config=config)
        print(json.dumps(numbers, indent=2))
        print(f"wrote {args.out} and {args.out.with_suffix('.json')}")

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
