"""Count the work a model does into a :class:`Ledger` while it runs.

``with counting(model, ledger): model(x)`` makes every analogue layer add
its DAC/array/ADC work, and every active LoRA adapter and digital output
row add its MACs and SRAM weight reads. With ``as_digital=True`` the
analogue layers are counted as if the whole network ran on the digital unit
(INT8 MACs with weights read from SRAM): the digital reference.

Conventions (documented in docs/costs.md): the digital unit reads a
layer's adapter weights from SRAM once per sample and reuses them for that
sample's rows (tokens, time steps); there is no reuse across the samples of
a batch (an edge device serves one sample at a time); with gradients enabled,
digital work counts three times (forward, input gradient, weight gradient).
Element-wise work (activations, norms) is not counted: it is the same on
both paths.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from rmlora.costs.ledger import Ledger


def _digital_hook(ledger: Ledger, weights_of, bits: int):
    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        per_row = weights_of(module)
        if per_row == 0:
            return
        channel_dim = 1 if isinstance(getattr(module, "base_layer", module), (nn.Conv1d, nn.Conv2d)) else -1
        rows = out.numel() // out.shape[channel_dim]
        mult = 3 if torch.is_grad_enabled() else 1
        ledger.add("digital_macs", mult * rows * per_row)
        ledger.add("sram_read_bits", out.shape[0] * per_row * bits)  # once per sample
    return hook


def _lora_weights(layer) -> int:
    total = 0
    for name in layer.active_adapters:
        if name in layer.lora_A:
            total += layer.lora_A[name].weight.numel() + layer.lora_B[name].weight.numel()
    return total


@contextmanager
def counting(model: nn.Module, ledger: Ledger, *, as_digital: bool = False, bits: int = 8) -> Iterator[Ledger]:
    """Attach ``ledger`` to ``model`` for the duration of the block."""
    from peft.tuners.lora import LoraLayer

    from rmlora.adapters.head import DigitalRows
    from rmlora.hardware.layers import AnalogLayer

    hooks = []
    analog = [m for m in model.modules() if isinstance(m, AnalogLayer)]
    for m in analog:
        if as_digital:
            hooks.append(m.register_forward_hook(_digital_hook(ledger, lambda mod: mod.weight.numel(), bits)))
        else:
            m.ledger = ledger
    for m in model.modules():
        if isinstance(m, LoraLayer):
            hooks.append(m.register_forward_hook(_digital_hook(ledger, _lora_weights, bits)))
        elif isinstance(m, DigitalRows) and not isinstance(m.rows, AnalogLayer):
            hooks.append(m.rows.register_forward_hook(_digital_hook(ledger, lambda mod: mod.weight.numel(), bits)))
    try:
        yield ledger
    finally:
        for h in hooks:
            h.remove()
        for m in analog:
            m.ledger = None
