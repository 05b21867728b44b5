"""Typed results of a scenario: a path after a request, a request, a path over the whole
sequence, a seed, the scenario. ``to_dict``/``from_dict`` at the edge (``summary.json``,
whose keys ``docs/summary-schema.md`` documents); everything else reads the objects.

Aggregates over seeds (:meth:`ScenarioResult.aggregate`) are means with the sample
standard deviation (ddof = 1), a 95% bootstrap interval of the mean and the per-seed
values beside them; gaps to the retrained reference are computed per seed, then
averaged. :meth:`ScenarioResult.evaluation` is the unlearning literature's table per
lane (UA, RA, TA, the attacks, Avg. Gap, run time, the three cost figures).
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
SCHEMA_VERSION = 5
#: The paper's reported ratios (arXiv 2601.10037, abstract: "up to").
PAPER_RATIOS = {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
PATHS = ("lora", "full", "retrain")
#: resamples of the bootstrap intervals (percentile method, seeded: the same data give the same interval)
BOOTSTRAP_RESAMPLES = 10_000
#: the false-positive rate at which the likelihood-ratio attack's true-positive rate is reported
ATTACK_FPR = 0.05


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
    method: str = ""  # the unlearning method of the lane ("" for the references)
    kind: str = ""  # lora, full, retrain or retrain-float
    seconds: float = 0.0  # wall time of the lane's requests (references: their training) (s)
    audit: dict[str, Any] = field(default_factory=dict)  # attack statistics, probe, relearning, adapters off, merge


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
    deployed_audit: dict[str, Any] = field(default_factory=dict)  # the audit of the model before any request
    #: the first method's LoRA and full-update ledgers priced under every cost protocol
    #: (rmlora.costs.report.cost_record: protocols, layers, sensitivity) and the ledgers themselves
    costs: dict[str, Any] = field(default_factory=dict)
    _nested = {"requests": ("list", RequestResult), "paths": ("dict", PathResult)}


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement,
    numpy generator seeded 0); [v, v] for one value."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return [float("nan"), float("nan")]
    if a.size == 1:
        return [float(a[0]), float(a[0])]
    rng = np.random.default_rng(0)
    means = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof = 1; NaN for one value), the 95% bootstrap interval
    of the mean (``ci95``) and the values (NaNs skipped)."""
    a = np.array([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    mean = float(a.mean()) if a.size else float("nan")
    std = float(a.std(ddof=1)) if a.size > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": bootstrap_ci(a), "per_seed": list(values)}


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
    methods: list[str] = field(default_factory=list)  # the unlearning methods compared (one lane pair each)
    schema_version: int = SCHEMA_VERSION
    paper_ratios: dict[str, float] = field(default_factory=lambda: dict(PAPER_RATIOS))
    _nested = {"per_seed": ("list", SeedResult)}

    # -- reading ---------------------------------------------------------------
    def lanes(self) -> list[str]:
        """The lanes of the run in table order: the update lanes, then the references."""
        names = list(self.per_seed[0].requests[-1].paths)
        refs = [n for n in ("retrain", "retrain-float") if n in names]
        return [n for n in names if n not in refs] + refs

    def pair(self) -> tuple[str, str]:
        """The adapter-path and full-update lanes of the first method (the cost comparison's pair)."""
        if len(self.methods) <= 1:
            return "lora", "full"
        return f"lora:{self.methods[0]}", f"full:{self.methods[0]}"

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
                "digital_inference_energy_J": stats([s.digital_inference_energy_J for s in self.per_seed]),
                "evaluation": self.evaluation()}

    # -- the unlearning evaluation -----------------------------------------------------
    def attack_available(self) -> str:
        """"" when the likelihood-ratio attack can run on this result, else why not."""
        if not any(s.deployed_audit.get("attack_stats") for s in self.per_seed):
            return "no forgotten examples to attack"
        if self.settings.get("split_seed") is None:
            return "every seed splits the data anew (set settings.split_seed)"
        if len(self.per_seed) < 3:
            return f"{len(self.per_seed)} seed(s): the attack needs at least 3 (2 shadow models of each kind)"
        return ""

    def shadows(self) -> int:
        """Shadow models of each kind the likelihood-ratio attack uses (settings.audit.shadows, else
        every other seed)."""
        asked = (self.settings.get("audit") or {}).get("shadows")
        return int(asked) if asked else len(self.per_seed) - 1

    def _audit(self, seed: SeedResult, lane: str) -> dict[str, Any]:
        return seed.deployed_audit if lane == "deployed" else seed.paths[lane].audit

    def _last(self, seed: SeedResult, lane: str) -> dict[str, float]:
        if lane == "deployed":  # every lane holds the deployed model's scores at request 0
            return next(iter(seed.requests[0].paths.values())).metrics
        return seed.requests[-1].paths[lane].metrics

    def evaluation(self) -> dict[str, Any]:
        """The unlearning table per lane (``deployed``: the model before any request, then every
        lane): stats over seeds of UA = 1 − forget accuracy, RA, TA, the loss-threshold attack's
        |AUC − 0.5|, MIA-efficacy (where defined), the likelihood-ratio attack's AUC and TPR at
        :data:`ATTACK_FPR` (against the hardware-aware retrained model), relearning steps, the
        linear probe, the Avg. Gap to the retrained model, run time, the three cost figures, the
        forget accuracy with the forget adapters (or mask) switched off and the cost of a merge
        (computed once, then kept: the result's seeds do not change after the run)."""
        if "_evaluation" not in self.__dict__:
            self.__dict__["_evaluation"] = self._evaluation()
        return self.__dict__["_evaluation"]

    def _evaluation(self) -> dict[str, Any]:
        if not self.per_seed or "retrain" not in self.per_seed[0].requests[-1].paths:
            return {}
        why = self.attack_available()
        lanes = ["deployed"] + self.lanes()
        ret = [np.asarray(s.paths["retrain"].audit.get("attack_stats", []), dtype=float) for s in self.per_seed]
        out: dict[str, Any] = {"attack": {"available": not why, "why_not": why, "fpr": ATTACK_FPR,
                                          "shadows": self.shadows() if not why else 0,
                                          "negatives_per_seed": int(ret[0].size) if ret else 0},
                               "lanes": {}}
        for lane in lanes:
            row: dict[str, Any] = {}
            m = [self._last(s, lane) for s in self.per_seed]
            row["UA"] = stats([1 - v.get("forget_acc", float("nan")) for v in m])
            row["RA"] = stats([v.get("retain_acc", float("nan")) for v in m])
            row["TA"] = stats([v.get("test_acc", float("nan")) for v in m])
            row["mia_gap"] = stats([v.get("mia_gap", float("nan")) for v in m])
            row["mia_efficacy"] = stats([v.get("mia_efficacy", float("nan")) for v in m])
            audits = [self._audit(s, lane) for s in self.per_seed]
            if not why and lane != "retrain":
                mine = [np.asarray(a.get("attack_stats", []), dtype=float) for a in audits]
                if all(x.size for x in mine):
                    from rmlora.metrics.lira import ulira

                    res = ulira(mine, ret, self.shadows(), ATTACK_FPR)
                    row["lira_auc"] = stats([r["auc"] for r in res])
                    row["lira_tpr"] = stats([r["tpr"] for r in res])
            for key, name in (("relearn_steps", "relearn_steps"), ("probe_acc", "probe_acc")):
                row[name] = stats([a.get(key, float("nan")) for a in audits])
            row["adapters_off_forget_acc"] = stats([(a.get("adapters_off") or {}).get("forget_acc", float("nan"))
                                                    for a in audits])
            row["merge_J"] = stats([(a.get("merge") or {}).get("energy_J", float("nan")) for a in audits])
            row["merge_s"] = stats([(a.get("merge") or {}).get("time_s", float("nan")) for a in audits])
            if lane != "deployed":
                row["avg_gap"] = stats([s.avg_gap.get(lane, float("nan")) if lane != "retrain" else 0.0
                                        for s in self.per_seed])
                row["seconds"] = stats([s.paths[lane].seconds for s in self.per_seed])
                for k in ("training_cost_J", "deployment_overhead_J", "inference_energy_J"):
                    row[k] = stats([s.paths[lane].costs[k] for s in self.per_seed])
                p0 = self.per_seed[0].paths[lane]
                row["method"], row["kind"] = p0.method, p0.kind
            else:
                row["method"], row["kind"] = "", "deployed"
            out["lanes"][lane] = row
        return out

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
    seed["paths"] = {p: {**v, "forgotten_max": float("nan") if v.get("forgotten_max") is None else v["forgotten_max"],
                         "audit": _none_to_nan(v.get("audit") or {})}
                     for p, v in seed["paths"].items()}
    seed["deployed_audit"] = _none_to_nan(seed.get("deployed_audit") or {})
    seed["avg_gap"] = _none_to_nan(seed.get("avg_gap") or {})
    return seed


__all__ = ["ATTACK_FPR", "PAPER_RATIOS", "SCHEMA_VERSION", "PathResult", "PathStep", "RequestResult",
           "ScenarioResult", "SeedResult", "bootstrap_ci", "stats"]
