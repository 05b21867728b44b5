"""Cost protocols: three ways to price the same counted work (docs/costs.md has the formulas).

The paper publishes no cost formulas, so its ratios cannot be checked against ours
directly; each protocol is one explicit reading, priced from the same ledgers:

``measured`` (default)
    What the simulated run did: every forward and backward pass of the
    adaptation, the optimiser's state traffic and arithmetic, the SRAM writes of
    adapter parameters (LoRA) or the write-verify of every cell whose target
    moved beyond tolerance after each step (mixed-precision full update), then
    deployment, then inference.
``reprogram-every-step``
    Our reading of the paper's training comparison: only the parameter update
    is compared, and the full update write-verifies *every* trained cell after
    every optimiser step (priced at the run's measured write-verify work per
    reprogrammed cell). The LoRA side is its SRAM writes and optimiser work.
    Deployment and inference as measured.
``offchip-finetune``
    The full update is computed off-chip (its forward/backward passes and
    optimiser on a digital unit of the same node: the all-digital reference's
    MACs and weight reads, no write-verify during training) and deployed with
    one reprogramming; the adapter path as measured.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rmlora.costs.figures import CostFigures, cost_figures
from rmlora.costs.ledger import UPDATE_KEYS, Ledger
from rmlora.costs.profile import TechProfile
from rmlora.errors import RmloraError

PROTOCOLS = {
    "measured": "the simulated run as it happened: every pass, optimiser work, SRAM writes or the write-verify of "
                "moved cells after each step (mixed precision)",
    "reprogram-every-step": "update costs only; the full update write-verifies every trained cell after every step "
                            "(our reading of the paper's protocol)",
    "offchip-finetune": "the full update computed off-chip on a digital unit and deployed with one reprogramming",
}
_WV = ("set_pulses", "reset_pulses", "verify_reads")
WEIGHT_BITS = 8  # an INT8 weight written back after an off-chip step (its FP32 master: optimizer_bits)


@dataclass
class PathLedgers:
    """The counted work of one path: its adaptation (training), deployment and ``samples``
    inferences."""

    train: Ledger
    deploy: Ledger
    inference: Ledger
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "deploy": self.deploy.to_dict(),
                "inference": self.inference.to_dict(), "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PathLedgers":
        return cls(Ledger.from_dict(d["train"]), Ledger.from_dict(d["deploy"]), Ledger.from_dict(d["inference"]),
                   int(d["samples"]))


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise RmloraError(f"unknown cost protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return name


def _per_cell(c: Counter, fallback: Counter) -> dict[str, float]:
    """Write-verify work per programmed cell in ``c`` (``fallback`` when it programmed none)."""
    src = c if c["programmed_cells"] > 0 else fallback
    n = max(1, src["programmed_cells"])
    return {k: src[k] / n for k in _WV}


def every_step_update(train: Ledger, deploy: Ledger) -> Ledger:
    """The update part of ``train`` with every trained cell write-verified after every step, at
    the measured work per reprogrammed cell (per layer; the deployment's when training
    reprogrammed none)."""
    out = train.only(UPDATE_KEYS)
    wv_total = Counter()
    for name, c in out.layers.items():
        cells = train.layers[name]["trained_cells"] if name in train.layers else 0
        if not cells:
            continue
        per = _per_cell(c, deploy.layers.get(name, deploy.counts))
        for k in _WV:
            c[k] = int(round(cells * per[k]))
            wv_total[k] += c[k]
        c["programmed_cells"] = cells
        wv_total["programmed_cells"] += cells
    unattributed = train.counts["trained_cells"] - sum(train.layers[n]["trained_cells"] for n in train.layers)
    if unattributed > 0:
        per = _per_cell(train.counts, deploy.counts)
        for k in _WV:
            wv_total[k] += int(round(unattributed * per[k]))
        wv_total["programmed_cells"] += unattributed
    for k in (*_WV, "programmed_cells"):
        out.counts[k] = wv_total[k] if train.counts["trained_cells"] else out.counts[k]
    return out


def protocol_ledgers(protocol: str, path: str, pl: PathLedgers) -> tuple[Ledger, Ledger, Ledger]:
    """(training, deployment, inference) ledgers of ``path`` (``lora`` or ``full``) under
    ``protocol``."""
    check_protocol(protocol)
    if protocol == "reprogram-every-step":
        train = every_step_update(pl.train, pl.deploy) if path == "full" else pl.train.only(UPDATE_KEYS)
        return train, pl.deploy, pl.inference
    if protocol == "offchip-finetune" and path == "full":  # the array weights live in digital memory instead
        train = pl.train.as_reference().only(set(_WV) | {"programmed_cells"}, drop=True)
        train.add("sram_write_bits", train.counts["array_param_updates"] * WEIGHT_BITS)
        return train, pl.deploy, pl.inference
    return pl.train, pl.deploy, pl.inference


def figures(protocol: str, path: str, pl: PathLedgers, profile: TechProfile) -> CostFigures:
    train, dep, inf = protocol_ledgers(protocol, path, pl)
    return cost_figures(train, dep, inf, pl.samples, profile)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def evaluate(paths: dict[str, PathLedgers], profile: TechProfile, protocols: list[str] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Every protocol's figures for the ``lora`` and ``full`` paths and their ratios (full / lora;
    inference also against the all-digital reference: the full path's network on the digital unit).

    Returns {protocol: {"lora": figures, "full": figures, "digital_inference_J", "ratios": {...}}}.
    """
    lp, fp = paths["lora"], paths["full"]
    digital = fp.inference.as_reference()
    digital_J = digital.energy(profile)["total"] / max(1, fp.samples)
    digital_s = digital.time(profile)["total"] / max(1, fp.samples)
    out = {}
    for proto in protocols or list(PROTOCOLS):
        lo, fu = figures(proto, "lora", lp, profile), figures(proto, "full", fp, profile)
        out[proto] = {
            "lora": lo.to_dict(), "full": fu.to_dict(),
            "digital_inference_J": digital_J, "digital_inference_s": digital_s,
            "ratios": {
                "training_energy": _ratio(fu.training_cost_J, lo.training_cost_J),
                "training_time": _ratio(fu.training_time_s, lo.training_time_s),
                "deployment_energy": _ratio(fu.deployment_overhead_J, lo.deployment_overhead_J),
                "deployment_time": _ratio(fu.deployment_time_s, lo.deployment_time_s),
                "inference_energy": _ratio(fu.inference_energy_J, lo.inference_energy_J),
                "inference_energy_vs_digital": _ratio(digital_J, lo.inference_energy_J),
                "inference_time_vs_digital": _ratio(digital_s, lo.inference_time_s),
            },
        }
    return out


#: the three headline ratios (the paper's figures), by their key in :func:`evaluate`'s ratios
HEADLINE = {"training_energy": "training cost", "deployment_energy": "deployment overhead",
            "inference_energy_vs_digital": "inference energy"}
