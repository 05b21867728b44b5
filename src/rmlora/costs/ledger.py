"""A ledger of counted work, priced by a technology profile.

Counts (all integers) are added by the analogue layers, the digital
adapters, the training loop and write-verify programming as the work happens;
:meth:`Ledger.energy` and :meth:`Ledger.time` turn them into J and s per kind
of work, :meth:`Ledger.energy_by_layer` per layer. Counts are independent of
the profile, so a ledger can be priced again under other constants (the
sensitivity analysis) or other protocols (:mod:`rmlora.costs.protocols`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rmlora.costs.profile import TechProfile

#: What each count means.
KEYS = {
    "dac_conversions": "multi-bit input rows driven (one per non-zero input per column tile; spikes count once)",
    "row_drives": "1-bit row drives of bit-serial inputs (one per set bit of a plane per column tile)",
    "cell_reads": "cells read in analogue MVMs (rows driven x columns)",
    "adc_conversions": "column currents digitised (per tile and pass, reference columns included)",
    "tile_mvms": "analogue MVMs of one tile for one input vector (per pass)",
    "dac_clipped": "inputs beyond the DAC's frozen full scale (clipped; not priced)",
    "adc_clipped": "tile currents beyond the ADC's frozen full scale (clipped; not priced)",
    "digital_macs": "INT8 multiply-accumulates on the digital unit",
    "digital_adds": "accumulates on the digital unit: a binary (spike) input adds its weight, no multiply",
    "activation_macs": "activation x activation products (attention QKᵀ, AV): digital MACs with no fixed weight",
    "sram_read_bits": "bits read from SRAM (digital weights that do not fit the PE registers, once per sample)",
    "register_read_bits": "digital weight bits served from the PE array's registers (not priced: part of the MAC)",
    "sram_write_bits": "bits written to SRAM (updated parameters after each step; adapters and rows at deployment)",
    "optimizer_bits": "optimiser state and FP32 master weights read and written after each step (priced as SRAM)",
    "fp32_ops": "FP32 multiply-adds of the optimiser (Adam moments and update)",
    "set_pulses": "SET pulses of write-verify",
    "reset_pulses": "RESET pulses of write-verify",
    "verify_reads": "verify reads of write-verify",
    "programmed_cells": "cell programmings by write-verify (each cell each time; not priced)",
    "reference_macs": "the analogue MVMs as dense INT8 MACs on the digital unit (the all-digital reference; not "
                      "priced on the chip)",
    "reference_adds": "the analogue MVMs of binary inputs as accumulates on the digital unit (reference; not priced)",
    "reference_weight_bits": "weight bits the all-digital reference reads from SRAM per sample (not priced)",
    "optimizer_steps": "optimiser steps (not priced)",
    "trained_params": "parameters trained, summed over steps (not priced)",
    "array_param_updates": "trained parameters held in the arrays, summed over steps (not priced: the arrays are "
                           "reprogrammed instead; off-chip training writes them to SRAM)",
    "trained_cells": "cells holding trained weights, summed over steps (full update; not priced)",
    "samples": "samples that passed through the model (not priced)",
}

#: the kinds of work a ledger prices, in report order
KINDS = ("dac", "array", "adc", "digital", "activation", "sram", "optimizer", "write_verify", "leakage")
#: keys of the parameter update (what the ``reprogram-every-step`` protocol compares)
UPDATE_KEYS = frozenset({"sram_write_bits", "optimizer_bits", "fp32_ops", "set_pulses", "reset_pulses",
                         "verify_reads", "programmed_cells", "array_param_updates"})
#: keys of analogue MVMs, which the all-digital reference replaces by its ``reference_*`` keys
ANALOG_KEYS = frozenset({"dac_conversions", "row_drives", "cell_reads", "adc_conversions", "tile_mvms",
                         "dac_clipped", "adc_clipped"})


@dataclass
class Ledger:
    """Counted operations, in total and per layer.

    ``adc_bits`` prices the ADC conversions; ``register_bits`` is the PE array's weight-register
    capacity the counting compares a model's digital weights with (None: every weight is read
    from SRAM for every sample).
    """

    adc_bits: int = 8
    counts: Counter = field(default_factory=Counter)
    layers: dict[str, Counter] = field(default_factory=dict)
    register_bits: int | None = None

    def add(self, key: str, n: int | float, layer: str | None = None) -> None:
        """Add ``n`` to ``key`` (and to ``layer``'s own counts when a layer is named)."""
        if key not in KEYS:
            raise KeyError(f"unknown ledger key {key!r}")
        n = int(n)
        self.counts[key] += n
        if layer is not None:
            self.layers.setdefault(layer, Counter())[key] += n

    def merge(self, other: "Ledger") -> "Ledger":
        self.counts.update(other.counts)
        for name, c in other.layers.items():
            self.layers.setdefault(name, Counter()).update(c)
        return self

    def copy(self) -> "Ledger":
        return Ledger(self.adc_bits, Counter(self.counts), {k: Counter(v) for k, v in self.layers.items()},
                      self.register_bits)

    def only(self, keys: frozenset[str] | set[str], *, drop: bool = False) -> "Ledger":
        """A ledger with just ``keys`` (or all but them with ``drop``), per layer too."""
        def keep(c: Counter) -> Counter:
            return Counter({k: v for k, v in c.items() if (k in keys) != drop})
        return Ledger(self.adc_bits, keep(self.counts), {n: keep(c) for n, c in self.layers.items()},
                      self.register_bits)

    def scaled(self, factor: float) -> "Ledger":
        """Every count times ``factor`` (rounded): a schedule's steps from one counted step."""
        def sc(c: Counter) -> Counter:
            return Counter({k: int(round(v * factor)) for k, v in c.items()})
        return Ledger(self.adc_bits, sc(self.counts), {n: sc(c) for n, c in self.layers.items()},
                      self.register_bits)

    def as_reference(self) -> "Ledger":
        """The same work with every analogue MVM done on the digital unit instead (the all-digital
        reference): dense INT8 MACs, accumulates for binary inputs, weights read from SRAM."""
        def ref(c: Counter) -> Counter:
            out = Counter({k: v for k, v in c.items() if k not in ANALOG_KEYS})
            out["digital_macs"] += out.pop("reference_macs", 0)
            out["digital_adds"] += out.pop("reference_adds", 0)
            out["sram_read_bits"] += out.pop("reference_weight_bits", 0)
            return +out
        return Ledger(self.adc_bits, ref(self.counts), {n: ref(c) for n, c in self.layers.items()},
                      self.register_bits)

    # -- pricing -----------------------------------------------------------------------
    def _energy(self, c: Counter, prof: TechProfile) -> dict[str, float]:
        return {
            "dac": c["dac_conversions"] * prof.dac_J + c["row_drives"] * prof.row_drive_J,
            "array": c["cell_reads"] * prof.cell_read_J,
            "adc": c["adc_conversions"] * prof.adc_J(self.adc_bits),
            "digital": c["digital_macs"] * prof.mac_J + c["digital_adds"] * prof.add_J,
            "activation": c["activation_macs"] * prof.mac_J,
            "sram": (c["sram_read_bits"] + c["sram_write_bits"]) * prof.sram_bit_J,
            "optimizer": c["optimizer_bits"] * prof.sram_bit_J + c["fp32_ops"] * prof.fp32_op_J,
            "write_verify": c["set_pulses"] * prof.set_pulse_J + c["reset_pulses"] * prof.reset_pulse_J
            + c["verify_reads"] * prof.verify_read_J,
        }

    def _time(self, c: Counter, prof: TechProfile) -> dict[str, float]:
        # a tile MVM settles, then its columns are converted by the tile's ADCs in rounds (at least one)
        rounds = max(-(-c["adc_conversions"] // prof.adcs_per_tile), c["tile_mvms"])
        t_array = (c["tile_mvms"] * prof.tile_read_time_s + rounds * prof.adc_time_s) / prof.parallel_tiles
        pe = prof.pe_macs_per_cycle * prof.clock_hz
        return {
            "dac": 0.0, "array": t_array, "adc": 0.0,  # inside the tile read
            "digital": (c["digital_macs"] + c["digital_adds"]) / pe,
            "activation": c["activation_macs"] / pe,
            "sram": (c["sram_read_bits"] + c["sram_write_bits"]) / (prof.sram_bits_per_cycle * prof.clock_hz),
            "optimizer": c["optimizer_bits"] / (prof.sram_bits_per_cycle * prof.clock_hz)
            + c["fp32_ops"] / (prof.fp32_ops_per_cycle * prof.clock_hz),
            "write_verify": ((c["set_pulses"] + c["reset_pulses"]) * prof.pulse_time_s
                             + c["verify_reads"] * prof.verify_read_time_s) / prof.write_parallel_cells,
        }

    def time(self, prof: TechProfile) -> dict[str, float]:
        """Latency per kind of work and ``total`` (s), the kinds running one after another."""
        t = self._time(self.counts, prof)
        t["leakage"] = 0.0
        t["total"] = sum(t.values())
        return t

    def energy(self, prof: TechProfile) -> dict[str, float]:
        """Energy per kind of work (:data:`KINDS`) and ``total`` (J); ``leakage`` is the digital
        unit's static power over the ledger's time."""
        e = self._energy(self.counts, prof)
        e["leakage"] = prof.leakage_W * self.time(prof)["total"]
        e["total"] = sum(e.values())
        return e

    #: the row of :meth:`energy_by_layer` for work counted without a layer
    NO_LAYER = "(no layer)"

    def energy_by_layer(self, prof: TechProfile) -> dict[str, dict[str, float]]:
        """Energy per layer and kind of work (J), and :data:`NO_LAYER` for counted work booked
        without a layer, if any (leakage is not attributed to layers)."""
        return self._by_layer(self._energy, prof)

    def time_by_layer(self, prof: TechProfile) -> dict[str, dict[str, float]]:
        """Latency per layer and kind of work (s), as :meth:`energy_by_layer`."""
        return self._by_layer(self._time, prof)

    def _by_layer(self, price, prof: TechProfile) -> dict[str, dict[str, float]]:
        out = {}
        booked: Counter = Counter()
        for name, c in sorted(self.layers.items()):
            booked.update(c)
            d = price(c, prof)
            d["total"] = sum(d.values())
            out[name] = d
        rest = self.counts - booked  # only what no layer holds (Counter subtraction keeps positives)
        d = price(rest, prof)
        d["total"] = sum(d.values())
        if d["total"] > 0:
            out[self.NO_LAYER] = d
        return out

    # -- plain data --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"adc_bits": self.adc_bits, "register_bits": self.register_bits,
                "counts": dict(sorted(self.counts.items())),
                "layers": {n: dict(sorted(c.items())) for n, c in sorted(self.layers.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ledger":
        for k in list(d.get("counts", {})) + [k for c in d.get("layers", {}).values() for k in c]:
            if k not in KEYS:
                raise KeyError(f"unknown ledger key {k!r}")
        return cls(int(d.get("adc_bits", 8)), Counter(d.get("counts", {})),
                   {n: Counter(c) for n, c in d.get("layers", {}).items()}, d.get("register_bits"))
