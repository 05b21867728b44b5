"""Technology profiles: energy (J), time (s) and size of each counted operation."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rmlora.errors import RmloraError
from rmlora.presetfile import load_constants, preset_path

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class TechProfile:
    """Constants of one technology node; see ``profiles/*.json`` for each source.

    Digital energies are given at 45 nm (Horowitz, ISSCC 2014) and scaled by
    ``node_energy_scale``; the ADC energy per conversion is
    ``adc_fom_J_per_step · 2**bits``. ``ranges`` holds, for the constants
    whose source gives one, the span (low, high) the sensitivity analysis
    moves them across.
    """

    name: str
    set_pulse_J: float
    reset_pulse_J: float
    pulse_time_s: float
    verify_read_J: float
    verify_read_time_s: float
    write_parallel_cells: int
    dac_J: float
    row_drive_J: float
    cell_read_J: float
    adc_fom_J_per_step: float
    adc_time_s: float
    adcs_per_tile: int
    tile_read_time_s: float
    parallel_tiles: int
    int8_mult_45nm_J: float
    int32_add_45nm_J: float
    fp32_mult_45nm_J: float
    fp32_add_45nm_J: float
    sram_bit_45nm_J: float
    node_energy_scale: float
    clock_hz: float
    pe_macs_per_cycle: int
    pe_register_bits: int
    fp32_ops_per_cycle: int
    sram_bits_per_cycle: int
    sram_capacity_bits: int
    sram_leakage_W_per_bit: float
    pe_leakage_W: float
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def mac_J(self) -> float:
        """One INT8 multiply-accumulate on the digital unit (8-bit multiply, 32-bit add), J."""
        return (self.int8_mult_45nm_J + self.int32_add_45nm_J) * self.node_energy_scale

    @property
    def add_J(self) -> float:
        """One accumulate (a binary spike input adds its weight: 32-bit add), J."""
        return self.int32_add_45nm_J * self.node_energy_scale

    @property
    def fp32_op_J(self) -> float:
        """One FP32 multiply-add of the optimiser, J."""
        return (self.fp32_mult_45nm_J + self.fp32_add_45nm_J) * self.node_energy_scale

    @property
    def sram_bit_J(self) -> float:
        """Reading or writing one SRAM bit, J."""
        return self.sram_bit_45nm_J * self.node_energy_scale

    @property
    def leakage_W(self) -> float:
        """Static power of the digital unit (SRAM buffer and PE array), W."""
        return self.sram_leakage_W_per_bit * self.sram_capacity_bits + self.pe_leakage_W

    def adc_J(self, bits: int) -> float:
        """Energy of one ADC conversion at ``bits`` resolution (J)."""
        return self.adc_fom_J_per_step * 2 ** bits

    def replace(self, **changes) -> "TechProfile":
        """A copy with some constants changed (e.g. ``replace(node_energy_scale=35)``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        return d


_INTS = {"write_parallel_cells", "adcs_per_tile", "pe_macs_per_cycle", "pe_register_bits", "fp32_ops_per_cycle",
         "sram_bits_per_cycle", "sram_capacity_bits", "parallel_tiles"}
#: constants that describe the design (counts, widths, capacities), not a technology's energy or speed
STRUCTURAL = frozenset(_INTS)
_TYPES = {f.name: (int if f.name in _INTS else float) for f in dataclasses.fields(TechProfile)
          if f.name not in ("name", "ranges")}


def load_profile(name_or_path: str = "cmos-180nm", *, strict: bool = False) -> TechProfile:
    """Load a built-in profile by name or a JSON file; refuses what :func:`load_constants` refuses
    (missing, unknown, negative or mistyped constants, zero counts and rates), malformed ranges,
    and with ``strict`` a constant outside its cited range."""
    path = preset_path(PROFILE_DIR, name_or_path, "technology profile")
    values, doc = load_constants(path, _TYPES, "technology profile")  # counts and rates > 0 there
    ranges = {}
    for k, entry in doc["constants"].items():
        r = entry.get("range") if isinstance(entry, dict) else None
        if r is None or k not in _TYPES:
            continue
        ok = (isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in r))
        if not ok or not 0 <= r[0] <= r[1] or r[1] == float("inf"):
            raise RmloraError(f"technology profile {path}: constant {k!r} has range {r!r}; a range is "
                              f"[low, high] with 0 <= low <= high")
        if strict and not r[0] <= values[k] <= r[1]:
            raise RmloraError(f"technology profile {path}: constant {k!r} = {values[k]!r} is outside its cited "
                              f"range [{r[0]!r}, {r[1]!r}] (--strict)")
        if not entry.get("range_source"):
            raise RmloraError(f"technology profile {path}: constant {k!r} has a range but no range_source")
        ranges[k] = (float(r[0]), float(r[1]))
    return TechProfile(name=doc.get("name", path.stem), ranges=ranges, **values)
