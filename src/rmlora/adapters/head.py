"""Digital output rows: new classes added without touching the analogue head."""

from __future__ import annotations

import torch
from torch import nn


class DigitalRows(nn.Module):
    """Logits of ``base`` (the analogue head, possibly with adapters) followed by
    ``n_new`` rows computed on the digital unit: y = [base(x), x·Wᵀ + b] (B, C + n_new)."""

    ledger = None

    def __init__(self, base: nn.Module, in_features: int, n_new: int) -> None:
        super().__init__()
        self.base = base
        self.rows = nn.Linear(in_features, n_new)
        nn.init.normal_(self.rows.weight, std=0.01)
        nn.init.zeros_(self.rows.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.base(x), self.rows(x)], dim=-1)

    def bits(self, bits: int = 8) -> int:
        return self.rows.weight.numel() * bits + self.rows.bias.numel() * 32
