"""Compiled CPU kernels of the cell physics (numba): write-verify and noisy reads.

Why compiled: torch's CPU normal generator is one sequential Mersenne
Twister (about 5 ns a draw here) and an eager write-verify loop runs a dozen
tensor passes per pulse; both bounded the simulator (docs/benchmarks.md).
Other devices (CUDA) keep the eager torch paths in the callers.

Randomness is counter-based: every cell (write-verify) or block of
``BLOCK`` cells (reads) owns a stream that depends only on a 64-bit seed and
its index, so results do not depend on the number of threads. Draws are
SplitMix64 hashes (Steele, Lea & Flood, OOPSLA 2014) of (stream, counter);
normals come in pairs from the Box-Muller transform, with U = m·2^-(1+G)
(m uniform in [1, 2) on 23 bits, G geometric from the leading zeros of 40
bits, so tails reach 7.5 σ) and branch-free polynomials for ln m (atanh
series, |error| < 1e-9) and for sin/cos on a quarter turn (Taylor, < 2e-9),
so that the loops vectorise. Callers draw the seed from a
``torch.Generator`` (:func:`draw_seed`), so ``torch.manual_seed`` and a
chip's seed keep every run reproducible.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from numba.cpython.unsafe.numbers import leading_zeros

from rmlora.threads import limit_threads

BLOCK = 8192  # cells per stream of a read: the unit of parallel work

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S40, _S41 = (np.uint64(k) for k in (27, 30, 31, 40, 41))
_LOW40 = np.uint64((1 << 40) - 1)
_F = np.float32
_LN2, _SQRT2, _HALF_PI = _F(math.log(2.0)), _F(math.sqrt(2.0)), _F(math.pi / 2)
_EPS23, _EPS24 = _F(2.0 ** -23), _F(2.0 ** -24)
# Compile options: no NaN/inf/signed-zero checks and no zero-division checks, so the loops
# vectorise; IEEE rounding is kept (no contraction or reassociation), so a cell's result does
# not depend on whether it went through a vector or a scalar code path.
FAST = {"fastmath": {"nnan", "ninf", "nsz"}, "error_model": "numpy"}


@nb.njit(inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(inline="always")
def _stream(seed, index):
    """Key (uint64) of the stream ``index`` under ``seed``."""
    return _mix(np.uint64(seed) ^ _mix(np.uint64(index) * _GAMMA + _GAMMA))


@nb.njit(inline="always", **FAST)
def _box_muller(g, m, angle):
    """The normal pair of U = m·2^-(1+g) (m in [1, 2) from 23 bits, g the leading zeros of the
    exponent bits) and of the angle ``angle``·2^-24 of a turn (``angle`` < 2^24, int32)."""
    big = m > _SQRT2
    m = m * _F(0.5) if big else m  # m in [0.71, 1.41): ln m = 2 atanh((m-1)/(m+1))
    g = g + (_F(0.0) if big else _F(1.0))
    t = (m - _F(1.0)) / (m + _F(1.0))
    t2 = t * t
    ln_m = _F(2.0) * t * (_F(1.0) + t2 * (_F(1 / 3) + t2 * (_F(1 / 5) + t2 * (_F(1 / 7) + t2 * _F(1 / 9)))))
    r = math.sqrt(_F(2.0) * (g * _LN2 - ln_m))
    # angle 2*pi*u = quadrant * pi/2 + a, |a| <= pi/4
    q4 = _F(angle) * _EPS24 * _F(4.0)
    q = np.int32(q4 + _F(0.5))
    a = (q4 - _F(q)) * _HALF_PI
    a2 = a * a
    s = a * (_F(1.0) - a2 * (_F(1 / 6) - a2 * (_F(1 / 120) - a2 * (_F(1 / 5040) - a2 * _F(1 / 362880)))))
    c = _F(1.0) - a2 * (_F(0.5) - a2 * (_F(1 / 24) - a2 * (_F(1 / 720) - a2 * (_F(1 / 40320)
                                                                            - a2 * _F(1 / 3628800)))))
    odd = (q & 1) == 1  # one select per quadrant bit (a chain of them stops vectorisation)
    r = r * _F(np.int32(1) - (q & np.int32(2)))
    return r * (-s if odd else c), r * (c if odd else s)


@nb.njit(inline="always", **FAST)
def _normal_pair(key, k):
    """Draw pair ``k`` of stream ``key``: two independent standard normals (float32), from two
    hashes (U's exponent and the angle from the first, its mantissa from the second)."""
    z1 = _mix(key + np.uint64(2 * k + 1) * _GAMMA)
    z2 = _mix(key + np.uint64(2 * k + 2) * _GAMMA)
    g = _F(np.int32(leading_zeros(z1 & _LOW40) - 24))  # int32 → float converts in one instruction
    m = _F(1.0) + _F(np.int32(z2 >> _S41)) * _EPS23
    return _box_muller(g, m, np.int32(z1 >> _S40))


@nb.njit(inline="always", **FAST)
def normal_pair_1h(key, k):
    """Pair ``k`` of stream ``key`` from one hash: the angle from its top 24 bits, the radius
    from its low 40 (U = m·2^-(1+G), G the leading zeros, m the 23 bits after the leading one),
    so tails reach 7.4 σ. Half the hashing of :func:`_normal_pair`, for the read noise of MVMs."""
    z = _mix(key + np.uint64(k + 1) * _GAMMA)
    low = (z & _LOW40) | np.uint64(1)
    lz = leading_zeros(low) - 24  # 0..39
    sh = np.uint64(min(lz + 25, 63))
    m = _F(1.0) + _F(np.int32((low << sh) >> _S41)) * _EPS23
    return _box_muller(_F(np.int32(lz)), m, np.int32(z >> _S40))


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 63-bit stream seed drawn from ``generator`` (torch's default one if None)."""
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64))


@nb.njit(inline="always", **FAST)
def _read_block(key, mean, sigma, out):
    h = mean.shape[0] // 2
    for k in range(h):
        x, y = _normal_pair(key, k)
        out[k] = mean[k] + sigma[k] * x
        out[h + k] = mean[h + k] + sigma[h + k] * y
    if mean.shape[0] % 2:
        x, _ = _normal_pair(key, h)
        out[2 * h] = mean[2 * h] + sigma[2 * h] * x


@nb.njit(parallel=True, cache=True, **FAST)
def _read_kernel(mean, sigma, seed, out):
    n = mean.shape[0]
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        _read_block(_stream(seed, b), mean[lo:hi], sigma[lo:hi], out[lo:hi])


def read_sample(mean: np.ndarray, sigma: np.ndarray, seed: int, out: np.ndarray) -> None:
    """``out = mean + sigma·N(0, 1)`` over flat float32 arrays (µS), one fresh draw per cell."""
    with limit_threads():  # numba's pool on torch's thread count
        _read_kernel(mean, sigma, seed, out)


@nb.njit(inline="always", **FAST)
def _exp(y):
    """exp(y) in float32 without a library call (so loops vectorise): (Taylor_7(y/64))^64.

    Relative error below 1e-5 for |y| <= 16, from float32 rounding in the
    squarings (the truncation is below 3e-8). The c2c factor exp(c2c·x) needs
    |y| <= 7.5·c2c, so device presets refuse c2c_sigma > 2.
    """
    z = y * _F(1 / 64)
    e = _F(1.0) + z * (_F(1.0) + z * (_F(1 / 2) + z * (_F(1 / 6) + z * (_F(1 / 24) + z * (
        _F(1 / 120) + z * (_F(1 / 720) + z * _F(1 / 5040)))))))
    for _ in range(6):
        e = e * e
    return e


WV_BLOCK = 1024  # cells per block of work; the cells still stepping are compacted as others finish


@nb.njit(parallel=True, cache=True, **FAST)
def _program_kernel(g0, target, d2d, stuck, seed, exact, tol, max_pulses, passes_req,
                    v_set0, v_reset0, v_step, v_set_max, v_reset_max, v_set_th, v_reset_th,
                    set_gain, reset_gain, c2c, rn_abs, rn_rel, floor, ceil, relax_floor, relax_iter,
                    poly, poly_g, out_g, out_sp, out_rp, out_vr, out_cv):
    n = target.shape[0]
    f32 = np.float32
    tol, v_set0, v_reset0, v_step = f32(tol), f32(v_set0), f32(v_reset0), f32(v_step)
    v_set_max, v_reset_max, v_set_th, v_reset_th = f32(v_set_max), f32(v_reset_max), f32(v_set_th), f32(v_reset_th)
    set_gain, reset_gain, c2c, rn_abs, rn_rel = f32(set_gain), f32(reset_gain), f32(c2c), f32(rn_abs), f32(rn_rel)
    floor, ceil, relax_floor, relax_iter = f32(floor), f32(ceil), f32(relax_floor), f32(relax_iter)
    inv_span = f32(1.0) / (ceil - floor)
    req, cap = f32(passes_req), f32(max_pulses)
    iters = 0 if exact else max_pulses + passes_req  # verify-and-pulse iterations at most
    for blk in nb.prange((n + WV_BLOCK - 1) // WV_BLOCK):
        lo = blk * WV_BLOCK
        m = min(n, lo + WV_BLOCK) - lo
        # per-cell state as float32 vectors (0/1 flags), stepped in lockstep; fixed-size
        # scratch, so numba's hoisting of these allocations out of the loop stays exact
        keys = np.empty(WV_BLOCK, np.uint64)
        g, t, gain, free = np.empty(WV_BLOCK, f32), np.empty(WV_BLOCK, f32), np.empty(WV_BLOCK, f32), \
            np.empty(WV_BLOCK, f32)
        run, passes, sp, rp = np.zeros(WV_BLOCK, f32), np.zeros(WV_BLOCK, f32), np.zeros(WV_BLOCK, f32), \
            np.zeros(WV_BLOCK, f32)
        vr, act, conv = np.zeros(WV_BLOCK, f32), np.ones(WV_BLOCK, f32), np.zeros(WV_BLOCK, f32)
        for c in range(m):
            keys[c] = _stream(seed, lo + c)
            g[c], t[c] = g0[lo + c], target[lo + c]
            gain[c] = d2d[lo + c] * inv_span
            free[c] = f32(1.0) if stuck[lo + c] == 0 else f32(0.0)
        if exact:  # written exactly: no pulses, no verify reads
            for c in range(m):
                g[c] = t[c] if free[c] > 0 else g[c]
                conv[c] = f32(1.0) if abs(g[c] - t[c]) <= max(tol, f32(1e-6)) else f32(0.0)
        # cells still stepping sit at the front, [0, mm); the loop compacts them when a quarter
        # has finished, so late iterations skip finished cells. A cell's draws depend only on its
        # key and the iteration, so compaction does not change any result.
        mm = m
        pos = np.arange(WV_BLOCK)
        fg, fsp, frp, fvr, fcv = np.empty(WV_BLOCK, f32), np.empty(WV_BLOCK, f32), np.empty(WV_BLOCK, f32), \
            np.empty(WV_BLOCK, f32), np.empty(WV_BLOCK, f32)
        for it in range(iters):
            left = 0
            for c in range(mm):
                x_read, x_c2c = _normal_pair(keys[c], it)
                a = act[c] > 0
                gc = g[c]
                diff = t[c] - (gc + (rn_abs + rn_rel * gc) * x_read)  # verify read
                ok = abs(diff) <= tol
                p_new = passes[c] + f32(1.0) if ok else f32(0.0)
                done = p_new >= req
                spent = sp[c] + rp[c] >= cap
                pulse = a and not ok and not spent
                up = diff > 0
                r = run[c]
                r_up = r + f32(1.0) if r > 0 else f32(1.0)
                r_down = r - f32(1.0) if r < 0 else f32(-1.0)
                r_new = r_up if up else r_down
                k = abs(r_new) - f32(1.0)
                v_set = min(v_set0 + v_step * k, v_set_max)
                v_reset = min(v_reset0 + v_step * k, v_reset_max)
                step = set_gain * (v_set - v_set_th) * (ceil - gc) if up else \
                    -reset_gain * (v_reset - v_reset_th) * (gc - floor)
                moved = min(max(gc + step * gain[c] * _exp(c2c * x_c2c), floor), ceil)
                g[c] = moved if (pulse and free[c] > 0) else gc
                run[c] = r_new if pulse else r
                sp[c] += f32(1.0) if (pulse and up) else f32(0.0)
                rp[c] += f32(1.0) if (pulse and not up) else f32(0.0)
                vr[c] += f32(1.0) if a else f32(0.0)
                passes[c] = p_new if a else passes[c]
                conv[c] = f32(1.0) if (a and done) else conv[c]
                still = a and not done and not spent
                act[c] = f32(1.0) if still else f32(0.0)
                left += 1 if still else 0
            if left == 0:
                break
            if 8 * left < 7 * mm:
                j = 0
                for c in range(mm):
                    if act[c] > 0:
                        keys[j], g[j], t[j], gain[j], free[j] = keys[c], g[c], t[c], gain[c], free[c]
                        run[j], passes[j], sp[j], rp[j], vr[j] = run[c], passes[c], sp[c], rp[c], vr[c]
                        act[j], conv[j], pos[j] = act[c], conv[c], pos[c]
                        j += 1
                    else:
                        q = pos[c]
                        fg[q], fsp[q], frp[q], fvr[q], fcv[q] = g[c], sp[c], rp[c], vr[c], conv[c]
                mm = j
        for c in range(mm):
            q = pos[c]
            fg[q], fsp[q], frp[q], fvr[q], fcv[q] = g[c], sp[c], rp[c], vr[c], conv[c]
        for c in range(m):
            gc = fg[c]
            if stuck[lo + c] == 0:  # relaxation right after programming: spread shrinking with verify reads
                x, _ = _normal_pair(_stream(seed, lo + c), iters)
                u = target[lo + c] / poly_g
                spread = poly[0] + u * (poly[1] + u * (poly[2] + u * (poly[3] + u * poly[4])))
                gc += (relax_floor + relax_iter / math.sqrt(max(fvr[c], f32(1.0))) + spread) * x
            out_g[lo + c] = min(max(gc, floor), ceil)
            out_sp[lo + c], out_rp[lo + c], out_vr[lo + c] = fsp[c], frp[c], fvr[c]
            out_cv[lo + c] = fcv[c] > 0


def program_cells(g0: np.ndarray, target: np.ndarray, d2d: np.ndarray, stuck: np.ndarray, p, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Program flat cells (µS, float32; stuck codes int8) and relax them; see
    :func:`rmlora.device.physics.program` for the model.

    Returns (g µS float32, SET pulses, RESET pulses, verify reads (int16), converged (bool)).
    """
    n = target.shape[0]
    g = np.empty(n, np.float32)
    sp, rp, vr = (np.empty(n, np.int16) for _ in range(3))
    cv = np.empty(n, np.bool_)
    with limit_threads():  # numba's pool on torch's thread count
        _program_kernel(g0, target, d2d, stuck, seed, p.programming == "exact", p.tolerance_uS, p.max_pulses,
                        p.passes_required, p.v_set_start_V, p.v_reset_start_V, p.v_step_V, p.v_set_max_V,
                        p.v_reset_max_V, p.v_set_threshold_V, p.v_reset_threshold_V, p.set_gain_uS_per_V,
                        p.reset_gain_uS_per_V, p.c2c_sigma, p.read_noise_abs_uS, p.read_noise_rel, p.g_floor_uS,
                        p.g_ceil_uS, p.relax_sigma_floor_uS, p.relax_sigma_iter_uS,
                        np.array(p.relax_poly, np.float32), np.float32(p.relax_poly_g_uS), g, sp, rp, vr, cv)
    return g, sp, rp, vr, cv
