"""The two ways of changing a deployed model, behind one interface.

* :class:`AdapterPath` — the design: the arrays stay as programmed; every
  change is a LoRA adapter (and, for new classes, digital output rows) in
  SRAM. Training writes adapter parameters to SRAM; deployment writes the
  adapter's bits once.
* :class:`FullPath` — the baseline: the analogue weights themselves are
  fine-tuned; after every optimiser step the cells whose target moved beyond
  tolerance are write-verified (charged to training), and deployment
  reprograms a chip in the field that still holds the previous model.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from rmlora.adapters import (SramBuffer, adapter_bits, adapter_parameters, add_adapter, analog_targets,
                             delete_adapter, logical_name)
from rmlora.config import AdapterConfig
from rmlora.costs.ledger import Ledger
from rmlora.costs.profile import TechProfile
from rmlora.hardware.chip import Chip
from rmlora.hardware.deploy import ProgrammingReport, program_onto, redeploy, report_from
from rmlora.hardware.layers import AnalogLayer


def head_in_features(head: nn.Module) -> int:
    for m in head.modules():
        if isinstance(m, AnalogLayer):
            return m.weight.shape[1]
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("the head has no linear layer")


def _charge(ledger: Ledger, rep: ProgrammingReport) -> None:
    """Add a (re)programming's write-verify work to ``ledger``, per layer."""
    for s in rep.layers:
        ledger.add("set_pulses", s.set_pulses, s.name)
        ledger.add("reset_pulses", s.reset_pulses, s.name)
        ledger.add("verify_reads", s.verify_reads, s.name)
        ledger.add("programmed_cells", s.programmed, s.name)


def adapter_targets(model: nn.Module, patterns: list[str] | None) -> list[str] | None:
    """The analogue layers of ``model`` whose names match a glob of ``patterns`` (None: every one)."""
    if patterns is None:
        return None
    return [t for t in analog_targets(model) if any(fnmatch.fnmatch(logical_name(t), pat) for pat in patterns)]


class AdapterPath:
    """The design: LoRA adapters of shape ``adapter`` (glob ``target_modules`` over the analogue
    layers, default all) plus digital rows, held in ``sram``; the arrays are never written."""

    name = "lora"

    def __init__(self, model: nn.Module, chip: Chip, profile: TechProfile, adapter: AdapterConfig) -> None:
        self.model, self.chip, self.profile, self.adapter = model, chip, profile, adapter
        self.sram = SramBuffer(profile.sram_capacity_bits)
        self.reprogrammed_cells = 0

    def targets(self) -> list[str] | None:
        """Analogue layer names the adapter's glob patterns select (None: every one)."""
        return adapter_targets(self.model, self.adapter.target_modules)

    def begin(self, label: str) -> list[nn.Parameter]:
        """Add adapter ``label`` (refused when it does not fit the SRAM); its parameters."""
        a = self.adapter
        add_adapter(self.model, label, r=a.rank, alpha=a.alpha, bits=a.bits, targets=self.targets(), sram=self.sram)
        return adapter_parameters(self.model, label)

    def after_step(self, ledger: Ledger) -> None:
        """Nothing to reprogram: the arrays are never written."""

    def deploy(self, label: str | None, extra_bits: int = 0) -> Ledger:
        """Write adapter ``label`` (if any) and ``extra_bits`` of digital rows into SRAM."""
        led = Ledger()
        led.add("sram_write_bits", (adapter_bits(self.model, label) if label else 0) + extra_bits)
        return led

    def undo(self, label: str) -> None:
        """Delete adapter ``label``: its contribution disappears exactly, its SRAM is freed."""
        delete_adapter(self.model, label, self.sram)

    def merge_report(self) -> ProgrammingReport | None:
        """What merging every active adapter into the arrays would cost (a maintenance window):
        the analogue weights W + Σ s·BA write-verified onto a copy of the chip, which holds W;
        afterwards no adapter is left to switch off (digital output rows stay digital).
        None when no adapter is active."""
        return merge_report(self.model, self.profile)


class FullPath:
    """The baseline: full fine-tuning of the analogue weights, the moved cells write-verified
    after every step; deployment reprograms ``field_chip``, which holds the previous model."""

    name = "full"

    def __init__(self, model: nn.Module, chip: Chip, field_chip: Chip, profile: TechProfile) -> None:
        self.model, self.chip, self.field_chip, self.profile = model, chip, field_chip, profile
        self.reprogrammed_cells = 0

    def begin(self, label: str) -> list[nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(True)
        return list(self.model.parameters())

    def after_step(self, ledger: Ledger) -> None:
        """Write-verify the cells whose target moved beyond tolerance (mixed-precision update);
        count the cells whose weights train (what a naive update would reprogram every step)."""
        rep = redeploy(self.model, self.chip, self.profile)
        self.reprogrammed_cells += rep.programmed_cells
        _charge(ledger, rep)
        for m in self.model.modules():
            if isinstance(m, AnalogLayer) and m.weight.requires_grad:
                ledger.add("trained_cells", m.core.handle.cells, m.core.name)

    def deploy(self, label: str | None, extra_bits: int = 0) -> Ledger:
        """Write-verify the field chip from the previous model to this one (plus ``extra_bits``
        of digital rows into SRAM)."""
        led = Ledger()
        _charge(led, program_onto(self.field_chip, self.model, self.profile))
        led.add("sram_write_bits", extra_bits)
        for p in self.model.parameters():
            p.requires_grad_(False)
        return led


@dataclass
class RefPath:
    """A retrained reference: a model trained from scratch, on its own chip (never updated)."""

    name: str
    model: nn.Module
    chip: Chip
    reprogrammed_cells: int = 0


def merge_report(model: nn.Module, profile: TechProfile) -> ProgrammingReport | None:
    """Write-verify cost of folding ``model``'s active adapters into its analogue weights: the
    adapted layers' W + Σ s·BA programmed onto a copy of the chip (the model and its chip are left
    as they are); None without an active adapter."""
    from peft.tuners.lora import LoraLayer

    from rmlora.device import mapping

    jobs, chip = [], None
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, LoraLayer):
                continue
            names = [a for a in layer.active_adapters if a in layer.lora_A]
            base = layer.get_base_layer()
            if not names or not isinstance(base, AnalogLayer):
                continue
            w = base.weight.detach().clone()
            for a in names:
                w += layer.get_delta_weight(a).view_as(w)
            if chip is None:
                chip = copy.deepcopy(base.core.chip)
            jobs.append((chip.handle(base.core.handle.name), mapping.to_conductance(w.flatten(1), base.core.scale,
                                                                                    chip.device)))
    if chip is None:
        return None
    return report_from(chip.program_many(jobs), chip, profile)


__all__ = ["AdapterPath", "FullPath", "RefPath", "adapter_targets", "head_in_features", "merge_report"]
