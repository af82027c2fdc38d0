"""PNG figures a person would rather look at than read: score histograms and image grids."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from harness.cache import atomic_write_bytes


def _save(fig: object, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def save_score_histograms(scores: dict[str, np.ndarray], path: Path, title: str) -> None:
    """One panel per OOD set: the ID score histogram against that set's (higher score = more ID)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    id_scores = scores["ID"]
    names = [n for n in scores if n != "ID"]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 2.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        both = np.concatenate([id_scores, scores[name]])
        bins = np.linspace(np.percentile(both, 0.5), np.percentile(both, 99.5) + 1e-9, 40)
        ax.hist(np.clip(id_scores, bins[0], bins[-1]), bins=bins, alpha=0.6, label="ID", density=True)
        ax.hist(np.clip(scores[name], bins[0], bins[-1]), bins=bins, alpha=0.6, label=name, density=True)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def save_image_grid(images: torch.Tensor, path: Path, rows: int, row_titles: Sequence[str] | None = None,
                    title: str = "") -> None:
    """Images (N, C, H, W) uint8 or [0, 1] laid out `rows` x ceil(N / rows), with optional row titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    cols = int(np.ceil(len(images) / rows))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 1, 1.1 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            pixels = images[i].permute(1, 2, 0).numpy()
            ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
    for r, name in enumerate(row_titles or []):
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def save_regulariser_curves(record: dict, path: Path, title: str) -> None:
    """An energy regulariser's per-epoch record: the term CE(phi(E), b) and phi's ID-vs-outlier accuracy against
    the epoch (epochs without the term, e.g. before its start epoch, are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [i for i, loss in enumerate(record["loss"]) if loss is not None]
    epochs = [record["epoch"][i] for i in used]
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.4))
    for ax, key, label in [(axes[0], "loss", "regulariser loss"), (axes[1], "head_accuracy", "head accuracy")]:
        ax.plot(epochs, [record[key][i] for i in used], marker="o", markersize=3)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        if record["epoch"]:
            ax.set_xlim(-0.5, max(record["epoch"]) + 0.5)
    axes[1].set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def save_complexity_scatter(complexity: dict[str, np.ndarray], bits: dict[str, np.ndarray], path: Path, title: str,
                            per_set: int = 400) -> None:
    """Seed 004's Fig. 3 per set: image complexity C(x) against the flow's NLL, both in bits/dim (up to `per_set`
    points each, a fixed subsample). The NLL score ranks by height; the complexity score (eq. 5) by the height above
    the diagonal, so the dotted line through the ID median of NLL − C(x) and the dashed ID median NLL show where
    each score starts calling a point OOD (above the line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    rng = np.random.default_rng(0)
    for name in complexity:
        pick = np.sort(rng.permutation(len(complexity[name]))[:per_set])
        ax.scatter(complexity[name][pick], bits[name][pick], s=4, alpha=0.5, label=name, rasterized=True)
    xs = np.array(ax.get_xlim())
    margin = float(np.median(bits["ID"] - complexity["ID"]))
    ax.plot(xs, xs + margin, ":", color="black", linewidth=1, label="eq. 5 at the ID median")
    ax.axhline(float(np.median(bits["ID"])), linestyle="--", color="grey", linewidth=1, label="eq. 4 at the ID median")
    ax.set_xlim(*xs)
    ax.set_xlabel("complexity C(x), bits/dim", fontsize=8)
    ax.set_ylabel("NLL, bits/dim", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, markerscale=2)
    ax.set_title(title, fontsize=9)
    _save(fig, path)
