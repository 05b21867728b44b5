"""A per-example likelihood-ratio attack on unlearning, in the style of U-LiRA (Hayes et al.,
"Inexact unlearning needs more careful evaluations to avoid a false sense of privacy", 2024),
built on LiRA (Carlini et al., "Membership inference attacks from first principles", S&P 2022).

The attacker queries the deployed model and reads the scores of the classes it reports (the
kept classes: a forgotten class is never an answer), and knows the training set and the
forget set. For each forgotten example it has shadow models of two kinds: models that went
through the same unlearning method ("IN": the example was learned, then unlearned) and
models retrained without it ("OUT"). It fits a Gaussian to its statistic under each kind and
scores a target model by the log likelihood ratio; the question is whether the unlearned
model can be told from a retrained one, example by example. AUC 0.5 and TPR = FPR mean it
cannot.

The statistic (:func:`kept_view_statistic`) is Carlini et al.'s logit-scaled confidence
log(p / (1 − p)) over the reported classes: of the true class when it is reported
(random-sample forgetting), else of the top reported class (class-wise forgetting, where
the true class is not an answer any more).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from rmlora.errors import RmloraError

__all__ = ["kept_view_statistic", "likelihood_ratio", "attack_scores", "tpr_at_fpr", "ulira"]


def kept_view_statistic(logits: torch.Tensor, y: torch.Tensor, visible: Sequence[int]) -> torch.Tensor:
    """Logit-scaled confidence over the reported columns ``visible`` (N,), float64.

    ``logits`` (N, C), ``y`` (N,) column labels. For an example whose label is visible:
    z_y − logsumexp_{j∈V, j≠y} z_j; otherwise the same for its top visible column.
    """
    vis = torch.as_tensor(list(visible), dtype=torch.long)
    if vis.numel() < 2:
        raise RmloraError("the attack statistic needs at least two reported classes")
    z = logits.double()[:, vis]
    y = torch.as_tensor(y).long()
    pos = {int(c): i for i, c in enumerate(vis.tolist())}
    idx = torch.tensor([pos.get(int(c), -1) for c in y], dtype=torch.long)
    top = z.argmax(dim=1)
    idx = torch.where(idx >= 0, idx, top)
    own = z.gather(1, idx.view(-1, 1)).squeeze(1)
    rest = z.scatter(1, idx.view(-1, 1), float("-inf"))
    return own - torch.logsumexp(rest, dim=1)


def likelihood_ratio(target: np.ndarray, in_stats: np.ndarray, out_stats: np.ndarray) -> np.ndarray:
    """log N(s; μ_in, σ_in) − log N(s; μ_out, σ_out) per example (n,).

    ``in_stats`` (k_in, n) and ``out_stats`` (k_out, n) are the shadow models' statistics;
    means are per example, the variances fixed (pooled over examples), as Carlini et al.
    advise below 64 shadow models.
    """
    t = np.asarray(target, dtype=np.float64)
    a = np.asarray(in_stats, dtype=np.float64)
    b = np.asarray(out_stats, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != t.size or b.shape[1] != t.size:
        raise RmloraError(f"shadow statistics must be (k, {t.size}), got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise RmloraError("the likelihood-ratio attack needs at least 2 shadow models of each kind")

    def logpdf(x: np.ndarray, s: np.ndarray) -> np.ndarray:
        mu = s.mean(axis=0)
        var = max(float(s.var(axis=0, ddof=1).mean()), 1e-12)
        return -0.5 * (x - mu) ** 2 / var - 0.5 * math.log(2 * math.pi * var)
    return logpdf(t, a) - logpdf(t, b)


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float = 0.05) -> float:
    """True-positive rate at the largest false-positive rate ≤ ``fpr`` of the ROC curve (with
    n negatives the lowest FPR above 0 is 1/n: fewer than 1/fpr negatives give the TPR at FPR 0)."""
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    f, t, _ = roc_curve(labels, np.concatenate([positives, negatives]))
    return float(t[f <= fpr + 1e-12].max())


def attack_scores(positives: np.ndarray, negatives: np.ndarray, fpr: float = 0.05) -> dict[str, float]:
    """AUC (positives labelled 1) and TPR at ``fpr`` of the scores."""
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    scores = np.concatenate([positives, negatives])
    return {"auc": float(roc_auc_score(labels, scores)), "tpr": tpr_at_fpr(positives, negatives, fpr)}


def ulira(unlearned: list[np.ndarray], retrained: list[np.ndarray], shadows: int, fpr: float = 0.05
          ) -> list[dict[str, float]]:
    """The attack on every seed of a run with a fixed split and forget set.

    ``unlearned[s]`` and ``retrained[s]`` (n,) are seed s's statistics of the same forgotten
    examples under the method's model and under the retrained one. For seed s the shadow
    models are ``shadows`` other seeds' models of each kind (the next ones, cyclically);
    positives are seed s's unlearned model's ratios, negatives its retrained model's.
    Returns per seed ``{"auc", "tpr"}``.
    """
    k = len(unlearned)
    if len(retrained) != k:
        raise RmloraError("ulira needs the same seeds for the unlearned and the retrained models")
    if shadows < 2 or shadows > k - 1:
        raise RmloraError(f"the likelihood-ratio attack was asked for {shadows} shadow models of each kind, but "
                          f"{k} seed(s) leave {k - 1} other seed(s) to take them from; it needs 2..{k - 1} "
                          f"(run at least {max(3, shadows + 1)} seeds)")
    n = {len(np.asarray(u)) for u in unlearned + retrained}
    if len(n) != 1:
        raise RmloraError("the seeds forget different numbers of examples: the attack needs one fixed forget set")
    out = []
    for s in range(k):
        others = [(s + j) % k for j in range(1, shadows + 1)]
        a = np.stack([unlearned[t] for t in others])
        b = np.stack([retrained[t] for t in others])
        out.append(attack_scores(likelihood_ratio(unlearned[s], a, b), likelihood_ratio(retrained[s], a, b), fpr))
    return out
