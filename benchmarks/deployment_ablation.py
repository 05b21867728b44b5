"""Which non-ideality of the chip costs a workload most at deployment (a script, not a test).

Pretrains the workload's float model once (seed 0), then deploys it on ``--chips`` chips per
variant, each switching one non-ideality of the chip off, and prints the workload's retention
score (test accuracy of the kept classes for face and speaker, validation denoising loss for
style, lower is better; an analysis, nothing here is tuned). Variants: the full chip, no read
noise, ideal converters, per-vector ranges, no stuck-at cells, no programming error (targets
written exactly, stuck cells kept), and healthy reference columns (their stuck cells set back to g_ref after programming: what a
chip that maps out faulty reference cells would have). Usage::

    python benchmarks/deployment_ablation.py --workload style --configuration quick [--chips 2]
"""

from __future__ import annotations

import argparse
import copy
import json

from rmlora.config import ScenarioConfig
from rmlora.device import load_preset
from rmlora.hardware import analog_layers, deploy, make_chip
from rmlora.runinfo import cpu_info
from rmlora.scenario import plan_scenario
from rmlora.scenario.runner import pretrained_seed


def _heal_references(model, chip, p) -> int:
    """Set stuck reference-column cells back to g_ref; returns how many there were."""
    n = 0
    for st in chip._arrays.values():  # simulator state: the reference cells of every array
        if "ref.stuck" in st:
            bad = st["ref.stuck"] != 0
            n += int(bad.sum())
            st["ref.g"][bad] = p.reference_uS
    for _, m in analog_layers(model):
        m.core.refresh()
    return n


def ablation(workload: str, configuration: str | None, data_dir: str | None, chips: int) -> dict:
    plan = plan_scenario(ScenarioConfig(workload=workload, configuration=configuration, data_dir=data_dir,
                                        progress=False))
    w, st, state = plan.workload, plan.settings, plan.states[0]
    run, model, cols = pretrained_seed(plan, 0)
    data = run.data
    metric, float_score = w.retention_metric(model, data, state, cols)
    p = load_preset(plan.chip.preset)
    variants = {
        "full chip": (plan.chip, p),
        "no read noise": (plan.chip.replace(read_noise=False), p),
        "ideal converters": (plan.chip.replace(dac_bits=None, adc_bits=None), p),
        "per-vector ranges": (plan.chip.replace(range_mode="per-vector"), p),
        "no stuck-at cells": (plan.chip, p.replace(stuck_low_fraction=0.0, stuck_high_fraction=0.0)),
        "no programming error": (plan.chip, p.replace(programming="exact", relax_sigma_floor_uS=0.0,
                                                      relax_sigma_iter_uS=0.0,
                                                      **{f"relax_poly_c{i}_uS": 0.0 for i in range(5)})),
        "healthy reference columns": (plan.chip, p),
    }
    scores = {}
    for name, (cc, pr) in variants.items():
        vals = []
        for k in range(chips):
            m = copy.deepcopy(model)
            chip = make_chip(cc, 100 + k, preset=pr)
            deploy(m, chip, exclude=w.deploy_exclude(st), profile=plan.profile,
                   calibrate=w.calibration(data, state.kept, cols, st))
            if name == "healthy reference columns":
                _heal_references(m, chip, pr)
            vals.append(w.retention_metric(m, data, state, cols)[1])
        scores[name] = vals
    return {"workload": workload, "configuration": plan.configuration, "preset": p.name, "metric": metric,
            "float": float_score, "chips": chips, "scores": scores, "cpu": cpu_info()["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="style")
    ap.add_argument("--configuration", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--chips", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.chips < 1:
        ap.error("--chips must be >= 1")
    out = ablation(a.workload, a.configuration, a.data_dir, a.chips)
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['workload']} ({out['configuration']}) on {out['preset']}: {out['metric']} per chip "
          f"(float model: {out['float']:.4f})")
    for name, vals in out["scores"].items():
        print(f"  {name:28s} " + "  ".join(f"{v:.4f}" for v in vals))


if __name__ == "__main__":
    main()
