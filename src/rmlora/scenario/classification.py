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
from typing import Any, ClassVar

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.adapters import DigitalRows
from rmlora.config import ConfigBase, TrainConfig, _finite, _help, _positive_int
from rmlora.costs import Ledger, counting
from rmlora.errors import RmloraError
from rmlora.hardware.calibration import inherit_ranges
from rmlora.hardware.layers import AnalogLinear
from rmlora.methods import METHODS, Batches, UnlearnConfig, fit, make_objective, snapshot
from rmlora.methods.paths import head_in_features
from rmlora.metrics import (accuracy, kept_view_statistic, linear_probe, loss_auc, mia_efficacy, penultimate_features,
                            per_sample_loss, predict, relearn_steps)
from rmlora.scenario.workload import CALIBRATION_EXAMPLES, ClassState, Columns, Evaluation, Extension, Objective, WorkloadSettings

#: logit of a class a path has no live column for (it can never be predicted)
FLOOR = DigitalRows.FLOOR
TIE = 0.01  # weight of the validation loss in the selection scores (accuracy dominates)
#: forget-set examples the selection score reads (a fixed random subset: scoring a large forget set every few
#: steps would cost more than the training; 64 resolve accuracy in steps of 1.6 points)
SCORE_FORGET = 64


@dataclass
class AuditConfig(ConfigBase):
    """The white-box checks after the last request (rmlora.metrics.whitebox): relearning time and
    the linear probe. Attack settings, not a method's: nothing here is tuned."""

    section: ClassVar[str] = "audit"
    relearn_max_steps: int = _help("relearning: the attacker's step budget (results above it are censored)", 30)
    relearn_every: int = _help("relearning: check the forget accuracy every this many steps", 2)
    relearn_lr: float = _help("relearning: Adam learning rate of the attacker's LoRA adapter (the adapter "
                              "path's forget learning rate of the workload, not tuned)", 1e-2)
    relearn_batch: int = _help("relearning: forget examples per step (as many retain examples join them)", 16)
    relearn_target: float = _help("relearning: the forget accuracy that counts as relearned (0.9, as the "
                                  "issue that asked for the check states)", 0.9)
    probe: bool = _help("fit the linear probe on penultimate features", True)
    shadows: int | None = _help("likelihood-ratio attack: shadow models of each kind, taken from the other seeds "
                                "of a run with a fixed split (settings.split_seed); None: every other seed", None)

    def __post_init__(self) -> None:
        if self.shadows is not None:
            _positive_int("audit.shadows", self.shadows)
        _positive_int("audit.relearn_max_steps", self.relearn_max_steps)
        _positive_int("audit.relearn_every", self.relearn_every)
        _positive_int("audit.relearn_batch", self.relearn_batch)
        _finite("audit.relearn_lr", self.relearn_lr, 0.0, strict=True)
        _finite("audit.relearn_target", self.relearn_target, 0.0, strict=True)
        if self.relearn_target > 1:
            raise RmloraError(f"audit.relearn_target must lie in (0, 1], got {self.relearn_target}")


@dataclass
class ClassifierSettings(WorkloadSettings):
    """Classification settings: augmentation, the gradient-ascent cap, the unlearning methods'
    constants and learning rates, the data split's seed, the white-box checks."""

    augment_copies: int = 0
    ga_cap: float = 4.0
    split_seed: int | None = _help("seed of the train/val/test split and of random-sample forget sets; None: "
                                   "every run seed splits anew (a fixed split is what the likelihood-ratio "
                                   "attack needs: its shadow models are the other seeds' models)", None)
    unlearn: UnlearnConfig = _help("the unlearning methods' own constants", default_factory=UnlearnConfig)
    method_lr: dict[str, list[float]] = _help("forget learning rate per method: [adapter path, full update] "
                                              "(from the validation search, docs/evaluation.md); a method "
                                              "not listed uses forget_lora's and forget_full's", default_factory=dict)
    audit: AuditConfig = _help("relearning time and linear probe", default_factory=AuditConfig)

    def __post_init__(self) -> None:
        for m, lrs in self.method_lr.items():
            if m not in METHODS:
                raise RmloraError(f"settings.method_lr: unknown method {m!r}; known: {', '.join(METHODS)}")
            if (not isinstance(lrs, (list, tuple)) or len(lrs) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in lrs)):
                raise RmloraError(f"settings.method_lr.{m} must be [adapter path lr, full update lr] > 0, got {lrs!r}")

    def forget_budget(self, path: str, method: str) -> TrainConfig:
        """The forget stage's budget on ``path`` (lora, full) with ``method``'s searched learning rate."""
        base = super().forget_budget(path, method)
        lrs = self.method_lr.get(method)
        return base.replace(lr=float(lrs[0 if path == "lora" else 1])) if lrs else base


class ClassData:
    """One seed's splits of a labelled set, viewed through a path's output columns, and the
    random-sample forget sets drawn from its training split (``samples``: request index →
    rows of ``splits["train"]``)."""

    def __init__(self, workload: Any, ds: Any, order: list[int], splits: dict[str, Any], gen: torch.Generator,
                 copies: int, split_seed: int = 0) -> None:
        self.workload, self.ds, self.order, self.splits = workload, ds, order, splits
        self.gen, self.copies, self.split_seed = gen, copies, split_seed
        self.names = [ds.names[c] for c in order]
        self.samples: dict[int, torch.Tensor] = {}

    def _sub(self, split: str, labels: list[int], drop: torch.Tensor | None = None, rows: torch.Tensor | None = None):
        """``split``'s examples of ``labels``, without the rows ``drop``, or exactly the rows ``rows``."""
        ds = self.splits[split]
        if rows is not None:
            return ds.subset(rows.sort().values)
        keep = torch.isin(ds.labels, torch.tensor(labels, dtype=torch.long))
        if drop is not None and len(drop):
            keep[drop] = False
        return ds.subset(keep.nonzero().squeeze(1))

    # -- random-sample forgetting ------------------------------------------------
    def draw_samples(self, index: int, fraction: float, kept: list[int], forgotten: list[int], unit: str
                     ) -> torch.Tensor:
        """Rows forgotten by request ``index`` (``forget:FRACTION``): ``round(fraction·n)`` of the n
        training examples of ``kept`` not yet forgotten (earlier requests ``forgotten``), uniformly
        at random across classes, drawn from (split seed, index) so that every run seed of a fixed
        split forgets the same examples. Refuses a draw that is empty or leaves a class with no
        training example."""
        if index in self.samples:
            return self.samples[index]
        ds = self.splits["train"]
        pool = torch.isin(ds.labels, torch.tensor(kept, dtype=torch.long))
        gone = self.sample_rows(forgotten)
        if len(gone):
            pool[gone] = False
        pool = pool.nonzero().squeeze(1)
        n = int(round(fraction * len(pool)))
        if n < 1:
            raise RmloraError(f"forget:{100 * fraction:g}% of {len(pool)} training examples forgets none; "
                              "give a larger fraction")
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.split_seed, index]).generate_state(1)[0]))
        rows = pool[torch.randperm(len(pool), generator=g)[:n]].sort().values
        left = pool[~torch.isin(pool, rows)]
        empty = [c for c in kept if not bool((ds.labels[left] == c).any())]
        if empty:
            raise RmloraError(f"forget:{100 * fraction:g}% would leave {unit} {self.ds.names[empty[0]]} with no "
                              f"training example ({len(empty)} {unit}(s) in all); forget a smaller fraction")
        self.samples[index] = rows
        return rows

    def sample_rows(self, requests: list[int]) -> torch.Tensor:
        """Rows of ``splits["train"]`` forgotten by the sample requests ``requests``."""
        parts = [self.samples[i] for i in requests]
        return torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.long)

    def forget_xy(self, state: ClassState, columns: Columns, augment: bool = False,
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Df: the training examples of the forgotten classes and the forgotten samples."""
        ds = self.splits["train"]
        cls = torch.isin(ds.labels, torch.tensor(state.forgotten, dtype=torch.long)).nonzero().squeeze(1)
        rows = torch.unique(torch.cat([cls, self.sample_rows(state.samples)]))
        return self._xy(self._sub("train", [], rows=rows), columns, augment, gen)

    def retain_xy(self, state: ClassState, columns: Columns, augment: bool = False,
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dr: the kept classes' training examples without the forgotten samples."""
        return self._xy(self._sub("train", state.kept, drop=self.sample_rows(state.samples)), columns, augment, gen)

    def _xy(self, sub: Any, columns: Columns, augment: bool, gen: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and column indices of ``sub``; ``augment`` adds augmented copies drawn from
        ``gen`` (default: the seed's data generator)."""
        if augment and self.copies > 0 and len(sub.labels):
            x, y = self.workload.augment(sub, gen or self.gen, self.copies)
        else:
            x, y = self.workload.inputs(sub), sub.labels
        return x, self._map(y, columns)

    @staticmethod
    def _map(y: torch.Tensor, columns: Columns) -> torch.Tensor:
        live = [(c, j) for j, c in enumerate(columns) if c is not None]
        size = max([int(y.max()) + 1 if len(y) else 0] + [c + 1 for c, _ in live])
        lut = torch.full((size,), -1, dtype=torch.long)
        for c, j in live:
            lut[c] = j
        return lut[y.long()]

    def xy(self, split: str, labels: list[int], columns: Columns, augment: bool = False,
           drop: torch.Tensor | None = None, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of ``labels`` in ``split`` (without the rows ``drop``) and their column indices
        (``columns``); ``augment`` adds the workload's augmented copies (training data only) drawn
        from ``gen`` (default: the seed's data generator)."""
        return self._xy(self._sub(split, labels, drop), columns, augment, gen)

    def rehearsal(self, classes: list[int], per_class: int | None, columns: Columns,
                  drop: torch.Tensor | None = None, gen: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` (all if None) augmented training examples of each of ``classes`` (never
        the rows ``drop``: forgotten samples), drawn from ``gen`` (default: the data generator)."""
        gen = gen or self.gen
        xs, ys = [], []
        for c in classes:
            sub = self._sub("train", [c], drop)
            if per_class is not None:
                sub = sub.subset(torch.randperm(len(sub.labels), generator=gen)[:per_class])
            x, y = (self.workload.augment(sub, gen, self.copies) if self.copies
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


def _head_module(model: nn.Module) -> nn.Module:
    """The output layer whose input is the penultimate feature vector (``model.head``)."""
    head = getattr(model, "head", None)
    if head is None:
        raise RmloraError(f"{type(model).__name__} has no head: the linear probe needs one")
    return head


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
    #: it forgets random samples (``forget:10%``) and takes ``samples`` and ``budget`` in :meth:`objective`
    sample_forgetting = True

    def default_classes(self, ds: Any, settings: ClassifierSettings) -> tuple[list, list, list]:
        """learn / forget / add classes of the default scenario."""
        return settings.learn, settings.forget, settings.add

    # -- data --------------------------------------------------------------
    def prepare(self, ds: Any, order: list[int], settings: ClassifierSettings, seed: int,
                gen: torch.Generator) -> ClassData:
        split_seed = seed if settings.split_seed is None else settings.split_seed
        return ClassData(self, ds, order, self.split(ds, order, split_seed, settings), gen, settings.augment_copies,
                         split_seed)

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

    def counting(self, model: nn.Module, ledger: Ledger) -> AbstractContextManager:
        return counting(model, ledger)

    # -- training ----------------------------------------------------------
    def pretrain(self, model: nn.Module, data: ClassData, classes: list[int], columns: Columns,
                 settings: ClassifierSettings, seed: int, progress: bool, desc: str, samples: list[int] = ()
                 ) -> dict[str, Any]:
        """Float training from scratch on ``classes`` without the random samples forgotten by the
        requests ``samples`` (pretraining and the retrained reference); augmentation and batches
        come from ``seed`` alone, so that a model read from a cache equals a trained one."""
        g = torch.Generator().manual_seed(seed)
        x, y = data.xy("train", classes, columns, augment=True, drop=data.sample_rows(list(samples)), gen=g)
        val = data.xy("val", classes, columns)
        batches = Batches(x, y, settings.pretrain.batch_size, g)

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
                  gen: torch.Generator, seed: int, samples: list[int] = (), budget: TrainConfig | None = None
                  ) -> Objective:
        """``forget``: erase the classes ``forget`` or the random samples of the requests ``samples``
        while keeping the rest of ``state.kept`` (the method's objective; ``budget``: the stage's
        steps and batch size, default the pretraining batch size);
        ``learn``: learn ``new`` (empty for a repair) while rehearsing the kept classes.

        The validation score that picks the checkpoint: class-wise, kept accuracy minus the
        forgotten classes' (validation) and the forget set's accuracy; sample-wise, kept validation
        accuracy minus the distance between the forget set's accuracy and it (forgotten examples
        should be recognised as well as unseen ones, no better, no worse)."""
        kept = [c for c in state.kept if c not in forget and c not in new]
        gone = [c for c in state.forgotten if c not in new] + [c for c in forget if c not in state.forgotten]
        v_kept = data.xy("val", kept, columns)
        v_gone = data.xy("val", gone, columns)
        bs = (budget or settings.pretrain).batch_size
        dropped = data.sample_rows(state.samples)
        if kind == "forget":
            after = state.copy()
            after.kept, after.forgotten, after.samples = kept, gone, list(state.samples) + list(samples)
            if samples:
                rows = data.sample_rows(list(samples))
                xf, yf = data._xy(data._sub("train", [], rows=rows), columns, True, gen)
                df_plain = data._xy(data._sub("train", [], rows=rows), columns, False)
            else:
                xf, yf = data.xy("train", forget, columns, augment=True, gen=gen)
                df_plain = data.xy("train", forget, columns)
            pick = torch.randperm(len(df_plain[1]), generator=torch.Generator().manual_seed(seed))[:SCORE_FORGET]
            df_plain = (df_plain[0][pick], df_plain[1][pick])
            xr, yr = data.retain_xy(after, columns, augment=True, gen=gen)
            kept_cols = [j for j, c in enumerate(columns) if c in kept]
            teacher = snapshot(model) if method == "scrub" else None
            un = make_objective(method, model, Batches(xf, yf, bs, gen), Batches(xr, yr, bs, gen),
                                retained_classes=kept_cols, generator=gen, forget_weight=settings.forget_weight,
                                cap=settings.ga_cap, teacher=teacher, config=settings.unlearn,
                                steps=budget.steps if budget else None)

            def score() -> float:
                acc = _val_acc(model, v_kept)
                miss = (0.5 * _val_acc(model, v_gone) if gone else 0.0)
                if samples:
                    miss += abs(_val_acc(model, df_plain) - acc)
                else:
                    miss += 0.5 * _val_acc(model, df_plain)
                return acc - miss - TIE * _val_loss(model, v_kept)
            return Objective(un.loss, score, un.finish)
        # adding classes rehearses a few examples of each kept class; a repair trains on all of them
        xh, yh = data.rehearsal(kept, settings.rehearsal_per_class if new else None, columns, dropped, gen)
        if new:
            xn, yn = data.xy("train", new, columns, augment=True, gen=gen)
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
        """Accuracy on Df (train), Dr (train), kept test, new test; membership inference on Df;
        per-class test accuracy.

        ``mia_auc``: loss-threshold AUC of Df (members) against held-out examples of the same
        classes (val + test of the forgotten classes; test of the kept classes for forgotten
        samples); ``mia_gap`` = |mia_auc − 0.5|, the distance an attacker can use either way.
        ``mia_efficacy`` (SalUn's SVC attack) only for forgotten samples: for a forgotten class
        its confidence feature is ~0 for every path that suppresses the class, so it is left out."""
        view = ColumnView(model, columns, data.order).eval()
        order = data.order
        f, kept, new = state.forgotten, state.kept, state.added
        xf, yf = data.forget_xy(state, order)
        xr, yr = data.retain_xy(state, order)
        shown = [c for c in order if c in kept or c in f]
        xa, ya = data.xy("test", shown, order)  # every test example scored once, then split by class
        _, pred = predict(view, xa)
        hit = (pred == ya).double()
        pos = {c: i for i, c in enumerate(order)}

        def acc_of(classes: list[int]) -> float:
            sel = torch.isin(ya, torch.tensor([pos[c] for c in classes], dtype=torch.long))
            return float(hit[sel].mean()) if bool(sel.any()) else float("nan")
        xt, yt = data.xy("test", kept, order)
        held = [data.xy("val", f, order), data.xy("test", f, order)] + ([(xt, yt)] if state.samples else [])
        xfh, yfh = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
        nan = float("nan")
        auc = (loss_auc(per_sample_loss(view, xf, yf), per_sample_loss(view, xfh, yfh))
               if len(yf) and len(yfh) else nan)
        xs, ys = data._xy(data._sub("train", [], rows=data.sample_rows(state.samples)), order, False)
        m = {
            "forget_acc": accuracy(view, xf, yf) if len(yf) else nan,
            "forget_test_acc": acc_of(f) if f else nan,
            "retain_acc": accuracy(view, xr, yr),
            "test_acc": acc_of(kept),
            "new_class_acc": acc_of(new) if new else nan,
            "mia_auc": auc,
            "mia_gap": abs(auc - 0.5),
            "mia_efficacy": mia_efficacy(view, xr, yr, xt, yt, xs, ys) if len(ys) else nan,
        }
        per_class = {data.ds.names[c]: acc_of([c]) for c in shown}
        return Evaluation(m, {"test_acc": per_class})

    def audit(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns,
              settings: ClassifierSettings, gen: torch.Generator, rank: int, alpha: float,
              relearn: bool = True, targets: list[str] | None = None) -> dict[str, Any]:
        """What an attacker measures on one path's model after the last request (Df as in
        :meth:`evaluate`): ``attack_stats``, the likelihood-ratio attack's statistic of every Df
        example over the reported (kept) classes; ``probe_acc``, a linear probe's accuracy on Df
        (trained on the penultimate features of the validation examples of every learned class);
        ``relearn_steps``, the steps a fresh adapter (rank, alpha and layers ``targets`` of the
        deployment's adapters: the attacker writes an adapter slot) needs to bring Df back to the
        target accuracy (``columns`` should show every class: an output mask is a switch the
        attacker can flip)."""
        order, cfg = data.order, settings.audit
        view = ColumnView(model, columns, order)
        xf, yf = data.forget_xy(state, order)
        if not len(yf):
            return {}
        visible = [i for i, c in enumerate(order) if c in state.kept]
        logits, _ = predict(view, xf)
        out: dict[str, Any] = {"attack_stats": kept_view_statistic(logits, yf, visible).tolist()}
        learned = [c for c in order if c in state.kept or c in state.forgotten]
        if cfg.probe:
            xv, yv = data.xy("val", learned, order)
            head = _head_module(model)
            out["probe_acc"] = linear_probe(penultimate_features(model, xv, head), yv,
                                            penultimate_features(model, xf, head), yf)
        if relearn:
            out["relearn_steps"] = relearn_steps(
                model, lambda m: ColumnView(m, columns, order), (xf, yf), data.retain_xy(state, order), rank=rank,
                alpha=alpha, lr=cfg.relearn_lr, batch_size=cfg.relearn_batch, max_steps=cfg.relearn_max_steps,
                every=cfg.relearn_every, target=cfg.relearn_target, generator=gen, targets=targets)
        return out

    def retention_metric(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns
                         ) -> tuple[str, float]:
        """Test accuracy of the kept classes."""
        view = ColumnView(model, columns, data.order).eval()
        return "test_acc", accuracy(view, *data.xy("test", state.kept, data.order))

    def inference(self, model: nn.Module, data: ClassData, state: ClassState, columns: Columns, ledger: Ledger
                  ) -> int:
        """Count one inference of every test example of the classes the chip knows."""
        x = data.xy("test", [c for c in columns if c is not None], columns)[0]
        model.eval()
        with torch.no_grad(), counting(model, ledger):
            for i in range(0, len(x), 256):
                model(x[i:i + 256])
        return len(x)

    def extras(self, ctx: Any) -> dict[str, Any]:
        return {}

    def report_section(self, result: Any, out: Path | None) -> str:
        return ""

