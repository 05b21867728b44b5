"""Unlearning objectives (forget set Df, retain set Dr), usable on either path.

Each returns a ``loss_fn(step)`` for :func:`rmlora.methods.train.fit`:

* ``ga`` — gradient ascent on Df with descent on Dr (weighted cross-entropy,
  the paper's face objective); the ascent term is capped so that it stops
  pushing once Df's loss exceeds ``cap`` (otherwise it diverges);
* ``relabel`` — Df relabelled at random to retained classes each step, with
  descent on Dr (the paper's speaker objective);
* ``scrub`` — SCRUB (Kurmanji et al., NeurIPS 2023): a student starting from
  the teacher alternates max-steps (raise KL(teacher‖student) on Df) and
  min-steps (lower KL and cross-entropy on Dr).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.methods.train import Batches

METHODS = ("ga", "relabel", "scrub")


def make_objective(method: str, model: nn.Module, forget: Batches, retain: Batches, *, retained_classes: list[int],
                   generator: torch.Generator, forget_weight: float = 1.0, cap: float = 4.0,
                   teacher: nn.Module | None = None) -> Callable[[int], torch.Tensor]:
    """Build the loss of ``method`` over Df batches ``forget`` and Dr batches ``retain``."""
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; known: {', '.join(METHODS)}")
    kept = torch.tensor(retained_classes)

    def ga(step: int) -> torch.Tensor:
        xf, yf = forget.sample()
        xr, yr = retain.sample()
        ce_f = F.cross_entropy(model(xf), yf)
        return F.cross_entropy(model(xr), yr) - forget_weight * ce_f.clamp(max=cap)

    def relabel(step: int) -> torch.Tensor:
        xf, _ = forget.sample()
        xr, yr = retain.sample()
        yf = kept[torch.randint(len(kept), (len(xf),), generator=generator)]
        return F.cross_entropy(model(xr), yr) + forget_weight * F.cross_entropy(model(xf), yf)

    def scrub(step: int) -> torch.Tensor:
        def kl(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t = F.log_softmax(teacher(x), dim=-1)
            return F.kl_div(F.log_softmax(model(x), dim=-1), t, log_target=True, reduction="batchmean")
        if step % 2 == 0:  # max-step on the forget set
            xf, _ = forget.sample()
            return -forget_weight * kl(xf).clamp(max=cap)
        xr, yr = retain.sample()
        return kl(xr) + F.cross_entropy(model(xr), yr)

    if method == "scrub" and teacher is None:
        raise ValueError("scrub needs the teacher model")
    return {"ga": ga, "relabel": relabel, "scrub": scrub}[method]
