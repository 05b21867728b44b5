"""Write-verify in torch operations, for any device (CUDA included).

The same model, random streams and float32 arithmetic as the compiled CPU kernel
(:func:`rmlora.device.kernels.program_cells`), operation for operation, so the
two give bit-identical results (tested on the CPU); every cell steps at once
(a masked update per verify-and-pulse iteration) instead of in compacted blocks.
Integers are int64 tensors: 32-bit words are kept in [0, 2^32) by masking, and
the 64-bit stream keys wrap as uint64 would (two's complement), with logical
shifts done by masking the sign-extended bits away.
"""

from __future__ import annotations

import math

import torch

from rmlora.device.kernels import _GAMMA, _M1, _M2

_U32 = 0xFFFFFFFF
_F32 = torch.float32


def _signed(u: int) -> int:
    """The int64 with the bits of the uint64 ``u``."""
    return u - (1 << 64) if u >= 1 << 63 else u


_G, _M1S, _M2S = _signed(int(_GAMMA)), _signed(int(_M1)), _signed(int(_M2))


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors holding uint64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shr(z, 30)) * _M1S
    z = (z ^ _shr(z, 27)) * _M2S
    return z ^ _shr(z, 31)


def stream_keys(seed: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ka, kb, w) of the streams ``index`` (int64 tensor) under ``seed``, as the compiled
    ``stream_keys`` gives them (values in [0, 2^32), int64)."""
    z = _mix(torch.full_like(index, _signed(seed & (2 ** 64 - 1))) ^ _mix(index * _G + _G))
    w = (_mix(z + _G) & _U32) | 1
    return z & _U32, _shr(z, 32), w


def _lowbias32(v: torch.Tensor) -> torch.Tensor:
    v = v ^ (v >> 16)
    v = (v * 0x7FEB352D) & _U32
    v = v ^ (v >> 15)
    v = (v * 0x846CA68B) & _U32
    return v ^ (v >> 16)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root (torch's own float32 sqrt is not, on some CPUs: it
    differs from IEEE in about 15 % of values here; via float64 it is exact)."""
    return torch.sqrt(x.double()).float()


def _f(x: float, dev: torch.device) -> torch.Tensor:
    return torch.tensor(x, dtype=_F32, device=dev)


class _Consts:
    """float32 constants of the kernels on one device (as numba rounds them)."""

    def __init__(self, dev: torch.device) -> None:
        f = lambda x: _f(x, dev)  # noqa: E731
        self.one, self.zero, self.half, self.two = f(1.0), f(0.0), f(0.5), f(2.0)
        self.ln2, self.sqrt2, self.half_pi, self.turn = f(math.log(2.0)), f(math.sqrt(2.0)), f(math.pi / 2), \
            f(2.0 ** -22)
        self.ln = [f(1 / 3), f(1 / 5), f(1 / 7), f(1 / 9)]
        self.sin = [f(1 / 6), f(1 / 120), f(1 / 5040), f(1 / 362880)]
        self.cos = [f(1 / 24), f(1 / 720), f(1 / 40320), f(1 / 3628800)]
        self.exp = [f(1 / 64), f(1 / 2), f(1 / 6), f(1 / 24), f(1 / 120), f(1 / 720), f(1 / 5040)]


def normal_pair(ka: torch.Tensor, kb: torch.Tensor, w: torch.Tensor, n: int, c: _Consts
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair ``n`` of the streams (ka, kb, w): two standard normals per stream (float32)."""
    step = (n * w) & _U32
    u1 = _lowbias32((ka + step) & _U32)
    u2 = _lowbias32((kb + step) & _U32)
    f = ((u1 >> 1) | 1).to(torch.int32).to(_F32)
    bits = f.view(torch.int32).to(torch.int64)
    k = (158 - (bits >> 23)).to(_F32)
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(torch.int32).view(_F32)
    a = (u2 >> 8).to(torch.int32).to(_F32)
    big = m > c.sqrt2
    m = torch.where(big, m * c.half, m)
    k = k - torch.where(big, c.one, c.zero)
    t = (m - c.one) / (m + c.one)
    t2 = t * t
    ln_m = c.two * t * (c.one + t2 * (c.ln[0] + t2 * (c.ln[1] + t2 * (c.ln[2] + t2 * c.ln[3]))))
    r = _sqrt(torch.maximum(c.two * (k * c.ln2 - ln_m), c.zero))
    q4 = a * c.turn
    q = torch.floor(q4 + c.half)
    x = (q4 - q) * c.half_pi
    x2 = x * x
    s = x * (c.one - x2 * (c.sin[0] - x2 * (c.sin[1] - x2 * (c.sin[2] - x2 * c.sin[3]))))
    co = c.one - x2 * (c.half - x2 * (c.cos[0] - x2 * (c.cos[1] - x2 * (c.cos[2] - x2 * c.cos[3]))))
    h = torch.floor(q * c.half)
    odd = q - c.two * h > c.half
    neg = h - c.two * torch.floor(h * c.half) > c.half
    r = torch.where(neg, -r, r)
    return r * torch.where(odd, -s, co), r * torch.where(odd, co, s)


def _exp(y: torch.Tensor, c: _Consts) -> torch.Tensor:
    z = y * c.exp[0]
    e = c.one + z * (c.one + z * (c.exp[1] + z * (c.exp[2] + z * (c.exp[3] + z * (c.exp[4] + z * (
        c.exp[5] + z * c.exp[6]))))))
    for _ in range(6):
        e = e * e
    return e


def program_cells(g0: torch.Tensor, target: torch.Tensor, d2d: torch.Tensor, stuck: torch.Tensor, p, seed: int
                  ) -> tuple[torch.Tensor, ...]:
    """Program flat cells on their device, as :func:`rmlora.device.kernels.program_cells` does.

    Returns (g µS float32, SET pulses, RESET pulses, verify reads (int16), converged (bool)).
    """
    dev = target.device
    c = _Consts(dev)
    f = lambda x: _f(float(x), dev)  # noqa: E731
    tol, req, cap = f(p.tolerance_uS), f(p.passes_required), f(p.max_pulses)
    v_set0, v_reset0, v_step = f(p.v_set_start_V), f(p.v_reset_start_V), f(p.v_step_V)
    v_set_max, v_reset_max = f(p.v_set_max_V), f(p.v_reset_max_V)
    v_set_th, v_reset_th = f(p.v_set_threshold_V), f(p.v_reset_threshold_V)
    set_gain, reset_gain, c2c = f(p.set_gain_uS_per_V), f(p.reset_gain_uS_per_V), f(p.c2c_sigma)
    rn_abs, rn_rel, floor, ceil = f(p.read_noise_abs_uS), f(p.read_noise_rel), f(p.g_floor_uS), f(p.g_ceil_uS)
    n = target.shape[0]
    exact = p.programming == "exact"
    iters = 0 if exact else p.max_pulses + p.passes_required
    ka, kb, w = stream_keys(seed, torch.arange(n, device=dev))
    relax, _ = normal_pair(ka, kb, w, iters, c)
    g, t = g0.to(_F32).clone(), target.to(_F32)
    gain = d2d.to(_F32) * (c.one / (ceil - floor))
    free = stuck == 0
    runs, passes, sp, rp, vr = (torch.zeros(n, dtype=_F32, device=dev) for _ in range(5))
    act = torch.ones(n, dtype=torch.bool, device=dev)
    conv = torch.zeros(n, dtype=torch.bool, device=dev)
    if exact:
        g = torch.where(free, t, g)
        conv = (g - t).abs() <= torch.maximum(tol, f(1e-6))
    for it in range(iters):
        x_read, x_c2c = normal_pair(ka, kb, w, it, c)
        diff = t - (g + (rn_abs + rn_rel * g) * x_read)
        ok = diff.abs() <= tol
        p_new = torch.where(ok, passes + c.one, c.zero)
        done = p_new >= req
        spent = sp + rp >= cap
        pulse = act & ~ok & ~spent
        up = diff > c.zero
        r_new = torch.where(up, torch.where(runs > c.zero, runs + c.one, c.one),
                            torch.where(runs < c.zero, runs - c.one, -c.one))
        k = r_new.abs() - c.one
        v_set = torch.minimum(v_set0 + v_step * k, v_set_max)
        v_reset = torch.minimum(v_reset0 + v_step * k, v_reset_max)
        step = torch.where(up, set_gain * (v_set - v_set_th) * (ceil - g), -reset_gain * (v_reset - v_reset_th) * (g - floor))
        moved = torch.minimum(torch.maximum(g + step * gain * _exp(c2c * x_c2c, c), floor), ceil)
        g = torch.where(pulse & free, moved, g)
        runs = torch.where(pulse, r_new, runs)
        sp = sp + (pulse & up).to(_F32)
        rp = rp + (pulse & ~up).to(_F32)
        vr = vr + act.to(_F32)
        passes = torch.where(act, p_new, passes)
        conv = conv | (act & done)
        act = act & ~done & ~spent
        if not bool(act.any()):
            break
    # relaxation right after programming (float64, as the compiled kernel evaluates it)
    poly = torch.tensor(list(p.relax_poly), dtype=_F32, device=dev)
    u = t / f(p.relax_poly_g_uS)
    spread = poly[0] + u * (poly[1] + u * (poly[2] + u * (poly[3] + u * poly[4])))
    reads = torch.maximum(vr, c.one)
    sigma = float(p.relax_sigma_floor_uS) + float(p.relax_sigma_iter_uS) / _sqrt(reads).double() \
        + spread.double()
    relaxed = (g.double() + sigma * relax.double()).float()
    g = torch.where(free, relaxed, g)
    g = torch.minimum(torch.maximum(g, floor), ceil)
    i16 = torch.int16
    return g, sp.to(i16), rp.to(i16), vr.to(i16), conv
