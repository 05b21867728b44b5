"""Digital output rows: new classes added without touching the analogue head."""

from __future__ import annotations

import torch
from torch import nn

from rmlora.costs.counting import DIGITAL, Countable


class DigitalRows(nn.Module):
    """Logits of ``base`` (the analogue head, possibly with adapters) followed by
    ``n_new`` rows computed on the digital unit: y = [base(x), x·Wᵀ + b] (B, C + n_new).

    A digital :class:`rmlora.costs.counting.Countable`; once ``rows`` is replaced by a
    countable layer (an analogue one), that layer counts itself instead. With
    ``enabled`` False (an undone class) the rows compute nothing and their logits are
    :attr:`FLOOR`, so those classes are never predicted.
    """

    FLOOR = -1e4

    rmlora_counting = DIGITAL

    def __init__(self, base: nn.Module, in_features: int, n_new: int) -> None:
        super().__init__()
        self.enabled = True
        self.base = base
        self.rows = nn.Linear(in_features, n_new)
        nn.init.normal_(self.rows.weight, std=0.01)
        nn.init.zeros_(self.rows.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            base = self.base(x)
            return torch.cat([base, base.new_full((*base.shape[:-1], self.rows.out_features), self.FLOOR)], dim=-1)
        return torch.cat([self.base(x), self.rows(x)], dim=-1)

    def digital_weights(self) -> int:
        """Weights (count) the digital unit multiplies per output row: the new rows' ``W``."""
        if not self.enabled or isinstance(self.rows, Countable):
            return 0
        return self.rows.weight.numel()

    def bits(self, bits: int = 8) -> int:
        return self.rows.weight.numel() * bits + self.rows.bias.numel() * 32
