"""Weight ⇄ conductance mapping for one crossbar matrix.

Layout: crossbar rows are the layer's inputs, columns its outputs. With the
differential mapping output j uses columns 2j (G+) and 2j+1 (G−). Each output
has its own scale (µS per weight unit), chosen so that its largest |w| uses
the whole window.
"""

from __future__ import annotations

import torch

from rmlora.device.params import DeviceParams
from rmlora.errors import RmloraError


def output_scale(weight: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """µS per unit weight for each output row of ``weight`` (out, in) → (out,)."""
    wmax = weight.detach().abs().amax(dim=1).clamp_min(1e-12)
    if p.mapping == "differential":
        span = p.g_max_uS - p.g_min_uS
    else:
        span = min(p.g_max_uS - p.reference_uS, p.reference_uS - p.g_min_uS)
    return span / wmax


def to_conductance(weight: torch.Tensor, scale: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """Targets in µS, shape (in, out·cells_per_weight), for ``weight`` (out, in)."""
    if not torch.isfinite(weight).all():
        raise RmloraError("weights contain NaN or infinite values; nothing was programmed")
    w = weight.detach().float().t() * scale  # (in, out), µS
    if p.mapping == "offset":
        return p.reference_uS + w
    pos = p.g_min_uS + w.clamp_min(0)
    neg = p.g_min_uS + (-w).clamp_min(0)
    return torch.stack((pos, neg), dim=2).reshape(w.shape[0], -1)


def signed_conductance(g: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """Conductance that carries the weight (in, out) µS: G − g_ref or G+ − G−."""
    if p.mapping == "offset":
        return g - p.reference_uS
    return g[:, 0::2] - g[:, 1::2]


def to_weight(g: torch.Tensor, scale: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """Weights (out, in) that conductances ``g`` (in, out·cells_per_weight) encode."""
    return (signed_conductance(g, p) / scale).t()
