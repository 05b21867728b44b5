"""Analogue layers: Linear, Conv1d and Conv2d computed from programmed conductances.

Each layer keeps its float ``weight`` (the target the chip was programmed
to, frozen unless a full-update baseline trains it) and a
:class:`CrossbarCore` that computes y = x·W_eff from the chip's cells. For
each input vector (each row of x, each im2col column of a convolution):

1. the DAC turns x into codes against the layer's frozen full scale (or,
   in ``per-vector`` mode, x / max|x| against 1);
2. each tile of 128 rows gives partial column currents x·G (µS·V) plus the
   read noise of that one MVM, N(0, Σᵢ xᵢ²σᵢⱼ²), drawn afresh; the offset
   mapping subtracts the tile's reference column (real cells, with their
   own programming error and read noise), the differential mapping G−;
3. each tile's signed currents go through its ADC against the tile's
   frozen full scale and the row tiles are summed digitally;
4. the sum is divided by the per-output scale (µS per weight unit) and,
   in per-vector mode, multiplied by max|x|; the bias is added digitally.

The backward pass is a transposed read of the same arrays with its own
converters: dL/dy·(1/scale) is scaled per vector, quantised by the DAC,
driven into the columns (read noise per vector as above, reference
columns left out), digitised per tile against full scales calibrated on
random vectors, and summed; when ``weight`` requires grad (a full-update
baseline), dL/dW = dL/dyᵀ·x on the digital unit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.costs.counting import ANALOG, MvmGeometry, count_mvm
from rmlora.device import kernels, mapping
from rmlora.errors import RmloraError
from rmlora.hardware.calibration import record
from rmlora.hardware.chip import ArrayHandle, Chip, ProgramStats
from rmlora.hardware.converters import Ranges, adc_sum, dac, levels, vector_scale


class CrossbarCore:
    """The analogue matrix of one layer: ``out`` x ``in`` weights on a chip."""

    def __init__(self, chip: Chip, name: str, out_features: int, in_features: int) -> None:
        self.chip = chip
        self.p = chip.device
        self.name = name
        self.out_features, self.in_features = out_features, in_features
        self.handle: ArrayHandle = chip.allocate(name, in_features, out_features * self.p.cells_per_weight)
        self.scale: torch.Tensor | None = None  # µS per weight unit, (out,)
        # (row tiles · tile rows, out) µS, zero below row ``in``: G − G_ref or G+ − G−
        self._signed: torch.Tensor | None = None
        self._signed_t: torch.Tensor | None = None  # (column tiles, tile width, rows): the transposed read
        # read noise of the signed cells: one σ for all (µS), or σ² per cell (padded like _signed)
        self._sigma_uniform: float | None = None
        self._sigma2: torch.Tensor | None = None
        # read noise of the reference columns: one σ, or σ² (row tiles · tile rows, column tiles)
        self._ref_uniform: float | None = None
        self._ref_sigma2: torch.Tensor | None = None
        self.ranges: Ranges | None = None
        self.collect: list[torch.Tensor] | None = None  # input rows sampled while calibrating
        self.clipped = [0, 0]  # DAC inputs and ADC codes clipped by the last call
        self.drives: tuple[int | None, int] = (None, 1)  # the last call's (row drives, passes per vector)
        self._scratch_bufs: dict[str, torch.Tensor] = {}  # scratch of forward_currents (CPU float32)
        self._inverse: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # (scale, 1 / scale)

    @property
    def signed(self) -> torch.Tensor:
        """Signed conductances (in, out), µS: G − G_ref (offset) or G+ − G− (differential)."""
        return self._signed[:self.in_features]

    @property
    def noisy(self) -> bool:
        return self._sigma_uniform is not None or self._sigma2 is not None

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
        """Re-read the cells, reference columns and ranges (after programming, ageing or loading)."""
        h = self.handle
        g = self.chip.conductance(h)
        rows = h.row_tiles * self.chip.tile_rows
        pad = rows - self.in_features  # rows left empty in the last tile
        s = self.chip.read_sigma(h)
        ref = self.chip.reference(h) if self.p.mapping == "offset" else None
        if ref is not None:  # G − G_ref of the tile's own reference column
            g_ref, s_ref = ref
            cols = torch.arange(self.out_features, device=g.device) // self.out_tile_width
            signed = g - g_ref[:, cols]
        else:
            signed = mapping.signed_conductance(g, self.p)
            s_ref = None
        if self.p.mapping == "differential":
            s = (s[:, 0::2] ** 2 + s[:, 1::2] ** 2).sqrt()
        self._signed = F.pad(signed, (0, 0, 0, pad)).contiguous()
        self._signed_t = None  # the transposed read's layout, built on first use
        self._sigma_uniform, self._sigma2 = _noise_form(s, pad)
        self._ref_uniform, self._ref_sigma2 = (None, None) if s_ref is None else _noise_form(s_ref, pad)
        self.ranges = self.chip.ranges(h)

    def effective_weight(self) -> torch.Tensor:
        """Noise-free weights (out, in) the cells encode now."""
        return (self.signed / self.scale).t()

    @property
    def out_tile_width(self) -> int:
        return self.chip.tile_cols // self.p.cells_per_weight

    def geometry(self) -> MvmGeometry:
        """What one input vector costs on this layer's tiles (the ledger's counts)."""
        return MvmGeometry.dense(self.in_features, self.out_features, (self.chip.tile_rows, self.chip.tile_cols),
                                 self.p.cells_per_weight, self.p.mapping == "offset")

    @property
    def needs_ranges(self) -> bool:
        return self.chip.dac_bits is not None or self.chip.adc_bits is not None

    def mvm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, in) → (B, out); ``weight`` carries the gradient of a full-update baseline."""
        keep = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        return _AnalogMVM.apply(x, weight, self, keep)

    # -- the forward read --------------------------------------------------------------
    def forward_currents(self, x: torch.Tensor) -> torch.Tensor:
        """Digitised output (B, out) of one MVM per input vector (see the module docstring)."""
        if self.collect is not None:  # calibrating: record inputs, pass the noise-free product on
            record(self.collect, x)
            return (x @ self.signed) / self.scale
        chip = self.chip
        if self.needs_ranges and self.ranges is None:
            raise RmloraError(f"{self.name}: converter ranges are not calibrated; deploy with calibration inputs "
                              f"or call rmlora.hardware.calibrate(model, feed) first")
        per_vector = chip.range_mode == "per-vector"
        m = vector_scale(x) if per_vector else None
        u = x / m.unsqueeze(1) if per_vector else x
        fs = torch.ones(()) if per_vector or self.ranges is None else self.ranges.dac
        xq, dclip = dac(u, chip.dac_bits, fs, out=self._scratch("xq", x) if chip.dac_bits else None)
        if getattr(chip, "bit_serial", False):
            planes, weights = self.bit_planes(xq, fs)
            self.drives = (int(planes.sum()), weights.numel())
            y = self._read(planes, dclip)  # (bits · B, out), one MVM per plane and vector
            y = torch.einsum("k,kbo->bo", weights.to(y.dtype), y.view(weights.numel(), x.shape[0], -1))
            return y.mul_(m.unsqueeze(1)) if per_vector else y
        self.drives = (None, 1)  # the non-zero inputs, counted by the ledger when it asks
        return self._read(xq, dclip, m)

    def bit_planes(self, xq: torch.Tensor, fs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two's-complement bit planes of the DAC codes of ``xq`` (B, in): ((bits · B, in) of 0/1
        row drives, plane weights (bits,) in input units: 2^i·LSB, the sign plane −2^(bits−1)·LSB)."""
        bits = self.chip.dac_bits
        lsb = fs.to(xq.dtype) / levels(bits)
        k = torch.round(xq / lsb).to(torch.int32) & ((1 << bits) - 1)
        planes = torch.stack([(k >> i) & 1 for i in range(bits)]).to(xq.dtype).view(bits * xq.shape[0], -1)
        w = torch.tensor([2.0 ** i for i in range(bits - 1)] + [-(2.0 ** (bits - 1))], dtype=xq.dtype) * lsb
        return planes, w

    def _read(self, xq: torch.Tensor, dclip: int, m: torch.Tensor | None = None) -> torch.Tensor:
        """Tile products, read noise and ADC of the DAC outputs ``xq`` (B, in) → (B, out), times the
        per-vector scale ``m`` if given."""
        chip = self.chip
        if chip.adc_bits is None and not self.noisy:
            y = (xq @ self.signed) / self.scale
            self.clipped = [dclip, 0]
            return y if m is None else y * m.unsqueeze(1)
        part, xt = self._tile_products(xq)
        row_std, full_std, ref_std = self._noise(xt, self._sigma_uniform, self._sigma2, self._ref_uniform,
                                                 self._ref_sigma2)
        y, aclip = adc_sum(part, self.out_tile_width, chip.adc_bits,
                           None if chip.adc_bits is None else self.ranges.adc, gain=self._inverse_scale(),
                           row_std=row_std, full_std=full_std, ref_std=ref_std,
                           seed=kernels.draw_seed(getattr(chip, "generator", None)))
        self.clipped = [dclip, aclip]
        return y if m is None else y.mul_(m.unsqueeze(1))

    def _tile_products(self, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free partial currents (row tiles, B, out) µS·input and the inputs per tile
        (row tiles, B, tile rows)."""
        n_rt, b = self.handle.row_tiles, xq.shape[0]
        c_all = self._signed
        pad = c_all.shape[0] - self.in_features
        if n_rt == 1:
            return (xq @ self.signed).unsqueeze(0), (F.pad(xq, (0, pad)) if pad else xq).unsqueeze(0)
        xt = (F.pad(xq, (0, pad)) if pad else xq).view(b, n_rt, -1).transpose(0, 1)
        buf = self._scratch("part", xq, (n_rt, b, c_all.shape[1]))
        return torch.bmm(xt, c_all.view(n_rt, -1, c_all.shape[1]), out=buf), xt

    def _noise(self, xt: torch.Tensor, uniform: float | None, sigma2: torch.Tensor | None,
               ref_uniform: float | None, ref_sigma2: torch.Tensor | None):
        """σ of one MVM's read noise per tile and vector: (row σ (tiles, B) or per-column σ
        (tiles, B, cols), reference σ (tiles, B, column tiles) or None)."""
        n_rt = xt.shape[0]
        sq = None
        if uniform is not None or ref_uniform is not None:
            sq = torch.linalg.vector_norm(xt, dim=2)  # (tiles, B): sqrt(Σ x²)
        row_std = sq * uniform if uniform is not None else None
        full_std = None
        if sigma2 is not None:
            s2 = sigma2 if sigma2.dim() == 3 else sigma2.view(n_rt, -1, sigma2.shape[1])
            full_std = torch.bmm(xt * xt, s2).sqrt_()
        ref_std = None
        if ref_uniform is not None:
            ref_std = (sq * ref_uniform).unsqueeze(2).expand(-1, -1, self.handle.col_tiles).contiguous()
        elif ref_sigma2 is not None:
            ref_std = torch.bmm(xt * xt, ref_sigma2.view(n_rt, -1, ref_sigma2.shape[1])).sqrt_()
        return row_std, full_std, ref_std

    # -- the transposed read of the backward pass ---------------------------------------
    def backward_currents(self, gy: torch.Tensor) -> torch.Tensor:
        """dL/dx (B, in) from dL/dy (B, out) through the transposed arrays and their converters."""
        chip = self.chip
        g = gy * self._inverse_scale().to(gy.dtype)
        if not self.needs_ranges and not self.noisy:
            return g @ self.signed.t()
        m = vector_scale(g)
        gq, _ = dac(g / m.unsqueeze(1), chip.dac_bits, torch.ones(()))
        part, gt = self._transposed_products(gq)
        s2 = None if self._sigma2 is None else self._by_column_tile(self._sigma2)
        row_std, full_std, _ = self._noise(gt, self._sigma_uniform, s2, None, None)
        y, _ = adc_sum(part, chip.tile_rows, chip.adc_bits, None if chip.adc_bits is None else self.ranges.adc_t,
                       row_std=row_std, full_std=full_std, seed=kernels.draw_seed(getattr(chip, "generator", None)))
        return y[:, :self.in_features].mul_(m.unsqueeze(1))

    def _by_column_tile(self, a: torch.Tensor) -> torch.Tensor:
        """(tile rows · row tiles, out) → (column tiles, tile width, tile rows · row tiles)."""
        w, n_ct = self.out_tile_width, self.handle.col_tiles
        return F.pad(a, (0, n_ct * w - self.out_features)).t().reshape(n_ct, w, a.shape[0]).contiguous()

    def _transposed_products(self, gq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free currents of the transposed read (column tiles, B, rows) for inputs ``gq``
        (B, out) driven into the columns, and those inputs per tile (column tiles, B, width)."""
        w, n_ct = self.out_tile_width, self.handle.col_tiles
        gt = F.pad(gq, (0, n_ct * w - self.out_features)).view(gq.shape[0], n_ct, w).transpose(0, 1)
        if self._signed_t is None or self._signed_t.device != gq.device or self._signed_t.dtype != gq.dtype:
            self._signed_t = self._by_column_tile(self._signed).to(gq.dtype)
        return torch.bmm(gt, self._signed_t), gt

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


def _noise_form(s: torch.Tensor, pad: int) -> tuple[float | None, torch.Tensor | None]:
    """(one σ for every cell, None), (None, σ² padded by ``pad`` rows), or (None, None) without noise."""
    if not bool((s > 0).any()):
        return None, None
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-6 * hi:
        return hi, None
    return None, F.pad(s * s, (0, 0, 0, pad)).contiguous()


class _AnalogMVM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, core: CrossbarCore, keep: bool):  # noqa: D401
        y = core.forward_currents(x)
        ctx.core = core
        ctx.save_for_backward(x if keep else x.new_zeros(0))
        return y

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        core = ctx.core
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = core.backward_currents(gy)
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
            core._signed_t = None
            for name in ("_signed", "_sigma2", "_ref_sigma2", "scale"):
                t = getattr(core, name)
                if t is not None:
                    setattr(core, name, fn(t))
        return out

    def matrix(self) -> torch.Tensor:
        """The float weights as the crossbar's (out, in) matrix."""
        return self.weight.detach().flatten(1)

    def program(self) -> ProgramStats:
        return self.core.program(self.matrix())

    def _matmul(self, x2d: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The counted analogue MVM of input vectors ``x2d`` (B, in) → (B, out)."""
        y = self.core.mvm(x2d, self.weight if weight is None else weight)
        if self.ledger is not None:
            self._count(x2d)
            self.ledger.add("dac_clipped", self.core.clipped[0], self.core.name)
            self.ledger.add("adc_clipped", self.core.clipped[1], self.core.name)
        return y

    def _count(self, x2d: torch.Tensor) -> None:
        """Count the call just made (:func:`rmlora.costs.counting.count_mvm`)."""
        drives, passes = self.core.drives
        count_mvm(self.ledger, self.core.name, x2d, self.core.geometry(), n_out=self.core.out_features,
                  drives=drives, passes=passes, bit_serial=drives is not None,
                  grad_input=torch.is_grad_enabled() and x2d.requires_grad,
                  grad_weight=torch.is_grad_enabled() and self.weight.requires_grad)


def im2col(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input vectors of a convolution (groups=1, zero padding): (B · positions, C · kernel)
    and the output's spatial shape."""
    if isinstance(conv, nn.Conv1d):
        k, s, pd, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        cols = F.unfold(x.unsqueeze(2), (1, k), (1, d), (0, pd), (1, s))  # (B, C*k, L)
        out = (cols.shape[-1],)
    else:
        h, w = x.shape[-2:]
        cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, CKK, L)
        out = tuple((n + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
                    for i, n in enumerate((h, w)))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), out


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
        x2d, (ho, wo) = im2col(self, x)
        b = x.shape[0]
        y = self._matmul(x2d, self.weight.flatten(1))
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
        x2d, (lo,) = im2col(self, x)
        y = self._matmul(x2d, self.weight.flatten(1)).view(x.shape[0], lo, -1).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y


ANALOG_TYPES = {nn.Linear: AnalogLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: AnalogConv2d}
