"""Analogue layers: Linear, Conv1d, Conv2d and grouped/depthwise Conv2d computed from programmed
conductances.

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

A grouped convolution (a depthwise one included) is block-diagonal: its groups' kernels are
packed onto tiles as independent blocks, each read by its own MVM with only its rows driven
(:class:`PackPlan`, :class:`PackedCore`, :class:`AnalogGroupedConv2d`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.costs.counting import ANALOG, MvmGeometry, count_mvm, count_vectors, is_binary
from rmlora.device import kernels, mapping
from rmlora.errors import RmloraError
from rmlora.hardware.calibration import record
from rmlora.hardware.chip import ArrayHandle, Chip, ProgramStats
from rmlora.hardware.converters import Ranges, adc_sum, dac, levels, vector_scale


class CrossbarCore:
    """The analogue matrix of one layer: ``out`` x ``in`` weights on a chip."""

    def __init__(self, chip: Chip, name: str, out_features: int, in_features: int,
                 cols_per_tile: int | None = None) -> None:
        self.chip = chip
        self.p = chip.device
        self.name = name
        self.out_features, self.in_features = out_features, in_features
        self.handle: ArrayHandle = chip.allocate(name, in_features, out_features * self.p.cells_per_weight,
                                                 cols_per_tile)
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
        """Outputs (weights) per column tile."""
        return self.chip.tile_cols // self.p.cells_per_weight

    @property
    def in_tile_width(self) -> int:
        """Inputs (rows) per row tile: the width of one tile's output in the transposed read."""
        return self.chip.tile_rows

    def geometry(self) -> MvmGeometry:
        """What one input vector costs on this layer's tiles (the ledger's counts): every input row
        drives its row across the column tiles; the transposed read of dL/dx drives every column and
        digitises every row of every tile."""
        return MvmGeometry.dense(self.in_features, self.out_features, (self.chip.tile_rows, self.chip.tile_cols),
                                 self.p.cells_per_weight, self.p.mapping == "offset")

    def transposed_calibration(self, q: float) -> torch.Tensor:
        """ADC full scales of the transposed read (column tiles, row tiles): the ``q``-th percentile
        of |current| of each tile over 512 random Gaussian vectors scaled per vector (gradients have
        no data before training starts)."""
        from rmlora.hardware.calibration import _tile_percentile

        dev = self.signed.device
        g = torch.randn(512, self.out_features, generator=torch.Generator().manual_seed(0)).to(dev)
        gq, _ = dac(g / vector_scale(g).unsqueeze(1), self.chip.dac_bits, torch.ones(()))
        return _tile_percentile(self._transposed_products(gq.contiguous())[0], self.in_tile_width, q)

    def weight_grad(self, gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dL/dW (out, in) of the crossbar matrix from dL/dy (B, out) and the inputs (B, in): digital."""
        return gy.t() @ x

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
        self.drives = (None, 1)  # the non-zero inputs, counted by the ledger when it asks
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
            gw = core.weight_grad(gy, x)
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

    @classmethod
    def tiles_needed(cls, m: nn.Module, chip: Chip, name: str = "") -> int:
        """Tiles the torch layer ``m`` (called ``name``) will occupy on ``chip``; one clear error
        when it has no mapping."""
        return chip.tiles_for(m.weight[0].numel(), m.weight.shape[0] * chip.device.cells_per_weight)

    def program(self) -> ProgramStats:
        return self.core.program(self.matrix())

    def _matmul(self, x2d: torch.Tensor, weight: torch.Tensor | None = None, samples: int | None = None
                ) -> torch.Tensor:
        """The counted analogue MVM of input vectors ``x2d`` (B, in) → (B, out), from ``samples``
        samples (default B)."""
        y = self.core.mvm(x2d, self.weight if weight is None else weight)
        if self.ledger is not None:
            self._count(x2d, samples)
            self.ledger.add("dac_clipped", self.core.clipped[0], self.core.name)
            self.ledger.add("adc_clipped", self.core.clipped[1], self.core.name)
        return y

    def _count(self, x2d: torch.Tensor, samples: int | None = None) -> None:
        """Count the call just made (:func:`rmlora.costs.counting.count_mvm`)."""
        drives, passes = self.core.drives
        count_mvm(self.ledger, self.core.name, x2d, self.core.geometry(), n_out=self.core.out_features,
                  samples=samples, weights=self.weight.numel(), drives=drives, passes=passes,
                  bit_serial=getattr(self.core.chip, "bit_serial", False),
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
        y = self._matmul(x.reshape(-1, shape[-1]), samples=shape[0] if x.dim() > 1 else 1)
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
        y = self._matmul(x2d, self.weight.flatten(1), samples=b)
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
        y = self._matmul(x2d, self.weight.flatten(1), samples=x.shape[0]).view(x.shape[0], lo, -1).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y


# --------------------------------------------------------------------------- grouped convolutions
class PackPlan:
    """How a grouped convolution's kernels are packed onto tiles.

    Group g of a convolution with G groups maps the cin_g·K² entries of its channels' im2col
    vector (the K² taps of each channel, channel-major as F.unfold orders them) to its cout_g
    outputs: a *block* of S = cin_g·K² rows by cout_g columns. The blocks are independent, so
    each one is read by its own MVM: its S word lines are activated with its inputs and its
    cout_g columns digitised. Assumption: the other blocks' columns on the driven rows are not
    biased (their bit lines float), so they draw no current and their cells are not counted as
    read; a design that biases whole rows would read up to a tile's width of cells per driven row
    (docs/costs.md). Blocks therefore share rows and
    columns of a tile freely: a tile holds ``stack`` = ⌊rows/S⌋ blocks one above the other in
    every run of cout_g weight columns. A depthwise 7x7 convolution (S = 49, cout_g = 1) puts
    2 x 64 = 128 channels on one 128x128 tile of differential pairs (98 of its 128 rows used);
    each output is one MVM over 49 cells, converted by one ADC conversion.

    Array layout (rows ``stack``·S, columns ``n_cols``·cout_g weights): block (j, q) at rows
    j·S.., weight columns q·cout_g.. holds group g = q·stack + j.
    """

    def __init__(self, conv: nn.Conv2d, chip: Chip, name: str) -> None:
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        cpw = chip.device.cells_per_weight
        self.groups = conv.groups
        self.rows = (conv.in_channels // conv.groups) * k2  # S, the rows of one block
        self.width = conv.out_channels // conv.groups  # cout_g, the weight columns of one block
        if self.rows > chip.tile_rows or self.width * cpw > chip.tile_cols:
            raise RmloraError(f"{name}: a group's kernel block ({self.rows} rows x {self.width} outputs) does not "
                              f"fit a tile of {chip.tile_rows}x{chip.tile_cols}; no packed tile mapping")
        self.stack = min(chip.tile_rows // self.rows, self.groups)
        self.n_cols = -(-self.groups // self.stack)  # block columns in all
        self.cols_per_tile = (chip.tile_cols // (self.width * cpw)) * self.width * cpw  # cells, whole blocks
        self.tiles = chip.tiles_for(self.stack * self.rows, self.n_cols * self.width * cpw, self.cols_per_tile)
        g = torch.arange(self.groups)
        q, j = g // self.stack, g % self.stack
        #: array weight column of each output (G·cout_g,), array tile of each block (G,), array rows of each block
        self.out_col = (q[:, None] * self.width + torch.arange(self.width)[None, :]).reshape(-1)
        self.block_tile = (q * self.width * cpw) // self.cols_per_tile
        self.block_rows = j[:, None] * self.rows + torch.arange(self.rows)[None, :]  # (G, S)
        self.out_row = (j * self.rows).repeat_interleave(self.width)  # first array row of each output's block

    def geometry(self, cells_per_weight: int, reference_column: bool, depthwise: bool) -> MvmGeometry:
        """What one im2col vector costs: an input row drives the one block it belongs to (its
        weight columns and the tile's reference cell on that row); each group is one MVM with one
        conversion per output; dL/dx is a transposed read block by block, or for a depthwise read
        (``depthwise``) a forward read of the flipped kernel, K² rows driven and one conversion
        per block."""
        cells = self.stack * self.rows * self.n_cols * self.width * cells_per_weight  # the array's
        back = (self.groups * self.rows, cells, self.groups, self.groups) if depthwise else \
            (self.groups * self.width, cells, self.groups * self.rows, self.groups)
        return MvmGeometry(1, self.width * cells_per_weight + (1 if reference_column else 0), self.groups,
                           self.groups * self.width, back)

    def arrange(self, blocks: torch.Tensor) -> torch.Tensor:
        """Per-group blocks (G, cout_g, S) → the array's (n_cols·cout_g, stack·S) matrix
        (zeros where no group sits); differentiable."""
        pad = self.n_cols * self.stack - self.groups
        b = F.pad(blocks, (0, 0, 0, 0, 0, pad)).view(self.n_cols, self.stack, self.width, self.rows)
        return b.permute(0, 2, 1, 3).reshape(self.n_cols * self.width, self.stack * self.rows)

    def blocks(self, a: torch.Tensor) -> torch.Tensor:
        """An array-layout (stack·S, n_cols·cout_g) tensor (rows = inputs) → per group (G, S, cout_g)."""
        v = a.reshape(self.stack, self.rows, self.n_cols, self.width).permute(2, 0, 1, 3)
        return v.reshape(self.n_cols * self.stack, self.rows, self.width)[:self.groups]


class PackedCore(CrossbarCore):
    """The arrays of a grouped convolution packed by a :class:`PackPlan`: one MVM per group's
    block with that group's slice of the im2col vector (B, G·S) → outputs (B, G·cout_g). Each
    block's MVM has its read noise, its reference current (offset mapping: the tile's reference
    cells on the same rows) and its own frozen ADC full scale; the transposed read of the
    backward pass works block by block as well."""

    def __init__(self, chip: Chip, name: str, plan: PackPlan) -> None:
        self.plan = plan
        super().__init__(chip, name, plan.n_cols * plan.width, plan.stack * plan.rows,
                         cols_per_tile=plan.cols_per_tile)
        self.out_features, self.in_features = plan.groups * plan.width, plan.groups * plan.rows  # logical

    @property
    def signed(self) -> torch.Tensor:
        """Signed conductances of the array (stack·S, n_cols·cout_g), µS."""
        return self._signed

    @property
    def out_tile_width(self) -> int:
        return self.plan.width  # one ADC full scale per block

    @property
    def in_tile_width(self) -> int:
        return self.plan.rows

    def geometry(self) -> MvmGeometry:
        return self.plan.geometry(self.p.cells_per_weight, self.p.mapping == "offset",
                                  self.depthwise_kernel is not None)

    def refresh(self) -> None:
        h, p = self.handle, self.plan
        g = self.chip.conductance(h)
        s = self.chip.read_sigma(h)
        ref = self.chip.reference(h) if self.p.mapping == "offset" else None
        if ref is not None:
            g_ref, s_ref = ref  # (rows, tiles)
            tile = torch.arange(p.n_cols * p.width, device=g.device) // (p.cols_per_tile // self.p.cells_per_weight)
            signed = g - g_ref[:, tile]
            rows, tiles = p.block_rows.to(g.device), p.block_tile.to(g.device)
            # σ of the reference cells each block reads (G, S): one σ, or σ² per cell
            self._ref_uniform, self._ref_sigma2 = _noise_form(s_ref[rows, tiles[:, None]], 0)
        else:
            signed = mapping.signed_conductance(g, self.p)
            self._ref_uniform = self._ref_sigma2 = None
        if self.p.mapping == "differential":
            s = (s[:, 0::2] ** 2 + s[:, 1::2] ** 2).sqrt()
        self._signed = signed.contiguous()
        self._signed_t = None
        self._sigma_uniform, self._sigma2 = _noise_form(s, 0)
        self.ranges = self.chip.ranges(h)

    def targets(self, weight: torch.Tensor) -> torch.Tensor:
        """Targets (µS) of the array matrix ``weight`` (n_cols·cout_g, stack·S) with one scale per
        block and column (each block is read alone, its digital gain its own), kept while the
        weights fit it; ``scale`` is (stack·S, n_cols·cout_g) µS per weight unit."""
        p = self.plan
        out = weight.shape[0]
        need = mapping.output_scale(weight.reshape(out * p.stack, p.rows), self.p).view(out, p.stack)
        need = need.t().repeat_interleave(p.rows, dim=0)  # (stack·S, out)
        self.scale = need if self.scale is None else torch.minimum(self.scale, need)
        return mapping.to_conductance(weight, self.scale, self.p)

    def _gain(self) -> torch.Tensor:
        """1 / scale of each logical output (G·cout_g,): its block's and column's."""
        dev = self.scale.device
        return self._inverse_scale()[self.plan.out_row.to(dev), self.plan.out_col.to(dev)]

    def _split(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """(B, G·width) → (G, B, width)."""
        return x.reshape(x.shape[0], self.plan.groups, width).transpose(0, 1)

    @staticmethod
    def _join(part: torch.Tensor) -> torch.Tensor:
        """(G, B, width) → (1, B, G·width): every block's outputs side by side, one "row tile"."""
        return part.transpose(0, 1).reshape(1, part.shape[1], -1)

    def forward_currents(self, x: torch.Tensor) -> torch.Tensor:
        if self.collect is not None:
            record(self.collect, x)
            return self._tile_products(x)[0][0] * self._gain()
        return super().forward_currents(x)

    def _tile_products(self, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free currents of every block (1, B, G·cout_g) and its inputs (G, B, S)."""
        xt = self._split(xq, self.plan.rows)
        return self._join(torch.bmm(xt, self.plan.blocks(self.signed).to(xq.dtype))), xt

    def _read(self, xq: torch.Tensor, dclip: int, m: torch.Tensor | None = None) -> torch.Tensor:
        chip, w = self.chip, self.plan.width
        part, xt = self._tile_products(xq)
        if chip.adc_bits is None and not self.noisy:
            y = part[0] * self._gain()
            self.clipped = [dclip, 0]
            return y if m is None else y * m.unsqueeze(1)
        norm = torch.linalg.vector_norm(xt, dim=2)  # (G, B)
        full_std = ref_std = None
        if self._sigma_uniform is not None:
            full_std = self._join((norm * self._sigma_uniform).unsqueeze(2).expand(-1, -1, w))
        elif self._sigma2 is not None:
            full_std = self._join(torch.bmm(xt * xt, self.plan.blocks(self._sigma2)).sqrt_())
        if self._ref_uniform is not None:
            ref_std = (norm * self._ref_uniform).t().unsqueeze(0).contiguous()
        elif self._ref_sigma2 is not None:
            ref_std = torch.einsum("gbs,gs->bg", xt * xt, self._ref_sigma2).sqrt_().unsqueeze(0).contiguous()
        y, aclip = adc_sum(part.contiguous(), w, chip.adc_bits, None if chip.adc_bits is None else self.ranges.adc,
                           gain=self._gain(), full_std=None if full_std is None else full_std.contiguous(),
                           ref_std=ref_std, seed=kernels.draw_seed(getattr(chip, "generator", None)))
        self.clipped = [dclip, aclip]
        return y if m is None else y.mul_(m.unsqueeze(1))

    def _transposed_products(self, gq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Currents of every block's transposed read (1, B, G·S) for inputs ``gq`` (B, G·cout_g)
        on its columns, and those inputs per block (G, B, cout_g)."""
        gt = self._split(gq, self.plan.width)
        return self._join(torch.bmm(gt, self.plan.blocks(self.signed).transpose(1, 2).to(gq.dtype))), gt

    def backward_currents(self, gy: torch.Tensor) -> torch.Tensor:
        chip, s = self.chip, self.plan.rows
        g = gy * self._gain().to(gy.dtype)
        if not self.needs_ranges and not self.noisy:
            return self._transposed_products(g)[0][0]
        m = vector_scale(g)
        gq, _ = dac(g / m.unsqueeze(1), chip.dac_bits, torch.ones(()))
        part, gt = self._transposed_products(gq)
        full_std = None
        if self._sigma_uniform is not None:
            norm = torch.linalg.vector_norm(gt, dim=2)
            full_std = self._join((norm * self._sigma_uniform).unsqueeze(2).expand(-1, -1, s)).contiguous()
        elif self._sigma2 is not None:
            full_std = self._join(torch.bmm(gt * gt, self.plan.blocks(self._sigma2).transpose(1, 2)).sqrt_())
            full_std = full_std.contiguous()
        y, _ = adc_sum(part.contiguous(), s, chip.adc_bits, None if chip.adc_bits is None else self.ranges.adc_t,
                       full_std=full_std, seed=kernels.draw_seed(getattr(chip, "generator", None)))
        return y.mul_(m.unsqueeze(1))

    # -- a depthwise convolution read as a convolution (no im2col) ------------------------------
    #: odd kernel side K when the layer is a stride-1 "same" depthwise convolution on a chip with
    #: calibrated converters and multi-bit inputs: then every block's MVM of every position is
    #: computed as one depthwise convolution of the quantised input with the block kernels
    #: (the same products, noise and conversions as the im2col path), and dL/dx is a *forward*
    #: read of each block with the flipped patch of the output gradient (see depthwise_backward)
    depthwise_kernel: int | None = None

    def _kernels(self, a: torch.Tensor) -> torch.Tensor:
        """Array-layout (stack·S, n_cols) per-cell values → per-channel kernels (C, 1, K, K)."""
        k = self.depthwise_kernel
        return self.plan.blocks(a).reshape(self.plan.groups, 1, k, k)

    def _conv_read(self, xq: torch.Tensor, adc_fs: torch.Tensor | None, flip: bool = False
                   ) -> tuple[torch.Tensor, int]:
        """Every block's MVM at every position of the quantised maps ``xq`` (B, C, H, W) (with the
        kernels flipped when ``flip``): read noise (and the reference cells' with the offset
        mapping) and one ADC conversion each against ``adc_fs`` (1, C). Returns (currents in
        digitised µS·input units (B, C, H, W), codes clipped)."""
        chip, c, k = self.chip, self.plan.groups, self.depthwise_kernel
        pad = k // 2

        def kern(a: torch.Tensor, per_block: bool = False) -> torch.Tensor:  # array layout, or (C, S)
            t = a.reshape(c, 1, k, k) if per_block else self._kernels(a)
            return (t.flip(-1, -2) if flip else t).to(xq.dtype)
        part = F.conv2d(xq, kern(self.signed), padding=pad, groups=c)
        if chip.adc_bits is None and not self.noisy:
            return part, 0
        sq = xq * xq
        norm = None
        if self._sigma_uniform is not None or self._ref_uniform is not None:
            norm = F.conv2d(sq, torch.ones(c, 1, k, k, dtype=xq.dtype, device=xq.device), padding=pad,
                            groups=c).sqrt()
        full_std = ref_std = None
        if self._sigma_uniform is not None:
            full_std = norm * self._sigma_uniform
        elif self._sigma2 is not None:
            full_std = F.conv2d(sq, kern(self._sigma2), padding=pad, groups=c).sqrt()
        if self._ref_uniform is not None:
            ref_std = norm * self._ref_uniform
        elif self._ref_sigma2 is not None:  # (C, S) already per block
            ref_std = F.conv2d(sq, kern(self._ref_sigma2, per_block=True), padding=pad, groups=c).sqrt()

        def rows(t: torch.Tensor | None) -> torch.Tensor | None:  # (B, C, H, W) → (1, B·H·W, C)
            return None if t is None else t.permute(0, 2, 3, 1).reshape(1, -1, c).contiguous()
        y, aclip = adc_sum(rows(part), 1, chip.adc_bits, adc_fs, full_std=rows(full_std), ref_std=rows(ref_std),
                           seed=kernels.draw_seed(getattr(chip, "generator", None)))
        b, _, h, w = xq.shape
        return y.view(b, h, w, c).permute(0, 3, 1, 2), aclip

    def depthwise_forward(self, x: torch.Tensor, count: bool = True) -> torch.Tensor:
        """The layer's output (B, C, H, W) before the bias, for inputs ``x`` (B, C, H, W); with
        ``count`` also the row drives and DAC clips the ledger asks for (two more convolutions)."""
        chip, c, k = self.chip, self.plan.groups, self.depthwise_kernel
        if self.needs_ranges and self.ranges is None:
            raise RmloraError(f"{self.name}: converter ranges are not calibrated; deploy with calibration inputs "
                              f"or call rmlora.hardware.calibrate(model, feed) first")
        fs = torch.ones(()) if self.ranges is None else self.ranges.dac
        xq, _ = dac(x.detach().reshape(-1, x.shape[-1]), chip.dac_bits, fs)
        xq = xq.view(x.shape)
        ones = torch.ones(c, 1, k, k, dtype=x.dtype, device=x.device)

        def in_patches(mask: torch.Tensor) -> int:  # entries of the im2col vectors where ``mask`` holds
            return int(F.conv2d(mask.to(x.dtype), ones, padding=k // 2, groups=c).sum())
        dclip = in_patches(x.detach().abs() > fs * (1 + 0.5 / levels(chip.dac_bits))) if chip.dac_bits and count \
            else 0
        self.drives = (in_patches(x.detach() != 0) if count else 0, 1)  # as the im2col path counts: non-zero inputs
        y, aclip = self._conv_read(xq, None if chip.adc_bits is None else self.ranges.adc)
        self.clipped = [dclip, aclip]
        return y * self._gain().view(1, c, 1, 1).to(y.dtype)

    def depthwise_backward(self, gy: torch.Tensor) -> torch.Tensor:
        """dL/dx (B, C, H, W) from dL/dy (B, C, H, W): dL/dx[c, q] = Σ_k dL/dy[c, q − k]·w[c, k] is a
        forward read of block c with the *flipped* patch of the gradient map — one conversion per
        input gradient instead of a transposed read digitising each of the K² rows. The gradient
        of each (sample, channel) map is scaled by its largest |value| before the DAC (block
        floating point); ADC full scales from :meth:`transposed_calibration`."""
        chip, c = self.chip, self.plan.groups
        g = gy * self._gain().view(1, c, 1, 1).to(gy.dtype)
        m = g.detach().abs().amax(dim=(2, 3), keepdim=True)
        m = torch.where(m > 0, m, torch.ones_like(m))
        gq, _ = dac((g / m).reshape(-1, g.shape[-1]).contiguous(), chip.dac_bits, torch.ones(()))
        y, _ = self._conv_read(gq.view(g.shape), None if chip.adc_bits is None else self.ranges.adc_t, flip=True)
        return y * m

    def transposed_calibration(self, q: float) -> torch.Tensor:
        if self.depthwise_kernel is None:
            return super().transposed_calibration(q)
        from rmlora.hardware.calibration import _tile_percentile

        s, c = self.plan.rows, self.plan.groups
        g = torch.randn(512, c, s, generator=torch.Generator().manual_seed(0)).to(self.signed.device)
        g = g / g.abs().amax(dim=2, keepdim=True)  # one flipped gradient patch per block, scaled by its max
        gq, _ = dac(g.reshape(512 * c, s), self.chip.dac_bits, torch.ones(()))
        blocks = self.plan.blocks(self.signed)[:, :, 0]  # (C, S)
        part = (gq.view(512, c, s) * blocks.flip(-1)).sum(2).unsqueeze(0)  # (1, 512, C)
        return _tile_percentile(part, 1, q)

    def weight_grad(self, gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dL/dW (G·cout_g, S) of the kernels, block by block (the digital unit's work)."""
        p = self.plan
        gw = torch.bmm(self._split(gy, p.width).transpose(1, 2), self._split(x, p.rows))
        return gw.reshape(p.groups * p.width, p.rows)


class AnalogGroupedConv2d(AnalogConv2d):
    """``nn.Conv2d`` with ``groups`` > 1 (a depthwise convolution included) whose kernels are
    packed onto tiles by a :class:`PackPlan`: im2col as :class:`AnalogConv2d` (its channel-major
    rows are the groups' slices, in order), then one analogue MVM per group with its own slice."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, chip: Chip, name: str) -> "AnalogGroupedConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, device="meta")
        _adopt(new, conv)
        new.plan = PackPlan(conv, chip, name)
        new.core = PackedCore(chip, name, new.plan)
        new.core.depthwise_kernel = depthwise_kernel(conv, chip)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core = self.core
        if core.depthwise_kernel is None or core.collect is not None:
            return super().forward(x)  # im2col, one MVM per block and vector (calibration records the vectors)
        y = _DepthwiseRead.apply(x, self.weight, self)
        if self.ledger is not None:  # as the im2col path counts its vectors, without forming them
            grad = torch.is_grad_enabled()
            count_vectors(self.ledger, core.name, core.geometry(), b=y.shape[0] * y.shape[2] * y.shape[3],
                          n_in=self.weight[0].numel() * self.groups, active=core.drives[0], binary=is_binary(x),
                          n_out=core.out_features, samples=x.shape[0], weights=self.weight.numel(),
                          grad_input=grad and x.requires_grad,
                          grad_weight=grad and self.weight.requires_grad)
            self.ledger.add("dac_clipped", core.clipped[0], core.name)
            self.ledger.add("adc_clipped", core.clipped[1], core.name)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    @classmethod
    def tiles_needed(cls, conv: nn.Module, chip: Chip, name: str = "") -> int:
        return PackPlan(conv, chip, name).tiles

    def matrix(self) -> torch.Tensor:
        """The array's matrix (n_cols·cout_g, stack·S) of the packed kernels."""
        p = self.plan
        return p.arrange(self.weight.detach().reshape(p.groups, p.width, p.rows))


class _DepthwiseRead(torch.autograd.Function):
    """A depthwise layer's analogue reads (:meth:`PackedCore.depthwise_forward`, ``_backward``);
    dL/dW is digital and exact."""

    @staticmethod
    def forward(ctx, x, weight, layer: AnalogGroupedConv2d):  # noqa: D401
        ctx.layer = layer
        ctx.save_for_backward(x if weight.requires_grad else x.new_zeros(0))
        return layer.core.depthwise_forward(x, count=layer.ledger is not None)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        gx = layer.core.depthwise_backward(gy) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv2d_weight(x, layer.weight.shape, gy, padding=layer.padding, groups=layer.groups)
        return gx, gw, None


ANALOG_TYPES = {nn.Linear: AnalogLinear, nn.Conv1d: AnalogConv1d, nn.Conv2d: AnalogConv2d}


def depthwise_kernel(conv: nn.Conv2d, chip: Chip) -> int | None:
    """K when ``conv`` is a depthwise K x K 'same' convolution the chip reads as a convolution
    (calibrated ranges, multi-bit DACs): :class:`AnalogGroupedConv2d`'s fast path; else None."""
    k = conv.kernel_size[0]
    if (conv.in_channels == conv.groups == conv.out_channels and conv.kernel_size == (k, k) and k % 2
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
            and chip.range_mode == "calibrated" and not getattr(chip, "bit_serial", False)):
        return k
    return None


def analog_class(m: nn.Module) -> type[AnalogLayer] | None:
    """The analogue class that replaces the torch layer ``m`` at deployment (None: stays digital)."""
    if type(m) is nn.Conv2d and m.groups > 1:
        return AnalogGroupedConv2d
    return ANALOG_TYPES.get(type(m))
