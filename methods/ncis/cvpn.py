"""NCIS conditional volume-preserving network (the NCIS paper, Sec. 3.2, eq. 4-7) on FrEIA, and its linear ablation.

f(e, y): R^D x Y -> R^D is a FrEIA `SequenceINN` of `blocks` x [CayleyOrthogonal, ConditionalAdditiveCoupling]
followed by one more CayleyOrthogonal (the official layout). Every layer has log|det J| = 0 exactly, so
p_e(e | y) = p_v(f(e, y) | y) (eq. 11). K of the D outputs are the invariants g (eq. 4): the first K (paper) or
the last K (official code). The class embedding h(y) in R^ceil(D/2) is a learned `nn.Embedding` outside the INN,
passed to every coupling as FrEIA condition.

Training minimises the invariants' mean square (eq. 4 up to the constant 1/K). Departures the official code takes,
each one switch away: `reconstruction_step`, `keep_best`, `invariants="last"`, and K by the `reference` rule of
`invariant_count`. See docs/ncis_cvpn.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from FrEIA.modules import InvertibleModule
from torch import nn

from harness.errors import HarnessError

Invariants = Literal["first", "last"]
KRule = Literal["paper", "reference"]
CVPN_VERSION = 1  # the cVPN's training (cache stage `ncis-cvpn`)
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "silu": nn.SiLU}


def condition_size(dim: int) -> int:
    """Size of h(y) and of the updated half x_{1:d}: ceil(D/2) (Sec. 3.2)."""
    return math.ceil(dim / 2)


class CayleyOrthogonal(InvertibleModule):
    """x -> Q x + b with Q = (I + S)^-1 (I - S), S skew-symmetric: exactly orthogonal, log|det Q| = 0.

    The official code uses Q = matrix_exp(S); the Cayley map spans the same rotations (those without eigenvalue -1)
    and is much cheaper at D = 768. FrEIA's `OrthogonalTransform` learns a scaling, so it is not volume-preserving.
    The inverse is z -> Q^T (z - b).
    """

    def __init__(self, dims_in, dims_c=None) -> None:
        super().__init__(dims_in, dims_c)
        (dim,) = dims_in[0]
        self.weight = nn.Parameter(torch.empty(dim, dim).uniform_(-1.0, 1.0) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.empty(dim).uniform_(-1.0, 1.0) / math.sqrt(dim))

    def rotation(self) -> torch.Tensor:
        upper = torch.triu(self.weight, diagonal=1)
        skew = upper - upper.T
        eye = torch.eye(len(skew), dtype=skew.dtype, device=skew.device)
        return torch.linalg.solve(eye + skew, eye - skew)

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        (x,) = x_or_z
        q = self.rotation()
        out = (x - self.bias) @ q if rev else x @ q.T + self.bias
        return (out,), torch.zeros(len(x), dtype=x.dtype, device=x.device)

    def output_dims(self, input_dims):
        return input_dims


class ConditionalMLP(nn.Module):
    """tau(x2, h): the class embedding enters through SiLU + Linear added to the first hidden layer (official);
    `layers` hidden layers of width `hidden`; the output layer starts at zero so each coupling starts as identity."""

    def __init__(self, in_features: int, cond_features: int, out_features: int, hidden: int, layers: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(cond_features, hidden))
        self.act = activation()
        rest: list[nn.Module] = []
        for _ in range(layers - 1):
            rest += [nn.Linear(hidden, hidden), activation()]
        self.rest = nn.Sequential(*rest)
        self.out = nn.Linear(hidden, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.rest(self.act(self.inp(x) + self.cond(h))))


class ConditionalAdditiveCoupling(InvertibleModule):
    """Eq. 6-7: x_{1:d} <- x_{1:d} +/- tau(x_{d+1:D}, h(y)), x_{d+1:D} unchanged, d = ceil(D/2); log|det J| = 0."""

    def __init__(self, dims_in, dims_c, hidden: int, layers: int, activation: str) -> None:
        super().__init__(dims_in, dims_c)
        (dim,) = dims_in[0]
        if dim < 2:
            raise HarnessError(f"a coupling layer needs at least 2 dimensions, got D={dim}")
        self.split = condition_size(dim)
        self.tau = ConditionalMLP(dim - self.split, dims_c[0][0], self.split, hidden, layers, ACTIVATIONS[activation])

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        (x,) = x_or_z
        x1, x2 = x[:, :self.split], x[:, self.split:]
        shift = self.tau(x2, c[0])
        x1 = x1 - shift if rev else x1 + shift
        return (torch.cat([x1, x2], dim=1),), torch.zeros(len(x), dtype=x.dtype, device=x.device)

    def output_dims(self, input_dims):
        return input_dims


@dataclass(frozen=True)
class CVPNConfig:
    """cVPN architecture and training. The paper gives only the structure; the numbers are the official code's.

    blocks: [orthogonal, coupling] pairs before the final orthogonal layer (official 4).
    hidden_multiplier, hidden_layers: coupling MLP width = multiplier * ceil(D/2) (official 4), depth.
    activation: coupling MLP non-linearity (official sigmoid).
    epochs, lr, batch_size: official 200, Adam 1e-4 decaying linearly to `lr_final_factor` x lr (0.1), 64.
    reconstruction_step: official: after each invariance step, zero the invariants, invert and minimise the
        reconstruction MSE against the input (paper: eq. 4 only, so off).
    keep_best: official: keep the epoch with the lowest invariant MSE on every `best_subset_stride`-th training
        sample (paper: the last epoch, so off).
    invariants: which K outputs are g: paper "first" (g = f_{1:K}), official "last".
    """

    blocks: int = 4
    hidden_multiplier: int = 4
    hidden_layers: int = 2
    activation: Literal["sigmoid", "relu", "silu"] = "sigmoid"
    epochs: int = 200
    lr: float = 1e-4
    lr_final_factor: float = 0.1
    batch_size: int = 64
    reconstruction_step: bool = False
    keep_best: bool = False
    best_subset_stride: int = 50
    invariants: Invariants = "first"

    def __post_init__(self) -> None:
        for name in ("blocks", "hidden_multiplier", "hidden_layers", "epochs", "batch_size", "best_subset_stride"):
            if getattr(self, name) < 1:
                raise HarnessError(f"cvpn {name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0 or self.lr_final_factor <= 0:
            raise HarnessError(f"cvpn lr={self.lr} and lr_final_factor={self.lr_final_factor} must be positive")
        if self.activation not in ACTIVATIONS:
            raise HarnessError(f"cvpn activation={self.activation!r} is unknown; choose {', '.join(ACTIVATIONS)}")
        if self.invariants not in ("first", "last"):
            raise HarnessError(f"cvpn invariants={self.invariants!r} is unknown; choose first or last")


def _invariant_slice(dim: int, k: int, invariants: Invariants) -> slice:
    return slice(0, k) if invariants == "first" else slice(dim - k, dim)


def _check_k(dim: int, k: int) -> None:
    if not 1 <= k <= dim - 1:
        raise HarnessError(f"K={k} invariants is outside [1, D-1] = [1, {dim - 1}]; change K or "
                           "invariant_variance_percent")


class CVPN(nn.Module):
    """f(x, y) (Sec. 3.2): `forward(x, y) -> v`, `inverse(v, y) -> x`, `invariant_part(v) -> (N, K)`."""

    def __init__(self, dim: int, num_classes: int, k: int, config: CVPNConfig = CVPNConfig()) -> None:
        import FrEIA.framework as Ff

        super().__init__()
        _check_k(dim, k)
        self.dim, self.num_classes, self.k, self.config = dim, num_classes, k, config
        cond = condition_size(dim)
        self.class_embedding = nn.Embedding(num_classes, cond)
        self.inn = Ff.SequenceINN(dim)
        for _ in range(config.blocks):
            self.inn.append(CayleyOrthogonal)
            self.inn.append(ConditionalAdditiveCoupling, cond=0, cond_shape=(cond,),
                            hidden=config.hidden_multiplier * cond, layers=config.hidden_layers,
                            activation=config.activation)
        self.inn.append(CayleyOrthogonal)

    @property
    def invariant_dims(self) -> slice:
        return _invariant_slice(self.dim, self.k, self.config.invariants)

    def forward_with_logdet(self, x: torch.Tensor, y: torch.Tensor, rev: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        out, log_jac = self.inn(x, c=[self.class_embedding(y)], rev=rev)
        return out, log_jac

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_with_logdet(x, y)[0]

    def inverse(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.forward_with_logdet(v, y, rev=True)[0]

    def invariant_part(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, self.invariant_dims]


class LinearInvariants(nn.Module):
    """The `sampling: linear` ablation: v = R_y^T (x - mu_y) with R_y the class's PCA eigenvectors, ordered so that
    the K lowest-variance directions sit where the cVPN's invariants would (first or last K outputs)."""

    def __init__(self, means: torch.Tensor, rotations: torch.Tensor, k: int, invariants: Invariants = "first") -> None:
        super().__init__()
        _check_k(means.shape[1], k)
        self.register_buffer("means", means)
        self.register_buffer("rotations", rotations)
        self.dim, self.num_classes, self.k, self.invariants = means.shape[1], means.shape[0], k, invariants

    @classmethod
    def fit(cls, embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int,
            invariants: Invariants = "first") -> LinearInvariants:
        x = embeddings.detach().cpu().double()
        y = labels.detach().cpu()
        means, rotations = [], []
        for c in range(num_classes):
            xc = x[y == c]
            _check_class_size(c, len(xc), 2, "a PCA")
            mu = xc.mean(0)
            _, vectors = torch.linalg.eigh((xc - mu).T @ (xc - mu) / len(xc))  # ascending variance
            means.append(mu)
            rotations.append(vectors if invariants == "first" else vectors.flip(1))
        dtype = embeddings.dtype
        return cls(torch.stack(means).to(dtype), torch.stack(rotations).to(dtype), k, invariants)

    @property
    def invariant_dims(self) -> slice:
        return _invariant_slice(self.dim, self.k, self.invariants)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,ndk->nk", x - self.means[y], self.rotations[y])

    def inverse(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nk,ndk->nd", v, self.rotations[y]) + self.means[y]

    def invariant_part(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, self.invariant_dims]


def _check_class_size(c: int, count: int, needed: int, what: str) -> None:
    if count < needed:
        raise HarnessError(f"class {c} has {count} embedded samples but {what} needs at least {needed}; embed more "
                           "images of that class (raise max_per_class)")


def invariant_count(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    variance_percent: float, rule: KRule = "paper") -> int:
    """K from per-class PCA (Sec. 4; NL-Invs). With p = `variance_percent` (NCIS's `invariant_variance_percent`),
    cumulative explained-variance ratios c_j (descending order) and j* the first index with c_j* > 1 - p/100:
    paper: K_c = D - (j* + 1), the largest number of components that jointly explain less than p % of the variance;
    reference: K_c = D - j* (the official code's off-by-one, with its p = 5).
    K is the integer part of the mean of K_c over classes. Classes with N_c < D count the D - N_c + 1 zero-variance
    directions as invariants."""
    x = np.asarray(embeddings.detach().cpu() if torch.is_tensor(embeddings) else embeddings, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels)
    p = variance_percent
    if not 0 < p < 100:
        raise HarnessError(f"invariant_variance_percent={p} % gives no invariants; choose 0 < p < 100 (paper 2, "
                           "official code 5)")
    dim = x.shape[1]
    counts = []
    for c in np.unique(y):
        xc = x[y == c]
        _check_class_size(int(c), len(xc), 2, "a PCA")
        variances = np.zeros(dim)
        singular = np.linalg.svd(xc - xc.mean(0), compute_uv=False)
        variances[:len(singular)] = singular ** 2
        if variances.sum() <= 0:
            raise HarnessError(f"class {int(c)} has {len(xc)} identical embeddings (zero variance); check the "
                               "embedding stage")
        above = np.cumsum(variances / variances.sum()) > 1 - p / 100  # may be all False by rounding for tiny p
        first = int(np.argmax(above)) if above.any() else dim - 1
        counts.append(dim - first - (1 if rule == "paper" else 0))
    k = int(np.mean(counts))
    if not 1 <= k <= dim - 1:
        raise HarnessError(f"invariant_variance_percent={p} % with the {rule} rule gives K={k} invariants, outside "
                           f"[1, D-1] = [1, {dim - 1}]; {'raise' if k < 1 else 'lower'} invariant_variance_percent")
    return k


def _invariant_mse(model: CVPN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.invariant_part(model(x, y)).pow(2).mean()


def train_cvpn(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, config: CVPNConfig,
               seed: int, device: torch.device | str = "cpu", progress: bool = True) -> tuple[CVPN, dict]:
    """Adam on the invariants' mean square (eq. 4), optionally with the official reconstruction step and best
    checkpoint. Deterministic by `seed`. History: per-epoch `loss`, `reconstruction` (or None), the invariant MSE
    on the strided training subset `subset_invariant_mse`, and `best_epoch` (the one returned)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    x_all = embeddings.detach().float().to(device)
    y_all = labels.detach().long().to(device)
    for c in range(num_classes):
        _check_class_size(c, int((y_all == c).sum()), 1, "the cVPN")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CVPN(x_all.shape[1], num_classes, k, config)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, config.lr_final_factor, total_iters=config.epochs)
    order_rng = torch.Generator().manual_seed(seed)
    subset = slice(None, None, config.best_subset_stride)
    history: dict = {"loss": [], "reconstruction": [] if config.reconstruction_step else None,
                     "subset_invariant_mse": [], "best_epoch": config.epochs - 1}
    best_state, best_mse = None, math.inf
    bar = tqdm(range(config.epochs), desc="cVPN", leave=False, disable=None if progress else True)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x_all), generator=order_rng).to(device)
        totals, batches = [0.0, 0.0], 0
        for start in range(0, len(order), config.batch_size):
            xb, yb = x_all[order[start:start + config.batch_size]], y_all[order[start:start + config.batch_size]]
            loss = _invariant_mse(model, xb, yb)
            if not torch.isfinite(loss):
                raise HarnessError(f"cVPN training produced a non-finite invariant loss at epoch {epoch}; lower "
                                   "cvpn lr or check the embeddings for inf/nan")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals[0] += loss.item()
            if config.reconstruction_step:
                v = model(xb, yb)
                keep = torch.ones_like(v)
                keep[:, model.invariant_dims] = 0
                recon = (model.inverse(v * keep, yb) - xb).pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                recon.backward()
                optimizer.step()
                totals[1] += recon.item()
            batches += 1
        schedule.step()
        history["loss"].append(totals[0] / batches)
        if config.reconstruction_step:
            history["reconstruction"].append(totals[1] / batches)
        model.eval()
        with torch.no_grad():
            mse = _invariant_mse(model, x_all[subset], y_all[subset]).item()
        history["subset_invariant_mse"].append(mse)
        if config.keep_best and mse < best_mse:
            best_mse, best_state, history["best_epoch"] = mse, copy.deepcopy(model.state_dict()), epoch
        bar.set_postfix(loss=f"{history['loss'][-1]:.4g}")
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


@torch.no_grad()
def check_reconstruction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tol: float) -> float:
    """max |f^-1(f(x, y), y) - x|; a HarnessError reporting it when above `tol` (or non-finite)."""
    error = (model.inverse(model(x, y), y) - x).abs().max().item()
    if not error <= tol:
        raise HarnessError(f"the cVPN inverse fails to reconstruct its input: max error {error:.3g} > tolerance "
                           f"{tol:.3g}; retrain the cVPN (lower cvpn lr) or check the embeddings' scale")
    return error
