"""Core speed benchmark of rmlora (a script, not a test).

From one run it measures

(a) the hybrid ``AnalogLinear`` (1024 x 1024, batch 256, 8-bit DAC/ADC,
    rram-180nm read noise on, 128 x 128 tiles) against a plain ``nn.Linear``
    of the same shape: the forward time and the forward+backward time as
    ratios. Like for like in the backward: both layers get an input that
    requires grad and a weight that requires grad (the analogue layer's
    frozen weight is switched to trainable so dL/dW is computed too);
(b) write-verify throughput of ``rmlora.device.physics.program`` in cells per
    second on ``--cells`` fresh cells with random targets in the window.

Times are medians of ``torch.utils.benchmark.Timer.blocked_autorange`` after
a warm-up. Usage::

    python benchmarks/bench_core.py [--threads N] [--cells N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torch import nn
from torch.utils.benchmark import Timer

from rmlora.device import load_preset, physics
from rmlora.hardware import AnalogLinear, SimulatedChip

IN = OUT = 1024
BATCH = 256
BITS = 8
TILE = (128, 128)
PRESET = "rram-180nm"


def median_time(fn, min_run_time: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def layers(seed: int) -> tuple[nn.Linear, AnalogLinear, float]:
    torch.manual_seed(seed)
    plain = nn.Linear(IN, OUT)
    source = nn.Linear(IN, OUT)
    with torch.no_grad():
        source.weight.copy_(plain.weight)
        source.bias.copy_(plain.bias)
    chip = SimulatedChip(PRESET, tile=TILE, dac_bits=BITS, adc_bits=BITS, read_noise=True, seed=seed)
    analog = AnalogLinear.from_float(source, chip, "bench")
    t0 = time.perf_counter()
    analog.program()
    return plain, analog, time.perf_counter() - t0


def bench_layers(min_run_time: float, seed: int) -> dict:
    plain, analog, program_s = layers(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, IN, generator=gen)
    gy = torch.randn(BATCH, OUT, generator=gen)

    def forward(layer):
        def run():
            with torch.no_grad():
                layer(x)
        return run

    # like for like: input and weight (and bias) require grad in both layers
    analog.weight.requires_grad_(True)
    plain.weight.requires_grad_(True)
    xg = x.clone().requires_grad_(True)

    def train_step(layer):
        params = [p for p in layer.parameters() if p.requires_grad]

        def run():
            xg.grad = None
            for p in params:
                p.grad = None
            layer(xg).backward(gy)
        return run

    assert analog.weight.requires_grad and analog.bias.requires_grad
    t = {
        "linear_forward_s": median_time(forward(plain), min_run_time),
        "analog_forward_s": median_time(forward(analog), min_run_time),
        "linear_train_step_s": median_time(train_step(plain), min_run_time),
        "analog_train_step_s": median_time(train_step(analog), min_run_time),
        "analog_layer_program_s": program_s,
    }
    assert analog.weight.grad is not None and xg.grad is not None
    return t


def bench_program(cells: int, seed: int) -> dict:
    p = load_preset(PRESET)
    gen = torch.Generator().manual_seed(seed)
    g0, d2d, stuck = physics.new_cells(cells, p, gen)
    target = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
    physics.program(g0[:10_000], target[:10_000], d2d[:10_000], stuck[:10_000], p, gen)  # warm-up
    t0 = time.perf_counter()
    res = physics.program(g0, target, d2d, stuck, p, gen)
    seconds = time.perf_counter() - t0
    return {
        "program_s": seconds,
        "program_cells": cells,
        "program_mean_pulses_per_cell": float(res.pulses.float().mean()),
        "program_failed_cells": int((~res.converged).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--cells", type=int, default=10_000_000, help="cells for the write-verify throughput")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timed layer measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.cells < 1:
        ap.error("--cells must be >= 1")

    t = bench_layers(args.min_run_time, args.seed)
    t.update(bench_program(args.cells, args.seed))
    out = {
        "forward_ratio": t["analog_forward_s"] / t["linear_forward_s"],
        "train_step_ratio": t["analog_train_step_s"] / t["linear_train_step_s"],
        "program_cells_per_s": t["program_cells"] / t["program_s"],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config": {"shape": [OUT, IN], "batch": BATCH, "dac_bits": BITS, "adc_bits": BITS, "tile": list(TILE),
                   "preset": PRESET, "read_noise": True},
        "times": t,
    }
    if args.json:
        print(json.dumps(out))
        return
    m = out["machine"]
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} with {m['torch_threads']} threads")
    print(f"AnalogLinear {OUT}x{IN}, batch {BATCH}, {BITS}-bit DAC/ADC, {PRESET} read noise, "
          f"{TILE[0]}x{TILE[1]} tiles vs nn.Linear:")
    print(f"  forward        {t['analog_forward_s'] * 1e3:9.3f} ms vs {t['linear_forward_s'] * 1e3:8.3f} ms"
          f"  ratio {out['forward_ratio']:.2f}")
    print(f"  forward+back   {t['analog_train_step_s'] * 1e3:9.3f} ms vs {t['linear_train_step_s'] * 1e3:8.3f} ms"
          f"  ratio {out['train_step_ratio']:.2f}")
    print(f"write-verify: {t['program_cells']:,} cells in {t['program_s']:.2f} s = "
          f"{out['program_cells_per_s']:,.0f} cells/s "
          f"({t['program_mean_pulses_per_cell']:.2f} pulses/cell, {t['program_failed_cells']} failed)")


if __name__ == "__main__":
    main()
