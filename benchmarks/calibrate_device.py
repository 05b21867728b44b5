"""Write-verify statistics of a device preset against the published ranges it cites.

Programs ``--cells`` fresh cells to targets spread uniformly over the window and
prints mean/95th-percentile pulses per cell, verify reads, failure rate and the
final error spread, next to the published anchors:

* NeuRRAM (Wan et al., Nature 2022; chip-test code): at most 30 pulses per cell;
* aihwkit ``ReRamWan2022NoiseModel`` (fit to NeuRRAM): programming error σ between
  0.35 and 2.0 µS over its 0–40 µS range; ``ReRamCMONoiseModel``: σ ≈ 0.4–0.6 µS.

Usage: ``python benchmarks/calibrate_device.py [--preset rram-180nm] [--cells N] [--json]``
"""

from __future__ import annotations

import argparse
import json

import torch

from rmlora.device import load_preset, physics

PUBLISHED = {"max_pulses_per_cell": 30, "error_std_uS": [0.35, 2.0]}


def wan2022_sigma(g_uS: torch.Tensor, after_one_day: bool = False) -> torch.Tensor:
    """aihwkit ReRamWan2022NoiseModel programming σ (µS) for targets ``g_uS``."""
    c = (0.701, 22.086, -50.773, 47.095, -16.458) if after_one_day else (0.348, 16.030, -43.853, 45.393, -16.815)
    u = g_uS / 40.0
    return sum(ci * u ** i for i, ci in enumerate(c))


def calibrate(preset: str, cells: int, seed: int) -> dict:
    p = load_preset(preset)
    gen = torch.Generator().manual_seed(seed)
    g, d2d, stuck = physics.new_cells(cells, p, gen)
    target = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
    r = physics.program(g, target, d2d, stuck, p, gen)
    ok = r.converged & (stuck == 0)
    pulses = r.pulses.float()
    err = r.error[ok]
    band = wan2022_sigma(torch.tensor([10.0, 20.0, 30.0, 40.0]))  # the fit covers 0..40 µS
    return {
        "preset": p.name, "cells": cells, "seed": seed,
        "mean_pulses_per_cell": float(pulses.mean()), "p95_pulses_per_cell": float(pulses.quantile(0.95)),
        "max_pulses_per_cell": int(pulses.max()), "mean_verify_reads": float(r.verify_reads.float().mean()),
        "failed_fraction": float((~r.converged).float().mean()), "stuck_fraction": float((stuck != 0).float().mean()),
        "error_mean_uS": float(err.mean()), "error_std_uS": float(err.std()),
        "wan2022_sigma_uS_at_10_20_30_40": [round(float(b), 3) for b in band],
        "published": PUBLISHED,
        "within_published": bool(pulses.max() <= PUBLISHED["max_pulses_per_cell"]
                                 and PUBLISHED["error_std_uS"][0] <= float(err.std()) <= PUBLISHED["error_std_uS"][1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="rram-180nm")
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = calibrate(a.preset, a.cells, a.seed)
    if a.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
