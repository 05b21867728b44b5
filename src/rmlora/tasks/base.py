"""What a workload provides to the pipeline: data, splits, model, defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from rmlora.methods.train import TrainConfig


@dataclass
class TaskDefaults:
    """Hyper-parameters of a workload's scenario (``quick`` shortens every stage)."""

    learn: list[str | int]
    forget: list[str | int]
    add: list[str | int]
    method: str
    pretrain: TrainConfig
    unlearn_lora: TrainConfig
    unlearn_full: TrainConfig
    learn_lora: TrainConfig
    learn_full: TrainConfig
    rank: int = 4
    alpha: float = 8.0
    targets: list[str] | None = None  # glob patterns of the layers that get adapters (None: all)
    rehearsal_per_class: int = 2
    forget_weight: float = 1.0
    seeds: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


class Dataset(Protocol):
    names: list[str]
    labels: torch.Tensor
    source: str
    kind: str

    def resolve(self, ident: str | int) -> int: ...
    def subset(self, idx: Any) -> "Dataset": ...


class Task(Protocol):
    """A workload: face, speaker or style."""

    name: str
    unit: str  # what a class is called in messages: "identity", "speaker", "style"

    def defaults(self, quick: bool) -> TaskDefaults: ...
    def load(self, data_dir: str | None, seed: int, download: bool) -> Dataset: ...
    def split(self, ds: Dataset, labels: list[int], seed: int) -> dict[str, Dataset]: ...
    def inputs(self, ds: Dataset) -> torch.Tensor: ...
    def augment(self, ds: Dataset, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...
    def build_model(self, n_classes: int, seed: int) -> nn.Module: ...
