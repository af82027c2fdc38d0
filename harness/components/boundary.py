"""Boundary-based outlier synthesis in feature space (NPOS; Dream-OOD's latent sampling), batched over classes.

For every class c with ID features X_c (N, D):

1. boundary points: the `boundary_count` rows of X_c with the largest distance to their k-th nearest neighbour in
   the L2-normalised X_c (exact L2, the point counts as its own first neighbour, as in the official FAISS code);
2. `points_per_class` of them are picked at random; each gets `candidates_per_point` Gaussian candidates
   x + noise_std * N(0, I) (in the space of the given features);
3. each candidate's k-th-neighbour distance to the normalised X_c is computed (candidates normalised too), and
   `kept_per_point` candidates per boundary point are kept:
   - `selection="paper"`: the farthest ones (largest k-NN distance), as the NPOS and Dream-OOD papers describe;
   - `selection="reference"`: what the official `KNN_dis_search_distance` does. It views the point-major candidate
     distances (P * L,) as (L, P), takes the top-`kept` per column and maps the row index r of column i back to
     candidate i * L + r. Column i of the mis-ordered view holds candidates {r * P + i}, so the indices it ranks
     are not the candidates it returns: the kept candidates are effectively random draws around point i.

All classes are processed together: one batched matrix product per chunk of classes and a top-k on the training
device (exact, the same distances FAISS IndexFlatL2 returns), instead of one FAISS index per class per step.

`BoundarySampling` holds these settings for every method that samples this way (NPOS, Dream-OOD, NCIS's npos
sampler) and checks them against each other (`check`, called by each config's `__post_init__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from harness.errors import HarnessError

Selection = Literal["paper", "reference"]
CHUNK_ELEMENTS = 2**26  # bound on the (classes x queries x bank) similarity block held at once


def kth_neighbor_distance_by_class(bank: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean distance from each query to its k-th nearest row of its own class's bank.

    `bank` (C, N, D) and `queries` (C, Q, D) must be L2-normalised (so ||q - x||^2 = 2 - 2 q.x); returns (C, Q).
    A query that is also a bank row counts itself as its first neighbour.
    """
    classes, n, _ = bank.shape
    if not 1 <= k <= n:
        raise HarnessError(f"k={k} nearest neighbours need at least {k} features per class queue but the queues "
                           f"hold {n}; raise the queue size or lower k")
    per_class = queries.shape[1] * n
    step = max(1, CHUNK_ELEMENTS // max(per_class, 1))
    out = []
    for start in range(0, classes, step):
        similarity = torch.bmm(queries[start:start + step], bank[start:start + step].transpose(1, 2))
        kth = similarity.topk(k, dim=2, sorted=False).values.amin(dim=2)
        out.append(torch.sqrt(torch.clamp(2.0 - 2.0 * kth, min=0.0)))
    return torch.cat(out)


def boundary_indices(normed_bank: torch.Tensor, k: int, count: int) -> torch.Tensor:
    """(C, count) indices of the rows with the largest k-th-neighbour distance within their class."""
    if count > normed_bank.shape[1]:
        raise HarnessError(f"{count} boundary points requested from queues of {normed_bank.shape[1]}; lower the "
                           "boundary count or raise the queue size")
    distances = kth_neighbor_distance_by_class(normed_bank, normed_bank, k)
    return distances.topk(count, dim=1).indices


def select_candidates(distances: torch.Tensor, kept: int, selection: Selection) -> torch.Tensor:
    """Indices (C, P, kept) into the L candidates of each boundary point, from their k-NN distances (C, P, L)."""
    classes, points, length = distances.shape
    if kept > length:
        raise HarnessError(f"cannot keep {kept} of {length} candidates per boundary point; lower the kept count")
    if selection == "paper":
        return distances.topk(kept, dim=2).indices
    if selection == "reference":
        misordered = distances.reshape(classes, length, points)  # official `.view(length, -1)` on point-major data
        return misordered.topk(kept, dim=1).indices.transpose(1, 2)
    raise HarnessError(f"unknown selection {selection!r}; choose paper or reference")


def sample_boundary_outliers(bank: torch.Tensor, k: int, boundary_count: int, points_per_class: int,
                             candidates_per_point: int, kept_per_point: int, noise_std: float,
                             selection: Selection = "paper", generator: torch.Generator | None = None
                             ) -> torch.Tensor:
    """Synthesised outliers (C, points_per_class * kept_per_point, D) around each class's boundary (module doc).

    `bank` (C, N, D) holds each class's ID features; outliers live in the same (unnormalised) space.
    """
    if points_per_class > boundary_count:
        raise HarnessError(f"cannot pick {points_per_class} of {boundary_count} boundary points per class")
    classes, _, dim = bank.shape
    normed = F.normalize(bank, dim=2)
    boundary = boundary_indices(normed, k, boundary_count)
    order = torch.rand(classes, boundary_count, generator=generator).argsort(dim=1)[:, :points_per_class]
    picked = boundary.gather(1, order.to(boundary.device))
    points = bank.gather(1, picked[..., None].expand(-1, -1, dim))
    noise = torch.randn(classes, points_per_class, candidates_per_point, dim, generator=generator)
    candidates = points[:, :, None, :] + noise_std * noise.to(bank.device, bank.dtype)
    distances = kth_neighbor_distance_by_class(
        normed, F.normalize(candidates, dim=3).reshape(classes, -1, dim), k)
    chosen = select_candidates(distances.reshape(classes, points_per_class, candidates_per_point), kept_per_point,
                               selection)
    kept = candidates.gather(2, chosen[..., None].expand(-1, -1, -1, dim))
    return kept.reshape(classes, points_per_class * kept_per_point, dim)



@dataclass(frozen=True)
class BoundarySampling:
    """Boundary sampling per class (module doc; NPOS Sec. 3.2, Dream-OOD Sec. 3.2): in each of `rounds` rounds,
    `points_per_class` of the `boundary_count` boundary points (None: all of them, as Dream-OOD) get
    `candidates_per_point` candidates x + noise_std * N(0, I), of which `kept_per_point` are kept; the boundary is
    searched among at most `features_per_class` ID features per class. The paper values live in each method's
    config."""

    features_per_class: int
    k: int
    boundary_count: int
    candidates_per_point: int
    kept_per_point: int
    rounds: int
    noise_std: float
    selection: Selection = "paper"
    points_per_class: int | None = None

    @property
    def points(self) -> int:
        """Boundary points picked per class and round."""
        return self.boundary_count if self.points_per_class is None else self.points_per_class

    def check(self, features_setting: str) -> None:
        """ValueError naming the first setting that is out of range or exceeds another; `features_setting` is the
        config field that sets `features_per_class` (NPOS: queue_size). Not run on construction: NCIS builds one
        from its data, whose shortfalls `class_boundary_embeddings` reports."""
        counts = {features_setting: self.features_per_class, "k": self.k, "boundary_count": self.boundary_count,
                  "points_per_class": self.points, "candidates_per_point": self.candidates_per_point,
                  "kept_per_point": self.kept_per_point, "rounds": self.rounds}
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value})")
        if self.k > self.features_per_class:
            raise ValueError(f"k={self.k} neighbours need at least {self.k} features per class but {features_setting}="
                             f"{self.features_per_class}; raise {features_setting} or lower k")
        if self.boundary_count > self.features_per_class:
            raise ValueError(f"boundary_count={self.boundary_count} exceeds {features_setting}="
                             f"{self.features_per_class}")
        if self.points > self.boundary_count:
            raise ValueError(f"points_per_class={self.points} exceeds boundary_count={self.boundary_count}")
        if self.kept_per_point > self.candidates_per_point:
            raise ValueError(f"kept_per_point={self.kept_per_point} exceeds candidates_per_point="
                             f"{self.candidates_per_point}")

    def sample(self, bank: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One round of `sample_boundary_outliers` on `bank` (C, N, D): (C, points * kept_per_point, D)."""
        return sample_boundary_outliers(bank, self.k, self.boundary_count, self.points, self.candidates_per_point,
                                        self.kept_per_point, self.noise_std, self.selection, generator)
