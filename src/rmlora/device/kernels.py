"""Compiled CPU kernels of the cell physics (numba): write-verify and noisy reads.

Why compiled: torch's CPU normal generator is one sequential Mersenne
Twister (about 5 ns a draw here) and an eager write-verify loop runs a dozen
tensor passes per pulse; both bounded the simulator (docs/benchmarks.md).
Other devices (CUDA) keep the eager torch paths in the callers.

Randomness is counter-based: every cell (write-verify), block of ``BLOCK``
cells (reads) or input vector (the ADC's read noise) owns a stream that
depends only on a 64-bit seed and its index, so results do not depend on the
number of threads. A stream is three 32-bit words (ka, kb, w) from SplitMix64
(Steele, Lea & Flood, OOPSLA 2014) of (seed, index); draw n of the stream
hashes ka + n·w and kb + n·w (w odd, so each stream walks its own Weyl
sequence) with Wellons' two-multiply ``lowbias32`` integer hash. The hashing
is done in 32-bit lanes through an LLVM intrinsic: numba widens small
integers to 64 bits, which AVX2 (no 64-bit vector multiply) cannot
vectorise. Normals come in pairs from the Box-Muller transform with
U = f·2^-31 (f the first hash, 31 bits, as float32: 24 significant bits at
every scale, so tails reach 6.6 σ) and the angle from the second hash's top
24 bits; ln of U's mantissa (atanh series, |error| < 1e-9) and sin/cos on a
quarter turn (Taylor, < 2e-9) are branch-free polynomials, so the loops
vectorise on AVX2 and AVX-512 alike. Callers draw the seed from a
``torch.Generator`` (:func:`draw_seed`), so ``torch.manual_seed`` and a
chip's seed keep every run reproducible.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from rmlora.threads import limit_threads

BLOCK = 8192  # cells per stream of a read: the unit of parallel work

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S32 = (np.uint64(k) for k in (27, 30, 31, 32))
_LOW32 = np.uint64(0xFFFFFFFF)
_F = np.float32
_LN2, _SQRT2, _HALF_PI = _F(math.log(2.0)), _F(math.sqrt(2.0)), _F(math.pi / 2)
_TURN = _F(2.0 ** -22)  # an angle of 2^24 steps to quarter turns
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


@nb.njit(inline="always")
def stream_keys(seed, index):
    """The three uint32 words (ka, kb, w) of stream ``index`` under ``seed`` (w odd)."""
    z = _stream(seed, index)
    return (np.uint32(z & _LOW32), np.uint32(z >> _S32),
            np.uint32((_mix(z + _GAMMA) & _LOW32) | np.uint64(1)))


_I32, _F32 = ir.IntType(32), ir.FloatType()


def _c(k: int) -> ir.Constant:
    return ir.Constant(_I32, k - (1 << 32) if k >= 1 << 31 else k)


@intrinsic
def select(typingctx, c, a, b):
    """``a if c else b`` as one LLVM ``select``: no branch, so loops that use it vectorise (a
    Python conditional becomes control flow that LLVM turns into masked loads and stores)."""
    if not isinstance(c, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)
    return a(c, a, b), codegen


def _lowbias32(b: ir.IRBuilder, v):
    """Wellons' lowbias32 integer hash (github.com/skeeto/hash-prospector) on an i32."""
    v = b.xor(v, b.lshr(v, _c(16)))
    v = b.mul(v, _c(0x7FEB352D))
    v = b.xor(v, b.lshr(v, _c(15)))
    v = b.mul(v, _c(0x846CA68B))
    return b.xor(v, b.lshr(v, _c(16)))


@intrinsic
def _uniform_parts(typingctx, ka, kb, w, n):
    """Draw ``n`` of stream (ka, kb, w) as float32 (k, m, a): U = m·2^-k in (0, 1] with m in
    [1, 2), and the angle a·2^-24 of a turn (a an integer below 2^24). All integer work in i32."""
    u32 = types.uint32
    sig = types.UniTuple(types.float32, 3)(u32, u32, u32, u32)

    def codegen(context, b, signature, args):
        ka, kb, w, n = args
        step = b.mul(n, w)
        u1 = _lowbias32(b, b.add(ka, step))
        u2 = _lowbias32(b, b.add(kb, step))
        f = b.sitofp(b.or_(b.lshr(u1, _c(1)), _c(1)), _F32)  # 1 .. 2^31, rounded to 24 bits
        bits = b.bitcast(f, _I32)
        k = b.sitofp(b.sub(_c(31 + 127), b.lshr(bits, _c(23))), _F32)  # 31 - floor(log2 f)
        m = b.bitcast(b.or_(b.and_(bits, _c(0x7FFFFF)), _c(0x3F800000)), _F32)
        a = b.sitofp(b.lshr(u2, _c(8)), _F32)
        return context.make_tuple(b, signature.return_type, [k, m, a])
    return sig, codegen


@nb.njit(inline="always", **FAST)
def _box_muller(k, m, a):
    """The normal pair of U = m·2^-k (m in [1, 2)) and the angle a·2^-24 of a turn, in float
    operations only (selects, no integer casts), so that it vectorises."""
    big = m > _SQRT2
    m = m * _F(0.5) if big else m  # m in [0.71, 1.41): ln m = 2 atanh((m-1)/(m+1))
    k = k - (_F(1.0) if big else _F(0.0))
    t = (m - _F(1.0)) / (m + _F(1.0))
    t2 = t * t
    ln_m = _F(2.0) * t * (_F(1.0) + t2 * (_F(1 / 3) + t2 * (_F(1 / 5) + t2 * (_F(1 / 7) + t2 * _F(1 / 9)))))
    r = math.sqrt(max(_F(2.0) * (k * _LN2 - ln_m), _F(0.0)))
    # angle 2*pi*u = quadrant * pi/2 + x, |x| <= pi/4
    q4 = a * _TURN
    q = np.floor(q4 + _F(0.5))
    x = (q4 - q) * _HALF_PI
    x2 = x * x
    s = x * (_F(1.0) - x2 * (_F(1 / 6) - x2 * (_F(1 / 120) - x2 * (_F(1 / 5040) - x2 * _F(1 / 362880)))))
    c = _F(1.0) - x2 * (_F(0.5) - x2 * (_F(1 / 24) - x2 * (_F(1 / 720) - x2 * (_F(1 / 40320)
                                                                            - x2 * _F(1 / 3628800)))))
    h = np.floor(q * _F(0.5))
    odd = q - _F(2.0) * h > _F(0.5)  # quadrant bit 0
    neg = h - _F(2.0) * np.floor(h * _F(0.5)) > _F(0.5)  # quadrant bit 1
    r = -r if neg else r
    return r * (-s if odd else c), r * (c if odd else s)


@nb.njit(inline="always", **FAST)
def normal_pair(ka, kb, w, n):
    """Pair ``n`` (uint32) of stream (ka, kb, w): two independent standard normals (float32)."""
    k, m, a = _uniform_parts(ka, kb, w, n)
    return _box_muller(k, m, a)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 63-bit stream seed drawn from ``generator`` (torch's default one if None)."""
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64))


@nb.njit(inline="always", **FAST)
def _read_block(ka, kb, w, mean, sigma, out):
    h = mean.shape[0] // 2
    for k in range(h):
        x, y = normal_pair(ka, kb, w, np.uint32(k))
        out[k] = mean[k] + sigma[k] * x
        out[h + k] = mean[h + k] + sigma[h + k] * y
    if mean.shape[0] % 2:
        x, _ = normal_pair(ka, kb, w, np.uint32(h))
        out[2 * h] = mean[2 * h] + sigma[2 * h] * x


@nb.njit(parallel=True, cache=True, **FAST)
def _read_kernel(mean, sigma, seed, out):
    n = mean.shape[0]
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(n, lo + BLOCK)
        ka, kb, w = stream_keys(seed, b)
        _read_block(ka, kb, w, mean[lo:hi], sigma[lo:hi], out[lo:hi])


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
# Per-cell state of a block lives in one flat float32 array, one field every WV_BLOCK values, so
# that LLVM sees constant distances between the fields; each iteration reads one such array and
# writes the other (no conditional stores), and all choices are selects: the stepping loop then
# vectorises on AVX2 as on AVX-512.
_G, _T, _GAIN, _FREE, _RUN, _PASS, _SP, _RP, _VR, _ACT, _CONV = (k * WV_BLOCK for k in range(11))
_FIELDS = 11
_ONE, _ZERO = _F(1.0), _F(0.0)


@nb.njit(**FAST)
def _wv_step(s, d, ks, mm, it, q):
    """One verify-and-pulse iteration of the cells at places [0, mm): state ``s`` → ``d``.

    ``q`` (float32): tolerance, passes required, pulse cap, SET/RESET start, step, max and
    threshold voltages, SET/RESET gains, c2c σ, read noise (abs, rel), window floor and ceiling.
    """
    tol, req, cap, v_set0, v_reset0, v_step, v_set_max, v_reset_max = q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]
    v_set_th, v_reset_th, set_gain, reset_gain, c2c, rn_abs, rn_rel = q[8], q[9], q[10], q[11], q[12], q[13], q[14]
    floor, ceil = q[15], q[16]
    n = np.uint32(it)
    for c in range(mm):
        x_read, x_c2c = normal_pair(ks[c], ks[WV_BLOCK + c], ks[2 * WV_BLOCK + c], n)
        a = s[_ACT + c] > _ZERO
        gc, t, runs, gain, free = s[_G + c], s[_T + c], s[_RUN + c], s[_GAIN + c], s[_FREE + c]
        passes, sp, rp, vr, conv = s[_PASS + c], s[_SP + c], s[_RP + c], s[_VR + c], s[_CONV + c]
        diff = t - (gc + (rn_abs + rn_rel * gc) * x_read)  # verify read
        ok = abs(diff) <= tol
        p_new = select(ok, passes + _ONE, _ZERO)
        done = p_new >= req
        spent = sp + rp >= cap
        pulse = a & ~ok & ~spent
        up = diff > _ZERO
        # incremental step pulses: the amplitude grows while pulses keep the same polarity
        r_new = select(up, select(runs > _ZERO, runs + _ONE, _ONE), select(runs < _ZERO, runs - _ONE, -_ONE))
        k = abs(r_new) - _ONE
        v_set = min(v_set0 + v_step * k, v_set_max)
        v_reset = min(v_reset0 + v_step * k, v_reset_max)
        step = select(up, set_gain * (v_set - v_set_th) * (ceil - gc), -reset_gain * (v_reset - v_reset_th) * (gc - floor))
        moved = min(max(gc + step * gain * _exp(c2c * x_c2c), floor), ceil)
        d[_G + c] = select(pulse & (free > _ZERO), moved, gc)
        d[_T + c], d[_GAIN + c], d[_FREE + c] = t, gain, free
        d[_RUN + c] = select(pulse, r_new, runs)
        d[_SP + c] = sp + select(pulse & up, _ONE, _ZERO)
        d[_RP + c] = rp + select(pulse & ~up, _ONE, _ZERO)
        d[_VR + c] = vr + select(a, _ONE, _ZERO)
        d[_PASS + c] = select(a, p_new, passes)
        d[_CONV + c] = select(a & done, _ONE, conv)
        d[_ACT + c] = select(a & ~done & ~spent, _ONE, _ZERO)


@nb.njit(inline="always")
def _retire(st, c, origin, out):
    """Copy the finished cell at place ``c`` of ``st`` to place ``origin`` of ``out`` (g, SET,
    RESET, verify reads, converged)."""
    out[origin] = st[_G + c]
    out[WV_BLOCK + origin] = st[_SP + c]
    out[2 * WV_BLOCK + origin] = st[_RP + c]
    out[3 * WV_BLOCK + origin] = st[_VR + c]
    out[4 * WV_BLOCK + origin] = st[_CONV + c]


@nb.njit(fastmath={"nnan", "ninf", "nsz", "reassoc"}, error_model="numpy")
def _count_active(s, mm):
    """Cells still stepping among places [0, mm) (a sum of 0/1 flags: exact in any order)."""
    n = _F(0.0)
    for c in range(mm):
        n += s[_ACT + c]
    return int(n)


@nb.njit(**FAST)
def _compact(s, d, ks, pos, dst, mm, fin):
    """Move the cells still stepping to the front, from ``s`` into ``d`` (keys and origins in
    place); retire the finished ones into ``fin``. Returns how many still step."""
    j = 0
    for c in range(mm):  # in order, so a finished cell's slot is taken by the next stepping one
        dst[c] = j
        if s[_ACT + c] > 0:
            j += 1
        else:
            _retire(s, c, pos[c], fin)
    for f in range(_FIELDS):
        base = f * WV_BLOCK
        for c in range(mm):
            d[base + dst[c]] = s[base + c]
    for f in range(3):
        base = f * WV_BLOCK
        for c in range(mm):
            ks[base + dst[c]] = ks[base + c]
    for c in range(mm):
        pos[dst[c]] = pos[c]
    return j


@nb.njit(**FAST)
def _wv_init(s, ks, relax, g0, target, d2d, stuck, seed, lo, last, inv_span):
    """Fill a block's state for the cells lo, lo+1, ...: keys, the relaxation draw (the stream's
    draw ``last``, after the last iteration), conductance, target, gain, free and active flags
    (separate simple loops, so that each vectorises)."""
    m = target.shape[0]
    for c in range(m):
        ks[c], ks[WV_BLOCK + c], ks[2 * WV_BLOCK + c] = stream_keys(seed, lo + c)
    for c in range(m):
        relax[c], _ = normal_pair(ks[c], ks[WV_BLOCK + c], ks[2 * WV_BLOCK + c], last)
    for c in range(m):
        s[_G + c], s[_T + c], s[_GAIN + c] = g0[c], target[c], d2d[c] * inv_span
        s[_FREE + c] = select(stuck[c] == 0, _ONE, _ZERO)
        s[_ACT + c] = _ONE


@nb.njit(parallel=True, cache=True, **FAST)
def _program_kernel(g0, target, d2d, stuck, seed, exact, iters, q, relax_floor, relax_iter, poly, poly_g,
                    out_g, out_sp, out_rp, out_vr, out_cv):
    n = target.shape[0]
    f32 = np.float32
    tol, floor, ceil = q[0], q[15], q[16]
    inv_span = f32(1.0) / (ceil - floor)
    for blk in nb.prange((n + WV_BLOCK - 1) // WV_BLOCK):
        lo = blk * WV_BLOCK
        m = min(n, lo + WV_BLOCK) - lo
        # fixed-size scratch, so numba's hoisting of these allocations out of the loop stays exact
        s, d = np.zeros(_FIELDS * WV_BLOCK, f32), np.zeros(_FIELDS * WV_BLOCK, f32)
        ks = np.empty(3 * WV_BLOCK, np.uint32)  # each cell's stream keys (ka, kb, w)
        pos = np.arange(WV_BLOCK)  # where the cell at each place came from
        relax = np.empty(WV_BLOCK, f32)  # each cell's relaxation draw, by origin
        fin = np.empty(5 * WV_BLOCK, f32)  # finished cells by origin: g, SET, RESET, verify reads, converged
        _wv_init(s, ks, relax, g0[lo:lo + m], target[lo:lo + m], d2d[lo:lo + m], stuck[lo:lo + m], seed, lo,
                 np.uint32(iters), inv_span)
        if exact:  # written exactly: no pulses, no verify reads
            for c in range(m):
                g = s[_T + c] if s[_FREE + c] > 0 else s[_G + c]
                s[_G + c] = g
                s[_CONV + c] = f32(1.0) if abs(g - s[_T + c]) <= max(tol, f32(1e-6)) else f32(0.0)
        # cells still stepping sit at the front, [0, mm); they are compacted when an eighth has
        # finished, so late iterations skip finished cells. A cell's draws depend only on its
        # keys and the iteration, so compaction does not change any result.
        mm = m
        dst = np.empty(WV_BLOCK, np.int64)
        for it in range(iters):
            _wv_step(s, d, ks, mm, it, q)
            s, d = d, s
            left = _count_active(s, mm)
            if left == 0:
                break
            if 4 * left < 3 * mm:  # a quarter finished (measured: cheaper than an eighth or a half)
                mm = _compact(s, d, ks, pos, dst, mm, fin)
                s, d = d, s
        for c in range(mm):
            _retire(s, c, pos[c], fin)
        for c in range(m):
            gc = fin[c]
            if stuck[lo + c] == 0:  # relaxation right after programming: spread shrinking with verify reads
                u = target[lo + c] / poly_g
                spread = poly[0] + u * (poly[1] + u * (poly[2] + u * (poly[3] + u * poly[4])))
                reads = max(fin[3 * WV_BLOCK + c], f32(1.0))
                gc += (relax_floor + relax_iter / math.sqrt(reads) + spread) * relax[c]
            out_g[lo + c] = min(max(gc, floor), ceil)
            out_sp[lo + c], out_rp[lo + c] = fin[WV_BLOCK + c], fin[2 * WV_BLOCK + c]
            out_vr[lo + c], out_cv[lo + c] = fin[3 * WV_BLOCK + c], fin[4 * WV_BLOCK + c] > 0


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
        q = np.array([p.tolerance_uS, p.passes_required, p.max_pulses, p.v_set_start_V, p.v_reset_start_V,
                      p.v_step_V, p.v_set_max_V, p.v_reset_max_V, p.v_set_threshold_V, p.v_reset_threshold_V,
                      p.set_gain_uS_per_V, p.reset_gain_uS_per_V, p.c2c_sigma, p.read_noise_abs_uS,
                      p.read_noise_rel, p.g_floor_uS, p.g_ceil_uS], np.float32)
        iters = 0 if p.programming == "exact" else p.max_pulses + p.passes_required  # iterations at most
        _program_kernel(g0, target, d2d, stuck, seed, p.programming == "exact", iters, q, p.relax_sigma_floor_uS,
                        p.relax_sigma_iter_uS, np.array(p.relax_poly, np.float32), np.float32(p.relax_poly_g_uS),
                        g, sp, rp, vr, cv)
    return g, sp, rp, vr, cv
