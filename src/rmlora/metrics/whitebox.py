"""Two white-box checks of what an unlearned model still holds.

* :func:`relearn_steps` — relearning time (Golatkar et al. 2020; the SCRUB paper's "relearn
  time"): optimiser steps a fresh LoRA adapter needs to bring the forget set back to a target
  accuracy. A model that still holds the forgotten data relearns it in fewer steps than one
  retrained without it.
* :func:`linear_probe` — a linear classifier (scikit-learn's logistic regression on
  standardised features) trained on the penultimate features of held-out examples of every
  learned class, scored on the forgotten examples: whether the representation still separates
  what the output no longer shows.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.errors import RmloraError
from rmlora.metrics.classification import accuracy

__all__ = ["penultimate_features", "linear_probe", "relearn_steps"]


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, head: nn.Module, batch_size: int = 256) -> torch.Tensor:
    """The inputs of ``head`` (a submodule of ``model``) while ``model`` runs on ``x``, averaged
    over every axis between the batch and the feature axis (tokens, time bins): (N, D)."""
    feats: list[torch.Tensor] = []

    def grab(_m, args):
        f = args[0].detach().float()
        feats.append(f.reshape(f.shape[0], -1, f.shape[-1]).mean(1).cpu())
    h = head.register_forward_pre_hook(grab)
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        h.remove()
        model.train(was)
    return torch.cat(feats) if feats else torch.empty(0, 0)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor) -> float:
    """Accuracy in [0, 1] on (``test_f``, ``test_y``) of a logistic regression fitted on
    (``train_f``, ``train_y``) after standardising with the training features' mean and std
    (scikit-learn defaults otherwise: L2, C = 1, not tuned)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_y) == 0 or len(test_y) == 0:
        raise RmloraError("linear_probe needs training and test examples")
    if len(torch.unique(train_y)) < 2:
        raise RmloraError("linear_probe needs at least two classes to train on")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_f.double().numpy(), train_y.numpy())
    return float((clf.predict(test_f.double().numpy()) == test_y.numpy()).mean())


def relearn_steps(model: nn.Module, view: Callable[[nn.Module], nn.Module], forget: tuple[torch.Tensor, torch.Tensor],
                  retain: tuple[torch.Tensor, torch.Tensor], *, rank: int, alpha: float, lr: float, batch_size: int,
                  max_steps: int, every: int, target: float, generator: torch.Generator, check: int = 64,
                  targets: list[str] | None = None) -> int:
    """Steps for a fresh LoRA adapter (rank ``rank`` on the analogue layers ``targets``, default every
    one, of ``model``; removed again afterwards, which restores the model and its active adapters
    exactly) trained with Adam at ``lr`` on batches of ``batch_size`` forget and as many
    retain examples, until the forget accuracy (checked every ``every`` steps on up to ``check``
    forget examples, a fixed random subset) reaches ``target``; 0 when it already does;
    ``max_steps`` + ``every`` when it never does within ``max_steps`` (censored). ``view(m)``
    turns a model copy into the classifier whose columns match the labels."""
    from rmlora.adapters import adapter_parameters, add_adapter, adapters, delete_adapter, set_active
    from rmlora.adapters.lora import lora_layers

    xf, yf = forget
    xr, yr = retain
    if len(yf) == 0:
        raise RmloraError("relearn_steps needs forget examples")
    clf = view(model).eval()
    sub = torch.randperm(len(yf), generator=generator)[:check]
    xc, yc = xf[sub], yf[sub]
    if accuracy(clf, xc, yc) >= target:
        return 0
    layers = lora_layers(model)
    active = [a for a in adapters(model) if any(a in layer.active_adapters for layer in layers)]
    with torch.random.fork_rng(devices=[]):  # peft draws A from the global generator: seed it from ours
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator)))
        add_adapter(model, "relearn", r=rank, alpha=alpha, targets=targets)
    try:
        return _relearn(clf, adapter_parameters(model, "relearn"), xf, yf, xr, yr, xc, yc, lr, batch_size, max_steps,
                        every, target, generator)
    finally:
        delete_adapter(model, "relearn")
        set_active(model, active)


def _relearn(clf: nn.Module, params: list, xf, yf, xr, yr, xc, yc, lr: float, batch_size: int, max_steps: int,
             every: int, target: float, generator: torch.Generator) -> int:
    opt = torch.optim.Adam(params, lr=lr)
    nf = min(batch_size, len(yf))
    for step in range(1, max_steps + 1):
        clf.train()
        fi = torch.randint(len(yf), (nf,), generator=generator)
        ri = torch.randint(len(yr), (nf,), generator=generator) if len(yr) else torch.zeros(0, dtype=torch.long)
        x = torch.cat([xf[fi], xr[ri]])
        y = torch.cat([yf[fi], yr[ri]])
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == max_steps:
            clf.eval()
            a = accuracy(clf, xc, yc)
            if not math.isnan(a) and a >= target:
                return step
    return max_steps + every
