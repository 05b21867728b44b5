"""A ledger of counted work, priced by a technology profile.

Counts (all integers) are added by the analogue layers, the digital
adapters, the SRAM model and write-verify programming as the work happens;
:meth:`Ledger.energy` and :meth:`Ledger.time` turn them into J and s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rmlora.costs.profile import TechProfile

#: What each count means.
KEYS = {
    "dac_conversions": "input rows driven (one per non-zero input per tile; spikes count once)",
    "cell_reads": "cells read in analogue MVMs (rows driven x columns)",
    "adc_conversions": "column currents digitised (per tile, reference columns included)",
    "tile_mvms": "analogue MVMs of one tile for one input vector",
    "dac_clipped": "inputs beyond the DAC's frozen full scale (clipped; not priced)",
    "adc_clipped": "tile currents beyond the ADC's frozen full scale (clipped; not priced)",
    "digital_macs": "INT8 multiply-accumulates on the digital unit",
    "activation_macs": "activation x activation products (attention QKᵀ, AV): digital MACs with no fixed weight",
    "sram_read_bits": "bits read from SRAM",
    "sram_write_bits": "bits written to SRAM",
    "set_pulses": "SET pulses of write-verify",
    "reset_pulses": "RESET pulses of write-verify",
    "verify_reads": "verify reads of write-verify",
}


@dataclass
class Ledger:
    """Counted operations; ``adc_bits`` prices the ADC conversions."""

    adc_bits: int = 8
    counts: Counter = field(default_factory=Counter)

    def add(self, key: str, n: int | float) -> None:
        if key not in KEYS:
            raise KeyError(f"unknown ledger key {key!r}")
        self.counts[key] += int(n)

    def merge(self, other: "Ledger") -> "Ledger":
        self.counts.update(other.counts)
        return self

    def copy(self) -> "Ledger":
        return Ledger(self.adc_bits, Counter(self.counts))

    def energy(self, prof: TechProfile) -> dict[str, float]:
        """Energy per category and ``total`` (J)."""
        c = self.counts
        e = {
            "analogue_mvm": c["dac_conversions"] * prof.dac_J + c["cell_reads"] * prof.cell_read_J
            + c["adc_conversions"] * prof.adc_J(self.adc_bits),
            "digital": (c["digital_macs"] + c["activation_macs"]) * prof.mac_J,
            "sram": (c["sram_read_bits"] + c["sram_write_bits"]) * prof.sram_bit_J,
            "write_verify": c["set_pulses"] * prof.set_pulse_J + c["reset_pulses"] * prof.reset_pulse_J
            + c["verify_reads"] * prof.verify_read_J,
        }
        e["total"] = sum(e.values())
        return e

    def time(self, prof: TechProfile) -> dict[str, float]:
        """Latency per category and ``total`` (s), the categories running one after another."""
        c = self.counts
        adc_rounds = -(-128 // max(1, prof.adcs_per_tile))  # conversions per ADC for a 128-column tile
        t_tile = prof.tile_read_time_s + adc_rounds * prof.adc_time_s
        t = {
            "analogue_mvm": c["tile_mvms"] * t_tile / max(1, prof.parallel_tiles),
            "digital": (c["digital_macs"] + c["activation_macs"]) / (prof.pe_macs_per_cycle * prof.clock_hz),
            "sram": (c["sram_read_bits"] + c["sram_write_bits"]) / (prof.sram_bits_per_cycle * prof.clock_hz),
            "write_verify": ((c["set_pulses"] + c["reset_pulses"]) * prof.pulse_time_s
                             + c["verify_reads"] * prof.verify_read_time_s) / max(1, prof.write_parallel_cells),
        }
        t["total"] = sum(t.values())
        return t
