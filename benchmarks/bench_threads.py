"""Torch threads on a busy machine: spin-waiting OpenMP workers (a script, not a test).

Times small workloads of the simulator's size on ``--threads`` torch threads,
each configuration in a fresh subprocess (OpenMP reads its wait policy when
it is loaded), under three loads: the other cores idle; one core kept busy
by a spinning process (``while True: pass``); another torch process on 2
threads running (64, 512) @ (512, 512) (another run). Both are started and
killed here. Policies: OpenMP's default wait policy;
:func:`rmlora.threads.quiet_openmp` called before ``import torch``;
:func:`rmlora.threads.configure_threads` called after it (too late for the
variables); a short spin (GOMP_SPINCOUNT=20000); plus one thread under load
for reference. Workloads, ``--iters`` calls each (median of 3 runs):

* ``mlp``: (64, 20) @ (20, 32), ReLU, @ (32, 10) (an MLP forward);
* ``rnn``: tanh((64, 512) @ (512, 512) + x) (a recurrent step);
* ``eltwise``: a * b + c on 256 x 512 (above ATen's parallel grain size);
* ``dac``: rmlora's compiled 8-bit DAC on (64, 512) (numba's OpenMP pool).

Prints ms per call, CPU/wall (about 1 per busy thread; ~2 on 2 threads means
the workers spin) and the busy/idle ratio of each policy. Usage::

    python benchmarks/bench_threads.py [--threads 2] [--iters 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
POLICIES = {  # name: how the child sets up OpenMP
    "default": "none",
    "passive": "quiet_openmp() before import torch",
    "late": "configure_threads() after import torch",
    "spin20k": "GOMP_SPINCOUNT=20000 (libgomp's default: 300000)",
}
LOADS = {  # name: the other process
    "idle": None,
    "busy": "while True: pass",
    "torch": ("import torch\ntorch.set_num_threads(2)\na, w = torch.randn(64, 512), torch.randn(512, 512)\n"
              "print('ready', flush=True)\nwhile True: torch.tanh(a @ w)"),
}


def child(policy: str, threads: int, iters: int) -> dict:
    if policy == "passive":
        from rmlora.threads import quiet_openmp
        assert quiet_openmp(), "an OpenMP runtime was loaded before torch"
    import torch

    from rmlora.hardware.converters import dac
    from rmlora.threads import configure_threads

    if policy == "late":
        configure_threads(threads)
    else:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(s, generator=g) for s in ((64, 20), (20, 32), (32, 10)))
    h, w, xr = (torch.randn(s, generator=g) for s in ((64, 512), (512, 512), (64, 512)))
    a, b, c = (torch.randn(256, 512, generator=g) for _ in range(3))
    xd = torch.randn(64, 512, generator=g)
    work = {
        "mlp": lambda: torch.relu(x @ w1) @ w2,
        "rnn": lambda: torch.tanh(h @ w + xr),
        "eltwise": lambda: a * b + c,
        "dac": lambda: dac(xd, 8),
    }
    out = {"torch_threads": torch.get_num_threads(), "env": {k: os.environ.get(k) for k in OMP_VARS}}
    for name, fn in work.items():
        for _ in range(20):  # warm-up (and numba's compile or cache load)
            fn()
        runs = []
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                fn()
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        wall, cpu = sorted(runs)[1]  # the median run by wall time
        out[name] = {"ms": 1e3 * wall / iters, "cpu_per_wall": cpu / wall}
    return out


def run_child(policy: str, threads: int, iters: int, load: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    if policy == "spin20k":
        env["GOMP_SPINCOUNT"] = "20000"
    spinner = None
    if LOADS[load] is not None:
        spinner = subprocess.Popen([sys.executable, "-c", LOADS[load]], env=env, stdout=subprocess.PIPE, text=True)
    try:
        if load == "torch":
            spinner.stdout.readline()
        if spinner is not None:
            time.sleep(0.5)
        cmd = [sys.executable, __file__, "--child", policy, "--threads", str(threads), "--iters", str(iters)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=sorted(POLICIES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.iters)))
        return
    t0 = time.perf_counter()
    configs = [(p, args.threads, load) for p in POLICIES for load in LOADS if p != "late" or load != "torch"]
    configs += [("default", 1, "busy"), ("default", 1, "torch")]
    results = {}
    for p, n, load in configs:
        results[f"{p} {n}t {load}"] = run_child(p, n, args.iters, load)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"results": results, "loadavg_after": load}, indent=1))
        return
    work = ("mlp", "rnn", "eltwise", "dac")
    print(f"{os.cpu_count()} CPUs, affinity {len(os.sched_getaffinity(0))}, {args.iters} calls per workload; "
          f"ms per call (CPU s / wall s)")
    print(f"{'configuration':<22}" + "".join(f"{w:>18}" for w in work))
    for name, r in results.items():
        print(f"{name:<22}" + "".join(f"{r[w]['ms']:>10.3f} ({r[w]['cpu_per_wall']:.2f})" for w in work))
    ref = results[f"default {args.threads}t idle"]
    print(f"ratio to default {args.threads}t idle (busy / idle for the default policy):")
    for name, r in results.items():
        if name != f"default {args.threads}t idle":
            print(f"  {name:<20}" + "".join(f"{r[w]['ms'] / ref[w]['ms']:>18.2f}" for w in work))
    print(f"total {time.perf_counter() - t0:.0f} s; load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
