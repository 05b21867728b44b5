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

from torch import nn

import fnmatch

from rmlora.adapters import DigitalRows, SramBuffer, adapter_bits, adapter_parameters, add_adapter, analog_targets
from rmlora.costs.ledger import Ledger
from rmlora.costs.profile import TechProfile
from rmlora.hardware.chip import Chip
from rmlora.hardware.deploy import ProgrammingReport, analog_layers, program_onto, redeploy
from rmlora.hardware.layers import AnalogLayer, AnalogLinear


def head_in_features(head: nn.Module) -> int:
    for m in head.modules():
        if isinstance(m, AnalogLayer):
            return m.weight.shape[1]
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("the head has no linear layer")


def _charge(ledger: Ledger, rep: ProgrammingReport) -> None:
    ledger.add("set_pulses", rep.set_pulses)
    ledger.add("reset_pulses", rep.reset_pulses)
    ledger.add("verify_reads", rep.verify_reads)


class AdapterPath:
    """LoRA adapters (rank ``r``, ``alpha``, ``bits``, on the analogue layers matching the glob
    patterns ``targets``, default all) plus digital rows, in ``sram``."""

    name = "lora"

    def __init__(self, model: nn.Module, chip: Chip, profile: TechProfile, *, r: int = 4, alpha: float = 8.0,
                 bits: int = 8, targets: list[str] | None = None) -> None:
        self.model, self.chip, self.profile = model, chip, profile
        self.r, self.alpha, self.bits, self.targets = r, alpha, bits, targets
        self.sram = SramBuffer(profile.sram_capacity_bits)
        self._new_rows: DigitalRows | None = None

    def begin(self, label: str) -> list[nn.Parameter]:
        targets = None
        if self.targets is not None:  # glob patterns over the analogue layers' names
            known = analog_targets(self.model)
            targets = [t for t in known if any(fnmatch.fnmatch(t, pat) for pat in self.targets)]
        add_adapter(self.model, label, r=self.r, alpha=self.alpha, bits=self.bits, targets=targets,
                    sram=self.sram)
        params = adapter_parameters(self.model, label)
        if self._new_rows is not None:
            for p in self._new_rows.rows.parameters():
                p.requires_grad_(True)
        return params

    def new_rows(self) -> list[nn.Parameter]:
        """Parameters of the output rows added by the last :meth:`extend_head` (if any)."""
        return list(self._new_rows.rows.parameters()) if self._new_rows is not None else []

    def after_step(self, ledger: Ledger) -> None:
        """Nothing to reprogram: the arrays are never written."""

    def extend_head(self, n_new: int) -> None:
        head = self.model.head
        rows = DigitalRows(head, head_in_features(head), n_new)
        self.sram.allocate("digital-rows", rows.bits(self.bits))
        self.model.head = rows
        self._new_rows = rows

    def deploy(self, label: str) -> Ledger:
        """Write the adapter (and new digital rows) into SRAM."""
        led = Ledger()
        bits = adapter_bits(self.model, label)
        if self._new_rows is not None:
            bits += self._new_rows.bits(self.bits)
            self._new_rows = None
        led.add("sram_write_bits", bits)
        return led


class FullPath:
    """Full fine-tuning of the analogue weights, reprogrammed after every step."""

    name = "full"

    def __init__(self, model: nn.Module, chip: Chip, field_chip: Chip, profile: TechProfile) -> None:
        self.model, self.chip, self.field_chip, self.profile = model, chip, field_chip, profile
        self.reprogrammed_cells = 0
        self._new_rows: DigitalRows | None = None

    def begin(self, label: str) -> list[nn.Parameter]:
        for p in self.model.parameters():
            p.requires_grad_(True)
        rows = {id(p) for p in self.new_rows()}
        return [p for p in self.model.parameters() if id(p) not in rows]

    def new_rows(self) -> list[nn.Parameter]:
        """Parameters of the output rows added by the last :meth:`extend_head` (if any)."""
        return list(self._new_rows.rows.parameters()) if self._new_rows is not None else []

    def after_step(self, ledger: Ledger) -> None:
        rep = redeploy(self.model, self.chip, self.profile)
        self.reprogrammed_cells += rep.programmed_cells
        _charge(ledger, rep)

    def restore(self, ledger: Ledger) -> None:
        """Reprogram after the best checkpoint was restored (charged to training)."""
        self.after_step(ledger)

    def extend_head(self, n_new: int) -> None:
        head = self.model.head
        rows = DigitalRows(head, head_in_features(head), n_new)
        rows.rows = AnalogLinear.from_float(rows.rows, self.chip, "head.rows")
        rows.rows.program()
        self.model.head = rows
        self._new_rows = rows

    def deploy(self, label: str) -> Ledger:
        """Write-verify the field chip from the previous model to this one."""
        led = Ledger()
        _charge(led, program_onto(self.field_chip, self.model, self.profile))
        self._new_rows = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        return led


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def n_analog_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in analog_layers(model))


__all__ = ["AdapterPath", "FullPath", "freeze", "head_in_features", "n_analog_weights"]
