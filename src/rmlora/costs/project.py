"""Project the three cost figures of any torch module without training it.

:func:`project` counts one step of each phase on the real module — a LoRA
training step, a full-update training step, their parameter updates, the
deployments, one batch of inference — with the same counting rules as a
simulated run (:func:`rmlora.costs.counting.count_mvm` on every layer the chip
would hold, the digital hooks on the adapters), then scales the counts by the
schedule (steps, requests) and prices them under every protocol. Nothing is
programmed and no chip is allocated, so paper-size models project in seconds.

What is estimated rather than counted (each in :class:`Schedule`, reported
with the result): how many trained cells the mixed-precision full update
write-verifies after a step and at deployment, and the write-verify work per
reprogrammed cell, which is simulated on the preset for targets that moved by
a given multiple of its tolerance.

Example::

    from torch import nn
    from rmlora.config import AdapterConfig
    from rmlora.costs.project import project, Schedule
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    p = project(net, torch.randn(8, 64), adapter=AdapterConfig(rank=4), schedule=Schedule(steps=100, batch=8))
    p.figures["measured"]["ratios"]["training_energy"]
"""

from __future__ import annotations

import copy
import fnmatch
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from rmlora.costs.counting import MvmGeometry, count_mvm, counting, layer_name
from rmlora.costs.ledger import Ledger
from rmlora.costs.profile import TechProfile, load_profile
from rmlora.costs.protocols import PROTOCOLS, PathLedgers, check_protocol, evaluate
from rmlora.errors import RmloraError


@dataclass
class Schedule:
    """How much adaptation the projection scales one counted step to.

    ``steps``: optimiser steps per request on the adapter path; ``full_steps``: on the full
    update (default: the same); ``batch``: samples per step; ``requests``: forget/add requests,
    each one adapter or one fine-tune plus its deployment. ``moved_per_step``: share of the
    trained cells the mixed-precision full update write-verifies after each step (measured on
    our workloads: 0.3-1.3 %); ``moved_at_deployment``: share reprogrammed when the fine-tuned
    model is deployed; ``update_move_tol`` / ``deploy_move_tol``: how far (in write-verify
    tolerances) such a cell's target moved, for the simulated work per reprogrammed cell.
    """

    steps: int = 100
    batch: int = 32
    requests: int = 1
    full_steps: int | None = None
    moved_per_step: float = 0.01
    moved_at_deployment: float = 1.0
    update_move_tol: float = 2.0
    deploy_move_tol: float = 10.0

    def __post_init__(self) -> None:
        for k in ("steps", "batch", "requests"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RmloraError(f"schedule: {k} must be a positive integer, got {v!r}")
        if self.full_steps is not None and (isinstance(self.full_steps, bool) or not isinstance(self.full_steps, int)
                                            or self.full_steps < 1):
            raise RmloraError(f"schedule: full_steps must be a positive integer, got {self.full_steps!r}")
        for k in ("moved_per_step", "moved_at_deployment"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                raise RmloraError(f"schedule: {k} must be a fraction in [0, 1], got {v!r}")
        for k in ("update_move_tol", "deploy_move_tol"):
            if not getattr(self, k) > 0:
                raise RmloraError(f"schedule: {k} must be > 0, got {getattr(self, k)!r}")


@dataclass
class Projection:
    """The projected ledgers of both paths, every protocol's figures, and what was assumed."""

    paths: dict[str, PathLedgers]
    figures: dict[str, dict[str, Any]]
    schedule: Schedule
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": asdict(self.schedule), "assumptions": self.assumptions, "figures": self.figures,
                "ledgers": {k: v.to_dict() for k, v in self.paths.items()}}


_WV_CACHE: dict[tuple, dict[str, float]] = {}


def write_verify_per_cell(preset: Any, move_tol: float, cells: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Write-verify work (SET, RESET pulses, verify reads per cell) of reprogramming cells whose
    target moved by ``move_tol`` tolerances (random sign, clipped to the window), simulated on
    ``cells`` cells of the preset that first hold random targets."""
    from rmlora.device import load_preset, physics

    p = load_preset(preset) if isinstance(preset, str) else preset
    key = (repr(p), move_tol, cells, seed)
    if key not in _WV_CACHE:
        gen = torch.Generator().manual_seed(seed)
        g0, d2d, stuck = physics.new_cells(cells, p, gen)
        t1 = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
        first = physics.program(g0, t1, d2d, stuck, p, gen)
        sign = torch.where(torch.rand(cells, generator=gen) < 0.5, -1.0, 1.0)
        t2 = (t1 + sign * move_tol * p.tolerance_uS).clamp(p.g_min_uS, p.g_max_uS)
        r = physics.program(first.g, t2, d2d, stuck, p, gen)
        _WV_CACHE[key] = {"set_pulses": float(r.set_pulses.double().mean()),
                          "reset_pulses": float(r.reset_pulses.double().mean()),
                          "verify_reads": float(r.verify_reads.double().mean())}
    return _WV_CACHE[key]


def _layers(model: nn.Module, exclude: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """The layers deployment would put on the chip (as :func:`rmlora.hardware.deploy` selects them)."""
    from rmlora.hardware.deploy import check_mappable
    from rmlora.hardware.layers import analog_class

    out = []
    for name, m in model.named_modules():
        if analog_class(m) is not None and not any(fnmatch.fnmatch(name, pat) for pat in exclude):
            check_mappable(name, m)
            out.append((name, m))
    if not out:
        raise RmloraError("the model has no Linear/Conv1d/Conv2d layer the chip can hold")
    return out


def _vectors(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from rmlora.hardware.layers import im2col

    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return im2col(module, x)[0]


def _analog_hooks(led: Ledger, layers: list[tuple[str, nn.Module]], geometry: Callable[[nn.Module], MvmGeometry]):
    """Hooks that count each layer's calls as analogue MVMs (as the deployed layer would)."""
    def make(name: str, geo: MvmGeometry):
        def hook(module, inputs, output):
            x = inputs[0]
            x2d = _vectors(module, x)
            count_mvm(led, name, x2d, geo, n_out=module.weight.shape[0], weights=module.weight.numel(),
                      samples=x.shape[0] if x.dim() > 1 else 1,
                      grad_input=torch.is_grad_enabled() and x2d.requires_grad,
                      grad_weight=torch.is_grad_enabled() and module.weight.requires_grad)
        return hook
    return [m.register_forward_hook(make(layer_name(n), geometry(m))) for n, m in layers]


def _output(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (tuple, list)):
        return y[0]
    return getattr(y, "sample", None) if hasattr(y, "sample") else next(iter(vars(y).values()))


def _default_loss(model: nn.Module, example: Any) -> torch.Tensor:
    out = model(*example) if isinstance(example, tuple) else model(example)
    return _output(out).float().pow(2).mean()


def project(model: nn.Module, example: Any, *, adapter: Any = None, schedule: Schedule | None = None,
            preset: Any = "rram-180nm", tile: tuple[int, int] = (128, 128), adc_bits: int = 8,
            profile: TechProfile | str = "cmos-180nm", exclude: tuple[str, ...] = (),
            loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
            protocols: list[str] | None = None) -> Projection:
    """Project training cost, deployment overhead and inference energy of adapting ``model``.

    ``example``: a batch of inputs (a tensor, or a tuple of positional arguments; its passes are
    counted and scaled to ``schedule.batch`` samples per step, the optimiser's work per step); ``adapter``: a :class:`rmlora.config.AdapterConfig` (rank, alpha,
    ``target_modules`` globs over the names of the layers the chip holds, INT bits; default
    rank 4 on every layer); ``exclude``: globs of layers that stay digital (neither held nor
    counted); ``loss_fn(model, example)``: the training loss (default: mean square of the
    output). The model is not changed (a copy is counted).
    """
    from peft import inject_adapter_in_model

    from rmlora.config import AdapterConfig
    from rmlora.device import load_preset
    from rmlora.hardware.layers import analog_class
    from rmlora.methods.train import count_update, update_groups

    adapter = adapter or AdapterConfig()
    lora_targets, adapter_bits = adapter.target_modules, adapter.bits
    sched = schedule or Schedule()
    for proto in protocols or []:
        check_protocol(proto)
    prof = load_profile(profile) if isinstance(profile, str) else profile
    p = load_preset(preset) if isinstance(preset, str) else preset
    loss_fn = loss_fn or _default_loss
    first = example[0] if isinstance(example, (tuple, list)) else example
    counted_batch = int(first.shape[0])
    per_batch = sched.batch / counted_batch  # the example may be smaller than a training batch
    base = copy.deepcopy(model).float().train()
    if analog_class(base) is not None:  # a bare layer: give peft a parent to put the adapter in
        base = nn.Sequential(base)
    layers = _layers(base, exclude)
    names = [n for n, _ in layers]
    targets = names if lora_targets is None else [n for n in names if any(fnmatch.fnmatch(n, g) for g in lora_targets)]
    if not targets:
        raise RmloraError(f"no layer matches the LoRA targets {lora_targets}; layers the chip holds: "
                          f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''}")
    offset = p.mapping == "offset"

    def geometry(m: nn.Module) -> MvmGeometry:
        if isinstance(m, nn.Conv2d) and m.groups > 1:  # kernel blocks packed onto tiles, as deployed
            from rmlora.hardware import SimulatedChip
            from rmlora.hardware.layers import PackPlan, depthwise_kernel

            chip = SimulatedChip(p, tile=tile, seed=0)  # its geometry only: nothing is allocated
            return PackPlan(m, chip, "packed").geometry(p.cells_per_weight, offset,
                                                        depthwise_kernel(m, chip) is not None)
        return MvmGeometry.dense(m.weight[0].numel(), m.weight.shape[0], tile, p.cells_per_weight, offset)

    cells = {layer_name(n): m.weight[0].numel() * m.weight.shape[0] * p.cells_per_weight for n, m in layers}

    def ledger() -> Ledger:
        return Ledger(adc_bits=adc_bits, register_bits=prof.pe_register_bits)

    def count(net: nn.Module, led: Ledger, train: bool) -> None:
        net_layers = [(n, m) for n, m in net.named_modules() if analog_class(m) is not None
                      and layer_name(n) in cells]
        with ExitStack() as stack:
            stack.enter_context(counting(net, led, bits=adapter_bits))
            for h in _analog_hooks(led, net_layers, geometry):
                stack.callback(h.remove)
            if train:
                loss_fn(net, example).backward()
            else:
                with torch.no_grad():
                    loss_fn(net, example)

    # the adapter path: frozen layers, one LoRA adapter on the targets
    lora = copy.deepcopy(base)
    for q in lora.parameters():
        q.requires_grad_(False)
    inject_adapter_in_model(adapter.lora_config(targets), lora)
    lora_params = [q for n, q in lora.named_parameters() if "lora_" in n]
    for q in lora_params:
        q.requires_grad_(True)
    n_lora = sum(q.numel() for q in lora_params)
    lt, li = ledger(), ledger()
    count(lora, lt, train=True)
    lt = lt.scaled(per_batch)
    count_update(lt, update_groups(lora, lora_params, set()), adapter_bits)
    count(lora.eval(), li, train=False)
    ld = ledger()
    ld.add("sram_write_bits", n_lora * adapter_bits)

    # the full update: every parameter trains; moved cells are write-verified after each step
    full = copy.deepcopy(base)
    for q in full.parameters():
        q.requires_grad_(True)
    in_arrays = {id(m.weight) for n, m in full.named_modules() if layer_name(n) in cells}
    n_all = sum(q.numel() for q in full.parameters())
    ft, fi = ledger(), ledger()
    count(full, ft, train=True)
    ft = ft.scaled(per_batch)
    count_update(ft, update_groups(full, full.parameters(), in_arrays), adapter_bits)
    count(full.eval(), fi, train=False)
    upd = write_verify_per_cell(p, sched.update_move_tol)
    dep = write_verify_per_cell(p, sched.deploy_move_tol)
    fd = ledger()
    for name, n in cells.items():
        ft.add("trained_cells", n, name)
        moved = n * sched.moved_per_step
        ft.add("programmed_cells", round(moved), name)
        for k, v in upd.items():
            ft.add(k, round(moved * v), name)
        moved = n * sched.moved_at_deployment
        fd.add("programmed_cells", round(moved), name)
        for k, v in dep.items():
            fd.add(k, round(moved * v), name)

    f_steps = sched.full_steps or sched.steps
    paths = {
        "lora": PathLedgers(lt.scaled(sched.steps * sched.requests), ld.scaled(sched.requests), li, counted_batch),
        "full": PathLedgers(ft.scaled(f_steps * sched.requests), fd.scaled(sched.requests), fi, counted_batch),
    }
    assumptions = {
        "write_verify_per_reprogrammed_cell": {"update": upd, "deployment": dep},
        "lora_targets": targets, "rank": adapter.rank, "alpha": adapter.alpha, "lora_parameters": n_lora,
        "parameters": n_all, "cells": sum(cells.values()), "layers_on_chip": len(cells),
        "preset": p.name, "profile": prof.name, "tile": list(tile), "adc_bits": adc_bits,
        "counted_batch": counted_batch,
        "per_step_counted_once": "one batch of `example` (scaled to the schedule's batch); each request and step "
                                 "of a path costs the same",
    }
    return Projection(paths, evaluate(paths, prof, protocols or list(PROTOCOLS)), sched, assumptions)
