"""Count the work a model does into a :class:`Ledger` while it runs.

``with counting(model, ledger): model(x)`` makes every analogue layer add
its DAC/array/ADC work, and every active LoRA adapter and digital output
row add its MACs and SRAM weight reads. With ``as_digital=True`` the
analogue layers are counted as if the whole network ran on the digital unit
(INT8 MACs with weights read from SRAM): the digital reference.

Modules take part through the :class:`Countable` protocol (the analogue
layers of :mod:`rmlora.hardware`, :class:`rmlora.adapters.DigitalRows`);
peft's LoRA layers are recognised as they are.

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
from typing import Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from rmlora.costs.ledger import Ledger

ANALOG, DIGITAL = "analog", "digital"


@runtime_checkable
class Countable(Protocol):
    """A module whose work :func:`counting` counts.

    ``rmlora_counting`` is ``"analog"``: the module adds its own DAC/array/ADC
    work to its ``ledger`` attribute while that is set (None otherwise), or
    ``"digital"``: counting hooks the module's forward. ``digital_weights()``
    is the number of weights the digital unit multiplies per output row: the
    module's digital work, or for an analogue layer the digital reference's
    (``as_digital``); 0 counts nothing.
    """

    rmlora_counting: str

    def digital_weights(self) -> int: ...


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


def _own_weights(module: Countable) -> int:
    return module.digital_weights()


def _lora_weights(layer) -> int:
    """Weights of a peft ``LoraLayer``'s active adapters (A and B) per output row."""
    total = 0
    for name in layer.active_adapters:
        if name in layer.lora_A:
            total += layer.lora_A[name].weight.numel() + layer.lora_B[name].weight.numel()
    return total


@contextmanager
def counting(model: nn.Module, ledger: Ledger, *, as_digital: bool = False, bits: int = 8) -> Iterator[Ledger]:
    """Attach ``ledger`` to every :class:`Countable` module and peft ``LoraLayer``
    of ``model`` for the block (an analogue layer's previous ledger is put back);
    ``bits``: width of the digital weights read from SRAM."""
    from peft.tuners.lora import LoraLayer

    hooks = []
    analog = []
    for m in model.modules():
        if isinstance(m, Countable):
            kind = m.rmlora_counting
            if kind not in (ANALOG, DIGITAL):
                raise ValueError(f"{type(m).__name__}.rmlora_counting must be {ANALOG!r} or {DIGITAL!r}, got {kind!r}")
            if kind == ANALOG and not as_digital:
                analog.append(m)
            else:
                hooks.append(m.register_forward_hook(_digital_hook(ledger, _own_weights, bits)))
        elif isinstance(m, LoraLayer):
            hooks.append(m.register_forward_hook(_digital_hook(ledger, _lora_weights, bits)))
    before = [m.ledger for m in analog]
    for m in analog:
        m.ledger = ledger
    try:
        yield ledger
    finally:
        for h in hooks:
            h.remove()
        for m, led in zip(analog, before):
            m.ledger = led
