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

    @abstractmethod
    def allocate(self, name: str, rows: int, cols: int) -> ArrayHandle: ...

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


class SimulatedChip(Chip):
    """Simulated RM-CIM chip: tiles of ``tile`` cells, DAC/ADC bits, a device preset.

    ``n_tiles`` bounds the arrays (None: as many as needed). ``read_noise``
    switches per-MVM read noise on or off. All randomness comes from ``seed``.
    """

    def __init__(self, preset: str | DeviceParams = "rram-180nm", *, tile: tuple[int, int] = (128, 128),
                 n_tiles: int | None = None, dac_bits: int | None = 8, adc_bits: int | None = 8,
                 read_noise: bool = True, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.device = preset if isinstance(preset, DeviceParams) else load_preset(preset)
        if tile[0] < 1 or tile[1] < self.device.cells_per_weight or tile[1] % self.device.cells_per_weight:
            raise RmloraError(f"tile {tile} cannot hold {self.device.mapping} weights")
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

    def tiles_for(self, rows: int, cols: int) -> int:
        """Tiles a rows x cols matrix of cells occupies."""
        return math.ceil(rows / self.tile_rows) * math.ceil(cols / self.tile_cols)

    @property
    def free_tiles(self) -> int | None:
        """Tiles still free (None: unbounded)."""
        return None if self.n_tiles is None else self.n_tiles - self._tiles_used

    def has(self, name: str) -> bool:
        return name in self._handles

    def handle(self, name: str) -> ArrayHandle:
        return self._handles[name]

    def allocate(self, name: str, rows: int, cols: int) -> ArrayHandle:
        if rows < 1 or cols < 1:
            raise RmloraError(f"{name}: a {rows}x{cols} matrix cannot be mapped onto tiles")
        if name in self._handles:
            raise RmloraError(f"{name}: already allocated on this chip")
        rt, ct = math.ceil(rows / self.tile_rows), math.ceil(cols / self.tile_cols)
        if self.n_tiles is not None and self._tiles_used + rt * ct > self.n_tiles:
            raise RmloraError(f"{name}: needs {rt * ct} tiles of {self.tile_rows}x{self.tile_cols} but the chip has "
                              f"{self.n_tiles - self._tiles_used} free of {self.n_tiles}")
        placements = []
        for i in range(rt):
            for j in range(ct):
                r0, c0 = i * self.tile_rows, j * self.tile_cols
                placements.append(Placement(self._tiles_used, r0, c0, min(self.tile_rows, rows - r0),
                                            min(self.tile_cols, cols - c0)))
                self._tiles_used += 1
        h = ArrayHandle(name, rows, cols, rt, ct, tuple(placements))
        g, d2d, stuck = physics.new_cells(rows * cols, self.device, self.generator)
        self._arrays[name] = {"g": g, "d2d": d2d, "stuck": stuck, "target": torch.full_like(g, float("nan"))}
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
            sel.append((handle, st, idx))
            parts.append((st["g"][idx], t[idx], st["d2d"][idx], st["stuck"][idx]))
        g0, t, d2d, stuck = (torch.cat([p[k] for p in parts]) for k in range(4))
        res = physics.program(g0, t, d2d, stuck, self.device, self.generator)
        out, start = [], 0
        for handle, st, idx in sel:
            k = slice(start, start + idx.numel())
            start += idx.numel()
            st["g"][idx] = res.g[k]
            st["target"][idx] = res.target[k]
            conv = res.converged[k]
            out.append(ProgramStats(handle.name, handle.cells, int(idx.numel()), int(res.set_pulses[k].sum()),
                                    int(res.reset_pulses[k].sum()), int(res.verify_reads[k].sum()),
                                    int((~conv).sum()), (res.g[k] - res.target[k])[conv], res.pulses[k]))
        return out

    def conductance(self, handle: ArrayHandle) -> torch.Tensor:
        return self._arrays[handle.name]["g"].view(handle.rows, handle.cols).to(self.torch_device)

    def read_sigma(self, handle: ArrayHandle) -> torch.Tensor:
        g = self._arrays[handle.name]["g"].view(handle.rows, handle.cols)
        s = physics.read_sigma(g, self.device)
        return torch.as_tensor(s).expand_as(g).to(self.torch_device) if self.read_noise else torch.zeros_like(g)

    def age(self, seconds: float) -> None:
        """Let every array drift for ``seconds`` of retention."""
        for st in self._arrays.values():
            st["g"] = physics.relax_drift(st["g"], st["stuck"], seconds, self.device, self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every array's cells (conductance, d2d gain, stuck code, last target)."""
        return {f"{n}.{k}": v for n, st in self._arrays.items() for k, v in st.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for key, v in sd.items():
            name, k = key.rsplit(".", 1)
            if name not in self._arrays or self._arrays[name][k].shape != v.shape:
                raise RmloraError(f"chip state {key!r} does not match this chip's arrays")
            self._arrays[name][k] = v.clone()
