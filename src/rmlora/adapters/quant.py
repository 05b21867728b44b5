"""INT-n fake quantisation of digital weights for quantisation-aware training."""

from __future__ import annotations

import torch
from torch import nn


def int_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-tensor quantisation: (integer codes, scale) with w ≈ codes·scale."""
    n = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax().clamp_min(1e-12) / n
    return torch.round(w / scale).clamp_(-n, n), scale


class FakeQuant(nn.Module):
    """Parametrization: the weight as the SRAM holds it (``bits`` signed integers
    times one scale); gradients pass straight through (STE)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"adapter bits must be in 2..16, got {bits}")
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, scale = int_codes(w, self.bits)
        return w + (codes * scale - w).detach()
