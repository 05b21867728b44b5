"""Write-verify statistics of a device preset against the published data it cites.

Programs ``--cells`` fresh cells to each of a ladder of target conductances
across the preset's window and reports, per level, the spread σ of the final
error (right after programming and relaxation), pulses per cell and
failures; then the same over uniformly spread targets. For comparison:

* aihwkit ``ReRamWan2022NoiseModel`` (IBM/aihwkit, a 4th-order fit of
  NeuRRAM's programming spread, Wan et al., Nature 608, 504 (2022), for
  targets 0–40 µS at 1 s): σ(g) = 0.348 + 16.030u − 43.853u² + 45.393u³ −
  16.815u⁴ µS with u = g / 40 µS;
* NeuRRAM's chip-test code: at most 30 pulses per cell.

``--plot FILE`` draws simulated against published σ(g). Usage::

    python benchmarks/calibrate_device.py [--preset wan2022] [--cells N] [--plot sigma.png] [--json]
"""

from __future__ import annotations

import argparse
import json

import torch

from rmlora.device import load_preset, physics

MAX_PULSES = 30  # NeuRRAM chip-test code
WAN2022_RANGE_uS = (0.0, 40.0)  # where the aihwkit fit holds


def wan2022_sigma(g_uS: torch.Tensor, after_one_day: bool = False) -> torch.Tensor:
    """aihwkit ReRamWan2022NoiseModel programming σ (µS) for targets ``g_uS`` (1 s, or 1 day)."""
    c = (0.701, 22.086, -50.773, 47.095, -16.458) if after_one_day else (0.348, 16.030, -43.853, 45.393, -16.815)
    u = g_uS / 40.0
    return sum(ci * u ** i for i, ci in enumerate(c))


def sigma_curve(preset: str, cells: int, seed: int, n_levels: int = 12) -> dict:
    """σ of the programming error (converged, non-stuck cells) at ``n_levels`` targets over the window."""
    p = load_preset(preset)
    levels = torch.linspace(p.g_min_uS, p.g_max_uS, n_levels)
    gen = torch.Generator().manual_seed(seed)
    t = levels.repeat_interleave(cells)
    g, d2d, stuck = physics.new_cells(t.numel(), p, gen)
    r = physics.program(g, t, d2d, stuck, p, gen)
    ok = (r.converged & (stuck == 0)).view(n_levels, cells)
    err = r.error.view(n_levels, cells)
    sig = [float(err[i][ok[i]].std()) for i in range(n_levels)]
    pulses = r.pulses.view(n_levels, cells).float()
    inside = [WAN2022_RANGE_uS[0] <= float(v) <= WAN2022_RANGE_uS[1] for v in levels]
    pub = wan2022_sigma(levels)
    return {
        "preset": p.name, "cells_per_level": cells, "seed": seed,
        "levels_uS": [round(float(v), 3) for v in levels],
        "sigma_uS": [round(s, 4) for s in sig],
        "wan2022_sigma_uS": [round(float(v), 4) if i else None for v, i in zip(pub, inside)],
        "ratio_to_wan2022": [round(s / float(v), 4) if i else None for s, v, i in zip(sig, pub, inside)],
        "mean_pulses": [round(float(v), 2) for v in pulses.mean(1)],
        "max_pulses": int(pulses.max()),
        "failed_fraction": [round(float(v), 5) for v in (~r.converged).view(n_levels, cells).float().mean(1)],
    }


def uniform_targets(preset: str, cells: int, seed: int) -> dict:
    p = load_preset(preset)
    gen = torch.Generator().manual_seed(seed)
    g, d2d, stuck = physics.new_cells(cells, p, gen)
    target = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
    r = physics.program(g, target, d2d, stuck, p, gen)
    err = r.error[r.converged & (stuck == 0)]
    pulses = r.pulses.float()
    return {"mean_pulses_per_cell": float(pulses.mean()), "p95_pulses_per_cell": float(pulses.quantile(0.95)),
            "max_pulses_per_cell": int(pulses.max()), "failed_fraction": float((~r.converged).float().mean()),
            "error_mean_uS": float(err.mean()), "error_std_uS": float(err.std()),
            "error_std_percent_of_window": 100 * float(err.std()) / (p.g_max_uS - p.g_min_uS)}


def plot(curves: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    g = torch.linspace(*WAN2022_RANGE_uS, 200)
    ax.plot(g, wan2022_sigma(g), "k-", label="aihwkit ReRamWan2022 fit (NeuRRAM, 1 s)")
    ax.plot(g, 1.2 * wan2022_sigma(g), "k:", lw=0.8, label="±20%")
    ax.plot(g, 0.8 * wan2022_sigma(g), "k:", lw=0.8)
    for c in curves:
        ax.plot(c["levels_uS"], c["sigma_uS"], "o-", label=f"simulated write-verify: {c['preset']}")
    ax.set_xlabel("target conductance (µS)")
    ax.set_ylabel("programming error σ (µS)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Programming spread right after write-verify")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help="preset(s) to calibrate (default: wan2022 and rram-180nm)")
    ap.add_argument("--cells", type=int, default=20_000, help="cells per target level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="write simulated vs published sigma(g) to this PNG")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.cells < 2:
        ap.error("--cells must be >= 2")
    presets = a.preset or ["wan2022", "rram-180nm"]
    out = [{**sigma_curve(p, a.cells, a.seed), "uniform_targets": uniform_targets(p, 10 * a.cells, a.seed)}
           for p in presets]
    if a.plot:
        plot(out, a.plot)
    if a.json:
        print(json.dumps(out))
        return
    for c in out:
        u = c["uniform_targets"]
        print(f"{c['preset']}: {u['mean_pulses_per_cell']:.2f} pulses/cell (max {u['max_pulses_per_cell']}, "
              f"NeuRRAM cap {MAX_PULSES}), {100 * u['failed_fraction']:.2f}% failed, error σ {u['error_std_uS']:.3f} µS "
              f"= {u['error_std_percent_of_window']:.2f}% of the window")
        print("   target µS   σ sim   σ Wan2022   ratio   pulses")
        for g, s, w, r, n in zip(c["levels_uS"], c["sigma_uS"], c["wan2022_sigma_uS"], c["ratio_to_wan2022"],
                                 c["mean_pulses"]):
            print(f"   {g:8.2f}  {s:7.3f}   {'-' if w is None else f'{w:7.3f}':>9}  "
                  f"{'-' if r is None else f'{r:5.2f}':>6}  {n:6.1f}")


if __name__ == "__main__":
    main()
