"""Membership-inference (MIA) metrics as used in the machine-unlearning literature.

* :func:`loss_auc` - loss-threshold attack (Yeom et al. 2018) summarised as a ROC AUC.
* :func:`mia_efficacy` - the SVC attack of "Model Sparsity Can Simplify Machine
  Unlearning" (Jia et al. 2023) and SalUn (Fan et al. 2024), OPTML-Group code
  ``SVC_MIA``, reported as "MIA-Efficacy".
* :func:`forget_mia_auc` - loss AUC between forget-class training photos and
  held-out photos of the same classes (class/identity unlearning).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from rmlora.errors import RmloraError
from rmlora.metrics.classification import per_sample_loss, predict

__all__ = ["loss_auc", "entropy", "true_label_confidence", "mia_efficacy", "forget_mia_auc"]


def _as_1d_float(a: Any, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise RmloraError(f"{name} is empty")
    if np.isnan(arr).any():
        raise RmloraError(f"{name} contains NaN")
    # keep the order of +/-inf while giving sklearn finite numbers
    big = np.finfo(np.float64).max
    return np.nan_to_num(arr, posinf=big, neginf=-big)


def loss_auc(member_losses: Any, nonmember_losses: Any) -> float:
    """ROC AUC in [0, 1] of the loss-threshold attack.

    Members are labelled 1, non-members 0, attack score = -loss (a lower loss
    means "member").  1.0: every member has a lower loss than every non-member
    (full leakage); 0.5: indistinguishable; 0.0: reversed.  Accepts tensors,
    arrays or sequences of any shape (flattened).  Raises :class:`RmloraError`
    if either side is empty or holds NaN.
    """
    m = _as_1d_float(member_losses, "member_losses")
    n = _as_1d_float(nonmember_losses, "nonmember_losses")
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    scores = -np.concatenate([m, n])
    return float(roc_auc_score(labels, scores))


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of probability rows: (N, C) -> (N,), in [0, log C].

    ``0 * log 0`` counts as 0, as in the OPTML-Group ``entropy`` helper.
    """
    p = torch.as_tensor(probs).double()
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    return -plogp.sum(dim=dim)


def true_label_confidence(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Softmax probability the model gives the true label: (N,) float64 in [0, 1]."""
    if len(x) != len(y):
        raise RmloraError(f"x has {len(x)} samples but y has {len(y)} labels")
    logits, _ = predict(model, x, batch_size)
    probs = torch.softmax(logits.double(), dim=1)
    return probs.gather(1, torch.as_tensor(y).cpu().long().view(-1, 1)).view(-1)


def _features(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str, batch_size: int
) -> np.ndarray:
    if variant == "confidence":
        f = true_label_confidence(model, x, y, batch_size)
    elif variant == "entropy":
        logits, _ = predict(model, x, batch_size)
        f = entropy(torch.softmax(logits.double(), dim=1))
    else:
        raise RmloraError(f"unknown MIA variant {variant!r}; use 'confidence' or 'entropy'")
    return f.numpy().reshape(-1, 1)


def mia_efficacy(
    model: torch.nn.Module,
    retain_x: torch.Tensor,
    retain_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    forget_x: torch.Tensor,
    forget_y: torch.Tensor,
    seed: int = 0,
    variant: str = "confidence",
    batch_size: int = 512,
) -> float:
    """MIA-Efficacy in [0, 1]: share of forget samples the attack calls non-members.

    Follows OPTML-Group's ``SVC_MIA`` (Jia et al. 2023, "Model Sparsity Can
    Simplify Machine Unlearning"; SalUn, Fan et al. 2024): the single feature
    is, by default, the softmax confidence on the true label (their
    ``"confidence"`` entry, the one reported as MIA-Efficacy); ``variant=
    "entropy"`` uses the prediction entropy instead.  An ``SVC(C=3,
    gamma="auto", kernel="rbf")`` is fitted on retain samples (label 1,
    members) vs test samples (label 0, non-members), both subsampled without
    replacement to the smaller of the two sizes (class balance, drawn with
    ``numpy.random.default_rng(seed)``), then applied to the forget set.
    Higher = better forgotten; deterministic for a given seed.  Raises
    :class:`RmloraError` if any of the three sets is empty.
    """
    for name, xs, ys in (
        ("retain", retain_x, retain_y),
        ("test", test_x, test_y),
        ("forget", forget_x, forget_y),
    ):
        if len(xs) == 0:
            raise RmloraError(f"mia_efficacy: the {name} set is empty")
        if len(xs) != len(ys):
            raise RmloraError(f"mia_efficacy: {name} x has {len(xs)} samples, y has {len(ys)}")

    rng = np.random.default_rng(seed)
    n = min(len(retain_x), len(test_x))
    r_idx = torch.from_numpy(np.sort(rng.choice(len(retain_x), size=n, replace=False)))
    t_idx = torch.from_numpy(np.sort(rng.choice(len(test_x), size=n, replace=False)))

    f_retain = _features(model, retain_x[r_idx], retain_y[r_idx], variant, batch_size)
    f_test = _features(model, test_x[t_idx], test_y[t_idx], variant, batch_size)
    f_forget = _features(model, forget_x, forget_y, variant, batch_size)

    X = np.concatenate([f_retain, f_test])
    Y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(X, Y)
    return float(1.0 - clf.predict(f_forget).mean())


def forget_mia_auc(
    model: torch.nn.Module,
    forget_train_x: torch.Tensor,
    forget_train_y: torch.Tensor,
    forget_heldout_x: torch.Tensor,
    forget_heldout_y: torch.Tensor,
    batch_size: int = 512,
) -> float:
    """Loss-threshold AUC in [0, 1]: forget classes' training samples (members)
    vs held-out samples of the same classes (non-members).

    The class/identity-unlearning variant of :func:`loss_auc`: about 0.5 for a
    model never trained on those classes, towards 1.0 while it still
    memorises the training photos.  Raises :class:`RmloraError` on empty sets.
    """
    if len(forget_train_x) == 0 or len(forget_heldout_x) == 0:
        raise RmloraError("forget_mia_auc: the forget training and held-out sets must be non-empty")
    member = per_sample_loss(model, forget_train_x, forget_train_y, batch_size)
    nonmember = per_sample_loss(model, forget_heldout_x, forget_heldout_y, batch_size)
    return loss_auc(member, nonmember)
