"""What the two classification workloads (face, speaker) share: data views, float
training, the forget/learn objectives, the unlearning literature's metrics.

Every model choice is made on validation data; test data is only evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.adapters import DigitalRows
from rmlora.costs import Ledger, counting
from rmlora.hardware.calibration import inherit_ranges
from rmlora.hardware.layers import AnalogLinear
from rmlora.methods import METHODS, Batches, fit, make_objective, snapshot
from rmlora.methods.paths import head_in_features
from rmlora.metrics import accuracy, forget_mia_auc, mia_efficacy, per_sample_loss
from rmlora.scenario.workload import CALIBRATION_EXAMPLES, ClassState, Columns, Evaluation, Extension, Objective, WorkloadSettings

#: logit of a class a path has no live column for (it can never be predicted)
FLOOR = DigitalRows.FLOOR
TIE = 0.01  # weight of the validation loss in the selection scores (accuracy dominates)


@dataclass
class ClassifierSettings(WorkloadSettings):
    """Classification settings: augmentation and the gradient-ascent cap."""

    augment_copies: int = 0
    ga_cap: float = 4.0


class ClassData:
    """One seed's splits of a labelled set, viewed through a path's output columns."""

    def __init__(self, workload: Any, ds: Any, order: list[int], splits: dict[str, Any], gen: torch.Generator,
                 copies: int) -> None:
        self.workload, self.ds, self.order, self.splits = workload, ds, order, splits
        self.gen, self.copies = gen, copies
        self.names = [ds.names[c] for c in order]

    def _sub(self, split: str, labels: list[int]):
        ds = self.splits[split]
        keep = torch.isin(ds.labels, torch.tensor(labels, dtype=torch.long))
        return ds.subset(keep.nonzero().squeeze(1))

    @staticmethod
    def _map(y: torch.Tensor, columns: Columns) -> torch.Tensor:
        live = [(c, j) for j, c in enumerate(columns) if c is not None]
        size = max([int(y.max()) + 1 if len(y) else 0] + [c + 1 for c, _ in live])
        lut = torch.full((size,), -1, dtype=torch.long)
        for c, j in live:
            lut[c] = j
        return lut[y.long()]

    def xy(self, split: str, labels: list[int], columns: Columns, augment: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of ``labels`` in ``split`` and their column indices (``columns``);
        ``augment`` adds the workload's augmented copies (training data only)."""
        sub = self._sub(split, labels)
        if augment and self.copies > 0:
            x, y = self.workload.augment(sub, self.gen, self.copies)
        else:
            x, y = self.workload.inputs(sub), sub.labels
        return x, self._map(y, columns)

    def rehearsal(self, classes: list[int], per_class: int | None, columns: Columns
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` (all if None) augmented training examples of each of ``classes``."""
        xs, ys = [], []
        for c in classes:
            sub = self._sub("train", [c])
            if per_class is not None:
                sub = sub.subset(torch.randperm(len(sub.labels), generator=self.gen)[:per_class])
            x, y = (self.workload.augment(sub, self.gen, self.copies) if self.copies
                    else (self.workload.inputs(sub), sub.labels))
            xs.append(x)
            ys.append(self._map(y, columns))
        return torch.cat(xs), torch.cat(ys)


class ColumnView(nn.Module):
    """Logits of ``model`` rearranged into the scenario's class order ``order``; a
    class without a live column gets :data:`FLOOR`."""

    def __init__(self, model: nn.Module, columns: Columns, order: list[int]) -> None:
        super().__init__()
        self.model = model
        pos = {c: i for i, c in enumerate(order)}
        pairs = [(j, pos[c]) for j, c in enumerate(columns) if c is not None]
        self.register_buffer("src", torch.tensor([j for j, _ in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("dst", torch.tensor([i for _, i in pairs], dtype=torch.long), persistent=False)
        self.n = len(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        out = torch.full((z.shape[0], self.n), FLOOR, dtype=z.dtype, device=z.device)
        out[:, self.dst.to(z.device)] = z[:, self.src.to(z.device)]
        return out


def _val_acc(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> float:
    if len(xy[1]) == 0:
        return 0.0
    a = accuracy(model, *xy)
    return 0.0 if math.isnan(a) else a


def _val_loss(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean cross-entropy (nats), capped at 20: breaks ties between checkpoints of equal accuracy."""
    if len(xy[1]) == 0:
        return 0.0
    return float(per_sample_loss(model, *xy).clamp(max=20).mean())


class ClassificationWorkload:
    """The shared part of face and speaker; subclasses give data, model and settings."""

    request_metrics = (("forget_acc", "forget"), ("retain_acc", "retain"), ("test_acc", "test"),
                       ("new_class_acc", "new"))
    forget_metric = "forget_acc"
    methods = METHODS

    def default_classes(self, ds: Any, settings: ClassifierSettings) -> tuple[list, list, list]:
        """learn / forget / add classes of the default scenario."""
        return settings.learn, settings.forget, settings.add

    # -- data --------------------------------------------------------------
    def prepare(self, ds: Any, order: list[int], settings: ClassifierSettings, seed: int,
                gen: torch.Generator) -> ClassData:
        return ClassData(self, ds, order, self.split(ds, order, seed, settings), gen, settings.augment_copies)

    def setup(self, data: ClassData, seed: int, progress: bool) -> None:
        """Nothing to prepare beyond the splits."""

    def initial_columns(self, state: ClassState, order: list[int]) -> Columns:
        return list(state.initial)

    def deploy_exclude(self, settings: WorkloadSettings) -> tuple[str, ...]:
        return ()

    def calibration(self, data: ClassData, classes: list[int], columns: Columns, settings: WorkloadSettings
                    ) -> Callable[[nn.Module], Any]:
        """Converter calibration at deployment: up to CALIBRATION_EXAMPLES training examples of
        ``classes`` (evenly spaced), un-augmented."""
        x = data.xy("train", classes, columns)[0]
        x = x[torch.linspace(0, len(x) - 1, min(len(x), CALIBRATION_EXAMPLES)).long()] if len(x) else x

        def feed(model: nn.Module) -> None:
            for i in range(0, len(x), 256):
                model(x[i:i + 256])
        feed.examples = len(x)
        return feed

    def counting(self, model: nn.Module, ledger: Ledger, as_digital: bool = False) -> AbstractContextManager:
        return counting(model, ledger, as_digital=as_digital)

    # -- training ----------------------------------------------------------
    def pretrain(self, model: nn.Module, data: ClassData, classes: list[int], columns: Columns,
                 settings: ClassifierSettings, seed: int, progress: bool, desc: str) -> dict[str, Any]:
        """Float training from scratch on ``classes`` (pretraining and the retrained reference)."""
        x, y = data.xy("train", classes, columns, augment=True)
        val = data.xy("val", classes, columns)
        batches = Batches(x, y, settings.pretrain.batch_size, data.gen)

        def loss(step: int) -> torch.Tensor:
            xb, yb = batches.sample()
            return F.cross_entropy(model(xb), yb)
        h = fit(model, list(model.parameters()), loss, settings.pretrain,
                score_fn=lambda: _val_acc(model, val) - TIE * _val_loss(model, val), desc=desc, progress=progress)
        for p in model.parameters():
            p.requires_grad_(False)
        return {k: h[k] for k in ("best_step", "best_score")}

    def objective(self, kind: str, model: nn.Module, data: ClassData, *, forget: list[int], new: list[int],
                  state: ClassState, columns: Columns, settings: ClassifierSettings, method: str,
                  gen: torch.Generator, seed: int) -> Objective:
        """``forget``: erase ``forget`` while keeping ``state.kept`` (the method's objective);
        ``learn``: learn ``new`` (empty for a repair) while rehearsing the kept classes."""
        kept = [c for c in state.kept if c not in forget and c not in new]
        gone = [c for c in state.forgotten if c not in new] + [c for c in forget if c not in state.forgotten]
        v_kept = data.xy("val", kept, columns)
        v_gone = data.xy("val", gone, columns)
        bs = settings.pretrain.batch_size
        if kind == "forget":
            xf, yf = data.xy("train", forget, columns, augment=True)
            xr, yr = data.xy("train", kept, columns, augment=True)
            df_plain = data.xy("train", forget, columns)
            kept_cols = [j for j, c in enumerate(columns) if c in kept]
            teacher = snapshot(model) if method == "scrub" else None
            loss = make_objective(method, model, Batches(xf, yf, bs, gen), Batches(xr, yr, bs, gen),
                                  retained_classes=kept_cols, generator=gen, forget_weight=settings.forget_weight,
                                  cap=settings.ga_cap, teacher=teacher)

            def score() -> float:
                return (_val_acc(model, v_kept) - 0.5 * (_val_acc(model, v_gone) + _val_acc(model, df_plain))
                        - TIE * _val_loss(model, v_kept))
            return Objective(loss, score)
        # adding classes rehearses a few examples of each kept class; a repair trains on all of them
        xh, yh = data.rehearsal(kept, settings.rehearsal_per_class if new else None, columns)
        if new:
            xn, yn = data.xy("train", new, columns, augment=True)
            xh, yh = torch.cat([xn, xh]), torch.cat([yn, yh])
        v_new = data.xy("val", new, columns)
        batches = Batches(xh, yh, bs, gen)

        def loss(step: int) -> torch.Tensor:
            xb, yb = batches.sample()
            return F.cross_entropy(model(xb), yb)

        def score() -> float:  # the weaker of new and kept classes decides
            acc = min(_val_acc(model, v_new), _val_acc(model, v_kept)) if new else _val_acc(model, v_kept)
            losses = 0.5 * (_val_loss(model, v_new) + _val_loss(model, v_kept)) if new else _val_loss(model, v_kept)
            return acc - _val_acc(model, v_gone) - TIE * losses
        return Objective(loss, score)

    def extend(self, model: nn.Module, path: str, new: list[int], columns: Columns, chip: Any, label: str,
               bits: int) -> Extension:
        """New output rows for ``new``: digital on the adapter path, programmed into the
        arrays on the full update (whose whole head is analogue)."""
        head = model.head
        rows = DigitalRows(head, head_in_features(head), len(new))
        digital_bits = rows.bits(bits)
        if path == "full":
            rows.rows = AnalogLinear.from_float(rows.rows, chip, f"head.rows.{label}")
            rows.rows.program()
            base = head
            while not isinstance(base, AnalogLinear):  # the deployed head under earlier rows
                base = base.base
            inherit_ranges(rows.rows.core, base.core)  # the same input vectors as the head
            digital_bits = 0
        model.head = rows
        first = len(columns)  # the new rows' first column

        def undo(current: Columns) -> Columns:
            if model.head is rows:  # the last rows added: take them off, the head is as before
                model.head = rows.base
                return current[:first]
            rows.enabled = False  # rows under later ones: switched off, their columns dead
            return [None if first <= j < first + len(new) else c for j, c in enumerate(current)]
        return Extension(list(rows.rows.parameters()), digital_bits, list(columns) + list(new), undo=undo)

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns, *, key: str = "",
                 title: str = "") -> Evaluation:
        """Accuracy on Df (train), Dr (train), kept test, new test; MIA on Df; per-class test accuracy."""
        view = ColumnView(model, columns, data.order).eval()
        order = data.order
        f, kept, new = state.forgotten, state.kept, state.added
        xf, yf = data.xy("train", f, order)
        xfh = torch.cat([data.xy("val", f, order)[0], data.xy("test", f, order)[0]])
        yfh = torch.cat([data.xy("val", f, order)[1], data.xy("test", f, order)[1]])
        xr, yr = data.xy("train", kept, order)
        xt, yt = data.xy("test", kept, order)
        nan = float("nan")
        m = {
            "forget_acc": accuracy(view, xf, yf) if f else nan,
            "forget_test_acc": accuracy(view, *data.xy("test", f, order)) if f else nan,
            "retain_acc": accuracy(view, xr, yr),
            "test_acc": accuracy(view, xt, yt),
            "new_class_acc": accuracy(view, *data.xy("test", new, order)) if new else nan,
            "mia_auc": forget_mia_auc(view, xf, yf, xfh, yfh) if f else nan,
            "mia_efficacy": mia_efficacy(view, xr, yr, xt, yt, xf, yf) if f else nan,
        }
        per_class = {data.ds.names[c]: accuracy(view, *data.xy("test", [c], order)) for c in order
                     if c in kept or c in f}
        return Evaluation(m, {"test_acc": per_class})

    def retention_metric(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns
                         ) -> tuple[str, float]:
        """Test accuracy of the kept classes."""
        view = ColumnView(model, columns, data.order).eval()
        return "test_acc", accuracy(view, *data.xy("test", state.kept, data.order))

    def inference(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns, ledger: Ledger,
                  as_digital: bool = False) -> int:
        """Count one inference of every test example of the classes the chip knows."""
        x = data.xy("test", [c for c in columns if c is not None], columns)[0]
        model.eval()
        with torch.no_grad(), counting(model, ledger, as_digital=as_digital):
            for i in range(0, len(x), 256):
                model(x[i:i + 256])
        return len(x)

    def extras(self, ctx: Any) -> dict[str, Any]:
        return {}

    def report_section(self, result: Any, out: Path | None) -> str:
        return ""

