"""Count the work a model does into a :class:`Ledger` while it runs.

``with counting(model, ledger): model(x)`` makes every analogue layer add
its DAC/array/ADC work (and, as ``reference_*`` counts, the same MVMs done
on the digital unit), and every active LoRA adapter and digital output row
add its MACs and weight reads, each under the layer's name.

Modules take part through the :class:`Countable` protocol (the analogue
layers of :mod:`rmlora.hardware`, :class:`rmlora.adapters.DigitalRows`);
peft's LoRA layers are recognised as they are. :func:`count_mvm` is the one
rule for an analogue MVM's work; :func:`rmlora.costs.project` applies it to
the layers of a float model without a chip.

Conventions (documented in docs/costs.md):

* Spikes are events on both sides: a binary input vector drives only its
  active rows on the arrays, and on the digital unit (adapters' A·x, the
  all-digital reference) each active input adds its weights (an accumulate,
  no multiply).
* Digital weights stay in the PE array's registers when all of a model's
  digital weights fit ``ledger.register_bits``; otherwise they are read from
  SRAM once per sample (no reuse across the samples of a batch: an edge
  device serves one sample at a time).
* With gradients enabled, digital work counts three times (forward, input
  gradient, weight gradient).
* Element-wise work (activations, norms, the LIF state update) is not
  counted: it is the same on both paths.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from rmlora.costs.ledger import Ledger

ANALOG, DIGITAL = "analog", "digital"


@runtime_checkable
class Countable(Protocol):
    """A module whose work :func:`counting` counts.

    ``rmlora_counting`` is ``"analog"``: the module adds its own DAC/array/ADC
    work to its ``ledger`` attribute (under its ``ledger_name``) while that is
    set (None otherwise), or ``"digital"``: counting hooks the module's
    forward. ``digital_weights()`` is the number of weights the digital unit
    multiplies per input vector: the module's digital work, or for an analogue
    layer the all-digital reference's; 0 counts nothing.
    """

    rmlora_counting: str

    def digital_weights(self) -> int: ...


def is_binary(x: torch.Tensor) -> bool:
    """True when every value of ``x`` is 0 or 1 (spikes)."""
    return x.numel() > 0 and bool(((x == 0) | (x == 1)).all())


@dataclass(frozen=True)
class MvmGeometry:
    """What one input vector costs on an analogue layer's arrays, per pass.

    ``drive_tiles``: tiles one input row drives; ``drive_cells``: cells a driven row reads there
    (reference cells included); ``mvms``: tile MVMs per vector; ``conversions``: ADC conversions
    per vector; ``backward``: (DAC conversions, cells read, ADC conversions, tile MVMs) of one
    vector's transposed read (dL/dx).
    """

    drive_tiles: int
    drive_cells: int
    mvms: int
    conversions: int
    backward: tuple[int, int, int, int]

    @classmethod
    def dense(cls, n_in: int, n_out: int, tile: tuple[int, int] = (128, 128), cells_per_weight: int = 1,
              reference_column: bool = False) -> "MvmGeometry":
        """A dense ``n_out`` x ``n_in`` matrix on tiles of ``tile`` (rows, cols) cells: rows are inputs,
        columns outputs x ``cells_per_weight``, one reference column per column tile if asked."""
        cols = n_out * cells_per_weight
        rt, ct = -(-n_in // tile[0]), -(-cols // tile[1])
        return cls(ct, cols + (ct if reference_column else 0), rt * ct, rt * n_out,
                   (n_out * rt, n_in * cols, ct * n_in, rt * ct))


def count_mvm(led: Ledger, name: str, x2d: torch.Tensor, geo: MvmGeometry, *, n_out: int,
              samples: int | None = None, weights: int | None = None, drives: int | None = None, passes: int = 1,
              bit_serial: bool = False, grad_input: bool = False, grad_weight: bool = False,
              weight_bits: int = 8) -> None:
    """Count one call of an analogue layer of geometry ``geo`` on input vectors ``x2d`` (B, in)
    → (B, ``n_out``) from ``samples`` samples (default B; tokens and positions are vectors of one
    sample); ``weights``: weights per vector (default in x out).

    Row drives are event-driven: zero inputs (and zero bits of a bit-serial plane: ``drives``
    set bits over ``passes`` planes) drive nothing; every tile digitises its outputs once per pass.
    With ``grad_input`` a transposed read gives dL/dx; with ``grad_weight`` the digital unit
    computes dL/dW. The ``reference_*`` counts are the same call on the digital unit.
    """
    b, n_in = x2d.shape
    count_vectors(led, name, geo, b=b, n_in=n_in, active=int((x2d != 0).sum()), binary=is_binary(x2d),
                  n_out=n_out, samples=samples, weights=weights, drives=drives, passes=passes, bit_serial=bit_serial,
                  grad_input=grad_input, grad_weight=grad_weight, weight_bits=weight_bits)


def count_vectors(led: Ledger, name: str, geo: MvmGeometry, *, b: int, n_in: int, active: int, binary: bool,
                  n_out: int, samples: int | None = None, weights: int | None = None, drives: int | None = None,
                  passes: int = 1,
                  bit_serial: bool = False, grad_input: bool = False, grad_weight: bool = False,
                  weight_bits: int = 8) -> None:
    """:func:`count_mvm` from the call's numbers: ``b`` vectors of ``n_in`` inputs, ``active`` of
    them non-zero, all 0/1 if ``binary`` (for reads that never form the vectors, e.g. a depthwise
    convolution computed as one)."""
    weights = n_in * n_out if weights is None else weights
    if drives is None:
        drives = active
    led.add("row_drives" if bit_serial else "dac_conversions", drives * geo.drive_tiles, name)
    led.add("cell_reads", drives * geo.drive_cells, name)
    led.add("adc_conversions", passes * b * geo.conversions, name)
    led.add("tile_mvms", passes * b * geo.mvms, name)
    per_input = weights // max(1, n_in)  # weights one input multiplies
    dense_or_events = (active * per_input) if binary else b * weights
    led.add("reference_adds" if binary else "reference_macs", dense_or_events, name)
    # the reference reads a layer's weights once per call and sample, as the digital hooks count adapters
    led.add("reference_weight_bits", (b if samples is None else samples) * weights * weight_bits, name)
    if grad_input:  # the transposed read: dL/dy drives the columns, the rows are digitised
        dac_n, cells, adc_n, mvms = geo.backward
        led.add("dac_conversions", b * dac_n, name)
        led.add("cell_reads", b * cells, name)
        led.add("adc_conversions", b * adc_n, name)
        led.add("tile_mvms", b * mvms, name)
        led.add("reference_macs", b * weights, name)
    if grad_weight:  # dL/dW = gyᵀ·x on the digital unit (the reference keeps it: it is digital already)
        led.add("digital_adds" if binary else "digital_macs", dense_or_events, name)


def _rows(module: nn.Module, out: torch.Tensor) -> int:
    """Input vectors of one call: tokens × batch (linear) or positions × batch (convolution)."""
    conv = isinstance(getattr(module, "base_layer", module), (nn.Conv1d, nn.Conv2d))
    return out.numel() // out.shape[1 if conv else -1]


def _digital_hook(ledger: Ledger, name: str, weights_of, input_weights_of, bits: int, resident: bool):
    """Count one call of a digital module: ``weights_of(m)`` weights per input vector, of which
    ``input_weights_of(m)`` multiply the input itself (event-driven for spikes; None: not linear)."""
    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        per_row = weights_of(module)
        if per_row == 0:
            return
        rows = _rows(module, out)
        grad = torch.is_grad_enabled()
        mult = 3 if grad else 1
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if input_weights_of is not None and x is not None and x.dim() >= 1 and is_binary(x):
            # spikes: A·x (or W·x) and its weight gradient accumulate the weights of the active
            # inputs; the input gradient through A and everything after A·x stay dense
            a = input_weights_of(module)
            events = int((x != 0).sum()) * (a // x.shape[-1])
            ledger.add("digital_adds", (2 if grad else 1) * events, name)
            ledger.add("digital_macs", mult * rows * (per_row - a) + (rows * a if grad else 0), name)
        else:
            ledger.add("digital_macs", mult * rows * per_row, name)
        key = "register_read_bits" if resident else "sram_read_bits"
        ledger.add(key, out.shape[0] * per_row * bits, name)  # once per sample
    return hook


def _own_weights(module: Countable) -> int:
    return module.digital_weights()


def _lora_weights(layer) -> int:
    """Weights of a peft ``LoraLayer``'s active adapters (A and B) per input vector."""
    total = 0
    for name in layer.active_adapters:
        if name in layer.lora_A:
            total += layer.lora_A[name].weight.numel() + layer.lora_B[name].weight.numel()
    return total


def _lora_input_weights(layer) -> int:
    """Weights of the active adapters' A matrices (they multiply the layer's input)."""
    return sum(layer.lora_A[n].weight.numel() for n in layer.active_adapters if n in layer.lora_A)


def layer_name(name: str) -> str:
    """The name a layer's work is booked under: its module path without the wrappers that adapters
    (``.base_layer``) and digital output rows (``.base``) put around it; the chip names its arrays
    the same way."""
    parts = [p for p in name.split(".") if p != "base_layer"]
    while parts and parts[-1] == "base":
        parts.pop()
    return ".".join(parts) or "model"


def parameter_layers(model: nn.Module) -> dict[int, str]:
    """The layer (:func:`layer_name`) each parameter's optimiser work is booked under, by ``id``:
    the innermost countable layer or peft ``LoraLayer`` that holds it (an adapter's A and B go to
    the layer they adapt). Parameters outside every such layer are left out."""
    from peft.tuners.lora import LoraLayer

    out: dict[int, str] = {}
    for name, m in model.named_modules():  # parents come before their children, which override them
        if isinstance(m, (Countable, LoraLayer)):
            for p in m.parameters():
                out[id(p)] = layer_name(name)
    return out


def _samples_hook(ledger: Ledger):
    def hook(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            ledger.add("samples", x.shape[0])
    return hook


@contextmanager
def counting(model: nn.Module, ledger: Ledger, *, as_digital: bool = False, bits: int = 8) -> Iterator[Ledger]:
    """Attach ``ledger`` to every :class:`Countable` module and peft ``LoraLayer`` of ``model``
    for the block (an analogue layer's previous ledger is put back); ``bits``: width of the
    digital weights. With ``as_digital`` the analogue layers are counted as the all-digital
    reference (their MVMs as INT8 MACs with weights from SRAM, see :meth:`Ledger.as_reference`)."""
    from peft.tuners.lora import LoraLayer

    hooked: list[tuple[str, nn.Module, object, object]] = []  # name, module, weights, input weights
    analog = []
    for name, m in model.named_modules():
        if isinstance(m, Countable):
            kind = m.rmlora_counting
            if kind not in (ANALOG, DIGITAL):
                raise ValueError(f"{type(m).__name__}.rmlora_counting must be {ANALOG!r} or {DIGITAL!r}, got {kind!r}")
            if kind == ANALOG and not as_digital:
                analog.append((name, m))
            else:  # a linear analogue layer as the digital reference: all its weights touch the input
                linear = kind == ANALOG and isinstance(m, nn.Linear)
                hooked.append((name, m, _own_weights, _own_weights if linear else None))
        elif isinstance(m, LoraLayer):
            linear = isinstance(m.get_base_layer(), nn.Linear)
            hooked.append((name, m, _lora_weights, _lora_input_weights if linear else None))
    total_bits = bits * sum(w(m) for _, m, w, _ in hooked)
    resident = ledger.register_bits is not None and total_bits <= ledger.register_bits
    hooks = [m.register_forward_hook(_digital_hook(ledger, layer_name(name), w, wi, bits, resident))
             for name, m, w, wi in hooked]
    hooks.append(model.register_forward_pre_hook(_samples_hook(ledger), with_kwargs=True))
    before = [m.ledger for _, m in analog]
    for _, m in analog:
        m.ledger = ledger
    try:
        yield ledger
    finally:
        for h in hooks:
            h.remove()
        for (_, m), led in zip(analog, before):
            m.ledger = led
