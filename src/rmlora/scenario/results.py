"""Typed results of a scenario: a path after a request, a request, a path over the whole
sequence, a seed, the scenario. ``to_dict``/``from_dict`` at the edge (``summary.json``,
whose keys ``docs/summary-schema.md`` documents); everything else reads the objects.

Aggregates over seeds (:meth:`ScenarioResult.aggregate`) are means with the sample
standard deviation (ddof = 1) and the per-seed values beside them; gaps to the
retrained reference are computed per seed, then averaged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rmlora.config import plain
from rmlora.errors import RmloraError

#: Version of the ``summary.json`` layout; bumped on every incompatible change.
SCHEMA_VERSION = 3
#: The paper's reported ratios (arXiv 2601.10037, abstract: "up to").
PAPER_RATIOS = {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
PATHS = ("lora", "full", "retrain")


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def _none_to_nan(v: Any) -> Any:
    if v is None:
        return float("nan")
    if isinstance(v, dict):
        return {k: _none_to_nan(x) for k, x in v.items()}
    return v


class _Record:
    """Plain-dict conversion for the result dataclasses (nested records rebuilt by type)."""

    _nested: dict[str, Any] = {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        kw = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for k, v in d.items():
            if k not in names:
                continue
            sub = cls._nested.get(k)
            if sub is not None:
                kind, typ = sub
                if kind == "one":
                    v = typ.from_dict(v)
                elif kind == "list":
                    v = [typ.from_dict(x) for x in v]
                else:
                    v = {n: typ.from_dict(x) for n, x in v.items()}
            kw[k] = v
        return cls(**kw)


@dataclass
class PathStep(_Record):
    """One path right after one request: its scores and what the request cost it."""

    metrics: dict[str, float]  # the workload's metrics (fractions; NaN where undefined)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> class name -> value
    training_J: float = 0.0  # this request's training energy (J)
    deployment_J: float = 0.0  # this request's deployment energy (J)
    deployment_s: float = 0.0  # this request's deployment time (s)
    best_step: int | None = None  # the validation-selected step of its training (None: no training)
    seconds: float = 0.0  # wall time of the request on this path (s)
    adapter: str | None = None  # the adapter it added (adapter path)
    note: str = ""  # what the path did, when it is not the obvious


@dataclass
class RequestResult(_Record):
    """One request of the sequence and every path after it."""

    index: int
    request: str  # text form, e.g. "forget:s3"
    kind: str
    classes: list[str]
    kept: list[str]  # the scenario's kept classes after it
    forgotten: list[str]
    added: list[str]
    paths: dict[str, PathStep]
    _nested = {"paths": ("dict", PathStep)}


@dataclass
class PathResult(_Record):
    """One path over the whole sequence of one seed."""

    costs: dict[str, float]  # CostFigures: training and deployment summed over requests; inference per sample
    breakdown: dict[str, Any]  # energy by category (J) and the counts behind it
    reprogrammed_cells: int = 0  # write-verify cell programmings during training (full update)
    continual: dict[str, Any] = field(default_factory=dict)  # R, tasks, average_accuracy, BWT, forgetting
    forgotten_max: float = float("nan")  # highest forget metric after any forget request (0: stays forgotten)


@dataclass
class SeedResult(_Record):
    """Everything one seed produced."""

    seed: int
    class_names: list[str]  # the scenario's classes in column order
    pretrain: dict[str, Any]
    deployment: dict[str, Any]  # programming report of the initial deployment
    requests: list[RequestResult]
    paths: dict[str, PathResult]  # lora, full
    ratios: dict[str, float]  # full / lora per figure, and all-digital / lora inference
    digital_inference_energy_J: float
    avg_gap: dict[str, float] = field(default_factory=dict)  # path -> mean |metric − retrain's|, last request
    extras: dict[str, Any] = field(default_factory=dict)  # the workload's own results (repair sweep, grids)
    timing_s: dict[str, float] = field(default_factory=dict)
    retention: dict[str, Any] = field(default_factory=dict)  # scores vs time after programming (retention.py)
    _nested = {"requests": ("list", RequestResult), "paths": ("dict", PathResult)}


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof = 1; NaN for one value) and the values (NaNs skipped)."""
    a = np.array([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    mean = float(a.mean()) if a.size else float("nan")
    std = float(a.std(ddof=1)) if a.size > 1 else float("nan")
    return {"mean": mean, "std": std, "per_seed": list(values)}


@dataclass
class ScenarioResult(_Record):
    """A whole scenario: its configuration and every seed's result."""

    workload: str
    configuration: str
    dataset: dict[str, str]
    requests: list[str]
    method: str
    seeds: list[int]
    config: dict[str, Any]  # the ScenarioConfig as given
    settings: dict[str, Any]  # the workload settings used (overrides applied)
    adapter: dict[str, Any]
    chip: dict[str, Any]
    environment: dict[str, Any]  # versions, CPU, threads
    per_seed: list[SeedResult]
    metric_names: list[str] = field(default_factory=list)  # the workload's per-request metrics
    schema_version: int = SCHEMA_VERSION
    paper_ratios: dict[str, float] = field(default_factory=lambda: dict(PAPER_RATIOS))
    _nested = {"per_seed": ("list", SeedResult)}

    # -- reading ---------------------------------------------------------------
    def metric(self, path: str, name: str, request: int = -1) -> dict[str, Any]:
        """``name`` of ``path`` after request ``request`` (default: the last) over the seeds."""
        return stats([s.requests[request].paths[path].metrics.get(name, float("nan")) for s in self.per_seed])

    def cost(self, path: str, name: str) -> dict[str, Any]:
        return stats([s.paths[path].costs[name] for s in self.per_seed])

    def ratio(self, name: str) -> dict[str, Any]:
        return stats([s.ratios[name] for s in self.per_seed])

    def aggregate(self) -> dict[str, Any]:
        """Means over seeds of every metric per request and path, costs, ratios, continual
        summaries and gaps (the ``aggregate`` block of ``summary.json``)."""
        s0 = self.per_seed[0]
        reqs = []
        for i, r in enumerate(s0.requests):
            reqs.append({"request": r.request, "paths": {
                p: {m: self.metric(p, m, i) for m in r.paths[p].metrics} for p in r.paths}})
        paths = {}
        for p in s0.paths:
            paths[p] = {
                "costs": {k: self.cost(p, k) for k in s0.paths[p].costs},
                "continual": {k: stats([s.paths[p].continual[k] for s in self.per_seed])
                              for k in ("average_accuracy", "backward_transfer", "forgetting")
                              if k in s0.paths[p].continual},
                "forgotten_max": stats([s.paths[p].forgotten_max for s in self.per_seed]),
                "reprogrammed_cells": stats([s.paths[p].reprogrammed_cells for s in self.per_seed]),
                "avg_gap": stats([s.avg_gap.get(p, float("nan")) for s in self.per_seed]),
            }
        return {"requests": reqs, "paths": paths, "ratios": {k: self.ratio(k) for k in s0.ratios},
                "digital_inference_energy_J": stats([s.digital_inference_energy_J for s in self.per_seed])}

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["aggregate"] = self.aggregate()
        return _nan_to_none(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScenarioResult:
        v = d.get("schema_version")
        if v != SCHEMA_VERSION:
            raise RmloraError(f"summary schema version {v!r} is not the supported {SCHEMA_VERSION}; "
                              "rerun the scenario with this version of rmlora")
        d = dict(d)
        d["per_seed"] = [_fix_nans(s) for s in d["per_seed"]]
        return super().from_dict(d)


def _fix_nans(seed: dict[str, Any]) -> dict[str, Any]:
    """JSON stores NaN metrics as null: read them back as NaN."""
    seed = dict(seed)
    reqs = []
    for r in seed["requests"]:
        r = dict(r)
        r["paths"] = {p: {**v, "metrics": _none_to_nan(v["metrics"])} for p, v in r["paths"].items()}
        reqs.append(r)
    seed["requests"] = reqs
    seed["paths"] = {p: {**v, "forgotten_max": float("nan") if v.get("forgotten_max") is None else v["forgotten_max"]}
                     for p, v in seed["paths"].items()}
    return seed


__all__ = ["PAPER_RATIOS", "SCHEMA_VERSION", "PathResult", "PathStep", "RequestResult", "ScenarioResult",
           "SeedResult", "stats"]
