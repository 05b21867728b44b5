"""DAC and ADC quantisation (signed, mid-tread, ``bits`` including sign).

Both are auto-ranged: the DAC full scale is the largest |input| of the call
(abs-max input scaling, as aihwkit's noise management), the ADC full scale is
the largest |current| of each tile's columns in the call. ``bits=None``
switches a converter off (ideal).
"""

from __future__ import annotations

import torch


def levels(bits: int) -> int:
    """Positive code levels of a signed converter with ``bits`` bits."""
    if bits < 2:
        raise ValueError("converters need at least 2 bits")
    return 2 ** (bits - 1) - 1


def quantise(x: torch.Tensor, full_scale: torch.Tensor | float, bits: int | None) -> torch.Tensor:
    """Round ``x`` to the codes of a signed ``bits`` converter spanning ±full_scale; clip outside."""
    if bits is None:
        return x
    n = levels(bits)
    fs = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device).clamp_min(1e-30)
    step = fs / n
    return torch.round(x / step).clamp_(-n, n) * step


def quantise_(x: torch.Tensor, full_scale: torch.Tensor, bits: int) -> torch.Tensor:
    """In-place :func:`quantise` of a scratch tensor (saves three passes over it)."""
    n = levels(bits)
    step = full_scale.clamp_min(1e-30) / n
    return x.div_(step).round_().clamp_(-n, n).mul_(step)


def dac(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """Quantise inputs (B, in) with one full scale per call (its abs max)."""
    if bits is None:
        return x
    return quantise(x, x.abs().amax(), bits)
