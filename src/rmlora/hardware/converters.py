"""DAC and ADC quantisation (signed, mid-tread, ``bits`` including sign).

Both are auto-ranged: the DAC full scale is the largest |input| of the call
(abs-max input scaling, as aihwkit's noise management), the ADC full scale is
the largest |current| of each tile's columns in the call. ``bits=None``
switches a converter off (ideal).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from rmlora.device.kernels import FAST
from rmlora.threads import limit_threads


def levels(bits: int) -> int:
    """Positive code levels of a signed converter with ``bits`` bits."""
    if bits < 2:
        raise ValueError("converters need at least 2 bits")
    return 2 ** (bits - 1) - 1


def quantise(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int | None) -> torch.Tensor:
    """Round ``x`` to the codes of a signed ``bits`` converter spanning ±full_scale; clip outside.

    Ties round up (as the compiled ADC). One new tensor, then in-place passes.
    """
    if bits is None:
        return x
    n = levels(bits)
    step = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device).clamp_min(1e-30) / n
    return torch.mul(x, 1 / step).add_(0.5).floor_().clamp_(-n, n).mul_(step)


def adc_sum(part: torch.Tensor, width: int, bits: int, gain: torch.Tensor | None = None) -> torch.Tensor:
    """Digitise signed partial currents ``part`` (row tiles, B, out), sum the row tiles and
    multiply column j by ``gain[j]`` (default 1): (B, out).

    Each tile (one row tile, ``width`` columns) has its own full scale: its
    largest |current| in the call. float32 CPU input runs a compiled two-pass
    kernel (the eager version makes about ten passes over ``part``).
    """
    n_rt, b, out = part.shape
    n_ct = -(-out // width)
    if part.device.type == "cpu" and part.dtype == torch.float32:
        g = torch.ones(out) if gain is None else gain.detach().float().contiguous()
        y = torch.empty(b, out)
        with limit_threads():
            _adc_sum_kernel(part.detach().contiguous().numpy(), width, np.float32(levels(bits)), g.numpy(),
                            y.numpy())
        return y
    padded = (torch.nn.functional.pad(part, (0, n_ct * width - out)) if n_ct * width != out else part)
    padded = padded.reshape(n_rt, b, n_ct, width)
    lo, hi = padded.amin(dim=(1, 3), keepdim=True), padded.amax(dim=(1, 3), keepdim=True)
    y = quantise(padded, torch.maximum(-lo, hi), bits).view(n_rt, b, n_ct * width)[..., :out].sum(0)
    return y if gain is None else y * gain


@nb.njit(parallel=True, cache=True, **FAST)
def _adc_sum_kernel(part, width, n_levels, gain, y):
    n_rt, b, out = part.shape
    n_ct = (out + width - 1) // width
    step = np.empty((n_rt, out), np.float32)  # per column: its tile's step
    for t in nb.prange(n_rt):  # pass 1: each tile's full scale, its largest |current|
        col = np.zeros(out, np.float32)
        for i in range(b):
            for j in range(out):
                col[j] = max(col[j], abs(part[t, i, j]))
        for ct in range(n_ct):
            lo, hi = ct * width, min(out, (ct + 1) * width)
            fs = np.float32(1e-30)
            for j in range(lo, hi):
                fs = max(fs, col[j])
            for j in range(lo, hi):
                step[t, j] = fs / n_levels
    inv_step = np.float32(1.0) / step
    for i in nb.prange(b):  # pass 2: codes, back to currents, summed over row tiles
        for j in range(out):
            y[i, j] = 0.0
        for t in range(n_rt):
            for j in range(out):
                code = min(max(np.floor(part[t, i, j] * inv_step[t, j] + np.float32(0.5)), -n_levels), n_levels)
                y[i, j] += code * step[t, j]
        for j in range(out):
            y[i, j] *= gain[j]


def dac(x: torch.Tensor, bits: int | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Quantise inputs (B, in) with one full scale per call (its abs max); ``out``: optional
    float32 CPU buffer shaped like ``x`` to write into."""
    if bits is None:
        return x
    if x.device.type == "cpu" and x.dtype == torch.float32:
        out = torch.empty(x.shape) if out is None else out
        with limit_threads():
            _dac_kernel(x.detach().contiguous().view(-1).numpy(), np.float32(levels(bits)), out.view(-1).numpy())
        return out
    lo, hi = torch.aminmax(x)
    return quantise(x, torch.maximum(-lo, hi), bits)


@nb.njit(inline="always", **FAST)
def _abs_max(x):
    m = np.float32(0.0)
    for i in range(x.shape[0]):
        m = max(m, abs(x[i]))
    return m


@nb.njit(inline="always", **FAST)
def _codes(x, inv, step, n_levels, out):
    for i in range(x.shape[0]):
        out[i] = min(max(np.floor(x[i] * inv + np.float32(0.5)), -n_levels), n_levels) * step


@nb.njit(parallel=True, cache=True, **FAST)
def _dac_kernel(x, n_levels, out):
    n = x.shape[0]
    chunks = 16
    size = (n + chunks - 1) // chunks
    part = np.zeros(chunks, np.float32)
    for c in nb.prange(chunks):  # slices keep indices provably >= 0, so the loops vectorise
        part[c] = _abs_max(x[c * size:(c + 1) * size])
    step = max(part.max(), np.float32(1e-30)) / n_levels
    for c in nb.prange(chunks):
        _codes(x[c * size:(c + 1) * size], np.float32(1.0) / step, step, n_levels, out[c * size:(c + 1) * size])
