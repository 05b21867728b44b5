"""Hyperparameter searches on validation data only, with the scenario runner's own stages.

Every search trains what the scenario would train (the same streams, chips and objectives) and
reads the stage's validation score (the one that also picks its checkpoint: rmlora's
classification objectives score validation examples and the forget set, never test data or an
attack); the choice is the grid point with the highest mean score over the seeds.

* :func:`search_forget` — a learning rate per unlearning method and path, the same grid (factors
  of the path's base learning rate) and step budget for both paths;
* :func:`search_pretrain` — pretraining steps and learning rate;
* :func:`search_setting` — one workload setting (the gradient-ascent cap, the rehearsal size)
  over a grid, on a given stage of both paths.

``benchmarks/tune_unlearning.py`` runs them and writes ``docs/tuning_<workload>.json``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
from torch import nn

from rmlora.config import ScenarioConfig
from rmlora.hardware import analog_layers, deploy
from rmlora.methods import is_training_free
from rmlora.methods.paths import AdapterPath, FullPath
from rmlora.scenario.runner import Plan, _Lane, _SeedRun, draw_samples, plan_scenario, request_tag

__all__ = ["search_forget", "search_pretrain", "search_setting", "choose"]


def _prepared(plan: Plan, seed: int) -> tuple[_SeedRun, nn.Module, list]:
    """One seed's data and its pretrained model deployed on the main chip (as a scenario run has them)."""
    run = _SeedRun(plan, seed, None)
    w, st = plan.workload, plan.settings
    run.data = w.prepare(plan.ds, plan.order, st, seed, run.streams.generator("data"))
    draw_samples(plan, run.data)
    state = plan.states[0]
    cols = w.initial_columns(state, plan.order)
    model = run.build(len(cols), "model:pretrain")
    run.cached_pretrain(model, state.kept, cols)
    chip = run.chip("chip:main")
    deploy(model, chip, exclude=w.deploy_exclude(st), profile=plan.profile,
           calibrate=w.calibration(run.data, state.kept, cols, st))
    return run, model, cols


def _lane(run: _SeedRun, model: nn.Module, cols: list, kind: str, method: str) -> _Lane:
    """A fresh lane on a copy of the deployed ``model``."""
    plan = run.plan
    m = copy.deepcopy(model)
    chip = next(x.core.chip for _, x in analog_layers(m))
    path = (AdapterPath(m, chip, plan.profile, plan.adapter) if kind == "lora"
            else FullPath(m, chip, copy.deepcopy(chip), plan.profile))
    return _Lane(path, list(cols), run.ledger(), run.ledger(), method=method)


#: mean validation scores closer than this to the best count as ties (a tenth of one validation example
#: of the face evaluation's 80; grids list the cheaper or gentler setting first, and ties go to it)
TIE_TOLERANCE = 1e-3


def choose(scores: dict[Any, list[float]], tolerance: float = TIE_TOLERANCE) -> Any:
    """The grid point with the highest mean score; points within ``tolerance`` of it are ties, and
    the first of them in grid order wins."""
    means = {k: float(np.mean(v)) for k, v in scores.items()}
    best = max(means.values())
    return next(k for k, m in means.items() if m >= best - tolerance)


def search_forget(cfg: ScenarioConfig, factors: tuple[float, ...] = (1 / 3, 1.0, 3.0), progress: bool = False
                  ) -> dict[str, Any]:
    """Validation scores of the first forget request of ``cfg`` (its ``methods``) for every method,
    path and learning rate base·factor (base: the path's forget budget before any per-method
    learning rate). Returns ``{"scores": {method: {path: {lr: [score per seed]}}}, "best_steps":
    ..., "budget": {path: TrainConfig dict}, "seconds": ...}``."""
    plan = plan_scenario(cfg)
    st = plan.settings
    i = next(k for k, r in enumerate(plan.requests) if r.kind == "forget")
    req, labels = plan.requests[i], plan.labels[i]
    tag = request_tag(i, req, plan.names(labels))
    scores: dict[str, dict[str, dict[float, list[float]]]] = {}
    steps: dict[str, dict[str, dict[float, list[int]]]] = {}
    t0 = time.perf_counter()
    for seed in plan.seeds:
        run, model, cols = _prepared(plan, seed)
        run.progress = progress
        for method in plan.methods:
            if is_training_free(method):
                continue
            for kind in ("lora", "full"):
                base = st.forget_lora if kind == "lora" else st.forget_full
                for f in factors:
                    lr = float(f"{base.lr * f:.3g}")
                    lane = _lane(run, model, cols, kind, method)
                    _, _, h = run.stage(lane, tag, "forget", base.replace(lr=lr), forget=labels, new=[],
                                        state=plan.states[i - 1], adapter=tag if kind == "lora" else None,
                                        samples=[i] if req.fraction is not None else [])
                    scores.setdefault(method, {}).setdefault(kind, {}).setdefault(lr, []).append(h["best_score"])
                    steps.setdefault(method, {}).setdefault(kind, {}).setdefault(lr, []).append(h["best_step"])
    return {"request": str(req), "seeds": plan.seeds, "factors": list(factors), "scores": scores, "best_steps": steps,
            "budget": {"lora": st.forget_lora.to_dict(), "full": st.forget_full.to_dict()},
            "seconds": round(time.perf_counter() - t0, 1)}


def search_pretrain(cfg: ScenarioConfig, grid: list[tuple[int, float]], progress: bool = False) -> dict[str, Any]:
    """Validation score of float pretraining on the learn request's classes for each (steps, lr)."""
    plan = plan_scenario(cfg)
    state = plan.states[0]
    scores: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for seed in plan.seeds:
        for steps, lr in grid:
            run = _SeedRun(plan, seed, None)
            run.progress = progress
            run.st = plan.settings.replace(pretrain=plan.settings.pretrain.replace(steps=steps, lr=lr))
            run.data = plan.workload.prepare(plan.ds, plan.order, run.st, seed, run.streams.generator("data"))
            cols = plan.workload.initial_columns(state, plan.order)
            m = run.build(len(cols), "model:pretrain")
            h = run.pretrain(m, state.kept, cols, "train:pretrain", f"pretrain {steps} steps, lr {lr:g}")
            scores.setdefault(f"{steps}@{lr:g}", []).append(h["best_score"])
    return {"seeds": plan.seeds, "scores": scores, "seconds": round(time.perf_counter() - t0, 1)}


def search_setting(cfg: ScenarioConfig, name: str, grid: list[Any], request: int, progress: bool = False
                   ) -> dict[str, Any]:
    """Validation scores of request ``request`` of ``cfg`` (a forget or an add) on both paths of the
    scenario's method with the workload setting ``name`` at each value of ``grid`` (every request
    before it runs with the workload's settings)."""
    plan = plan_scenario(cfg)
    st = plan.settings
    req, labels = plan.requests[request], plan.labels[request]
    if request != 1:
        raise ValueError("search_setting searches the first request after learn")
    tag = request_tag(request, req, plan.names(labels))
    scores: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    for seed in plan.seeds:
        run, model, cols = _prepared(plan, seed)
        run.progress = progress
        for value in grid:
            run.st = st.replace(**{name: value})
            for kind in ("lora", "full"):
                lane = _lane(run, model, cols, kind, plan.method)
                ext = None
                if req.kind == "add":
                    with run.streams.global_rng(f"rows:{tag}:{kind}"):
                        ext = plan.workload.extend(lane.path.model, kind, labels, lane.columns, lane.path.chip, tag,
                                                   plan.adapter.bits)
                    lane.columns = ext.columns
                    budget = st.learn_lora if kind == "lora" else st.learn_full
                    _, _, h = run.stage(lane, tag, "learn", budget, forget=[], new=labels, state=plan.states[0],
                                        ext=ext, adapter=tag if kind == "lora" else None)
                else:
                    _, _, h = run.stage(lane, tag, "forget", run.st.forget_budget(kind, plan.method), forget=labels,
                                        new=[], state=plan.states[0], adapter=tag if kind == "lora" else None)
                scores.setdefault(str(value), {}).setdefault(kind, []).append(h["best_score"])
    return {"request": str(req), "setting": name, "seeds": plan.seeds, "scores": scores,
            "seconds": round(time.perf_counter() - t0, 1)}
