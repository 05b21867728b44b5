"""Choosing the converter calibration percentile on validation data (a script, not a test).

For a classification workload (face or speaker, their default configuration and data), each
seed pretrains the float model once, then deploys it on ``--chips`` fresh chips per
percentile (the same chip seeds for every percentile) with the converters calibrated at that
percentile on the training examples, and scores the **validation** split of the learned
classes. Test data is never read. Usage::

    python benchmarks/calibration_percentile.py --workload face --data-dir ../shared/data [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from rmlora.config import ScenarioConfig
from rmlora.hardware import deploy, make_chip
from rmlora.metrics import accuracy
from rmlora.runinfo import cpu_info
from rmlora.scenario import plan_scenario
from rmlora.scenario.runner import pretrained_seed
from rmlora.scenario.classification import ColumnView

PERCENTILES = (99.0, 99.9, 99.99, 100.0)


def sweep(workload: str, data_dir: str | None, seeds: int, chips: int, percentiles=PERCENTILES) -> dict:
    plan = plan_scenario(ScenarioConfig(workload=workload, data_dir=data_dir, progress=False))
    w, st = plan.workload, plan.settings
    state = plan.states[0]
    acc: dict[float, list[float]] = {q: [] for q in percentiles}
    for seed in range(seeds):
        run, model, cols = pretrained_seed(plan, seed)
        data, streams = run.data, run.streams
        xv, yv = data.xy("val", state.kept, plan.order)
        for q in percentiles:
            for k in range(chips):
                m = copy.deepcopy(model)
                chip = make_chip(plan.chip.replace(calibration_percentile=q), streams.seed(f"chip:sweep:{k}"))
                deploy(m, chip, exclude=w.deploy_exclude(st), profile=plan.profile,
                       calibrate=w.calibration(data, state.kept, cols, st))
                with torch.no_grad():
                    acc[q].append(accuracy(ColumnView(m, cols, plan.order).eval(), xv, yv))
    return {"workload": workload, "seeds": seeds, "chips_per_seed": chips, "split": "val",
            "preset": plan.chip.preset, "cpu": cpu_info()["model"],
            "val_acc": {str(q): {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
                                 "n": len(v)} for q, v in acc.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="face", choices=["face", "speaker"])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.seeds < 1 or a.chips < 1:
        ap.error("--seeds and --chips must be >= 1")
    out = sweep(a.workload, a.data_dir, a.seeds, a.chips)
    if a.json:
        print(json.dumps(out))
        return
    print(f"{out['workload']} on {out['preset']}: validation accuracy of the learned classes, "
          f"{out['seeds']} seeds x {out['chips_per_seed']} chips per percentile")
    for q, v in out["val_acc"].items():
        sd = "" if v["std"] is None else f" ± {100 * v['std']:.1f}"
        print(f"  percentile {q:>6}: {100 * v['mean']:.1f}%{sd}")


if __name__ == "__main__":
    main()
