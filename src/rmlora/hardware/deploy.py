"""Map a torch model onto a chip and program it: ``deploy(model, chip)``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from rmlora.costs.ledger import Ledger
from rmlora.costs.profile import TechProfile, load_profile
from rmlora.errors import RmloraError
from rmlora.hardware.calibration import Feed
from rmlora.hardware.calibration import calibrate as calibrate_ranges
from rmlora.hardware.chip import Chip, ProgramStats
from rmlora.hardware.layers import AnalogLayer, analog_class


@dataclass
class ProgrammingReport:
    """What (re)programming a model cost: cells, pulses, reads, failures, J, s, error spread."""

    preset: str
    profile: str
    layers: list[ProgramStats] = field(repr=False)
    energy_J: float
    time_s: float
    tiles: int
    layer_costs: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (J, s) per layer
    inference: list[dict] = field(default_factory=list, repr=False)  # rows of :func:`layer_inference`
    calibration_examples: int | None = None  # examples the converter ranges were calibrated on

    def per_layer(self) -> list[dict]:
        """One row per analogue layer: tiles, cells, pulses, failed cells, error spread, J, s of
        programming, and (when measured) J, s and clipped fractions of one inference."""
        inf = {r["layer"]: r for r in self.inference}
        rows = []
        for s, (e, t) in zip(self.layers, self.layer_costs or [(0.0, 0.0)] * len(self.layers)):
            err = s.error_uS
            rows.append({"layer": s.name, "tiles": s.tiles, "cells": s.cells, "programmed_cells": s.programmed,
                         "reference_cells": s.reference_cells, "set_pulses": s.set_pulses,
                         "reset_pulses": s.reset_pulses, "verify_reads": s.verify_reads, "failed_cells": s.failed,
                         "error_std_uS": float(err.std()) if err.numel() > 1 else 0.0,
                         "programming_energy_J": e, "programming_time_s": t,
                         **{k: v for k, v in inf.get(s.name, {}).items() if k != "layer"}})
        return rows

    @property
    def cells(self) -> int:
        return sum(s.cells for s in self.layers)

    @property
    def programmed_cells(self) -> int:
        return sum(s.programmed for s in self.layers)

    @property
    def set_pulses(self) -> int:
        return sum(s.set_pulses for s in self.layers)

    @property
    def reset_pulses(self) -> int:
        return sum(s.reset_pulses for s in self.layers)

    @property
    def verify_reads(self) -> int:
        return sum(s.verify_reads for s in self.layers)

    @property
    def failed_cells(self) -> int:
        return sum(s.failed for s in self.layers)

    def _errors(self) -> torch.Tensor:
        errs = [s.error_uS for s in self.layers if s.error_uS.numel()]
        return torch.cat(errs) if errs else torch.zeros(0)

    def summary(self) -> dict:
        """Plain numbers for JSON and tables."""
        err = self._errors()
        pulses = [s.pulses_per_cell for s in self.layers if s.pulses_per_cell.numel()]
        pulses = torch.cat(pulses).float() if pulses else torch.zeros(0)
        n = max(1, self.programmed_cells)
        return {
            "preset": self.preset,
            "profile": self.profile,
            "tiles": self.tiles,
            "cells": self.cells,
            "programmed_cells": self.programmed_cells,
            "skipped_cells": self.cells - self.programmed_cells,
            "set_pulses": self.set_pulses,
            "reset_pulses": self.reset_pulses,
            "verify_reads": self.verify_reads,
            "mean_pulses_per_cell": (self.set_pulses + self.reset_pulses) / n,
            "p95_pulses_per_cell": float(pulses.quantile(0.95)) if pulses.numel() else 0.0,
            "failed_cells": self.failed_cells,
            "error_mean_uS": float(err.mean()) if err.numel() else 0.0,
            "error_std_uS": float(err.std()) if err.numel() > 1 else 0.0,
            "programming_energy_J": self.energy_J,
            "programming_time_s": self.time_s,
            "calibration_examples": self.calibration_examples,
            "layers": self.per_layer(),
        }


def analog_layers(model: nn.Module) -> list[tuple[str, AnalogLayer]]:
    """(name, layer) of every analogue layer in ``model``, peft wrappers looked through."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]


def check_mappable(name: str, m: nn.Module) -> None:
    """Refuse a layer the tiles cannot hold (one clear error)."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.groups != 1 and not isinstance(m, nn.Conv2d):
            raise RmloraError(f"{name}: grouped 1-d convolution (groups={m.groups}) has no tile mapping")
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise RmloraError(f"{name}: only numeric zero padding maps onto tiles")


def report_from(stats: list[ProgramStats], chip: Chip, profile: TechProfile) -> ProgrammingReport:
    led, costs = Ledger(), []
    for s in stats:
        one = Ledger()
        for lg in (led, one):
            lg.add("set_pulses", s.set_pulses)
            lg.add("reset_pulses", s.reset_pulses)
            lg.add("verify_reads", s.verify_reads)
        costs.append((one.energy(profile)["write_verify"], one.time(profile)["write_verify"]))
    return ProgrammingReport(chip.device.name, profile.name, stats, led.energy(profile)["write_verify"],
                             led.time(profile)["write_verify"], getattr(chip, "tiles_used", 0), costs)


def layer_inference(model: nn.Module, feed: Feed, examples: int, profile: TechProfile | str = "cmos-180nm",
                    adc_bits: int = 8) -> list[dict]:
    """Energy (J) and latency (s) of each analogue layer per example of ``feed`` (``examples`` of
    them), with the fraction of DAC inputs and ADC codes that clipped at the frozen ranges."""
    from rmlora.hardware.calibration import _run

    profile = load_profile(profile) if isinstance(profile, str) else profile
    layers = analog_layers(model)
    ledgers = [Ledger(adc_bits) for _ in layers]
    before = [m.ledger for _, m in layers]
    for (_, m), led in zip(layers, ledgers):
        m.ledger = led
    was_training = model.training
    model.eval()
    try:
        _run(model, feed)
    finally:
        for (_, m), led in zip(layers, before):
            m.ledger = led
        model.train(was_training)
    n = max(1, examples)
    rows = []
    for (name, m), led in zip(layers, ledgers):
        c = led.counts
        rows.append({"layer": name, "inference_energy_J": led.energy(profile)["total"] / n,
                     "inference_time_s": led.time(profile)["total"] / n,
                     "mvms_per_example": c["tile_mvms"] / m.core.geometry().mvms / n,
                     "dac_clipped_fraction": c["dac_clipped"] / max(1, c["dac_conversions"] // m.core.geometry().drive_tiles),
                     "adc_clipped_fraction": c["adc_clipped"] / max(1, c["adc_conversions"])})
    return rows


def deploy(model: nn.Module, chip: Chip, *, exclude: tuple[str, ...] = (),
           profile: TechProfile | str = "cmos-180nm", calibrate: Feed | None = None) -> ProgrammingReport:
    """Move every ``nn.Linear``/``Conv1d``/``Conv2d`` of ``model`` (in place) onto ``chip`` (a grouped
    or depthwise ``Conv2d`` packed onto tiles, :class:`rmlora.hardware.layers.PackPlan`),
    write-verify it, and fix its converter ranges on the training inputs ``calibrate`` (see
    :func:`rmlora.hardware.calibrate`; without them a chip with converters refuses to compute
    until calibrated). Names matching a glob in ``exclude`` stay digital.

    Returns the programming report. Call :func:`redeploy` after changing weights (the ranges
    stay frozen, as on a deployed chip).
    """
    profile = load_profile(profile) if isinstance(profile, str) else profile
    targets = []
    for name, m in model.named_modules():
        for child_name, child in m.named_children():
            full = f"{name}.{child_name}" if name else child_name
            cls = analog_class(child)
            if cls is None or any(fnmatch.fnmatch(full, pat) for pat in exclude):
                continue
            check_mappable(full, child)
            if not torch.isfinite(child.weight).all():
                raise RmloraError(f"{full}: weights contain NaN or infinite values; nothing was programmed")
            targets.append((m, child_name, full, child, cls, cls.tiles_needed(child, chip, full)))  # refuses early
    if not targets:
        raise RmloraError("the model has no Linear/Conv1d/Conv2d layer to deploy")
    for _, _, full, child, _, _ in targets:  # the bias is added digitally after the ADC: it must be finite too
        _finite_bias(full, child, "nothing was programmed")
    free = getattr(chip, "free_tiles", None)
    if free is not None:  # refuse before swapping anything, so the model stays usable
        need = sum(t[-1] for t in targets)
        if need > free:
            raise RmloraError(f"the model needs {need} tiles of {chip.tile_rows}x{chip.tile_cols} but the chip has "
                              f"{free} free; nothing was deployed")
    swapped = []
    for parent, child_name, full, child, cls, _ in targets:
        new = cls.from_float(child, chip, full)
        setattr(parent, child_name, new)
        swapped.append(new)
    report = report_from(program_layers(swapped, chip), chip, profile)
    if calibrate is not None:
        calibrate_ranges(model, calibrate)
        report.calibration_examples = getattr(calibrate, "examples", None)
    return report


def _finite_bias(name: str, layer: nn.Module, what: str) -> None:
    """Refuse a layer whose bias holds NaN or infinite values."""
    b = getattr(layer, "bias", None)
    if isinstance(b, torch.Tensor) and not torch.isfinite(b).all():
        raise RmloraError(f"{name}: bias contains NaN or infinite values; {what}")


def program_layers(layers: list[AnalogLayer], chip: Chip) -> list[ProgramStats]:
    """Write-verify the layers' current weights in one run over all their cells."""
    stats = chip.program_many([(m.core.handle, m.core.targets(m.matrix())) for m in layers])
    for m in layers:
        m.core.refresh()
    return stats


def redeploy(model: nn.Module, chip: Chip, profile: TechProfile | str = "cmos-180nm") -> ProgrammingReport:
    """Reprogram the analogue layers to their current ``weight``; only cells whose
    target moved beyond the tolerance are pulsed (the report says how many)."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    layers = analog_layers(model)
    if not layers:
        raise RmloraError("the model has no analogue layer: deploy it first")
    for name, m in layers:
        if not torch.isfinite(m.weight).all():
            raise RmloraError(f"{name}: weights contain NaN or infinite values; nothing was reprogrammed")
        _finite_bias(name, m, "nothing was reprogrammed")
    return report_from(program_layers([m for _, m in layers], chip), chip, profile)


def program_onto(chip: Chip, model: nn.Module, profile: TechProfile | str = "cmos-180nm") -> ProgrammingReport:
    """Program ``model``'s current analogue weights onto another ``chip`` that holds an
    earlier version of it (arrays matched by name, new arrays allocated): the
    deployment of an updated model to a chip in the field."""
    from rmlora.device import mapping

    profile = load_profile(profile) if isinstance(profile, str) else profile
    jobs = []
    for _, m in analog_layers(model):
        h = m.core.handle
        handle = chip.handle(h.name) if chip.has(h.name) else chip.allocate(h.name, h.rows, h.cols, h.cols_per_tile)
        jobs.append((handle, mapping.to_conductance(m.matrix(), m.core.scale, chip.device)))
    return report_from(chip.program_many(jobs), chip, profile)


def layer_table(rows: list[dict]) -> str:
    """A Markdown table of :meth:`ProgrammingReport.per_layer` rows."""
    inf = any("inference_energy_J" in r for r in rows)
    head = ("| layer | tiles | cells | pulses | failed | error σ (µS) | programming J | programming s |"
            + (" inference J/example | inference s/example | DAC clipped | ADC clipped |" if inf else ""))
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        line = (f"| {r['layer']} | {r['tiles']} | {r['cells']} | {r['set_pulses'] + r['reset_pulses']} | "
                f"{r['failed_cells']} | {r['error_std_uS']:.3f} | {r['programming_energy_J']:.3e} | "
                f"{r['programming_time_s']:.3e} |")
        if inf:
            line += (f" {r.get('inference_energy_J', 0):.3e} | {r.get('inference_time_s', 0):.3e} | "
                     f"{100 * r.get('dac_clipped_fraction', 0):.2f}% | {100 * r.get('adc_clipped_fraction', 0):.2f}% |")
        lines.append(line)
    return "\n".join(lines)
