"""Low-likelihood sampling in the invariant space (the NCIS paper, Sec. 3.3-3.4, eq. 8-11).

Per class y, a Gaussian N(mu_y, Sigma_y + lambda I) on the mapped embeddings v = f(e, y) (eq. 8-10, Sigma_y the
biased covariance); `rounds` x `candidates_per_round` draws, of which the `kept_per_round` with the lowest
log-likelihood of each round are kept (official: 10 x 3,330, keep 10). Because f is volume-preserving these are
also the lowest p_e(e | y) (eq. 11). `map_back` returns them to the embedding space, e' = f^-1(v', y).

With `thresholds` (one log-likelihood per class, e.g. the ID embeddings' 1st percentile) only candidates below the
class's threshold are eligible: each round keeps the `kept_per_round` least likely of them (all of them when
fewer), and rounds continue until `rounds * kept_per_round` are kept, at most `MAX_ROUNDS_FACTOR * rounds` rounds.
The official code's rule has no threshold; the 0.3 % tail of a Gaussian need not lie below the ID embeddings' 1st
percentile when their log-likelihoods are heavier-tailed than the Gaussian's.

The class covariance (`covariance`): "sample" is eq. 10's biased sample covariance plus the ridge lambda I (eq. 8). It
has rank <= N_y - 1, so with N_y <= D embeddings of a class the Gaussian is degenerate but for the ridge (the NCIS
plugin refuses that configuration); "shrinkage" is the Ledoit-Wolf estimate (1 - a) S + a (tr S / D) I with the
closed-form a of Ledoit & Wolf (2004), as `sklearn.covariance.ledoit_wolf` computes it, full rank for any N_y >= 2
(plus the same ridge lambda I, which keeps a class of near-identical rows, tr S ~ 0, invertible).

`class_log_likelihoods` gives every input row's log-likelihood under its own class Gaussian (the same fit and dims
that rank the candidates), for comparing the kept samples with the ID embeddings.

Which output dimensions the Gaussian is fitted on (`dims`): eq. 8 and the official code both use all D (the
default, `dims=None`); passing the invariant dimensions fits and ranks on those only (the other coordinates are
still drawn from the full class Gaussian, of which that Gaussian is the marginal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from harness.errors import HarnessError

MIN_CLASS_SAMPLES = 2  # a mean and a non-zero covariance
MAX_ROUNDS_FACTOR = 1000  # thresholded sampling: at most this many times the configured rounds per class
Covariance = Literal["sample", "shrinkage"]


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of the rows of `x` (N, D) and its shrinkage a in [0, 1]: the closed form of
    `sklearn.covariance.ledoit_wolf` (biased sample covariance S shrunk towards (tr S / D) I)."""
    n, dim = x.shape
    centred = x - x.mean(0)
    sample = centred.T @ centred / n
    mu = float(sample.diagonal().sum()) / dim
    squared = centred.pow(2)
    beta_ = float((squared.T @ squared).sum())
    delta_ = float((centred.T @ centred).pow(2).sum()) / n ** 2
    beta = (beta_ / n - delta_) / (dim * n)
    delta = (delta_ - 2 * mu * float(squared.sum(0).sum()) / n + dim * mu ** 2) / dim
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    return (1 - shrinkage) * sample + shrinkage * mu * eye, shrinkage


def class_covariance(xc: torch.Tensor, ridge: float, covariance: Covariance = "sample") -> torch.Tensor:
    """The class covariance of eq. 8: sample covariance + lambda I, or the Ledoit-Wolf estimate (module docstring)."""
    if covariance not in ("sample", "shrinkage"):
        raise HarnessError(f"unknown covariance {covariance!r}; choose sample or shrinkage")
    eye = torch.eye(xc.shape[1], dtype=xc.dtype, device=xc.device)
    if covariance == "shrinkage":  # + lambda I as eq. 8: a class of (near-)identical rows has tr S = 0
        return ledoit_wolf(xc)[0] + ridge * eye
    mean = xc.mean(0)
    return (xc - mean).T @ (xc - mean) / len(xc) + ridge * eye  # eq. 10 + lambda I


def _dims_index(dims: slice | Sequence[int] | None, dim: int) -> torch.Tensor:
    index = torch.arange(dim)[dims] if isinstance(dims, slice) else (
        torch.arange(dim) if dims is None else torch.as_tensor(list(dims), dtype=torch.long))
    if len(index) == 0:
        raise HarnessError(f"dims={dims} selects no output dimension of D={dim}; select at least one")
    return index


def class_log_likelihoods(v: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float,
                          dims: slice | Sequence[int] | None = None, covariance: Covariance = "sample"
                          ) -> torch.Tensor:
    """Each row's log-likelihood (float64) under its class Gaussian of eq. 8, fitted on all rows of that class
    exactly as `low_likelihood_samples` fits it (same covariance, same `dims`)."""
    x = v.detach().cpu().double()
    y = labels.detach().cpu().long()
    index = _dims_index(dims, x.shape[1])
    out = torch.empty(len(x), dtype=torch.float64)
    for c in range(num_classes):
        rows = y == c
        if int(rows.sum()) < MIN_CLASS_SAMPLES:
            continue
        xc = x[rows]
        mean = xc.mean(0)
        cov = class_covariance(xc, ridge, covariance)
        chol = torch.linalg.cholesky(cov[index][:, index])
        out[rows] = _gaussian_log_prob(xc[:, index], mean[index], chol)
    return out


def _gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    centred = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)
    half_logdet = chol.diagonal().log().sum()
    return -0.5 * centred.pow(2).sum(0) - half_logdet - 0.5 * len(mean) * math.log(2 * math.pi)


def _non_finite(c: int) -> None:
    raise HarnessError(f"class {c}: low-likelihood sampling gives non-finite samples (its mapped embeddings or their "
                       "covariance are not finite); check the cVPN outputs of that class")


def low_likelihood_samples(v: torch.Tensor, labels: torch.Tensor, num_classes: int, ridge: float, rounds: int,
                           candidates_per_round: int, kept_per_round: int, generator: torch.Generator,
                           dims: slice | Sequence[int] | None = None, covariance: Covariance = "sample",
                           thresholds: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples (C * rounds * kept, D) in v's dtype, their labels (class-major, then round, then ascending
    log-likelihood) and their class log-likelihoods (float64, on `dims`). Computed in float64 on the CPU;
    `generator` is a CPU torch.Generator; `thresholds` (C,) optional per-class log-likelihood bounds (module
    docstring)."""
    if not ridge > 0:
        raise HarnessError(f"covariance ridge lambda={ridge} must be positive (eq. 8; paper 1e-5)")
    if min(rounds, candidates_per_round, kept_per_round) < 1 or kept_per_round > candidates_per_round:
        raise HarnessError(f"cannot keep {kept_per_round} of {candidates_per_round} candidates in {rounds} rounds; "
                           "use 1 <= kept <= candidates and rounds >= 1")
    x = v.detach().cpu().double()
    y = labels.detach().cpu().long()
    dim = x.shape[1]
    index = _dims_index(dims, dim)
    counts = torch.bincount(y, minlength=num_classes)
    for c in range(num_classes):
        if counts[c] < MIN_CLASS_SAMPLES:
            raise HarnessError(f"class {c} has {int(counts[c])} mapped embeddings but its Gaussian needs at least "
                               f"{MIN_CLASS_SAMPLES}; embed more images of that class (raise max_per_class)")
    samples, log_probs = [], []
    for c in range(num_classes):
        xc = x[y == c]
        mean = xc.mean(0)
        cov = class_covariance(xc, ridge, covariance)
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0 or not torch.isfinite(chol).all() or not torch.isfinite(mean).all():
            _non_finite(c)
        sub_chol = chol if dims is None else torch.linalg.cholesky(cov[index][:, index])
        wanted, found, drawn = rounds * kept_per_round, 0, 0
        while found < wanted:  # one round at a time: 3,330 x 768 float64 is 20 MB
            if drawn == (rounds if thresholds is None else MAX_ROUNDS_FACTOR * rounds):
                raise HarnessError(
                    f"class {c}: {drawn} rounds of {candidates_per_round} candidates gave {found} of the {wanted} "
                    f"samples below its log-likelihood threshold {float(thresholds[c]):.3f}; raise the threshold "
                    "percentile or candidates_per_round")
            draws = torch.randn(candidates_per_round, dim, generator=generator, dtype=torch.float64)
            drawn += 1
            candidates = mean + draws @ chol.T
            if not torch.isfinite(candidates).all():
                _non_finite(c)
            lp = _gaussian_log_prob(candidates[:, index], mean[index], sub_chol)
            if thresholds is not None:
                eligible = torch.nonzero(lp < thresholds[c]).flatten()
                candidates, lp = candidates[eligible], lp[eligible]
            take = min(kept_per_round, wanted - found, len(lp))
            kept_lp, kept = lp.topk(take, largest=False)  # ascending: the least likely first
            samples.append(candidates[kept])
            log_probs.append(kept_lp)
            found += take
    out_labels = torch.arange(num_classes).repeat_interleave(rounds * kept_per_round)
    return torch.cat(samples).to(v.dtype), out_labels, torch.cat(log_probs)


@torch.no_grad()
def map_back(model: nn.Module, samples: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """e' = f^-1(v', y) (Sec. 3.4) in batches on the model's device, returned on the samples' device; a non-finite
    result is a HarnessError naming the class."""
    device = next(iter(model.parameters()), next(iter(model.buffers()), samples)).device
    parts = [model.inverse(samples[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)).to(samples.device)
             for i in range(0, len(samples), batch_size)]
    out = torch.cat(parts) if parts else samples.clone()
    bad = ~torch.isfinite(out).all(dim=1)
    if bad.any():
        classes = sorted({int(c) for c in labels[bad.to(labels.device)]})
        raise HarnessError(f"mapping sampled outliers back through f^-1 gave non-finite embeddings for class "
                           f"{classes[0]} ({int(bad.sum())} samples, classes {classes}); lower the covariance ridge "
                           "lambda or retrain the cVPN")
    return out
