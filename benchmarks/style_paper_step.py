"""The paper-size style model on a CPU: instantiate it, deploy every weight (the depthwise
convolutions included) onto a simulated chip, add the paper's adapter and count one training step.

    python benchmarks/style_paper_step.py [--preset ideal] [--batch 2] [--json]

Prints the tiles and cells of the deployment and the ledger of one forward and backward pass of a
batch with a rank-4 LoRA on the MLPs (``rmlora.tasks.style.paper_model``; ~100 M weights, so the
simulated chip holds ~100 M cells: expect minutes and tens of GiB on a CPU machine).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time

import torch

from rmlora.adapters import add_adapter, analog_targets
from rmlora.costs import Ledger, load_profile
from rmlora.hardware import SimulatedChip, deploy
from rmlora.tasks.style import paper_model, style_settings
from rmlora.tasks.style_pipeline import StyleDiffusion
from rmlora.tasks.style_workload import counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ideal", help="device preset (ideal: exact programming, the fastest)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    st = style_settings("paper", device="cpu")
    t0 = time.perf_counter()
    model = paper_model()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((args.batch, st.model_channels, st.model_size, st.model_size), generator=gen)
    y = torch.randint(0, 30, (args.batch,), generator=gen)
    diff = StyleDiffusion(st, null_label=30)
    report = deploy(model, SimulatedChip(args.preset, seed=0),
                    calibrate=lambda m: diff.loss(m, x, y, torch.Generator().manual_seed(1)))
    t_deploy = time.perf_counter() - t0
    a = st.adapter
    targets = [n for n in analog_targets(model) if any(fnmatch.fnmatch(n, pat) for pat in a.target_modules)]
    add_adapter(model, "paper", r=a.rank, alpha=a.alpha, bits=a.bits, targets=targets)
    led = Ledger()
    t1 = time.perf_counter()
    with counted(model, led):
        diff.loss(model, x, y, torch.Generator().manual_seed(2)).backward()
    out = {"weights": sum(p.numel() for p in model.parameters() if not p.requires_grad),
           "tiles": report.tiles, "cells": report.cells, "deploy_s": round(t_deploy, 1),
           "step_s": round(time.perf_counter() - t1, 1), "batch": args.batch, "counts": dict(led.counts),
           "energy_J": led.energy(load_profile("cmos-180nm"))}
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
