"""rmlora: unlearning and continual learning with digital LoRA adapters on hybrid
analogue-digital resistive-memory compute-in-memory chips (arXiv 2601.10037).

What a notebook needs is importable from here (loaded on first use, so that
``import rmlora`` stays fast); see docs/python-api.md::

    import rmlora
    r = rmlora.run_scenario(rmlora.ScenarioConfig(workload="face", configuration="quick"))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    # scenarios and devices
    "run_scenario": "rmlora.scenario.runner", "plan_scenario": "rmlora.scenario.runner",
    "load_device": "rmlora.scenario.device", "Device": "rmlora.scenario.device",
    "get_workload": "rmlora.scenario.workload",
    # configs
    "ScenarioConfig": "rmlora.config", "ChipConfig": "rmlora.config", "AdapterConfig": "rmlora.config",
    "TrainConfig": "rmlora.config", "Request": "rmlora.config", "parse_requests": "rmlora.config",
    # results
    "ScenarioResult": "rmlora.scenario.results", "SeedResult": "rmlora.scenario.results",
    "RequestResult": "rmlora.scenario.results", "PathResult": "rmlora.scenario.results",
    "PathStep": "rmlora.scenario.results",
    # the chip
    "SimulatedChip": "rmlora.hardware", "make_chip": "rmlora.hardware", "deploy": "rmlora.hardware",
    "redeploy": "rmlora.hardware",
    # adapters and methods
    "add_adapter": "rmlora.adapters", "delete_adapter": "rmlora.adapters", "save_adapter": "rmlora.adapters",
    "load_adapter": "rmlora.adapters", "AdapterPath": "rmlora.methods.paths", "FullPath": "rmlora.methods.paths",
    "fit": "rmlora.methods", "make_objective": "rmlora.methods", "Batches": "rmlora.methods",
    # costs
    "Ledger": "rmlora.costs", "counting": "rmlora.costs", "cost_figures": "rmlora.costs",
    "ratios": "rmlora.costs", "load_profile": "rmlora.costs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rmlora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
