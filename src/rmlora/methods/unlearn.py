"""Unlearning objectives (forget set Df, retain set Dr), usable on either path.

Each method gives a ``loss_fn(step)`` for :func:`rmlora.methods.train.fit`; the
learning rate and step budget are the stage's :class:`~rmlora.config.TrainConfig`,
the method's own constants an :class:`UnlearnConfig`:

* ``ga`` — gradient ascent on Df with descent on Dr (weighted cross-entropy,
  the paper's face objective); the ascent term is capped so that it stops
  pushing once Df's loss exceeds ``cap`` (otherwise it diverges);
* ``ft`` — fine-tuning on Dr alone (catastrophic forgetting of Df);
* ``neggrad`` — gradient ascent on Df alone;
* ``neggrad+`` — β·CE(Dr) − (1 − β)·CE(Df) (Kurmanji et al., NeurIPS 2023);
* ``relabel`` — Df relabelled at random each step with descent on Dr (the
  paper's speaker objective; Graves et al.'s "amnesiac" unlearning);
* ``scrub`` — SCRUB (Kurmanji et al., NeurIPS 2023) with its published schedule:
  the budget is cut into rounds; the first ones start with max-steps over Df
  (raise KL(teacher‖student)), every round then does min-steps over Dr
  (lower α·KL + γ·CE);
* ``l1`` — ℓ1-sparse unlearning (Jia et al., NeurIPS 2023): fine-tuning on Dr
  plus a linearly decaying ℓ1 penalty on the weights (on the adapter path, on
  the effective weights W + s·BA of the adapted layers);
* ``salun`` — SalUn (Fan et al., ICLR 2024): a weight-saliency mask (the share
  ``salun_ratio`` of trainable parameters with the largest forget-loss gradient)
  and random labels on Df with descent on Dr, only salient parameters moving;
  on the adapter path the saliency is taken over the adapter's parameters;
* ``mask`` — output masking: the forgotten classes' logits are removed, nothing
  is trained (the floor every method must beat; see :func:`is_training_free`).

Class-wise and random-sample forgetting use the same objectives: random labels
are drawn among the kept classes other than the example's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.config import ConfigBase, _finite, _help, _positive_int
from rmlora.errors import RmloraError
from rmlora.methods.train import Batches

#: every method a classification workload accepts
METHODS = ("ga", "ft", "neggrad", "neggrad+", "relabel", "scrub", "l1", "salun", "mask")
#: the methods the unlearning evaluation compares (``--methods field``), in table order
FIELD_METHODS = ("ft", "neggrad", "neggrad+", "relabel", "scrub", "l1", "salun", "mask")


def is_training_free(method: str) -> bool:
    """Whether ``method`` changes no weight (output masking)."""
    return method == "mask"


def resolve_methods(names: list[str], known: tuple[str, ...]) -> list[str]:
    """``names`` with ``field`` expanded to :data:`FIELD_METHODS`; one clear error for an unknown one."""
    out: list[str] = []
    for n in names:
        for m in (FIELD_METHODS if n == "field" else (n,)):
            if m not in known:
                raise RmloraError(f"unknown method {m!r}; known: {', '.join(known)} (or field: "
                                  f"{', '.join(FIELD_METHODS)})")
            if m not in out:
                out.append(m)
    return out


@dataclass
class UnlearnConfig(ConfigBase):
    """The methods' own constants. Each is the published default of its method, not tuned here
    (the learning rate, the one value searched per method and path on validation data, is the
    stage's TrainConfig; docs/evaluation.md)."""

    section: ClassVar[str] = "unlearn"
    neggrad_plus_beta: float = _help("NegGrad+: weight β of the retain loss, 1 − β of the forget loss "
                                     "(0.95: NegGrad+ in small_scale_unlearning.ipynb of github.com/meghdadk/SCRUB, "
                                     "Kurmanji et al. 2023)", 0.95)
    scrub_rounds: int = _help("SCRUB: rounds (sgda_epochs) the step budget is cut into (10: "
                              "small_scale_unlearning.ipynb of github.com/meghdadk/SCRUB)", 10)
    scrub_max_rounds: int = _help("SCRUB: the first msteps rounds open with max-steps over Df (3: the same "
                                  "notebook)", 3)
    scrub_alpha: float = _help("SCRUB: weight of KL(teacher‖student) in the min-steps (0.5: the same notebook)",
                               0.5)
    scrub_gamma: float = _help("SCRUB: weight of the cross-entropy in the min-steps (1: the same notebook)", 1.0)
    scrub_temperature: float = _help("SCRUB: distillation temperature kd_T (2: the same notebook)", 2.0)
    l1_alpha: float = _help("l1-sparse: initial weight of the ℓ1 penalty, decaying linearly to 0 over the "
                            "budget (1e-4: the alpha of OPTML-Group/Unlearn-Sparse's FT_prune runs)", 1e-4)
    salun_ratio: float = _help("SalUn: share of the trainable parameters the saliency mask keeps "
                               "(0.5: Fan et al. 2024's default)", 0.5)

    def __post_init__(self) -> None:
        _finite("unlearn.neggrad_plus_beta", self.neggrad_plus_beta, 0.0)
        if not 0 < self.neggrad_plus_beta < 1:
            raise RmloraError(f"unlearn.neggrad_plus_beta must lie in (0, 1), got {self.neggrad_plus_beta}")
        _positive_int("unlearn.scrub_rounds", self.scrub_rounds)
        _positive_int("unlearn.scrub_max_rounds", self.scrub_max_rounds, 0)
        for name in ("scrub_alpha", "scrub_gamma", "l1_alpha"):
            _finite(f"unlearn.{name}", getattr(self, name), 0.0)
        _finite("unlearn.scrub_temperature", self.scrub_temperature, 0.0, strict=True)
        _finite("unlearn.salun_ratio", self.salun_ratio, 0.0, strict=True)
        if self.salun_ratio > 1:
            raise RmloraError(f"unlearn.salun_ratio must lie in (0, 1], got {self.salun_ratio}")


@dataclass
class Unlearning:
    """A method's loss and what it leaves behind: ``finish()`` removes the gradient hooks
    SalUn installs (call it after training)."""

    loss: Callable[[int], torch.Tensor]
    finish: Callable[[], None] = lambda: None


def random_other_labels(y: torch.Tensor, kept: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly among ``kept`` (column indices) other than each example's own
    ``y`` (class-wise: ``y`` is never kept, so any kept class)."""
    draw = torch.randint(len(kept), (len(y),), generator=generator)
    out = kept[draw]
    same = out == y
    if same.any() and len(kept) > 1:  # shift the clashes to the next kept class
        out[same] = kept[(draw[same] + 1 + torch.randint(len(kept) - 1, (int(same.sum()),),
                                                          generator=generator)) % len(kept)]
    return out


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher‖student) of the softened outputs times T² (Hinton's distillation loss)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), log_target=True,
                    reduction="batchmean") * t * t


def scrub_schedule(steps: int, rounds: int, max_rounds: int, forget_batches: int) -> list[bool]:
    """SCRUB's phase of each step (True: a max-step over Df): ``steps`` cut into ``rounds``
    rounds; the first ``max_rounds`` open with one pass over Df (``forget_batches`` steps, at most
    half the round), every round continues with min-steps over Dr."""
    rounds = max(1, min(rounds, steps))
    out: list[bool] = []
    for r in range(rounds):
        length = steps // rounds + (1 if r < steps % rounds else 0)
        n_max = min(forget_batches, length // 2) if r < max_rounds else 0
        out += [True] * n_max + [False] * (length - n_max)
    return out


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def l1_norm(model: nn.Module) -> torch.Tensor:
    """ℓ1 norm of the weights being trained: on the adapter path the effective weights
    W + Σ s·BA of every layer whose trainable adapter is active, otherwise every trainable
    parameter."""
    from peft.tuners.lora import LoraLayer

    total, found = None, False
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        names = [a for a in layer.active_adapters if a in layer.lora_A]
        if not any(p.requires_grad for a in names for p in layer.lora_A[a].parameters()):
            continue
        found = True
        w = layer.get_base_layer().weight.detach()
        for a in names:
            w = w + layer.get_delta_weight(a).view_as(w)
        total = w.abs().sum() if total is None else total + w.abs().sum()
    if found:
        return total
    return sum(p.abs().sum() for p in trainable(model))


def saliency_mask(model: nn.Module, forget: Batches, ratio: float, batches: int = 4) -> list[torch.Tensor]:
    """SalUn's weight saliency: 1 where |∂CE(Df)/∂θ| (summed over ``batches`` forget batches) is
    among the largest ``ratio`` of the trainable parameters' (a global threshold, as published).
    A parameter whose gradient is exactly zero is never salient (on the adapter path A receives
    no gradient while B = 0, so the mask selects entries of B)."""
    params = trainable(model)
    grads = [torch.zeros_like(p) for p in params]
    model.train()
    for _ in range(batches):
        x, y = forget.sample()
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params, allow_unused=True)
        for acc, gi in zip(grads, g):
            if gi is not None:
                acc += gi.detach().abs()
    flat = torch.cat([g.flatten() for g in grads])
    k = max(1, int(math.ceil(ratio * flat.numel())))
    threshold = torch.topk(flat, k).values.min()
    return [((g >= threshold) & (g > 0)).to(g.dtype) for g in grads]


def make_objective(method: str, model: nn.Module, forget: Batches, retain: Batches, *, retained_classes: list[int],
                   generator: torch.Generator, forget_weight: float = 1.0, cap: float = 4.0,
                   teacher: nn.Module | None = None, config: UnlearnConfig | None = None,
                   steps: int | None = None) -> Unlearning:
    """Build ``method``'s loss over Df batches ``forget`` and Dr batches ``retain``.

    ``retained_classes``: the model's columns of the kept classes (random labels are drawn
    there); ``teacher``: the model before unlearning (SCRUB); ``steps``: the budget (SCRUB's
    schedule and the decay of the ℓ1 weight need it); ``config``: the methods' constants.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; known: {', '.join(METHODS)}")
    if is_training_free(method):
        raise ValueError(f"{method} trains nothing: it has no objective")
    if method == "scrub" and teacher is None:
        raise ValueError("scrub needs the teacher model")
    if method in ("scrub", "l1") and not steps:
        raise ValueError(f"{method} needs the step budget (its schedule depends on it)")
    cfg = config or UnlearnConfig()
    kept = torch.tensor(retained_classes)
    budget = steps or 1

    def ce_retain() -> torch.Tensor:
        xr, yr = retain.sample()
        return F.cross_entropy(model(xr), yr)

    def ga(step: int) -> torch.Tensor:
        xf, yf = forget.sample()
        ce_f = F.cross_entropy(model(xf), yf)
        return ce_retain() - forget_weight * ce_f.clamp(max=cap)

    def ft(step: int) -> torch.Tensor:
        return ce_retain()

    def neggrad(step: int) -> torch.Tensor:
        xf, yf = forget.sample()
        return -F.cross_entropy(model(xf), yf)

    def neggrad_plus(step: int) -> torch.Tensor:
        b = cfg.neggrad_plus_beta
        xf, yf = forget.sample()
        return b * ce_retain() - (1 - b) * F.cross_entropy(model(xf), yf)

    def relabel(step: int) -> torch.Tensor:
        xf, yf = forget.sample()
        return ce_retain() + forget_weight * F.cross_entropy(model(xf), random_other_labels(yf, kept, generator))

    phases = scrub_schedule(budget, cfg.scrub_rounds, cfg.scrub_max_rounds,
                            max(1, math.ceil(len(forget) / forget.bs))) if method == "scrub" else []

    def scrub(step: int) -> torch.Tensor:
        t = cfg.scrub_temperature
        if phases[min(step, len(phases) - 1)]:  # max-step: move away from the teacher on Df
            xf, _ = forget.sample()
            with torch.no_grad():
                tf = teacher(xf)
            return -_kl(model(xf), tf, t)
        xr, yr = retain.sample()
        with torch.no_grad():
            tr = teacher(xr)
        out = model(xr)
        return cfg.scrub_alpha * _kl(out, tr, t) + cfg.scrub_gamma * F.cross_entropy(out, yr)

    def l1(step: int) -> torch.Tensor:
        return ce_retain() + cfg.l1_alpha * (1 - step / budget) * l1_norm(model)

    if method == "salun":
        masks = saliency_mask(model, forget, cfg.salun_ratio)
        hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in zip(trainable(model), masks)]

        def finish() -> None:
            for h in hooks:
                h.remove()
        return Unlearning(relabel, finish)
    return Unlearning({"ga": ga, "ft": ft, "neggrad": neggrad, "neggrad+": neggrad_plus, "relabel": relabel,
                       "scrub": scrub, "l1": l1}[method])
