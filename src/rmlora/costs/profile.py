"""Technology profiles: energy (J) and time (s) of each counted operation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rmlora.presetfile import load_constants, preset_path

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class TechProfile:
    """Constants of one technology node; see ``profiles/*.json`` for each source.

    Digital energies are given at 45 nm and scaled by ``node_energy_scale``;
    the ADC energy per conversion is ``adc_fom_J_per_step · 2**bits``.
    """

    name: str
    set_pulse_J: float
    reset_pulse_J: float
    pulse_time_s: float
    verify_read_J: float
    verify_read_time_s: float
    write_parallel_cells: int
    dac_J: float
    cell_read_J: float
    adc_fom_J_per_step: float
    adc_time_s: float
    adcs_per_tile: int
    tile_read_time_s: float
    int8_mac_45nm_J: float
    sram_bit_45nm_J: float
    node_energy_scale: float
    clock_hz: float
    pe_macs_per_cycle: int
    sram_bits_per_cycle: int
    sram_capacity_bits: int
    parallel_tiles: int

    @property
    def mac_J(self) -> float:
        """Energy of one INT8 multiply-accumulate on the digital unit (J)."""
        return self.int8_mac_45nm_J * self.node_energy_scale

    @property
    def sram_bit_J(self) -> float:
        """Energy of reading or writing one SRAM bit (J)."""
        return self.sram_bit_45nm_J * self.node_energy_scale

    def adc_J(self, bits: int) -> float:
        """Energy of one ADC conversion at ``bits`` resolution (J)."""
        return self.adc_fom_J_per_step * 2 ** bits

    def to_dict(self) -> dict:
        return asdict(self)


_INTS = {"write_parallel_cells", "adcs_per_tile", "pe_macs_per_cycle", "sram_bits_per_cycle",
         "sram_capacity_bits", "parallel_tiles"}
_TYPES = {f: (int if f in _INTS else float) for f in TechProfile.__dataclass_fields__ if f != "name"}


def load_profile(name_or_path: str = "cmos-180nm") -> TechProfile:
    """Load a built-in profile by name or a JSON file; refuses missing or negative constants."""
    path = preset_path(PROFILE_DIR, name_or_path, "technology profile")
    values, doc = load_constants(path, _TYPES, "technology profile")
    return TechProfile(name=doc.get("name", path.stem), **values)
