"""Analogue layers: Linear, Conv1d and Conv2d computed from programmed conductances.

Each layer keeps its float ``weight`` (the target the chip was programmed
to, frozen unless a full-update baseline trains it) and a
:class:`CrossbarCore` that computes y = x·W_eff from the chip's cells:

1. inputs go through the DAC (``chip.dac_bits``);
2. each tile of 128 rows gives partial column currents x·G (µS·V) with a
   fresh read-noise sample of every cell on every call; the reference
   column (offset mapping) or the G− column (differential) is subtracted
   in the analogue domain;
3. each tile's signed currents go through the ADC (``chip.adc_bits``) and
   are summed digitally;
4. the sum is divided by the per-output scale (µS per weight unit); the bias
   is added digitally.

Gradients use the straight-through estimator of the converters: dL/dx =
dL/dy·W_eff (a transposed read of the same arrays) and, when ``weight``
requires grad, dL/dW = dL/dyᵀ·x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.costs.counting import ANALOG
from rmlora.device import mapping, physics
from rmlora.hardware.chip import ArrayHandle, Chip, ProgramStats
from rmlora.hardware.converters import adc_sum, dac


class CrossbarCore:
    """The analogue matrix of one layer: ``out`` x ``in`` weights on a chip."""

    def __init__(self, chip: Chip, name: str, out_features: int, in_features: int) -> None:
        self.chip = chip
        self.p = chip.device
        self.out_features, self.in_features = out_features, in_features
        self.handle: ArrayHandle = chip.allocate(name, in_features, out_features * self.p.cells_per_weight)
        self.scale: torch.Tensor | None = None  # µS per weight unit, (out,)
        # (row tiles · tile rows, out) µS, zero below row ``in``: G − g_ref or G+ − G−, and its read noise σ
        self._signed: torch.Tensor | None = None
        self._sigma: torch.Tensor | None = None
        self._scratch_bufs: dict[str, torch.Tensor] = {}  # scratch of forward_currents (CPU float32)
        self._inverse: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # (scale, 1 / scale)

    @property
    def signed(self) -> torch.Tensor:
        """Signed conductances (in, out), µS: G − g_ref (offset) or G+ − G− (differential)."""
        return self._signed[:self.in_features]

    @property
    def sigma(self) -> torch.Tensor | None:
        """Read-noise σ of ``signed`` (in, out), µS, or None without read noise."""
        return None if self._sigma is None else self._sigma[:self.in_features]

    def targets(self, weight: torch.Tensor) -> torch.Tensor:
        """Target conductances (µS) for ``weight`` (out, in); keeps the previous scale
        while the weights fit it, so that unchanged weights keep their targets."""
        need = mapping.output_scale(weight, self.p)
        self.scale = need if self.scale is None else torch.minimum(self.scale, need)
        return mapping.to_conductance(weight, self.scale, self.p)

    def program(self, weight: torch.Tensor) -> ProgramStats:
        """Write-verify ``weight`` (out, in) into this layer's cells."""
        stats = self.chip.program(self.handle, self.targets(weight))
        self.refresh()
        return stats

    def refresh(self) -> None:
        """Re-read the cells (after programming or ageing) into the MVM cache."""
        g = self.chip.conductance(self.handle)
        pad = self.handle.row_tiles * self.chip.tile_rows - self.in_features  # rows left empty in the last tile
        self._signed = F.pad(mapping.signed_conductance(g, self.p), (0, 0, 0, pad)).contiguous()
        s = self.chip.read_sigma(self.handle)
        if self.p.mapping == "differential":
            s = (s[:, 0::2] ** 2 + s[:, 1::2] ** 2).sqrt()
        self._sigma = F.pad(s, (0, 0, 0, pad)).contiguous() if bool((s > 0).any()) else None

    def effective_weight(self) -> torch.Tensor:
        """Noise-free weights (out, in) the cells encode now."""
        return (self.signed / self.scale).t()

    @property
    def out_tile_width(self) -> int:
        return self.chip.tile_cols // self.p.cells_per_weight

    def mvm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, in) → (B, out); ``weight`` carries the gradient of a full-update baseline."""
        keep = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        return _AnalogMVM.apply(x, weight, self, keep)

    def forward_currents(self, x: torch.Tensor, keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantised output (B, out) and the signed conductance sample it used (in, out).

        ``keep``: the sample is saved for a backward pass, so it gets its own memory;
        otherwise it, like the DAC codes and the partial currents, lives in a reused
        scratch buffer (valid until the next call).
        """
        c_all = self._signed
        if self._sigma is not None:  # one fresh read of every cell per call
            c_all = physics.read(self._signed, self._sigma, getattr(self.chip, "generator", None),
                                 out=None if keep else self._scratch("c", c_all))
        c = c_all[:self.in_features]
        xq = dac(x, self.chip.dac_bits, out=self._scratch("xq", x) if self.chip.dac_bits else None)
        bits = self.chip.adc_bits
        n_rt = self.handle.row_tiles
        if bits is None:
            return (xq @ c) / self.scale, c
        if n_rt == 1:
            part = (xq @ c).unsqueeze(0)  # (1, B, out)
        else:  # (row tiles, B, out) partial currents, one per tile
            pad = c_all.shape[0] - self.in_features
            xt = (F.pad(xq, (0, pad)) if pad else xq).view(x.shape[0], n_rt, -1).transpose(0, 1)
            buf = self._scratch("part", x, (n_rt, x.shape[0], c_all.shape[1]))
            part = torch.bmm(xt, c_all.view(n_rt, -1, c_all.shape[1]), out=buf)
        return adc_sum(part, self.out_tile_width, bits, gain=self._inverse_scale()), c

    def _inverse_scale(self) -> torch.Tensor:
        """1 / ``scale`` (weight units per µS), recomputed only when ``scale`` is replaced."""
        if self._inverse[0] is not self.scale:
            self._inverse = (self.scale, 1 / self.scale)
        return self._inverse[1]

    def _scratch(self, name: str, like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """A float32 CPU buffer reused across calls (fresh allocations of a few MB page-fault on
        every call); None on other devices and dtypes, where torch allocates."""
        shape = tuple(like.shape) if shape is None else shape
        if like.device.type != "cpu" or like.dtype != torch.float32:
            return None
        buf = self._scratch_bufs.get(name)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._scratch_bufs[name] = torch.empty(shape)
        return buf


class _AnalogMVM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, core: CrossbarCore, keep: bool):  # noqa: D401
        y, c = core.forward_currents(x, keep)
        ctx.core = core
        ctx.save_for_backward(x, c)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, c = ctx.saved_tensors
        core = ctx.core
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = (gy / core.scale) @ c.t()
        if ctx.needs_input_grad[1]:
            gw = gy.t() @ x
        return gx, gw, None, None


class AnalogLayer:
    """Mixin shared by the analogue layers: the core, the ledger hook, (re)programming.

    Implements :class:`rmlora.costs.counting.Countable` as an analogue layer.
    """

    core: CrossbarCore
    ledger = None  # a rmlora.costs.Ledger while counting
    rmlora_counting = ANALOG

    def digital_weights(self) -> int:
        """Weights (count) per output row of this layer on the digital unit (the digital reference)."""
        return self.weight.numel()

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)``/``.double()`` move the cached cell state with the parameters."""
        out = super()._apply(fn, recurse)
        core = self.__dict__.get("core")
        if core is not None:
            for name in ("_signed", "_sigma", "scale"):
                t = getattr(core, name)
                if t is not None:
                    setattr(core, name, fn(t))
        return out

    def matrix(self) -> torch.Tensor:
        """The float weights as the crossbar's (out, in) matrix."""
        return self.weight.detach().flatten(1)

    def program(self) -> ProgramStats:
        return self.core.program(self.matrix())

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.ledger is not None:
            self._count(x2d)
        return self.core.mvm(x2d, self.weight)

    def _count(self, x2d: torch.Tensor) -> None:
        h, led, p = self.core.handle, self.ledger, self.core.p
        b, n_in = x2d.shape
        n_out = self.core.out_features
        nnz = int((x2d != 0).sum())  # event-driven: zero inputs (silent spikes) drive nothing
        ref = h.col_tiles if p.mapping == "offset" else 0  # one reference column per tile
        led.add("dac_conversions", nnz * h.col_tiles)
        led.add("cell_reads", nnz * (h.cols + ref))
        led.add("adc_conversions", b * h.row_tiles * n_out)
        led.add("tile_mvms", b * h.row_tiles * h.col_tiles)
        if torch.is_grad_enabled() and x2d.requires_grad:  # transposed read for dL/dx
            led.add("dac_conversions", b * n_out * h.row_tiles)
            led.add("cell_reads", b * h.cells)
            led.add("adc_conversions", b * h.col_tiles * n_in)
            led.add("tile_mvms", b * h.row_tiles * h.col_tiles)
        if torch.is_grad_enabled() and self.weight.requires_grad:  # dL/dW on the digital unit
            led.add("digital_macs", b * n_in * n_out)


def _adopt(new: nn.Module, old: nn.Module) -> None:
    new.weight = old.weight
    new.bias = old.bias
    new.weight.requires_grad_(False)
    new.train(old.training)


class AnalogLinear(AnalogLayer, nn.Linear):
    """``nn.Linear`` whose matrix lives on the chip; the bias is digital."""

    @classmethod
    def from_float(cls, lin: nn.Linear, chip: Chip, name: str) -> "AnalogLinear":
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        _adopt(new, lin)
        new.core = CrossbarCore(chip, name, lin.out_features, lin.in_features)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self._matmul(x.reshape(-1, shape[-1]))
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)


class AnalogConv2d(AnalogLayer, nn.Conv2d):
    """``nn.Conv2d`` (groups=1, zero padding) computed as im2col then an analogue MVM."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, chip: Chip, name: str) -> "AnalogConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, 1, conv.bias is not None, device="meta")
        _adopt(new, conv)
        new.core = CrossbarCore(chip, name, conv.out_channels, conv.weight[0].numel())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, CKK, L)
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        if self.ledger is not None:
            self._count(cols.transpose(1, 2).reshape(-1, cols.shape[1]))
        y = self.core.mvm(cols.transpose(1, 2).reshape(-1, cols.shape[1]), self.weight.flatten(1))
        y = y.view(b, ho * wo, -1).transpose(1, 2).reshape(b, -1, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class AnalogConv1d(AnalogLayer, nn.Conv1d):
    """``nn.Conv1d`` (groups=1, zero padding) computed as im2col then an analogue MVM."""

    @classmethod
    def from_float(cls, conv: nn.Conv1d, chip: Chip, name: str) -> "AnalogConv1d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, 1, conv.bias is not None, device="meta")
        _adopt(new, conv)
        new.core = CrossbarCore(chip, name, conv.out_channels, conv.weight[0].numel())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, length = x.shape
        k, s, pd, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        cols = F.unfold(x.unsqueeze(2), (1, k), (1, d), (0, pd), (1, s))  # (B, C*k, L)
        lo = cols.shape[-1]
        x2d = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        if self.ledger is not None:
            self._count(x2d)
        y = self.core.mvm(x2d, self.weight.flatten(1)).view(b, lo, -1).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y


ANALOG_TYPES = {nn.Linear: AnalogLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: AnalogConv2d}
