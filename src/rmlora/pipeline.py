"""learn → deploy → forget → learn new → report, for the adapter path, the
full-update baseline and the retrained reference.

:func:`run_demo` is what ``rmlora demo`` runs. Every model choice is made on
validation data; test data is only ever evaluated.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from rmlora import records
from rmlora.adapters import SramBuffer, save_adapter
from rmlora.costs import Ledger, cost_figures, counting, load_profile, ratios
from rmlora.errors import RmloraError
from rmlora.hardware import SimulatedChip, deploy
from rmlora.methods import METHODS, Batches, TrainConfig, fit, make_objective, snapshot
from rmlora.methods.paths import AdapterPath, FullPath
from rmlora.metrics import (accuracy, accuracy_matrix_summary, avg_gap, forget_mia_auc, mia_efficacy,
                            per_sample_loss)
from rmlora.report import write_report
from rmlora.runinfo import new_run_dir, seed_everything, versions, write_json
from rmlora.tasks.base import Task, TaskDefaults

#: The paper's reported ratios (arXiv 2601.10037, abstract: "up to").
PAPER_RATIOS = {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
METRICS = ("forget_acc", "retain_acc", "test_acc", "new_class_acc", "mia_auc")


@dataclass
class DemoConfig:
    """Everything ``rmlora demo`` takes."""

    task: str = "face"
    out: str | Path = "runs/demo"
    data_dir: str | None = None
    download: bool = False
    learn: list[str] | None = None
    forget: list[str] | None = None
    add: list[str] | None = None
    method: str | None = None
    preset: str = "rram-180nm"
    profile: str = "cmos-180nm"
    seed: int = 0
    seeds: int | None = None
    quick: bool = False
    pretrained: str | None = None
    progress: bool = True
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def get_task(name: str) -> Task:
    from rmlora.tasks import TASKS
    if name not in TASKS:
        raise RmloraError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]()


# --------------------------------------------------------------------------- data
class Data:
    """Inputs and model-index labels of one seed's splits."""

    def __init__(self, task: Task, ds, learn: list[int], forget: list[int], add: list[int], seed: int,
                 gen: torch.Generator, copies: int) -> None:
        self.task, self.gen, self.copies = task, gen, copies
        self.learn, self.forget, self.add = learn, forget, add
        self.retained = [c for c in learn if c not in forget]
        self.index = {lab: i for i, lab in enumerate(learn + add)}
        self.splits = task.split(ds, learn + add, seed)

    def idx(self, labels: list[int]) -> list[int]:
        return [self.index[c] for c in labels]

    def _sub(self, split: str, labels: list[int]):
        ds = self.splits[split]
        keep = torch.isin(ds.labels, torch.tensor(labels))
        return ds.subset(keep.nonzero().squeeze(1))

    def _map(self, y: torch.Tensor) -> torch.Tensor:
        lut = torch.full((int(y.max()) + 1 if len(y) else 1,), -1, dtype=torch.long)
        for k, v in self.index.items():
            if k < len(lut):
                lut[k] = v
        return lut[y]

    def xy(self, split: str, labels: list[int], augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        sub = self._sub(split, labels)
        if augment and self.copies > 0:
            x, y = self.task.augment(sub, self.gen, self.copies)
        else:
            x, y = self.task.inputs(sub), sub.labels
        return x, self._map(y)

    def rehearsal(self, per_class: int, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` training examples of each retained class (never the forgotten ones)."""
        xs, ys = [], []
        for c in self.retained:
            sub = self._sub("train", [c])
            pick = torch.randperm(len(sub.labels), generator=self.gen)[:per_class]
            sub = sub.subset(pick)
            x, y = (self.task.augment(sub, self.gen, self.copies) if augment and self.copies
                    else (self.task.inputs(sub), sub.labels))
            xs.append(x)
            ys.append(self._map(y))
        return torch.cat(xs), torch.cat(ys)


# --------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, d: Data, with_new: bool) -> dict[str, Any]:
    """The unlearning literature's metrics, on the current state of ``model``."""
    model.eval()
    xf, yf = d.xy("train", d.forget)
    xfh = torch.cat([d.xy("val", d.forget)[0], d.xy("test", d.forget)[0]])
    yfh = torch.cat([d.xy("val", d.forget)[1], d.xy("test", d.forget)[1]])
    xr, yr = d.xy("train", d.retained)
    xt, yt = d.xy("test", d.retained)
    out = {
        "forget_acc": accuracy(model, xf, yf),
        "forget_test_acc": accuracy(model, *d.xy("test", d.forget)),
        "retain_acc": accuracy(model, xr, yr),
        "test_acc": accuracy(model, xt, yt),
        "new_class_acc": accuracy(model, *d.xy("test", d.add)) if with_new else float("nan"),
        "mia_auc": forget_mia_auc(model, xf, yf, xfh, yfh),
        "mia_efficacy": mia_efficacy(model, xr, yr, xt, yt, xf, yf),
    }
    per_class = {}
    for c in d.learn + (d.add if with_new else []):
        per_class[str(c)] = accuracy(model, *d.xy("test", [c]))
    out["per_class_test_acc"] = per_class
    return out


def _val_acc(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> float:
    a = accuracy(model, *xy)
    return 0.0 if math.isnan(a) else a


def _val_loss(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean cross-entropy (nats): breaks ties between checkpoints of equal accuracy."""
    if len(xy[1]) == 0:
        return 0.0
    return float(per_sample_loss(model, *xy).clamp(max=20).mean())


TIE = 0.01  # weight of the validation loss in the selection scores (accuracy dominates)


# --------------------------------------------------------------------------- training helpers
def train_float(task: Task, model: nn.Module, d: Data, classes: list[int], cfg: TrainConfig, progress: bool,
                desc: str) -> dict:
    """Train a float model from scratch on ``classes`` (pretraining and the retrain reference)."""
    x, y = d.xy("train", classes, augment=True)
    val = d.xy("val", classes)
    batches = Batches(x, y, cfg.batch_size, d.gen)

    def loss(step: int) -> torch.Tensor:
        xb, yb = batches.sample()
        return F.cross_entropy(model(xb), yb)
    return fit(model, list(model.parameters()), loss, cfg,
               score_fn=lambda: _val_acc(model, val) - TIE * _val_loss(model, val), desc=desc,
               progress=progress)


def _inference_ledger(model: nn.Module, x: torch.Tensor, adc_bits: int | None, as_digital: bool = False) -> Ledger:
    led = Ledger(adc_bits=adc_bits or 8)
    model.eval()
    with torch.no_grad(), counting(model, led, as_digital=as_digital):
        for i in range(0, len(x), 256):
            model(x[i:i + 256])
    return led


def _stage(path, label: str, loss_builder, cfg: TrainConfig, score_fn, adc_bits, progress: bool,
           rows_lr: float | None = None) -> dict:
    """Train one update on one path and price it; new output rows (if any) train at ``rows_lr``."""
    train_led = Ledger(adc_bits=adc_bits or 8)
    params: list = [{"params": path.begin(label)}]
    if path.new_rows():
        params.append({"params": path.new_rows(), "lr": rows_lr or cfg.lr})
    loss = loss_builder(path.model)
    hist = fit(path.model, params, loss, cfg, score_fn=lambda: score_fn(path.model),
               after_step=lambda: path.after_step(train_led), ledger=train_led,
               desc=f"{path.name}: {label}", progress=progress)
    deploy_led = path.deploy(label)
    return {"train": train_led, "deploy": deploy_led, "history": hist}


# --------------------------------------------------------------------------- one seed
def run_seed(task: Task, ds, learn: list[int], forget: list[int], add: list[int], d_: TaskDefaults, method: str,
             cfg: DemoConfig, seed: int, save_dir: Path | None) -> dict[str, Any]:
    gen = seed_everything(seed)
    profile = load_profile(cfg.profile)
    data = Data(task, ds, learn, forget, add, seed, gen, d_.extra.get("augment_copies", 0))
    K = len(learn)
    retained_idx = data.idx(data.retained)
    prog = cfg.progress

    # 1. learn the first classes (float) and deploy them
    model = task.build_model(K, seed)
    if cfg.pretrained:
        load_weights(model, cfg.pretrained)
        pre_hist = {"best_step": 0, "loaded_from": str(cfg.pretrained)}
    else:
        pre_hist = train_float(task, model, data, learn, d_.pretrain, prog, "pretrain (float)")
    float_test = accuracy(model, *data.xy("test", learn))
    float_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    chip = SimulatedChip(cfg.preset, seed=seed)
    dep = deploy(model, chip, profile=profile)
    field_chip = copy.deepcopy(chip)
    deployed = evaluate(model, data, with_new=False)
    deployed["learned_test_acc"] = accuracy(model, *data.xy("test", learn))

    lora = AdapterPath(model, chip, profile, r=d_.rank, alpha=d_.alpha, targets=d_.targets)
    full_model = copy.deepcopy(model)
    full = FullPath(full_model, next(m.core.chip for m in full_model.modules() if hasattr(m, "core")), field_chip,
                    profile)

    # 2. forget
    xf, yf = data.xy("train", forget, augment=True)
    xr, yr = data.xy("train", data.retained, augment=True)
    v_ret, v_forget, df_plain = data.xy("val", data.retained), data.xy("val", forget), data.xy("train", forget)
    names = [ds.names[c] for c in forget]
    f_label = "forget-" + "-".join(names)

    def forget_score(m: nn.Module) -> float:
        return (_val_acc(m, v_ret) - 0.5 * (_val_acc(m, v_forget) + _val_acc(m, df_plain))
                - TIE * _val_loss(m, v_ret))

    def forget_loss(m: nn.Module):
        teacher = snapshot(m) if method == "scrub" else None
        return make_objective(method, m, Batches(xf, yf, d_.pretrain.batch_size, gen),
                              Batches(xr, yr, d_.pretrain.batch_size, gen), retained_classes=retained_idx,
                              generator=gen, forget_weight=d_.forget_weight, cap=d_.extra.get("ga_cap", 4.0),
                              teacher=teacher)

    stages: dict[str, dict[str, Any]] = {"lora": {}, "full": {}}
    results: dict[str, dict[str, Any]] = {"lora": {}, "full": {}}
    for path, tcfg in ((lora, d_.unlearn_lora), (full, d_.unlearn_full)):
        stages[path.name]["forget"] = _stage(path, f_label, forget_loss, tcfg, forget_score, chip.adc_bits, prog)
        results[path.name]["after_forget"] = evaluate(path.model, data, with_new=False)

    retrain_u = task.build_model(K, seed + 1)
    train_float(task, retrain_u, data, data.retained, d_.pretrain, prog, "retrain on Dr (reference)")
    deploy(retrain_u, SimulatedChip(cfg.preset, seed=seed + 1), profile=profile)
    retrain_after_forget = evaluate(retrain_u, data, with_new=False)

    # 3. learn the new classes, every earlier adapter still active
    xn, yn = data.xy("train", add, augment=True)
    xh, yh = data.rehearsal(d_.rehearsal_per_class)
    x_new, y_new = torch.cat([xn, xh]), torch.cat([yn, yh])
    v_new = data.xy("val", add)
    n_label = "learn-" + "-".join(ds.names[c] for c in add)

    def learn_score(m: nn.Module) -> float:  # the weaker of new and kept classes decides
        return (min(_val_acc(m, v_new), _val_acc(m, v_ret)) - _val_acc(m, v_forget)
                - TIE * 0.5 * (_val_loss(m, v_new) + _val_loss(m, v_ret)))

    def learn_loss(m: nn.Module):
        batches = Batches(x_new, y_new, d_.pretrain.batch_size, gen)

        def loss(step: int) -> torch.Tensor:
            xb, yb = batches.sample()
            return F.cross_entropy(m(xb), yb)
        return loss

    for path, tcfg in ((lora, d_.learn_lora), (full, d_.learn_full)):
        path.extend_head(len(add))
        stages[path.name]["add"] = _stage(path, n_label, learn_loss, tcfg, learn_score, chip.adc_bits, prog,
                                          rows_lr=d_.learn_lora.lr)
        results[path.name]["final"] = evaluate(path.model, data, with_new=True)

    retrain = task.build_model(K + len(add), seed + 2)
    train_float(task, retrain, data, data.retained + add, d_.pretrain, prog, "retrain on Dr + new (reference)")
    deploy(retrain, SimulatedChip(cfg.preset, seed=seed + 2), profile=profile)
    retrain_final = evaluate(retrain, data, with_new=True)

    # 4. costs: the two stages together, inference per sample on the final test set
    x_test = data.xy("test", learn + add)[0]
    out: dict[str, Any] = {"seed": seed, "pretrain": {"float_test_acc": float_test, "history": _hist(pre_hist)},
                           "deployed": deployed, "deployment": dep.summary(), "retrain": retrain_final,
                           "retrain_after_forget": retrain_after_forget}
    figs = {}
    for path in (lora, full):
        st = stages[path.name]
        train_led = st["forget"]["train"].copy().merge(st["add"]["train"])
        deploy_led = st["forget"]["deploy"].copy().merge(st["add"]["deploy"])
        inf_led = _inference_ledger(path.model, x_test, chip.adc_bits)
        figs[path.name] = cost_figures(train_led, deploy_led, inf_led, len(x_test), profile)
        breakdown = {"training_J": train_led.energy(profile), "deployment_J": deploy_led.energy(profile),
                     "inference_J_per_sample": {k: v / len(x_test) for k, v in inf_led.energy(profile).items()},
                     "training_counts": dict(train_led.counts)}
        fin = results[path.name]["final"]
        out[path.name] = {**{k: fin[k] for k in METRICS}, "mia_efficacy": fin["mia_efficacy"],
                          "costs": figs[path.name].to_dict(), "cost_breakdown": breakdown,
                          "stages": {"after_forget": results[path.name]["after_forget"], "final": fin},
                          "stage_costs": {s: cost_figures(st[s]["train"], st[s]["deploy"], Ledger(), 1,
                                                          profile).to_dict() for s in ("forget", "add")},
                          "best_steps": {s: st[s]["history"]["best_step"] for s in ("forget", "add")},
                          "continual": _continual(deployed, results[path.name], data)}
    out["full"]["reprogrammed_cells_during_training"] = full.reprogrammed_cells
    digital = _inference_ledger(full_model, x_test, chip.adc_bits, as_digital=True)
    out["digital_inference_energy_J"] = digital.energy(profile)["total"] / len(x_test)
    out["ratios"] = ratios(figs["full"], figs["lora"])
    out["ratios"]["inference_energy_vs_digital"] = out["digital_inference_energy_J"] / figs["lora"].inference_energy_J
    out["class_index"] = {ds.names[c]: i for c, i in data.index.items()}

    if "repair" in d_.extra and save_dir is not None:  # first seed only: the sweep has its own draws
        build = lambda: task.build_model(K, seed)  # noqa: E731
        model_float = build()
        model_float.load_state_dict(float_state)
        out["repair"] = run_repair(model_float, build, data, learn, cfg, d_, seed, save_dir.parent)

    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in float_state.items()}, str(save_dir / "pretrained.safetensors"))
        for label in (f_label, n_label):
            save_adapter(model, label, save_dir / f"adapter-{label}.safetensors")
        save_file({k: v.contiguous() for k, v in model.head.rows.state_dict().items()},
                  str(save_dir / "digital-rows.safetensors"))
        save_file({k: v.detach().contiguous() for k, v in full_model.state_dict().items()
                   if "lora" not in k}, str(save_dir / "full-update.safetensors"))
        save_file({k: v.contiguous() for k, v in retrain.state_dict().items()}, str(save_dir / "retrain.safetensors"))
        save_file({k: v.contiguous() for k, v in chip.state_dict().items()}, str(save_dir / "chip-cells.safetensors"))
        out["adapters"] = [f_label, n_label]
    return out


def run_repair(model_float: nn.Module, build, data: Data, learn: list[int], cfg: DemoConfig, d_: TaskDefaults,
               seed: int, out_dir: Path) -> dict[str, Any]:
    """Write error and its digital repair: the programming-noise sweep, then a repair adapter
    on the preset's chip and on the first swept level that costs ≥ 5 points (the stress case)."""
    from rmlora.device import load_preset
    from rmlora.methods.repair import noise_sweep, plot_sweep, repair_experiment

    test, val, train = data.xy("test", learn), data.xy("val", learn), data.xy("train", learn)
    sweep = noise_sweep(model_float, test, d_.extra["sweep_levels"], d_.extra["sweep_draws"], seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_sweep(sweep, out_dir / "noise_sweep.png",
               f"accuracy vs programming noise ({sweep['draws']} chips per level)")
    rcfg = d_.extra["repair"]
    res = repair_experiment(model_float, build, cfg.preset, train, val, test, rcfg, seed, d_.rank, d_.alpha)
    lost = [lvl for lvl, m in zip(sweep["levels_uS"], sweep["mean"]) if m <= sweep["mean"][0] - 0.05]
    sigma = lost[0] if lost else sweep["levels_uS"][-1]
    stress_dev = load_preset("ideal").replace(relax_sigma_floor_uS=float(sigma), relax_sigma_iter_uS=0.0)
    stress = repair_experiment(model_float, build, stress_dev, train, val, test, rcfg, seed, d_.rank, d_.alpha)
    keys = ("acc_before_noise", "acc_after_noise", "acc_after_repair", "recovered_fraction")
    return {**{k: res[k] for k in keys}, "preset": cfg.preset,
            "stress": {"sigma_uS": sigma, **{k: stress[k] for k in keys}},
            "sweep": {k: sweep[k] for k in ("levels_uS", "mean", "std", "draws")}}


def _hist(h: dict) -> dict:
    return {k: v for k, v in h.items() if k in ("best_step", "best_score", "loaded_from")}


def _continual(deployed: dict, res: dict, d: Data) -> dict[str, Any]:
    """Accuracy matrix R[t][i] (test accuracy on task i after stage t): task 0 = the
    retained classes, task 1 = the new ones; GEM's average accuracy, BWT and forgetting."""
    R = np.array([[res["after_forget"]["test_acc"], np.nan],
                  [res["final"]["test_acc"], res["final"]["new_class_acc"]]])
    return {"R": R.tolist(), "tasks": ["retained", "new"], **accuracy_matrix_summary(R),
            "forgotten_stays_forgotten": res["final"]["forget_acc"]}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load float weights saved by a run (``pretrained.safetensors``) into ``model``."""
    path = Path(path)
    if not path.exists():
        raise RmloraError(f"checkpoint {path} does not exist")
    try:
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise RmloraError(f"checkpoint {path} is corrupt or not safetensors ({exc.__class__.__name__})") from None
    own = model.state_dict()
    bad = sorted(set(own) ^ set(sd)) or [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise RmloraError(f"checkpoint {path} does not match the {type(model).__name__} model "
                          f"(first mismatch: {bad[0]})")
    model.load_state_dict(sd)


# --------------------------------------------------------------------------- the demo
def resolve_idents(ds, items, what: str) -> list[int]:
    """Labels of the classes ``items`` (names or indices) given to option ``--what``;
    one clear error for an unknown or repeated class."""
    out = []
    for it in items:
        try:
            out.append(ds.resolve(it))
        except RmloraError as exc:
            raise RmloraError(f"--{what}: {exc}") from None
    if len(set(out)) != len(out):
        raise RmloraError(f"--{what} names the same {ds.unit} twice")
    return out


def resolve_scenario(task: Task, ds, d_: TaskDefaults, cfg: DemoConfig) -> tuple[list[int], list[int], list[int]]:
    """Resolve names/indices and refuse impossible scenarios with one clear message."""
    learn = resolve_idents(ds, cfg.learn or d_.learn, "learn")
    forget = resolve_idents(ds, cfg.forget or d_.forget, "forget")
    add = resolve_idents(ds, cfg.add or d_.add, "add")
    if not forget:
        raise RmloraError("the forget set is empty: name at least one learned " + task.unit)
    if not add:
        raise RmloraError(f"--add is empty: name at least one new {task.unit}")
    if any(f not in learn for f in forget):
        raise RmloraError(f"--forget must name learned {task.unit}s; learned: {[ds.names[c] for c in learn]}")
    if set(forget) == set(learn):
        raise RmloraError(f"cannot forget every learned {task.unit}: nothing would be left to recognise")
    if set(add) & set(learn):
        raise RmloraError(f"--add must name {task.unit}s not learned yet")
    return learn, forget, add


def check_sram(task: Task, d_: TaskDefaults, n_learn: int, n_add: int, profile) -> int:
    """Refuse, before anything runs, a scenario whose adapters cannot fit the SRAM.

    Counts the forget adapter, the learn adapter and the new digital rows at 8 bits
    (plus one 32-bit scale per tensor); returns the bits needed.
    """
    model = task.build_model(n_learn, 0)
    per_adapter = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and (
                d_.targets is None or any(fnmatch.fnmatch(name, pat) for pat in d_.targets)):
            per_adapter += d_.rank * (m.weight[0].numel() + m.weight.shape[0]) * 8 + 64
    head_in = model.head.weight.shape[1]
    sram = SramBuffer(profile.sram_capacity_bits)
    sram.allocate("forget adapter", per_adapter)
    sram.allocate("learn adapter", per_adapter)
    sram.allocate("digital rows", head_in * n_add * 8 + n_add * 32)
    return sram.used_bits


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the scenario over ``seeds`` seeds and write the run folder; returns the summary."""
    task = get_task(cfg.task)
    d_ = task.defaults(cfg.quick)
    method = cfg.method or d_.method
    if cfg.threads < 1:
        raise RmloraError("--threads must be >= 1")
    torch.set_num_threads(cfg.threads)
    if method not in METHODS:
        raise RmloraError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    profile = load_profile(cfg.profile)
    SimulatedChip(cfg.preset)  # validates the preset before anything is written
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise RmloraError(f"checkpoint {cfg.pretrained} does not exist")
    ds = task.load(cfg.data_dir, cfg.seed, cfg.download)
    learn, forget, add = resolve_scenario(task, ds, d_, cfg)
    check_sram(task, d_, len(learn), len(add), profile)
    if cfg.pretrained:
        load_weights(task.build_model(len(learn), cfg.seed), cfg.pretrained)
    out = new_run_dir(cfg.out)
    n_seeds = cfg.seeds or d_.seeds
    seeds = [cfg.seed + k for k in range(n_seeds)]
    write_json(out / "run.json", {"task": task.name, "config": _jsonable(cfg), "method": method, "seeds": seeds,
                                  "dataset": {"kind": ds.kind, "source": ds.source}, "versions": versions()})
    per_seed = []
    for k, s in enumerate(tqdm(seeds, desc="seeds", disable=not cfg.progress or n_seeds == 1)):
        per_seed.append(run_seed(task, ds, learn, forget, add, d_, method, cfg, s,
                                 out / "weights" if k == 0 else None))
    summary = summarise(task, ds, cfg, method, learn, forget, add, per_seed)
    for k, r in enumerate(per_seed):
        records.append(out / "deletion_ledger.jsonl", classes=summary["scenario"]["forget"],
                       adapter=f"forget-{'-'.join(summary['scenario']['forget'])}",
                       metrics={m: r["lora"]["stages"]["after_forget"][m] for m in
                                ("forget_acc", "retain_acc", "test_acc", "mia_auc")},
                       extra={"seed": r["seed"], "task": task.name, "preset": cfg.preset})
    write_report(out, summary)
    write_json(out / "per_seed.json", per_seed)
    write_json(out / "summary.json", summary)
    return summary


def _jsonable(cfg: DemoConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.array([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def summary_header(task_name: str, ds, cfg: DemoConfig, method: str, learn, forget, add,
                   per_seed: list[dict]) -> dict[str, Any]:
    """What every summary.json starts with: task, data, preset, profile, seeds, versions, scenario."""
    return {
        "task": task_name,
        "dataset": {"kind": ds.kind, "source": ds.source},
        "preset": cfg.preset,
        "profile": cfg.profile,
        "seed": cfg.seed,
        "seeds": [r["seed"] for r in per_seed],
        "versions": versions(),
        "scenario": {"learn": [ds.names[c] for c in learn], "forget": [ds.names[c] for c in forget],
                     "add": [ds.names[c] for c in add], "method": method, "quick": cfg.quick},
    }


def summarise(task: Task, ds, cfg: DemoConfig, method: str, learn, forget, add, per_seed: list[dict]) -> dict:
    """Means over seeds (``std`` and ``per_seed`` alongside) in the documented keys."""
    def block(get) -> dict[str, Any]:
        b: dict[str, Any] = {}
        for m in METRICS + ("mia_efficacy",):
            vals = [get(r)[m] for r in per_seed]
            b[m], b.setdefault("std", {})[m] = _mean_std(vals)
            b.setdefault("per_seed", {})[m] = vals
        return b

    s = summary_header(task.name, ds, cfg, method, learn, forget, add, per_seed)
    s["pretrained"] = {"float_test_acc": _mean_std([r["pretrain"]["float_test_acc"] for r in per_seed])[0],
                       **{k: _mean_std([r["deployed"][k] for r in per_seed])[0]
                          for k in ("learned_test_acc", "forget_acc", "retain_acc", "test_acc", "mia_auc")}}
    s["deployment"] = per_seed[0]["deployment"]
    for p in ("lora", "full"):
        s[p] = block(lambda r, p=p: r[p])
        s[p]["costs"] = {k: _mean_std([r[p]["costs"][k] for r in per_seed])[0]
                         for k in per_seed[0][p]["costs"]}
        s[p]["after_forget"] = {m: _mean_std([r[p]["stages"]["after_forget"][m] for r in per_seed])[0]
                                for m in ("forget_acc", "forget_test_acc", "retain_acc", "test_acc", "mia_auc",
                                          "mia_efficacy")}
        s[p]["continual"] = {k: _mean_std([r[p]["continual"][k] for r in per_seed])[0]
                             for k in ("average_accuracy", "backward_transfer", "forgetting",
                                       "forgotten_stays_forgotten")}
        s[p]["continual"]["R_seed0"] = per_seed[0][p]["continual"]["R"]
        s[p]["cost_breakdown_seed0"] = per_seed[0][p]["cost_breakdown"]
        s[p]["per_class_test_acc"] = per_seed[0][p]["stages"]["final"]["per_class_test_acc"]
    s["full"]["reprogrammed_cells_during_training"] = _mean_std(
        [r["full"]["reprogrammed_cells_during_training"] for r in per_seed])[0]
    s["retrain"] = block(lambda r: r["retrain"])
    s["retrain"]["after_forget"] = {m: _mean_std([r["retrain_after_forget"][m] for r in per_seed])[0]
                                    for m in ("forget_acc", "retain_acc", "test_acc", "mia_auc")}
    s["ratios"] = {k: _mean_std([r["ratios"][k] for r in per_seed])[0] for k in per_seed[0]["ratios"]}
    s["digital_inference_energy_J"] = _mean_std([r["digital_inference_energy_J"] for r in per_seed])[0]
    s["paper_ratios"] = PAPER_RATIOS
    keys = ["forget_acc", "retain_acc", "test_acc", "mia_auc"]
    s["avg_gap_to_retrain"] = {p: avg_gap(s[p]["after_forget"], s["retrain"]["after_forget"], keys)
                               for p in ("lora", "full")}
    s["class_index"] = per_seed[0]["class_index"]
    if "repair" in per_seed[0]:
        s["repair"] = per_seed[0]["repair"]
    s["adapters"] = per_seed[0].get("adapters", [])
    return s
