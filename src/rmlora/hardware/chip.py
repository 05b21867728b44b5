"""A chip: the one interface through which everything else reaches the arrays.

Methods, tasks and costs talk to a :class:`Chip` (allocate an array, program
it to target conductances and get the pulses back, read it back); the
simulator :class:`SimulatedChip` is one backend, a real RM test board can be
another.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from rmlora.device import physics
from rmlora.device.params import DeviceParams, load_preset
from rmlora.errors import RmloraError
from rmlora.hardware.converters import RANGE_MODES, Ranges


@dataclass(frozen=True)
class Placement:
    """One block of a matrix on one tile: matrix rows [row0, row0+rows), cols [col0, col0+cols)."""

    tile: int
    row0: int
    col0: int
    rows: int
    cols: int


@dataclass(frozen=True)
class ArrayHandle:
    """A matrix of cells (rows = inputs, cols = outputs x cells per weight) placed on tiles."""

    name: str
    rows: int
    cols: int
    row_tiles: int
    col_tiles: int
    placements: tuple[Placement, ...]
    cols_per_tile: int | None = None  # columns placed on each tile (None: the tile's width)

    @property
    def cells(self) -> int:
        return self.rows * self.cols


@dataclass
class ProgramStats:
    """What one programming call did (counts are totals over the array)."""

    name: str
    cells: int
    programmed: int
    set_pulses: int
    reset_pulses: int
    verify_reads: int
    failed: int
    error_uS: torch.Tensor = field(repr=False)  # final − target of programmed, converged cells
    pulses_per_cell: torch.Tensor = field(repr=False)  # of programmed cells
    targets_uS: torch.Tensor | None = field(default=None, repr=False)  # targets of error_uS's cells
    reference_cells: int = 0  # reference-column cells programmed (their pulses are in the counts)
    tiles: int = 0  # tiles the array occupies

    @property
    def skipped(self) -> int:
        return self.cells - self.programmed


class Chip(ABC):
    """Backend-neutral chip interface."""

    device: DeviceParams
    tile_rows: int
    tile_cols: int
    dac_bits: int | None
    adc_bits: int | None
    range_mode: str = "calibrated"
    calibration_percentile: float = 99.9
    bit_serial: bool = False

    def tiles_for(self, rows: int, cols: int, cols_per_tile: int | None = None) -> int:
        """Tiles a rows x cols matrix of cells occupies (``cols_per_tile`` columns on each)."""
        return math.ceil(rows / self.tile_rows) * math.ceil(cols / (cols_per_tile or self.tile_cols))

    @abstractmethod
    def allocate(self, name: str, rows: int, cols: int, cols_per_tile: int | None = None) -> ArrayHandle:
        """Place a rows x cols matrix of cells on tiles; ``cols_per_tile`` (None: the tile's width)
        puts at most that many of its columns on each tile (a packed layer, one block per tile)."""

    @abstractmethod
    def program_many(self, jobs: list[tuple[ArrayHandle, torch.Tensor]]) -> list[ProgramStats]:
        """Write-verify each array to its ``targets_uS`` (rows, cols); cells whose target did
        not move beyond the tolerance since the last call are left alone."""

    def program(self, handle: ArrayHandle, targets_uS: torch.Tensor) -> ProgramStats:
        """Write-verify one array (see :meth:`program_many`)."""
        return self.program_many([(handle, targets_uS)])[0]

    @abstractmethod
    def conductance(self, handle: ArrayHandle) -> torch.Tensor:
        """Conductances now (rows, cols) µS, without read noise (a long averaged read)."""

    @abstractmethod
    def read_sigma(self, handle: ArrayHandle) -> torch.Tensor:
        """Standard deviation of one read of each cell (rows, cols) µS."""

    def reference(self, handle: ArrayHandle) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Offset mapping: conductance and read σ of the reference columns (rows, column tiles) µS,
        one beside each tile; None when the mapping has none."""
        return None

    def ranges(self, handle: ArrayHandle) -> Ranges | None:
        """The frozen converter full scales of an array, None before calibration."""
        return None

    def set_ranges(self, handle: ArrayHandle, ranges: Ranges) -> None:
        raise RmloraError(f"{type(self).__name__} cannot store converter ranges")


class SimulatedChip(Chip):
    """Simulated RM-CIM chip: tiles of ``tile`` cells, DAC/ADC bits, a device preset.

    ``n_tiles`` bounds the arrays (None: as many as needed). ``read_noise``
    switches per-MVM read noise on or off. ``bit_serial`` applies the DAC
    codes one two's-complement bit plane at a time (binary row drives, one
    ADC conversion per plane, shift-and-add after the ADC). ``range_mode`` and
    ``calibration_percentile`` say how converter full scales are fixed (see
    :mod:`rmlora.hardware.converters`). With the offset mapping every tile
    has a reference column of real cells beside its ``tile[1]`` columns,
    programmed to g_ref with the same write-verify loop. All randomness comes
    from ``seed``.
    """

    def __init__(self, preset: str | DeviceParams = "rram-180nm", *, tile: tuple[int, int] = (128, 128),
                 n_tiles: int | None = None, dac_bits: int | None = 8, adc_bits: int | None = 8,
                 read_noise: bool = True, range_mode: str = "calibrated", calibration_percentile: float = 99.9,
                 bit_serial: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.device = preset if isinstance(preset, DeviceParams) else load_preset(preset)
        if tile[0] < 1 or tile[1] < self.device.cells_per_weight or tile[1] % self.device.cells_per_weight:
            raise RmloraError(f"tile {tile} cannot hold {self.device.mapping} weights")
        if range_mode not in RANGE_MODES:
            raise RmloraError(f"unknown converter range mode {range_mode!r}; known: {', '.join(RANGE_MODES)}")
        if not 50 < calibration_percentile <= 100:
            raise RmloraError(f"calibration_percentile must lie in (50, 100], got {calibration_percentile}")
        self.range_mode, self.calibration_percentile = range_mode, float(calibration_percentile)
        if bit_serial and (isinstance(dac_bits, bool) or not isinstance(dac_bits, int) or dac_bits < 2):
            raise RmloraError(f"bit-serial inputs need an integer number of DAC bits >= 2, got {dac_bits!r}")
        self.bit_serial = bool(bit_serial)
        ideal = self.device.programming == "exact" and self.device.noiseless
        self.tile_rows, self.tile_cols = tile
        self.n_tiles = n_tiles
        self.dac_bits = None if ideal else dac_bits
        self.adc_bits = None if ideal else adc_bits
        self.read_noise = read_noise and not self.device.noiseless
        self.seed = seed
        self.torch_device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._arrays: dict[str, dict[str, torch.Tensor]] = {}
        self._handles: dict[str, ArrayHandle] = {}
        self._tiles_used = 0

    # -- allocation -------------------------------------------------------
    @property
    def tiles_used(self) -> int:
        return self._tiles_used

    @property
    def free_tiles(self) -> int | None:
        """Tiles still free (None: unbounded)."""
        return None if self.n_tiles is None else self.n_tiles - self._tiles_used

    def has(self, name: str) -> bool:
        return name in self._handles

    def handle(self, name: str) -> ArrayHandle:
        return self._handles[name]

    def allocate(self, name: str, rows: int, cols: int, cols_per_tile: int | None = None) -> ArrayHandle:
        if rows < 1 or cols < 1:
            raise RmloraError(f"{name}: a {rows}x{cols} matrix cannot be mapped onto tiles")
        if name in self._handles:
            raise RmloraError(f"{name}: already allocated on this chip")
        width = cols_per_tile or self.tile_cols
        cpw = self.device.cells_per_weight
        if not 1 <= width <= self.tile_cols or width % cpw:
            raise RmloraError(f"{name}: {width} columns per tile do not fit a tile of {self.tile_cols} columns "
                              f"holding {self.device.mapping} weights")
        rt, ct = math.ceil(rows / self.tile_rows), math.ceil(cols / width)
        if self.n_tiles is not None and self._tiles_used + rt * ct > self.n_tiles:
            raise RmloraError(f"{name}: needs {rt * ct} tiles of {self.tile_rows}x{self.tile_cols} but the chip has "
                              f"{self.n_tiles - self._tiles_used} free of {self.n_tiles}")
        placements = []
        for i in range(rt):
            for j in range(ct):
                r0, c0 = i * self.tile_rows, j * width
                placements.append(Placement(self._tiles_used, r0, c0, min(self.tile_rows, rows - r0),
                                            min(width, cols - c0)))
                self._tiles_used += 1
        h = ArrayHandle(name, rows, cols, rt, ct, tuple(placements), cols_per_tile)
        g, d2d, stuck = physics.new_cells(rows * cols, self.device, self.generator)
        st = self._arrays[name] = {"g": g, "d2d": d2d, "stuck": stuck, "target": torch.full_like(g, float("nan"))}
        if self.device.mapping == "offset":  # one reference column per tile, rows x column tiles cells
            rg, rd, rs = physics.new_cells(rows * ct, self.device, self.generator)
            st.update({"ref.g": rg, "ref.d2d": rd, "ref.stuck": rs, "ref.target": torch.full_like(rg, float("nan"))})
        self._handles[name] = h
        return h

    # -- programming -------------------------------------------------------
    def program_many(self, jobs: list[tuple[ArrayHandle, torch.Tensor]]) -> list[ProgramStats]:
        """Program several arrays in one vectorised write-verify run (one loop for all cells)."""
        sel, parts = [], []
        for handle, targets_uS in jobs:
            st = self._arrays[handle.name]
            t = physics.quantise_levels(targets_uS.detach().float().reshape(-1).cpu(), self.device)
            if t.numel() != handle.cells:
                raise RmloraError(f"{handle.name}: {t.numel()} targets for {handle.cells} cells")
            prev = st["target"]
            moved = torch.isnan(prev) | ((t - prev).abs() > self.device.tolerance_uS)
            idx = moved.nonzero().squeeze(1)
            ref = torch.zeros(0, dtype=torch.long)
            if "ref.g" in st and bool(torch.isnan(st["ref.target"]).any()):  # reference cells: once, to g_ref
                ref = torch.isnan(st["ref.target"]).nonzero().squeeze(1)
                parts.append((st["ref.g"][ref], torch.full((ref.numel(),), self.device.reference_uS),
                              st["ref.d2d"][ref], st["ref.stuck"][ref]))
            sel.append((handle, st, idx, ref))
            parts.append((st["g"][idx], t[idx], st["d2d"][idx], st["stuck"][idx]))
        g0, t, d2d, stuck = (torch.cat([p[k] for p in parts]) for k in range(4))
        res = physics.program(g0, t, d2d, stuck, self.device, self.generator)
        out, start = [], 0
        for handle, st, idx, ref in sel:
            r = slice(start, start + ref.numel())
            start += ref.numel()
            if ref.numel():
                st["ref.g"][ref] = res.g[r]
                st["ref.target"][ref] = res.target[r]
            k = slice(start, start + idx.numel())
            start += idx.numel()
            st["g"][idx] = res.g[k]
            st["target"][idx] = res.target[k]
            conv = res.converged[k]
            both = slice(r.start, k.stop)
            out.append(ProgramStats(handle.name, handle.cells, int(idx.numel()), int(res.set_pulses[both].sum()),
                                    int(res.reset_pulses[both].sum()), int(res.verify_reads[both].sum()),
                                    int((~res.converged[both]).sum()), (res.g[k] - res.target[k])[conv],
                                    res.pulses[k], res.target[k][conv], int(ref.numel()),
                                    handle.row_tiles * handle.col_tiles))
        return out

    def conductance(self, handle: ArrayHandle) -> torch.Tensor:
        return self._arrays[handle.name]["g"].view(handle.rows, handle.cols).to(self.torch_device)

    def read_sigma(self, handle: ArrayHandle) -> torch.Tensor:
        g = self._arrays[handle.name]["g"].view(handle.rows, handle.cols)
        s = physics.read_sigma(g, self.device)
        return torch.as_tensor(s).expand_as(g).to(self.torch_device) if self.read_noise else torch.zeros_like(g)

    def reference(self, handle: ArrayHandle) -> tuple[torch.Tensor, torch.Tensor] | None:
        st = self._arrays[handle.name]
        if "ref.g" not in st:
            return None
        g = st["ref.g"].view(handle.rows, handle.col_tiles)
        s = physics.read_sigma(g, self.device) if self.read_noise else 0.0
        return g.to(self.torch_device), torch.as_tensor(s).expand_as(g).to(self.torch_device)

    def ranges(self, handle: ArrayHandle) -> Ranges | None:
        st = self._arrays[handle.name]
        return Ranges.from_tensors(self.range_mode, st) if "range.dac" in st else None

    def set_ranges(self, handle: ArrayHandle, ranges: Ranges) -> None:
        self._arrays[handle.name].update({k: v.detach().float().cpu().clone() for k, v in ranges.tensors().items()})

    def age(self, seconds: float) -> None:
        """Let every array (reference columns included) drift for ``seconds`` of retention
        (finite, >= 0)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise RmloraError(f"age: the duration must be a finite number of seconds >= 0, got {seconds!r}")
        for st in self._arrays.values():
            for pre in ("", "ref.") if "ref.g" in st else ("",):
                st[pre + "g"] = physics.relax_drift(st[pre + "g"], st[pre + "stuck"], seconds, self.device,
                                                    self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every array's cells (conductance, d2d gain, stuck code, last target; the same of its
        reference column) and its frozen converter ranges, keyed ``"<array>/<field>"``."""
        return {f"{n}/{k}": v for n, st in self._arrays.items() for k, v in st.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for key, v in sd.items():
            name, _, k = key.rpartition("/")
            st = self._arrays.get(name)
            ok = st is not None and (k.startswith("range.") or (k in st and st[k].shape == v.shape))
            if not ok:
                raise RmloraError(f"chip state {key!r} does not match this chip's arrays")
            st[k] = v.clone()
