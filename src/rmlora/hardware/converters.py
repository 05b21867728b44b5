"""DAC and ADC of a tile, with full scales a chip can have, and the read noise of one MVM.

Converters are signed and mid-tread with ``bits`` bits including the sign
(2^(bits-1) − 1 positive codes); ``bits=None`` switches one off (ideal).
Their full scales never come from the batch being computed:

``"calibrated"`` (default)
    The DAC full scale of a layer and the ADC full scale of each of its
    tiles are fixed at deployment by :func:`rmlora.hardware.calibrate` on
    training inputs and frozen with the chip; values beyond them clip (the
    ledger counts the clipped conversions).
``"per-vector"``
    aihwkit's noise management: each input vector is divided by its own
    largest |x| in the digital domain before the DAC (so the DAC never
    clips) and the result multiplied back after the ADC; the ADC full
    scales are calibrated on the scaled vectors and frozen.

Read noise of one MVM (one input vector on one tile), for Gaussian cell
noise of σᵢⱼ µS, is exactly Gaussian: column j of row tile t gives
Σᵢ xᵢ Gᵢⱼ + N(0, Σᵢ xᵢ² σᵢⱼ²), drawn afresh for every vector. When σ is the
same for every cell of a layer the variance is σ²·Σᵢ xᵢ² (no extra matmul);
otherwise one extra product x² · σ² gives it. With the offset mapping the
tile's reference column adds its own draw, N(0, σ_ref² Σᵢ xᵢ²), shared by
every column of the tile (the reference current is subtracted from each).
On float32 CPU tensors the noise is drawn inside the compiled ADC kernel,
from counter-based streams keyed by (call seed, vector), so results do not
depend on the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
import torch

from rmlora.device.kernels import FAST, normal_pair, select, stream_keys
from rmlora.errors import RmloraError
from rmlora.threads import limit_threads

#: how converter full scales are set (see the module docstring)
RANGE_MODES = ("calibrated", "per-vector")


def levels(bits: int) -> int:
    """Positive code levels of a signed converter with ``bits`` bits."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 2:
        raise RmloraError(f"converters need an integer number of bits >= 2, got {bits!r}")
    return 2 ** (bits - 1) - 1


def quantise(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int | None) -> torch.Tensor:
    """Round ``x`` to the codes of a signed ``bits`` converter spanning ±full_scale; clip outside.

    Ties round up (as the compiled kernels). ``full_scale`` broadcasts against ``x``.
    """
    if bits is None:
        return x
    n = levels(bits)
    step = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device).clamp_min(1e-30) / n
    return torch.mul(x, 1 / step).add_(0.5).floor_().clamp_(-n, n).mul_(step)


@dataclass
class Ranges:
    """Frozen converter full scales of one analogue layer.

    ``dac``: () input units, the DAC full scale (1.0 in per-vector mode, where
    inputs are scaled to |x| <= 1); ``adc``: (row tiles, column tiles) µS·input
    units, each tile's ADC full scale in the forward read; ``adc_t``:
    (column tiles, row tiles), the same for the transposed read of the
    backward pass (inputs scaled per vector, calibrated on random vectors).
    """

    mode: str
    dac: torch.Tensor
    adc: torch.Tensor
    adc_t: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"range.dac": self.dac, "range.adc": self.adc, "range.adc_t": self.adc_t}

    @classmethod
    def from_tensors(cls, mode: str, sd: dict[str, torch.Tensor]) -> "Ranges":
        return cls(mode, sd["range.dac"], sd["range.adc"], sd["range.adc_t"])


# -- DAC ----------------------------------------------------------------------------------
def dac(x: torch.Tensor, bits: int | None, full_scale: torch.Tensor, out: torch.Tensor | None = None
        ) -> tuple[torch.Tensor, int]:
    """Quantise inputs (B, in) against ``full_scale`` (a scalar, or (B, 1) per vector);
    returns (codes as values, number of inputs that clipped). ``out``: optional float32
    CPU buffer shaped like ``x``."""
    if bits is None:
        return x, 0
    fs = full_scale.detach().to(x.dtype).reshape(-1)
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2:
        out = torch.empty(x.shape) if out is None else out
        with limit_threads():
            clipped = _dac_kernel(x.detach().contiguous().numpy(), fs.contiguous().numpy(),
                                  np.float32(levels(bits)), out.numpy())
        return out, int(clipped)
    fs = fs.view(-1, 1) if fs.numel() > 1 else fs
    clipped = int((x.detach().abs() > fs * (1 + 0.5 / levels(bits))).sum())
    return quantise(x.detach(), fs, bits), clipped


@nb.njit(parallel=True, cache=True, **FAST)
def _dac_kernel(x, fs, n_levels, out):
    b, n = x.shape
    per_row = fs.shape[0] > 1
    clipped = np.zeros(b, np.int64)
    for i in nb.prange(b):
        f = max(fs[i] if per_row else fs[0], np.float32(1e-30))
        step = f / n_levels
        inv = np.float32(1.0) / step
        c = 0
        for k in range(n):
            code = np.floor(x[i, k] * inv + np.float32(0.5))
            c += 1 if abs(code) > n_levels else 0
            out[i, k] = min(max(code, -n_levels), n_levels) * step
        clipped[i] = c
    return clipped.sum()


def vector_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-vector digital scale of noise management: max |x| of each row (B,), 1 for all-zero rows."""
    m = x.detach().abs().amax(dim=1)
    return torch.where(m > 0, m, torch.ones_like(m))


# -- ADC (with the read noise of the MVM) -------------------------------------------------
def adc_sum(part: torch.Tensor, width: int, bits: int | None, full_scale: torch.Tensor | None,
            gain: torch.Tensor | None = None, *, row_std: torch.Tensor | None = None,
            full_std: torch.Tensor | None = None, ref_std: torch.Tensor | None = None,
            seed: int = 0) -> tuple[torch.Tensor, int]:
    """Add the read noise of each MVM to the noise-free partial currents ``part`` (row tiles, B,
    out), digitise each tile (``width`` columns) against its full scale ``full_scale`` (row tiles,
    column tiles), sum the row tiles and multiply column j by ``gain[j]``: returns ((B, out), codes
    that clipped).

    Noise σ per (tile, vector): ``row_std`` (row tiles, B) for every column alike, or ``full_std``
    (row tiles, B, out) per column; ``ref_std`` (row tiles, B) is the reference column's, one draw
    per tile and vector subtracted from each of its columns. ``seed`` keys the draws.
    """
    n_rt, b, out = part.shape
    n_ct = -(-out // width)
    g = torch.ones(out, dtype=part.dtype, device=part.device) if gain is None else gain.detach().to(part.dtype)
    quant = bits is not None
    if quant and full_scale is None:
        raise RmloraError("ADC full scales are not calibrated")
    if part.device.type == "cpu" and part.dtype == torch.float32:
        empty, empty3 = np.zeros((0, 0), np.float32), np.zeros((0, 0, 0), np.float32)
        y = torch.empty(b, out)
        fs = full_scale.detach().float().contiguous().numpy() if quant else np.ones((n_rt, n_ct), np.float32)
        with limit_threads():
            clipped = _adc_kernel(
                part.detach().contiguous().numpy(), width, fs, np.float32(levels(bits) if quant else 1.0), quant,
                g.contiguous().numpy(),
                empty if row_std is None else row_std.detach().float().contiguous().numpy(),
                empty3 if full_std is None else full_std.detach().float().contiguous().numpy(),
                empty3 if ref_std is None else ref_std.detach().float().contiguous().numpy(),
                np.uint64(seed), y.numpy())
        return y, int(clipped)
    gen = torch.Generator(device=part.device).manual_seed(seed)
    v = part.detach().clone()
    if full_std is not None:
        v.addcmul_(full_std, torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype))
    elif row_std is not None:
        v.addcmul_(row_std.unsqueeze(-1), torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype))
    if ref_std is not None:
        zr = torch.randn(n_rt, b, n_ct, generator=gen, device=v.device, dtype=v.dtype) * ref_std
        v -= zr.repeat_interleave(width, dim=2)[..., :out]
    if not quant:
        return v.sum(0) * g, 0
    fs = full_scale.to(v.dtype).repeat_interleave(width, dim=1)[:, :out].unsqueeze(1)  # (rt, 1, out)
    n = levels(bits)
    clipped = int((v.abs() > fs * (1 + 0.5 / n)).sum())
    return quantise(v, fs, bits).sum(0) * g, clipped


@nb.njit(inline="always", **FAST)
def _normals(ka, kb, w, base, z):
    """Fill ``z`` (even length) with the normals of pairs base, base+1, ... of stream (ka, kb, w)."""
    h = z.shape[0] // 2
    for k in range(h):
        a, b = normal_pair(ka, kb, w, np.uint32(base + k))
        z[k] = a
        z[h + k] = b


@nb.njit(inline="always", **FAST)
def _add_scaled(v, part, s, z):
    for j in range(v.shape[0]):
        v[j] = part[j] + s * z[j]


@nb.njit(inline="always", **FAST)
def _add_each(v, part, s, z):
    for j in range(v.shape[0]):
        v[j] = part[j] + s[j] * z[j]


@nb.njit(inline="always", **FAST)
def _shift(v, d):
    for j in range(v.shape[0]):
        v[j] -= d


@nb.njit(inline="always", **FAST)
def _digitise(v, inv, step, n_levels, acc, clip):
    """acc += codes of v (per-column 1/step and step) times step; clip[j] += 1 where v clipped
    (float32 counts: exact below 2^24 row tiles)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for j in range(v.shape[0]):
        code = np.floor(v[j] * inv[j] + np.float32(0.5))
        clip[j] += select(abs(code) > n_levels, one, zero)
        acc[j] += min(max(code, -n_levels), n_levels) * step[j]


@nb.njit(inline="always", **FAST)
def _accumulate(v, acc):
    for j in range(v.shape[0]):
        acc[j] += v[j]


@nb.njit(parallel=True, cache=True, **FAST)
def _adc_kernel(part, width, fs, n_levels, quant, gain, row_std, full_std, ref_std, seed, y):
    n_rt, b, out = part.shape
    n_ct = (out + width - 1) // width
    has_row, has_full, has_ref = row_std.shape[0] > 0, full_std.shape[0] > 0, ref_std.shape[0] > 0
    noisy = has_row or has_full
    half = (out + 1) // 2
    n_ref = (n_ct + 1) // 2
    per_tile = half + n_ref  # normal pairs one (tile, vector) uses
    step = np.empty((n_rt, out), np.float32)
    for t in range(n_rt):
        for j in range(out):
            step[t, j] = max(fs[t, j // width], np.float32(1e-30)) / n_levels
    inv = np.float32(1.0) / step
    clipped = np.zeros(b, np.int64)
    for i in nb.prange(b):
        ka, kb, kw = stream_keys(seed, i)
        acc = np.zeros(out, np.float32)
        v = np.empty(out, np.float32)
        z = np.zeros(2 * half, np.float32)
        zr = np.zeros(2 * n_ref, np.float32)
        clip = np.zeros(out, np.float32)
        for t in range(n_rt):
            base = t * per_tile
            if noisy:
                _normals(ka, kb, kw, base, z)
                if has_full:
                    _add_each(v, part[t, i], full_std[t, i], z[:out])
                else:
                    _add_scaled(v, part[t, i], row_std[t, i], z[:out])
            else:
                v[:] = part[t, i]
            if has_ref:
                _normals(ka, kb, kw, base + half, zr)
                for ct in range(n_ct):
                    _shift(v[ct * width:min(out, (ct + 1) * width)], ref_std[t, i, ct] * zr[ct])
            if quant:
                _digitise(v, inv[t], step[t], n_levels, acc, clip)
            else:
                _accumulate(v, acc)
        for j in range(out):
            y[i, j] = acc[j] * gain[j]
        clipped[i] = int(clip.sum())
    return clipped.sum()
