"""Core speed benchmark of rmlora (a script, not a test).

From one run it measures

(a) the hybrid ``AnalogLinear`` (1024 x 1024, batch 256, 8-bit DAC/ADC with
    ranges calibrated and frozen, rram-180nm read noise drawn afresh for every
    input vector, 128 x 128 tiles) against a plain ``nn.Linear`` of the same
    shape: the forward time and the forward+backward time as ratios. Like for
    like in the backward: both layers get an input that requires grad and a
    weight that requires grad (the analogue layer's frozen weight is switched
    to trainable so dL/dW is computed too); the analogue backward is a
    transposed read with its own converters and noise. Each stage of the
    analogue forward (DAC, tile products, noise σ, ADC with the noise draws)
    is also timed alone, with warm caches. For comparison, two variants'
    forward ratios: read noise that depends on G (σ = 0.1 µS + 0.4%·G, one
    extra product x²·σ²), and the old per-call noise (one read of every cell
    per call, shared by the batch; no longer a mode of the library, timed
    from its stages so the cost of per-vector noise is visible);
(b) write-verify throughput of ``rmlora.device.physics.program`` in cells per
    second on ``--cells`` fresh cells with random targets in the window;
(c) with ``--gpu`` and a CUDA device: the forward ratio at 4096 x 4096, batch 4096, against
    ``nn.Linear`` on the GPU, and write-verify throughput of the torch path
    (:mod:`rmlora.device.eager`, bit-identical to the CPU kernel) on ``--gpu-cells`` cells.

The layer and its baseline are timed in alternating blocks (15 rounds of
``torch.utils.benchmark.Timer.timeit`` after a warm-up); a ratio is the
median of the per-round ratios, a time the median over rounds. Stages are
medians of ``blocked_autorange``. Usage::

    python benchmarks/bench_core.py [--threads N] [--cells N] [--gpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.benchmark import Timer

from rmlora.device import load_preset, physics
from rmlora.hardware import AnalogLinear, SimulatedChip, calibrate
from rmlora.hardware.converters import adc_sum, dac
from rmlora.runinfo import cpu_info

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


def paired_times(baseline, candidate, min_run_time: float, rounds: int = 15) -> tuple[float, float, float]:
    """Alternate timed blocks of ``baseline`` and ``candidate`` for about ``min_run_time`` s each.

    Returns (median baseline s, median candidate s, median of the per-round ratios): pairing
    the blocks keeps a slow spell of a shared machine from landing on one side only.
    """
    for fn in (baseline, candidate):
        for _ in range(3):
            fn()
    t0 = time.perf_counter()
    baseline()
    number = max(1, int(min_run_time / rounds / max(time.perf_counter() - t0, 1e-6)))
    timers = [Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
              for fn in (baseline, candidate)]
    tb, tc = [], []
    for _ in range(rounds):
        tb.append(timers[0].timeit(number).median)
        tc.append(timers[1].timeit(number).median)
    ratios = [c / b for b, c in zip(tb, tc)]
    return statistics.median(tb), statistics.median(tc), statistics.median(ratios)


def layers(seed: int, preset=PRESET) -> tuple[nn.Linear, AnalogLinear, float]:
    torch.manual_seed(seed)
    plain = nn.Linear(IN, OUT)
    source = nn.Linear(IN, OUT)
    with torch.no_grad():
        source.weight.copy_(plain.weight)
        source.bias.copy_(plain.bias)
    chip = SimulatedChip(preset, tile=TILE, dac_bits=BITS, adc_bits=BITS, read_noise=True, seed=seed)
    analog = AnalogLinear.from_float(source, chip, "bench")
    t0 = time.perf_counter()
    analog.program()
    calibrate(analog, torch.randn(1024, IN, generator=torch.Generator().manual_seed(seed + 2)))
    return plain, analog, time.perf_counter() - t0


def forward(layer, x):
    def run():
        with torch.no_grad():
            layer(x)
    return run


def per_call_forward(analog: AnalogLinear, x: torch.Tensor):
    """The old forward, from today's stages: one read of every cell per call (shared by the
    batch), DAC, tile products, ADC without per-vector draws."""
    core, chip = analog.core, analog.core.chip
    sigma = torch.full_like(core._signed, core._sigma_uniform or 0.3)
    n_rt = core.handle.row_tiles

    def run():
        with torch.no_grad():
            c = physics.read(core._signed, sigma)
            xq, _ = dac(x, chip.dac_bits, core.ranges.dac)
            part = torch.bmm(xq.view(x.shape[0], n_rt, -1).transpose(0, 1), c.view(n_rt, -1, c.shape[1]))
            adc_sum(part, core.out_tile_width, chip.adc_bits, core.ranges.adc, core._inverse_scale())
    return run


def bench_layers(min_run_time: float, seed: int) -> dict:
    plain, analog, program_s = layers(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(BATCH, IN, generator=gen)
    gy = torch.randn(BATCH, OUT, generator=gen)
    _, analog_g, _ = layers(seed, load_preset(PRESET).replace(read_noise_abs_uS=0.1, read_noise_rel=0.004))
    assert analog_g.core._sigma2 is not None and analog.core._sigma_uniform is not None

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
    t = stages(analog, x, min_run_time)
    lf, af, fr = paired_times(forward(plain, x), forward(analog, x), min_run_time)
    _, gf, gr = paired_times(forward(plain, x), forward(analog_g, x), min_run_time)
    _, cf, cr = paired_times(forward(plain, x), per_call_forward(analog, x), min_run_time)
    lt, at, tr = paired_times(train_step(plain), train_step(analog), min_run_time)
    t.update({"linear_forward_s": lf, "analog_forward_s": af, "forward_ratio": fr,
              "g_dependent_noise_forward_s": gf, "g_dependent_noise_forward_ratio": gr,
              "per_call_noise_forward_s": cf, "per_call_noise_forward_ratio": cr,
              "linear_train_step_s": lt, "analog_train_step_s": at, "train_step_ratio": tr,
              "analog_layer_program_and_calibrate_s": program_s})
    assert analog.weight.grad is not None and xg.grad is not None
    return t


def stages(analog: AnalogLinear, x: torch.Tensor, min_run_time: float) -> dict:
    """Median time of each stage of the analogue forward, each timed alone (warm caches)."""
    core, chip = analog.core, analog.core.chip
    fs = core.ranges.dac
    with torch.no_grad():
        xq, _ = dac(x, chip.dac_bits, fs)
        part, xt = core._tile_products(xq)
        noise = (core._sigma_uniform, core._sigma2, core._ref_uniform, core._ref_sigma2)
        row, full, ref = core._noise(xt, *noise)

        def adc(**kw):
            return lambda: adc_sum(part, core.out_tile_width, chip.adc_bits, core.ranges.adc, core._inverse_scale(),
                                   **kw)
        return {
            "stage_dac_s": median_time(lambda: dac(x, chip.dac_bits, fs), min_run_time),
            "stage_tile_products_s": median_time(lambda: core._tile_products(xq), min_run_time),
            "stage_noise_sigma_s": median_time(lambda: core._noise(xt, *noise), min_run_time),
            "stage_adc_with_draws_s": median_time(adc(row_std=row, full_std=full, ref_std=ref, seed=1), min_run_time),
            "stage_adc_alone_s": median_time(adc(), min_run_time),
        }


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


def bench_gpu(cells: int, seed: int, device: str = "cuda") -> dict:
    """Forward ratio at 4096 x 4096, batch 4096, and write-verify throughput on the GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"gpu": "no CUDA device"}
    dev = torch.device(device)
    sync_dev = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(seed)
    plain = nn.Linear(4096, 4096).to(dev)
    source = nn.Linear(4096, 4096)
    source.load_state_dict({k: v.cpu() for k, v in plain.state_dict().items()})
    chip = SimulatedChip(PRESET, tile=TILE, dac_bits=BITS, adc_bits=BITS, read_noise=True, seed=seed)
    analog = AnalogLinear.from_float(source, chip, "bench")
    analog.program()
    calibrate(analog, torch.randn(1024, 4096, generator=torch.Generator().manual_seed(seed + 2)))
    analog = analog.to(dev)
    x = torch.randn(4096, 4096, device=dev)

    def sync(fn):
        def run():
            fn()
            sync_dev()
        return run
    lf, af, fr = paired_times(sync(forward(plain, x)), sync(forward(analog, x)), 2.0)
    p = load_preset(PRESET)
    gen = torch.Generator().manual_seed(seed)
    g0, d2d, stuck = physics.new_cells(cells, p, gen)
    target = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
    g0, d2d, stuck, target = (t.to(dev) for t in (g0, d2d, stuck, target))
    physics.program(g0[:100_000], target[:100_000], d2d[:100_000], stuck[:100_000], p, gen)  # warm-up
    sync_dev()
    t0 = time.perf_counter()
    physics.program(g0, target, d2d, stuck, p, gen)
    sync_dev()
    seconds = time.perf_counter() - t0
    return {"gpu": torch.cuda.get_device_name() if dev.type == "cuda" else str(dev), "gpu_linear_forward_s": lf, "gpu_analog_forward_s": af,
            "gpu_forward_ratio": fr, "gpu_program_cells": cells, "gpu_program_s": seconds,
            "gpu_program_cells_per_s": cells / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--cells", type=int, default=10_000_000, help="cells for the write-verify throughput")
    ap.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timed layer measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="also measure on a CUDA device (issue 10's GPU targets)")
    ap.add_argument("--gpu-cells", type=int, default=100_000_000, help="cells for the GPU write-verify throughput")
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
    if args.gpu:
        t.update(bench_gpu(args.gpu_cells, args.seed))
    out = {
        "forward_ratio": t.pop("forward_ratio"),
        "train_step_ratio": t.pop("train_step_ratio"),
        "program_cells_per_s": t["program_cells"] / t["program_s"],
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_info()["model"],
            "isa": cpu_info()["isa"],
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "config": {"shape": [OUT, IN], "batch": BATCH, "dac_bits": BITS, "adc_bits": BITS, "tile": list(TILE),
                   "preset": PRESET, "read_noise": "per input vector", "range_mode": "calibrated"},
        "times": t,
    }
    if args.json:
        print(json.dumps(out))
        return
    m = out["machine"]
    print(f"machine: {m['cpu']} ({' '.join(m['isa'])}), {m['cpu_count']} CPUs, torch {m['torch']} with "
          f"{m['torch_threads']} threads")
    print(f"AnalogLinear {OUT}x{IN}, batch {BATCH}, {BITS}-bit DAC/ADC (calibrated ranges), {PRESET} read noise "
          f"per input vector, {TILE[0]}x{TILE[1]} tiles vs nn.Linear:")
    print(f"  forward        {t['analog_forward_s'] * 1e3:9.3f} ms vs {t['linear_forward_s'] * 1e3:8.3f} ms"
          f"  ratio {out['forward_ratio']:.2f}")
    print(f"  forward, σ depending on G     {t['g_dependent_noise_forward_s'] * 1e3:9.3f} ms"
          f"  ratio {t['g_dependent_noise_forward_ratio']:.2f}")
    print(f"  forward, old per-call noise   {t['per_call_noise_forward_s'] * 1e3:9.3f} ms"
          f"  ratio {t['per_call_noise_forward_ratio']:.2f}")
    print(f"  forward+back   {t['analog_train_step_s'] * 1e3:9.3f} ms vs {t['linear_train_step_s'] * 1e3:8.3f} ms"
          f"  ratio {out['train_step_ratio']:.2f}")
    print("  stages alone: " + ", ".join(f"{k[6:-2].replace('_', ' ')} {t[k] * 1e3:.2f} ms"
                                          for k in t if k.startswith("stage_")))
    print(f"write-verify: {t['program_cells']:,} cells in {t['program_s']:.2f} s = "
          f"{out['program_cells_per_s']:,.0f} cells/s "
          f"({t['program_mean_pulses_per_cell']:.2f} pulses/cell, {t['program_failed_cells']} failed)")
    if "gpu_forward_ratio" in t:
        print(f"GPU {t['gpu']}: forward 4096x4096, batch 4096: {t['gpu_analog_forward_s'] * 1e3:.2f} ms vs "
              f"{t['gpu_linear_forward_s'] * 1e3:.2f} ms, ratio {t['gpu_forward_ratio']:.2f}; write-verify "
              f"{t['gpu_program_cells_per_s']:,.0f} cells/s on {t['gpu_program_cells']:,} cells")
    elif "gpu" in t:
        print(f"GPU: {t['gpu']}")


if __name__ == "__main__":
    main()
