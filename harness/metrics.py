"""OOD metrics on scores where higher means more in-distribution.

FPR95 has two conventions in the literature (see shared/reference/protocols.md):
- `positive="id"` (default; the papers: VOS, NPOS, Dream-OOD, NCIS): ID is the positive class. The threshold is the
  highest score at which at least 95% of ID samples are accepted; FPR95 is the fraction of OOD samples accepted.
- `positive="ood"` (OpenOOD after Aug 2023, pytorch-ood): OOD is positive with score -s. The threshold catches at
  least 95% of OOD samples; FPR95 is the fraction of ID samples flagged as OOD.
Two threshold rules (`rule`, CLI `--fpr-rule`):
- `recall-at-least` (default): the highest threshold whose recall is at least 0.95;
- `hendrycks`: Hendrycks' `fpr_and_fdr_at_recall`, used by the VOS, NPOS and Dream-OOD evaluation code: among the
  distinct-score thresholds down to the first that reaches full recall, plus an appended point (recall 1, no
  false positives), the first (highest-recall) one whose recall is *nearest* 0.95, possibly below it. On small or
  tied sets the two differ by up to a few points (and the appended point can give FPR 0 with fewer than ~20
  positives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

Positive = Literal["id", "ood"]
FprRule = Literal["recall-at-least", "hendrycks"]
METRIC_NAMES = ("fpr95", "auroc", "aupr_in", "aupr_out")


def _check(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or infinity")
    return id_scores, ood_scores


def fpr_at_tpr(positive_scores: np.ndarray, negative_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of negatives with score >= t, for the highest t that keeps at least `tpr` of positives (score >= t)."""
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    needed = int(np.ceil(tpr * pos.size - 1e-9))
    threshold = pos[max(needed, 1) - 1]
    return float(np.mean(np.asarray(negative_scores) >= threshold))


def fpr_at_nearest_recall(positive_scores: np.ndarray, negative_scores: np.ndarray, recall: float = 0.95) -> float:
    """The `hendrycks` rule (module docstring): FPR at the threshold whose recall is nearest `recall`."""
    pos = np.sort(np.asarray(positive_scores, dtype=np.float64))
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]          # distinct scores, highest first
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")     # positives with score >= t
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    full = int(np.argmax(tp == pos.size)) + 1                         # down to the first threshold with recall 1
    recalls = np.r_[tp[:full][::-1] / pos.size, 1.0]
    fps = np.r_[fp[:full][::-1], 0]
    return float(fps[np.argmin(np.abs(recalls - recall))] / neg.size)


def fpr_at_95_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, positive: Positive = "id",
                  rule: FprRule = "recall-at-least") -> float:
    """FPR at 95% TPR under the chosen convention and threshold rule (module docstring)."""
    id_scores, ood_scores = _check(id_scores, ood_scores)
    if rule not in ("recall-at-least", "hendrycks"):
        raise ValueError(f"rule must be 'recall-at-least' or 'hendrycks', got {rule!r}")
    fpr = fpr_at_tpr if rule == "recall-at-least" else fpr_at_nearest_recall
    if positive == "id":
        return fpr(id_scores, ood_scores)
    if positive == "ood":
        return fpr(-ood_scores, -id_scores)
    raise ValueError(f"positive must be 'id' or 'ood', got {positive!r}")


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve with ID positive: P(s_id > s_ood) + 0.5 P(s_id = s_ood) (Mann-Whitney U)."""
    from scipy.stats import rankdata

    id_scores, ood_scores = _check(id_scores, ood_scores)
    ranks = rankdata(np.concatenate([id_scores, ood_scores]))
    n_id, n_ood = id_scores.size, ood_scores.size
    return float((ranks[:n_id].sum() - n_id * (n_id + 1) / 2) / (n_id * n_ood))


def average_precision(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Step-wise average precision sum_n (R_n - R_{n-1}) P_n over distinct thresholds (scikit-learn's definition)."""
    scores = np.concatenate([positive_scores, negative_scores])
    is_pos = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.cumsum(is_pos)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    id_scores, ood_scores = _check(id_scores, ood_scores)
    return average_precision(id_scores, ood_scores)


def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    id_scores, ood_scores = _check(id_scores, ood_scores)
    return average_precision(-ood_scores, -id_scores)


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, positive: Positive = "id",
                rule: FprRule = "recall-at-least") -> dict[str, float]:
    """All four metrics as fractions in [0, 1]."""
    return {
        "fpr95": fpr_at_95_tpr(id_scores, ood_scores, positive, rule),
        "auroc": auroc(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }


def average_metrics(per_set: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric of the first set, averaged over the sets in the order of `per_set` (the order the run scored
    them: a sum's last bit depends on it)."""
    first = next(iter(per_set.values()))
    return {m: float(np.mean([metrics[m] for metrics in per_set.values()])) for m in first}


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))
