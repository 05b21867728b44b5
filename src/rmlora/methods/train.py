"""One training loop for every method and path, with validation-based selection.

The loop draws batches, steps an Adam optimiser on the given parameters,
lets the caller act after each step (the full-update baseline reprograms
the moved cells there), counts the work into a ledger, and keeps the state
that scored best on *validation* data (never on test data).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from rmlora.config import TrainConfig
from rmlora.costs.counting import ANALOG, counting, parameter_layers
from rmlora.costs.ledger import Ledger


class Batches:
    """Random mini-batches of (x, y) drawn with a seeded generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.x, self.y, self.bs, self.g = x, y, batch_size, generator

    def __len__(self) -> int:
        return len(self.y)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.y) <= self.bs:
            return self.x, self.y
        idx = torch.randint(len(self.y), (self.bs,), generator=self.g)
        return self.x[idx], self.y[idx]


#: Adam per parameter and step: the two moments and the FP32 master weight read and written
#: (3 x 32 bits each way), and its arithmetic as FP32 multiply-adds (m: 2, v: 3 with the square,
#: the update with bias correction, square root and division: 3; an estimate, docs/costs.md)
ADAM_STATE_BITS = 2 * 3 * 32
ADAM_FP32_OPS = 8


#: (layer or None, parameters, of which in SRAM) for each layer a step updates
UpdateGroups = list[tuple[str | None, int, int]]


def update_groups(model: nn.Module, params: Iterable[nn.Parameter], in_arrays: set[int]) -> UpdateGroups:
    """``params`` grouped by the layer their optimiser work is booked under
    (:func:`rmlora.costs.counting.parameter_layers`; None for those outside every layer), with
    how many of each group live in SRAM (every one whose ``id`` is not in ``in_arrays``)."""
    where = parameter_layers(model)
    groups: dict[str | None, list[int]] = {}
    for p in params:
        g = groups.setdefault(where.get(id(p)), [0, 0])
        g[0] += p.numel()
        g[1] += 0 if id(p) in in_arrays else p.numel()
    return [(layer, n, d) for layer, (n, d) in groups.items()]


def count_update(ledger: Ledger, groups: UpdateGroups, bits: int) -> None:
    """Count one optimiser step over the parameters of ``groups`` (:func:`update_groups`), per
    layer: those in SRAM written back at ``bits`` each (those in the arrays are reprogrammed by
    the path instead), Adam's state read and written (``ADAM_STATE_BITS`` per parameter) and its
    arithmetic (``ADAM_FP32_OPS`` per parameter)."""
    for layer, n_param, n_digital in groups:
        ledger.add("sram_write_bits", n_digital * bits, layer)
        ledger.add("array_param_updates", n_param - n_digital, layer)
        ledger.add("optimizer_bits", n_param * ADAM_STATE_BITS, layer)
        ledger.add("fp32_ops", n_param * ADAM_FP32_OPS, layer)
        ledger.add("trained_params", n_param, layer)
    ledger.add("optimizer_steps", 1)


def fit(model: nn.Module, params: list[nn.Parameter] | list[dict], loss_fn: Callable[[int], torch.Tensor], cfg: TrainConfig, *,
        score_fn: Callable[[], float] | None = None, after_step: Callable[[], None] | None = None,
        ledger: Ledger | None = None, update_bits: int = 8, desc: str = "training", progress: bool = True,
        counter: Callable[[nn.Module, Ledger], AbstractContextManager] = counting) -> dict:
    """Train ``params`` (parameters or Adam parameter groups) on ``loss_fn(step)``.

    ``score_fn`` (higher is better, computed on validation data) is called every
    ``cfg.eval_every`` steps and at the end; the best-scoring parameter state is
    restored at the end and ``after_step`` runs once more (so that a hardware
    path reprograms it). Each step writes the updated parameters
    (``update_bits`` each) to SRAM in the ledger; ``counter(model, ledger)`` counts each
    step's forward and backward work (default :func:`rmlora.costs.counting`). Returns a
    small history.
    """
    if not params:
        raise ValueError("nothing to train")
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = [p for g in opt.param_groups for p in g["params"]]
    in_arrays = {id(m.weight) for m in model.modules() if getattr(m, "rmlora_counting", None) == ANALOG}
    groups = update_groups(model, params, in_arrays)  # per layer: parameters, of which held in SRAM
    best_score, best_state, best_step = -float("inf"), None, 0
    history = {"step": [], "loss": [], "score": []}
    bar = tqdm(range(cfg.steps), desc=desc, leave=False, disable=not progress)
    for step in bar:
        model.train()
        with counter(model, ledger) if ledger is not None else nullcontext():
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if ledger is not None:
            count_update(ledger, groups, update_bits)
        if after_step is not None:
            after_step()
        last = step + 1 == cfg.steps
        if score_fn is not None and ((step + 1) % cfg.eval_every == 0 or last):
            s = score_fn()
            history["step"].append(step + 1)
            history["loss"].append(float(loss.detach()))
            history["score"].append(s)
            if s > best_score:
                best_score, best_step = s, step + 1
                best_state = [p.detach().clone() for p in params]
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{s:.3f}")
    model.eval()
    if best_state is not None:
        with torch.no_grad():
            for p, b in zip(params, best_state):
                p.copy_(b)
        if after_step is not None:
            after_step()
    history["best_step"] = best_step
    history["best_score"] = best_score
    return history


def snapshot(module: nn.Module) -> nn.Module:
    """A frozen deep copy (e.g. the teacher of SCRUB)."""
    m = copy.deepcopy(module).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
