"""What a workload gives the scenario runner, with the same signatures for all three.

A workload (face, speaker, style) owns its data, model, objectives and
scores; the runner (:mod:`rmlora.scenario.runner`) owns the chip, the paths,
the requests, the costs and the run folder. Nothing outside the registry
(:data:`WORKLOADS`) branches on a workload's name.

Classes are named by their *dataset labels*. A path's model has output
columns (classification heads, or conditioning rows of a generator);
``columns[j]`` is the dataset label column ``j`` stands for (None: a disabled
column). The runner keeps each path's columns; workloads map labels through
them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from rmlora.config import AdapterConfig, ConfigBase, TrainConfig
from rmlora.costs.ledger import Ledger
from rmlora.errors import RmloraError

#: training examples the converters are calibrated on at deployment (see rmlora.hardware.calibrate);
#: a budget, not tuned: 512 examples give the 99.9th percentile from at least 512 values per tile
CALIBRATION_EXAMPLES = 512

Columns = list  # list[int | None]: dataset label of each output column


@dataclass
class ClassState:
    """The scenario's classes (dataset labels) after a request."""

    initial: list[int] = field(default_factory=list)  # classes of the learn request
    kept: list[int] = field(default_factory=list)  # learned now, in the order they were learned
    forgotten: list[int] = field(default_factory=list)  # learned once, not now (forgotten or undone)
    added: list[int] = field(default_factory=list)  # kept classes that came by add requests
    samples: list[int] = field(default_factory=list)  # requests whose random samples are forgotten now

    def copy(self) -> ClassState:
        return ClassState(list(self.initial), list(self.kept), list(self.forgotten), list(self.added),
                          list(self.samples))

    @property
    def retained_initial(self) -> list[int]:
        return [c for c in self.kept if c not in self.added]


@dataclass
class WorkloadSettings(ConfigBase):
    """Settings every workload has; each workload extends them with its own fields.
    Any field can be overridden from ``[settings]`` in a TOML file."""

    section: ClassVar[str] = "settings"
    learn: list[str] = field(default_factory=list, metadata={"help": "classes of the default learn request"})
    forget: list[str] = field(default_factory=list, metadata={"help": "classes of the default forget request"})
    add: list[str] = field(default_factory=list, metadata={"help": "classes of the default add request"})
    method: str = field(default="ga", metadata={"help": "default unlearning method"})
    pretrain: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "float pretraining / retraining"})
    forget_lora: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "forget, adapter path"})
    forget_full: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "forget, full update"})
    learn_lora: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "add/repair, adapter path"})
    learn_full: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "add/repair, full update"})
    rows_lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of new digital rows"})
    adapter: AdapterConfig = field(default_factory=AdapterConfig, metadata={"help": "default adapter shape"})
    rehearsal_per_class: int = field(default=2, metadata={"help": "kept-class examples replayed per class"})
    forget_weight: float = field(default=1.0, metadata={"help": "weight of the forget term of the objective"})
    seeds: int = field(default=3, metadata={"help": "default number of seeds"})
    retention_chips: int = field(default=3, metadata={"help": "chips the retention section averages over "
                                                              "(0: no retention section); 3, a budget: the "
                                                              "fewest that state a spread per seed with one "
                                                              "to spare, not tuned"})

    def with_overrides(self, overrides: dict[str, Any], where: str = "settings"):
        """A copy with ``overrides`` applied (every key checked, nested tables merged)."""
        merged = self.to_dict()
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        return type(self).from_dict(merged, where)

    def forget_budget(self, path: str, method: str) -> TrainConfig:
        """The budget of a forget stage on ``path`` (``lora`` or ``full``) with ``method``."""
        return self.forget_lora if path == "lora" else self.forget_full


@dataclass
class Objective:
    """A stage's training loss ``loss(step)``, its validation score (higher is better) and what
    to undo after training (``finish``: e.g. gradient hooks a method installed)."""

    loss: Callable[[int], torch.Tensor]
    score: Callable[[], float]
    finish: Callable[[], None] = lambda: None


@dataclass
class Extension:
    """New output columns added for an ``add`` request: the parameters to train
    (at ``rows_lr``), their SRAM bits when they are digital, and how to finish
    (after training) and undo them."""

    params: list[nn.Parameter]
    digital_bits: int
    columns: Columns
    finish: Callable[[], None] = lambda: None
    undo: Callable[[Columns], Columns] | None = None  # path's columns now -> after the undo


@dataclass
class Evaluation:
    """A path's scores after a request: named metrics and per-class values
    (``per_class[metric][class name]``)."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)


class Workload(Protocol):
    """A workload: its data, model, objectives, scores and report section."""

    name: str
    unit: str  # what a class is called in messages: "identity", "speaker", "style"
    description: str
    settings_type: type[WorkloadSettings]
    configurations: tuple[str, ...]  # first = default
    #: metric names (keys of Evaluation.metrics) shown per request, and how to format them
    request_metrics: tuple[tuple[str, str], ...]
    #: the metric the deletion ledger and the headline use for "forgotten"
    forget_metric: str
    methods: tuple[str, ...]  # the unlearning methods it accepts

    def default_classes(self, ds: Any, settings: WorkloadSettings) -> tuple[list, list, list]: ...
    def settings(self, configuration: str) -> WorkloadSettings: ...
    def load(self, data_dir: str | None, seed: int, download: bool) -> Any: ...
    def prepare(self, ds: Any, order: list[int], settings: WorkloadSettings, seed: int,
                gen: torch.Generator) -> Any: ...
    def setup(self, data: Any, seed: int, progress: bool) -> None: ...
    def initial_columns(self, state: ClassState, order: list[int]) -> Columns: ...
    def build_model(self, n_columns: int, settings: WorkloadSettings) -> nn.Module: ...
    def deploy_exclude(self, settings: WorkloadSettings) -> tuple[str, ...]: ...
    def calibration(self, data: Any, classes: list[int], columns: Columns, settings: WorkloadSettings
                    ) -> Callable[[nn.Module], Any]: ...
    def pretrain(self, model: nn.Module, data: Any, classes: list[int], columns: Columns,
                 settings: WorkloadSettings, seed: int, progress: bool, desc: str) -> dict[str, Any]: ...
    def objective(self, kind: str, model: nn.Module, data: Any, *, forget: list[int], new: list[int],
                  state: ClassState, columns: Columns, settings: WorkloadSettings, method: str,
                  gen: torch.Generator, seed: int, budget: TrainConfig | None = None) -> Objective: ...
    def extend(self, model: nn.Module, path: str, new: list[int], columns: Columns, chip: Any, label: str,
               bits: int) -> Extension: ...
    def counting(self, model: nn.Module, ledger: Ledger) -> AbstractContextManager[Any]: ...
    def evaluate(self, model: nn.Module, data: Any, state: ClassState, columns: Columns, *, key: str,
                 title: str) -> Evaluation: ...
    def retention_metric(self, model: nn.Module, data: Any, state: ClassState, columns: Columns
                         ) -> tuple[str, float]: ...
    def inference(self, model: nn.Module, data: Any, state: ClassState, columns: Columns, ledger: Ledger
                  ) -> int: ...
    def extras(self, ctx: Any) -> dict[str, Any]: ...
    def report_section(self, result: Any, out: Path | None) -> str: ...


# --------------------------------------------------------------------------- registry
def _registry() -> dict[str, Callable[[], Workload]]:
    from rmlora.tasks.face import FaceWorkload
    from rmlora.tasks.speaker import SpeakerWorkload
    from rmlora.tasks.style_workload import StyleWorkload

    return {"face": FaceWorkload, "speaker": SpeakerWorkload, "style": StyleWorkload}


def workload_names() -> list[str]:
    return list(_registry())


def get_workload(name: str) -> Workload:
    """The registered workload ``name``; one clear error for an unknown one."""
    reg = _registry()
    if name not in reg:
        raise RmloraError(f"unknown workload {name!r}; known: {', '.join(reg)}")
    return reg[name]()


def iter_settings_help(w: Workload) -> Iterator[tuple[str, str, Any]]:
    """(field, help, default) of a workload's settings (``rmlora workloads``)."""
    s = w.settings(w.configurations[0])
    for f in dataclasses.fields(s):
        yield f.name, f.metadata.get("help", ""), getattr(s, f.name)
