"""DESIGN §3's three figures — training cost, deployment overhead, inference energy.

Each is a ledger of counted work priced by a technology profile:

* training cost = every forward and backward pass of the adaptation run,
  plus its parameter updates: SRAM writes of the adapter (LoRA path) or the
  write-verify pulses and reads that reprogram the moved cells after every
  step (full-update baseline);
* deployment overhead = putting the adapted model on the chip afterwards:
  writing the adapter's bits into SRAM, or write-verify of every cell whose
  target moved beyond tolerance;
* inference energy = one inference (per sample) of the deployed system.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rmlora.costs.ledger import Ledger
from rmlora.costs.profile import TechProfile


@dataclass
class CostFigures:
    """The three figures of one path (J and s), with the ledgers they came from."""

    training_cost_J: float
    training_time_s: float
    deployment_overhead_J: float
    deployment_time_s: float
    inference_energy_J: float
    inference_time_s: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def cost_figures(training: Ledger, deployment: Ledger, inference: Ledger, samples: int,
                 profile: TechProfile) -> CostFigures:
    """Price the three ledgers; ``inference`` covers ``samples`` inferences."""
    n = max(1, samples)
    return CostFigures(
        training_cost_J=training.energy(profile)["total"],
        training_time_s=training.time(profile)["total"],
        deployment_overhead_J=deployment.energy(profile)["total"],
        deployment_time_s=deployment.time(profile)["total"],
        inference_energy_J=inference.energy(profile)["total"] / n,
        inference_time_s=inference.time(profile)["total"] / n,
    )


def ratios(baseline: CostFigures, lora: CostFigures) -> dict[str, float]:
    """baseline / lora for each figure (how many times cheaper the adapter path is)."""
    def r(a: float, b: float) -> float:
        return a / b if b > 0 else float("inf")
    return {
        "training_cost": r(baseline.training_cost_J, lora.training_cost_J),
        "deployment_overhead": r(baseline.deployment_overhead_J, lora.deployment_overhead_J),
        "deployment_time": r(baseline.deployment_time_s, lora.deployment_time_s),
        "inference_energy": r(baseline.inference_energy_J, lora.inference_energy_J),
    }
