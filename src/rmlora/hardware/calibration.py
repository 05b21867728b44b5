"""Converter calibration at deployment: fix every layer's DAC and ADC full scales once.

A chip's converters cannot pick their range after seeing a batch. At
deployment :func:`calibrate` runs training inputs through the model (the
analogue layers pass the noise-free product x·W_eff on and record the input
vectors they see), then fixes, per layer:

- the DAC full scale: the ``percentile``-th percentile of |x| over the
  recorded inputs (``"calibrated"`` mode), or 1 for inputs scaled per vector
  (``"per-vector"``);
- each tile's ADC full scale: the ``percentile``-th percentile of |current|
  of that tile's columns over the recorded (DAC-quantised) inputs;
- each tile's ADC full scale for the transposed read of the backward pass:
  the same percentile over 512 random Gaussian vectors scaled per vector
  (gradients have no data before training starts).

The ranges are frozen in the chip (:meth:`Chip.set_ranges`) and saved with
its state; later inputs beyond them clip, and the ledger counts the clips.
The default percentile, 99.9, is the chip's ``calibration_percentile``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from rmlora.errors import RmloraError
from rmlora.hardware.converters import Ranges, dac, vector_scale

#: input vectors a layer keeps from one call, and in all, while calibrating
ROWS_PER_CALL, MAX_ROWS = 2048, 8192
Feed = Callable[[nn.Module], Any] | torch.Tensor | Iterable[torch.Tensor]


def percentile(a: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile (0–100] of the last dimension of ``a`` (nearest rank)."""
    n = a.shape[-1]
    k = max(1, min(n, int(round(q / 100 * n))))
    return a.float().kthvalue(k, dim=-1).values


def _run(model: nn.Module, feed: Feed) -> None:
    with torch.no_grad():
        if callable(feed):
            feed(model)
        elif isinstance(feed, torch.Tensor):
            model(feed)
        else:
            for x in feed:
                model(x)


def calibrate(model: nn.Module, feed: Feed, *, percentile_: float | None = None) -> dict[str, Ranges]:
    """Fix and freeze the converter ranges of every analogue layer of ``model`` that has
    converters, from calibration inputs ``feed`` (a batch, an iterable of batches, or a
    callable that runs the model on them). Returns the ranges by layer name.

    Raises :class:`RmloraError` when a layer sees no input or only zeros.
    """
    from rmlora.hardware.deploy import analog_layers

    layers = [(n, m) for n, m in analog_layers(model) if m.core.needs_ranges]
    if not layers:
        return {}
    was_training = model.training
    model.eval()
    for _, m in layers:
        m.core.collect = []
    try:
        _run(model, feed)
        seen = {n: m.core.collect for n, m in layers}
    finally:
        for _, m in layers:
            m.core.collect = None
        model.train(was_training)
    out = {}
    for name, m in layers:
        rows = _sample(seen[name])
        if rows.numel() == 0:
            raise RmloraError(f"calibration: layer {name} saw no input; give calibration inputs that reach it")
        if not bool((rows != 0).any()):
            raise RmloraError(f"calibration: layer {name} saw only zero inputs; its converter ranges cannot be set")
        core = m.core
        out[name] = core.ranges = _ranges(core, rows, percentile_ or core.chip.calibration_percentile)
        core.chip.set_ranges(core.handle, core.ranges)
    return out


def record(collect: list[torch.Tensor], x: torch.Tensor) -> None:
    """Keep at most ROWS_PER_CALL input vectors of one call (evenly spaced), MAX_ROWS in all."""
    have = sum(t.shape[0] for t in collect)
    if have >= MAX_ROWS:
        return
    x = x.detach().reshape(-1, x.shape[-1])
    if x.shape[0] > ROWS_PER_CALL:
        x = x[torch.linspace(0, x.shape[0] - 1, ROWS_PER_CALL, device=x.device).long()]
    collect.append(x[:MAX_ROWS - have].float().cpu())


def _sample(calls: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(calls) if calls else torch.zeros(0)


def _tile_percentile(part: torch.Tensor, width: int, q: float) -> torch.Tensor:
    """(tiles, B, cols) currents → (tiles, column tiles) percentile of |current| per tile."""
    n_t, b, cols = part.shape
    n_ct = -(-cols // width)
    p = torch.nn.functional.pad(part.abs(), (0, n_ct * width - cols)).view(n_t, b, n_ct, width)
    fs = percentile(p.permute(0, 2, 1, 3).reshape(n_t, n_ct, b * width), q)
    return torch.where(fs > 0, fs, fs.max().clamp_min(1e-12))  # a silent tile takes the layer's largest


def _ranges(core, x: torch.Tensor, q: float) -> Ranges:
    chip, dev = core.chip, core.signed.device
    x = x.to(dev)
    per_vector = chip.range_mode == "per-vector"
    if per_vector:
        u, fs_dac = x / vector_scale(x).unsqueeze(1), torch.ones(())
    else:
        a = x.abs().reshape(-1)
        fs_dac = percentile(a[a > 0], q).reshape(())  # the nonzero inputs: spikes and ReLU zeros drive nothing
        u = x
    xq, _ = dac(u, chip.dac_bits, fs_dac)
    if getattr(chip, "bit_serial", False):  # each plane is its own MVM: the ADC sees plane currents
        xq = core.bit_planes(xq, fs_dac)[0]
    part, _ = core._tile_products(xq.contiguous())
    adc = _tile_percentile(part, core.out_tile_width, q)
    adc_t = core.transposed_calibration(q)
    return Ranges(chip.range_mode, fs_dac.float().cpu(), adc.float().cpu(), adc_t.float().cpu())


def inherit_ranges(core, source) -> Ranges | None:
    """Freeze ``core``'s ranges from those of ``source``, a calibrated layer that reads the same
    input vectors (output rows added to a deployed layer): the same DAC full scale, and for every
    tile the largest ADC full scale of ``source``'s tiles in the same row tile (per-row scales put
    both layers' weights on the same conductance window). None when ``source`` has none."""
    r = source.ranges
    if r is None or not core.needs_ranges:
        return None
    if core.handle.row_tiles != source.handle.row_tiles:
        raise RmloraError(f"{core.name}: cannot take the converter ranges of {source.name} (different row tiles)")
    adc = r.adc.amax(dim=1, keepdim=True).expand(-1, core.handle.col_tiles)
    adc_t = r.adc_t.amax(dim=0, keepdim=True).expand(core.handle.col_tiles, -1)
    core.ranges = Ranges(r.mode, r.dac.clone(), adc.contiguous().clone(), adc_t.contiguous().clone())
    core.chip.set_ranges(core.handle, core.ranges)
    return core.ranges
