"""Stylized image generation on the hybrid chip: learn → deploy → forget → learn new → report.

:func:`run_style_demo` is what ``rmlora demo --task style`` runs. It mirrors
:func:`rmlora.pipeline.run_demo` for a class-conditional diffusion
transformer (:mod:`rmlora.tasks.style`):

1. train a float DiT on the learned styles (``accelerate``: the same code runs
   on one CPU, one GPU or, under ``accelerate launch``, several GPUs), sample
   it, deploy every Linear/Conv2d onto the simulated chip, sample again;
2. forget styles by training their labels towards pure-noise images while
   rehearsing the kept styles: a LoRA adapter on the feed-forward layers
   (the arrays stay as programmed) versus the full update (every moved cell
   write-verified after every step);
3. learn new styles with a new adapter while the forget adapter stays active
   (the new styles' class-embedding rows are trained digitally on both paths),
   rehearsing a few images of each kept style and keeping the forgotten
   labels on noise;
4. a DiT retrained from scratch on the kept and new styles, deployed, as the
   reference;
5. scores from a style classifier trained on the real images of every style of
   the scenario (plus a "noise" class): recognition rates of samples generated
   for forgotten, kept and new styles, per-style Fréchet distances in its
   feature space, sample grids; the three cost figures of both paths.

Every model choice is made on validation data; test images only enter the
Fréchet distances and the classifier's reported test accuracy.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from rmlora import records
from rmlora.adapters import SramBuffer, save_adapter
from rmlora.costs import Ledger, cost_figures, counting, load_profile, ratios
from rmlora.errors import RmloraError
from rmlora.hardware import SimulatedChip, deploy
from rmlora.methods import TrainConfig, fit
from rmlora.methods.paths import AdapterPath, FullPath
from rmlora.metrics.generation import fd_per_class, sample_grid, style_rates, train_style_classifier
from rmlora.pipeline import PAPER_RATIOS, DemoConfig, load_weights, resolve_idents, summary_header
from rmlora.runinfo import new_run_dir, seed_everything, versions, write_json
from rmlora.tasks.style import (
    CONFIGS,
    StyleDefaults,
    StyleDiffusion,
    StyleTask,
    attach_rows,
    build_dit,
    fold_rows,
    noise_images,
    style_defaults,
)

RATES = ("forget_style_rate", "kept_style_rate", "new_style_rate")
COSTS = ("training_cost_J", "deployment_overhead_J", "deployment_time_s", "inference_energy_J")
METHODS = ("noise",)
#: DemoConfig.extra keys the style demo reads (anything else is refused).
EXTRA_KEYS = {
    "config": "configuration: quick, cpu (default) or gpu",
    "device": "torch device of the model, the loops and the simulated arrays (e.g. cuda)",
    "samples_per_style": "samples generated per style and stage",
    "sample_steps": "DDIM steps per sample",
    "guidance_scale": "classifier-free guidance scale (1: none)",
    "pretrain_steps": "float pretraining (and retrain) steps",
    "stage_steps": "steps of each hybrid stage (forget and learn, both paths)",
}


# --------------------------------------------------------------------------- configuration
def style_config(cfg: DemoConfig) -> StyleDefaults:
    """The :class:`StyleDefaults` of ``cfg``: ``--quick`` or ``extra['config']``, then the
    documented ``extra`` overrides; one clear error for anything unknown."""
    extra = dict(cfg.extra or {})
    unknown = sorted(set(extra) - set(EXTRA_KEYS))
    if unknown:
        raise RmloraError(f"unknown style option(s) {unknown}; known: {', '.join(EXTRA_KEYS)}")
    name = extra.get("config") or ("quick" if cfg.quick else "cpu")
    if cfg.quick and extra.get("config") not in (None, "quick"):
        raise RmloraError(f"--quick and the {extra['config']!r} configuration exclude each other")
    if name not in CONFIGS:
        raise RmloraError(f"unknown style configuration {name!r}; known: {', '.join(CONFIGS)}")
    d_ = style_defaults(name)

    def positive_int(key: str) -> int:
        v = extra[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise RmloraError(f"{key} must be an integer >= 1, got {v!r}")
        return int(v)
    if "samples_per_style" in extra:
        n = positive_int("samples_per_style")
        if n < 2:
            raise RmloraError("samples_per_style must be >= 2 (Fréchet distances need two samples)")
        d_.samples_per_style = n
    if "sample_steps" in extra:
        d_.sample_steps = positive_int("sample_steps")
    if "pretrain_steps" in extra:
        d_.pretrain.steps = positive_int("pretrain_steps")
    if "stage_steps" in extra:
        n = positive_int("stage_steps")
        for tc in (d_.unlearn_lora, d_.unlearn_full, d_.learn_lora, d_.learn_full):
            tc.steps = n
    if "guidance_scale" in extra:
        g = extra["guidance_scale"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 1:
            raise RmloraError(f"guidance_scale must be a number >= 1, got {g!r}")
        d_.guidance_scale = float(g)
    if "device" in extra:
        d_.device = str(extra["device"])
    try:
        dev = torch.device(d_.device)
    except RuntimeError:
        raise RmloraError(f"unknown torch device {d_.device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RmloraError(f"device {d_.device!r} requested but torch sees no CUDA GPU")
    return d_


def _resolve(ds, items, default, what: str) -> list[int]:
    if items is None:
        items = default
    return resolve_idents(ds, [it for it in items if not (isinstance(it, str) and not it.strip())], what)


def resolve_styles(ds, d_: StyleDefaults, cfg: DemoConfig) -> tuple[list[int], list[int], list[int]]:
    """Learned, forgotten and added styles (dataset labels); one clear error for an impossible scenario."""
    learn_default = d_.learn if ds.kind == "procedural" else list(range(min(4, ds.n_styles)))
    forget_default = d_.forget if ds.kind == "procedural" else learn_default[1:3]
    add_default = d_.add if ds.kind == "procedural" else list(range(4, min(6, ds.n_styles)))
    learn = _resolve(ds, cfg.learn, learn_default, "learn")
    if not learn:
        raise RmloraError("--learn is empty: name at least two styles to learn")
    # forget defaults to the 2nd and 3rd *learned* styles, whatever was learned
    forget = _resolve(ds, cfg.forget, [learn[i] for i in (1, 2) if i < len(learn)] if cfg.learn else forget_default,
                      "forget")
    taken = set(learn)
    add = _resolve(ds, cfg.add, [c for c in add_default if c not in taken] if cfg.learn else add_default, "add")
    if not forget:
        raise RmloraError("the forget set is empty: name at least one learned style to forget")
    if any(f not in learn for f in forget):
        bad = [ds.names[f] for f in forget if f not in learn]
        raise RmloraError(f"--forget names {bad}, which are not learned; learned: {[ds.names[c] for c in learn]}")
    if set(forget) == set(learn):
        raise RmloraError("cannot forget every learned style: nothing would be left to generate")
    if not add:
        raise RmloraError("--add is empty: name at least one new style")
    if set(add) & set(learn):
        bad = [ds.names[a] for a in add if a in learn]
        raise RmloraError(f"--add names {bad}, which are already learned; add styles not learned yet")
    return learn, forget, add


def check_sram(d_: StyleDefaults, n_styles: int, n_add: int, capacity_bits: int) -> int:
    """Refuse, before anything runs, a scenario whose two adapters and new embedding rows
    cannot fit the SRAM (8-bit codes plus one 32-bit scale per tensor); returns the bits."""
    model = build_dit(d_, n_styles, 0)
    per_adapter = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and any(fnmatch.fnmatch(name, p) for p in d_.targets or ["*"]):
            per_adapter += d_.rank * (m.weight[0].numel() + m.weight.shape[0]) * 8 + 64
    if per_adapter == 0:
        raise RmloraError(f"adapter targets {d_.targets} match no layer of the DiT")
    dim = d_.num_attention_heads * d_.attention_head_dim
    sram = SramBuffer(capacity_bits)
    sram.allocate("forget adapter", per_adapter)
    sram.allocate("learn adapter", per_adapter)
    sram.allocate("digital rows", d_.num_layers * (n_add * dim * 8 + 32))
    return sram.used_bits


# --------------------------------------------------------------------------- data
class StyleData:
    """Images (in [-1, 1], on the device) and model labels of one seed's split."""

    def __init__(self, task: StyleTask, ds, learn: list[int], forget: list[int], add: list[int], seed: int,
                 n_val: int, n_test: int, device: torch.device) -> None:
        self.learn, self.forget, self.add = learn, forget, add
        self.retained = [c for c in learn if c not in forget]
        self.order = learn + add
        self.index = {lab: i for i, lab in enumerate(self.order)}
        self.names = [ds.names[c] for c in self.order]
        self.splits = task.split(ds, self.order, seed, n_val=n_val, n_test=n_test)
        self.device = device

    def idx(self, labels: list[int]) -> list[int]:
        return [self.index[c] for c in labels]

    def xy(self, split: str, labels: list[int], unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of ``labels`` ((N, 3, S, S), [-1, 1] on the device, or [0, 1] on the CPU with
        ``unit``) and their model labels."""
        s = self.splits[split]
        keep = torch.isin(s.labels, torch.tensor(labels, dtype=torch.long))
        x, y = s.images[keep], s.labels[keep]
        y = torch.tensor([self.index[int(v)] for v in y], dtype=torch.long)
        if unit:
            return x, y
        return (x * 2 - 1).to(self.device), y.to(self.device)

    def rehearsal(self, per_class: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` training images of each kept style (never a forgotten one)."""
        xs, ys = [], []
        for c in self.retained:
            x, y = self.xy("train", [c])
            pick = torch.randperm(len(y), generator=gen)[:per_class].to(y.device)
            xs.append(x[pick])
            ys.append(y[pick])
        return torch.cat(xs), torch.cat(ys)


def _noise_class_images(n: int, gen: torch.Generator, size: int) -> torch.Tensor:
    """Pure-noise images in [0, 1] for the classifier's extra class: uniform, Gaussian
    and blocky (upsampled) noise, a third each."""
    k = max(1, n // 3)
    uni = torch.rand((k, 3, size, size), generator=gen)
    mu = 0.3 + 0.4 * torch.rand((k, 1, 1, 1), generator=gen)
    sd = 0.1 + 0.3 * torch.rand((k, 1, 1, 1), generator=gen)
    gau = (mu + sd * torch.randn((k, 3, size, size), generator=gen)).clamp(0, 1)
    m = n - 2 * k
    low = torch.rand((m, 3, size // 4, size // 4), generator=gen)
    blk = torch.nn.functional.interpolate(low, size=(size, size), mode="nearest") if m > 0 else low
    return torch.cat([uni, gau, blk])


def train_classifier(data: StyleData, d_: StyleDefaults, seed: int, progress: bool) -> tuple[nn.Module, dict]:
    """The style classifier of the run: real training images of every style of the scenario
    (plus a noise class), checkpoint chosen on the validation images."""
    K = len(data.order)
    xt, yt = data.xy("train", data.order, unit=True)
    xv, yv = data.xy("val", data.order, unit=True)
    classes = list(data.names)
    if d_.classifier_noise_class:
        gen = torch.Generator().manual_seed(seed + 4242)
        per = max(2, len(yt) // K)
        xt = torch.cat([xt, _noise_class_images(per, gen, xt.shape[-1])])
        yt = torch.cat([yt, torch.full((per,), K, dtype=torch.long)])
        pv = max(2, len(yv) // K)
        xv = torch.cat([xv, _noise_class_images(pv, gen, xv.shape[-1])])
        yv = torch.cat([yv, torch.full((pv,), K, dtype=torch.long)])
        classes.append("noise")
    dev = "cuda" if data.device.type == "cuda" else "cpu"
    clf, val_acc = train_style_classifier(xt, yt, xv, yv, len(classes), steps=d_.classifier_steps, seed=seed,
                                          progress=progress, device=dev)
    clf = clf.cpu().eval()
    xs, ys = data.xy("test", data.order, unit=True)
    test_rates = style_rates(clf, xs, ys)
    info = {"classes": classes, "val_acc": val_acc, "steps": d_.classifier_steps,
            "test_acc": float(np.mean(list(test_rates.values()))),
            "test_acc_per_style": {data.names[k]: v for k, v in test_rates.items()}}
    return clf, info


# --------------------------------------------------------------------------- counting
@contextmanager
def attention_counting(model: nn.Module, ledger: Ledger | None, tally: dict[str, int] | None = None
                       ) -> Iterator[None]:
    """Count the attention's activation x activation products (QKᵀ and AV: 2·T²·C MACs
    per sample and layer) as digital work: they run on the digital unit on every path.
    ``tally["attention_macs"]`` (if given) adds them up separately, to report their share."""
    if ledger is None:
        yield
        return
    from diffusers.models.attention_processor import Attention

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        b, t, c = out.shape
        macs = (3 if torch.is_grad_enabled() else 1) * 2 * b * t * t * c
        ledger.add("digital_macs", macs)
        if tally is not None:
            tally["attention_macs"] = tally.get("attention_macs", 0) + macs
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Attention)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def counted(model: nn.Module, ledger: Ledger | None, as_digital: bool = False,
            tally: dict[str, int] | None = None) -> Iterator[None]:
    """:func:`rmlora.costs.counting` plus the attention products."""
    with ExitStack() as stack:
        if ledger is not None:
            stack.enter_context(counting(model, ledger, as_digital=as_digital))
            stack.enter_context(attention_counting(model, ledger, tally))
        yield


# --------------------------------------------------------------------------- float training
def train_float(model: nn.Module, x: torch.Tensor, y: torch.Tensor, d_: StyleDefaults, diff: StyleDiffusion,
                seed: int, progress: bool, desc: str) -> dict[str, Any]:
    """Train a float DiT from scratch with ``accelerate`` (model, optimiser, data loader and
    schedule prepared by an :class:`accelerate.Accelerator`; ``accelerator.backward``),
    keeping an exponential moving average of the weights (diffusers' EMAModel), which
    the model holds at the end. ``x`` in [-1, 1]. Runs unchanged under
    ``accelerate launch`` on several GPUs."""
    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader, TensorDataset

    tc = d_.pretrain
    dev = torch.device(d_.device)
    acc = Accelerator(cpu=dev.type == "cpu")
    bs = min(tc.batch_size, len(y))
    loader = DataLoader(TensorDataset(x.detach().cpu(), y.detach().cpu()), batch_size=bs, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(seed))
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=max(1, tc.steps // 20), num_training_steps=tc.steps)
    net, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    ema = EMAModel(acc.unwrap_model(net).parameters(), decay=d_.ema_decay, use_ema_warmup=True, power=0.75)
    gen = torch.Generator().manual_seed(seed * 7919 + acc.process_index)
    losses: list[float] = []
    bar = tqdm(total=tc.steps, desc=desc, leave=False, disable=not progress or not acc.is_local_main_process)
    step = 0
    while step < tc.steps:
        for x0, yb in loader:
            flip = (torch.rand(len(yb), generator=gen) < 0.5).to(x0.device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            loss = diff.loss(net, x0, yb, gen, droppable=torch.ones_like(yb, dtype=torch.bool))
            acc.backward(loss)
            if d_.grad_clip and acc.sync_gradients:
                acc.clip_grad_norm_(net.parameters(), d_.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(acc.unwrap_model(net).parameters())
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step >= tc.steps:
                break
    bar.close()
    acc.wait_for_everyone()
    inner = acc.unwrap_model(net)
    ema.copy_to(inner.parameters())
    inner.to(dev).eval()
    for p in inner.parameters():
        p.requires_grad_(False)
    return {"steps": tc.steps, "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
            "processes": acc.num_processes}


# --------------------------------------------------------------------------- one seed
class Stage:
    """One stage's validation batches: fixed noise and time steps, so scores compare."""

    def __init__(self, diff: StyleDiffusion, d_: StyleDefaults, parts: list[tuple[torch.Tensor, torch.Tensor]],
                 seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.diff, self.parts = diff, []
        k = d_.val_timesteps
        for x, y in parts:
            x, y = x.repeat(k, 1, 1, 1), y.repeat(k)
            noise = torch.randn(x.shape, generator=gen).to(x.device)
            t = torch.linspace(0, d_.train_timesteps - 1, len(y)).long()[torch.randperm(len(y), generator=gen)]
            self.parts.append((x, y, noise, t.to(x.device)))

    @torch.no_grad()
    def losses(self, model: nn.Module) -> list[float]:
        model.eval()
        out = []
        for x, y, noise, t in self.parts:
            vals = [self.diff.loss(model, x[i:i + 256], y[i:i + 256], None, fixed=(noise[i:i + 256], t[i:i + 256]),
                                   reduce=False) for i in range(0, len(y), 256)]
            out.append(float(torch.cat(vals).mean()))
        return out

    def score(self, model: nn.Module) -> float:
        """Higher is better: minus the sum of the parts' validation losses."""
        return -sum(self.losses(model))


def run_stage(path, label: str, loss_fn, tcfg: TrainConfig, stage: Stage, adc_bits, progress: bool,
              rows: list | None = None, rows_lr: float | None = None) -> dict:
    """Train one update on one path (with the new embedding rows, if any, at ``rows_lr``),
    count it, and deploy it. Mirrors :func:`rmlora.pipeline._stage`."""
    train_led = Ledger(adc_bits=adc_bits or 8)
    model = path.model
    row_params = [r.rows for r in rows or []]
    row_ids = {id(p) for p in row_params}
    main = [p for p in path.begin(label) if id(p) not in row_ids]
    params: list = [{"params": main}]
    if row_params:
        for p in row_params:
            p.requires_grad_(True)
        params.append({"params": row_params, "lr": rows_lr or tcfg.lr})

    tally: dict[str, int] = {}

    def counted_loss(step: int) -> torch.Tensor:
        with attention_counting(model, train_led, tally):
            return loss_fn(model, step)
    t0 = time.perf_counter()
    hist = fit(model, params, counted_loss, tcfg, score_fn=lambda: stage.score(model),
               after_step=lambda: path.after_step(train_led), ledger=train_led, desc=f"{path.name}: {label}",
               progress=progress)
    deploy_led = path.deploy(label)
    if row_params:
        bits = sum(r.bits() for r in rows)
        deploy_led.add("sram_write_bits", bits)
        if isinstance(path, AdapterPath):
            path.sram.allocate(f"{label}-rows", bits)
        for p in row_params:
            p.requires_grad_(False)
    return {"train": train_led, "deploy": deploy_led, "history": hist, "seconds": time.perf_counter() - t0,
            "val_losses_end": stage.losses(model), "attention_macs": tally.get("attention_macs", 0)}


class Evaluator:
    """Samples every style of the scenario with a fixed generator seed and scores them."""

    def __init__(self, data: StyleData, d_: StyleDefaults, diff: StyleDiffusion, clf: nn.Module, seed: int,
                 grid_dir: Path | None, progress: bool) -> None:
        self.data, self.d_, self.diff, self.clf = data, d_, diff, clf
        self.seed, self.grid_dir, self.progress = seed, grid_dir, progress
        K = len(data.order)
        self.labels = torch.arange(K).repeat_interleave(d_.samples_per_style)
        self.real_x, self.real_y = data.xy("test", data.order, unit=True)
        self.forget_idx, self.kept_idx, self.new_idx = (data.idx(data.forget), data.idx(data.retained),
                                                        data.idx(data.add))
        self.grids: dict[str, str] = {}

    def row_labels(self) -> list[str]:
        tags = {**{i: " (forgotten)" for i in self.forget_idx}, **{i: " (new)" for i in self.new_idx}}
        return [n + tags.get(i, "") for i, n in enumerate(self.data.names)]

    def __call__(self, model: nn.Module, key: str, title: str, ledger: Ledger | None = None,
                 tally: dict[str, int] | None = None) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed + 7919)
        t0 = time.perf_counter()
        with counted(model, ledger, tally=tally):
            x = self.diff.sample(model, self.labels, gen, progress=self.progress, desc=f"sampling {key}")
        rates = style_rates(self.clf, x, self.labels)
        pred = _predict(self.clf, x)
        K = len(self.data.order)
        fd = fd_per_class(self.clf, self.real_x, self.real_y, x, self.labels, list(range(K)))
        names = self.data.names

        def mean(idx: list[int]) -> float:
            return float(np.mean([rates[i] for i in idx])) if idx else float("nan")
        out = {"forget_style_rate": mean(self.forget_idx), "kept_style_rate": mean(self.kept_idx),
               "new_style_rate": mean(self.new_idx),
               "per_style_rate": {names[i]: rates[i] for i in range(K)},
               "fd_per_class": {names[i]: fd[i] for i in range(K)},
               "noise_share_forgotten": float(np.mean([float((pred[self.labels == i] == K).float().mean())
                                                       for i in self.forget_idx])),
               "sampling_seconds": time.perf_counter() - t0}
        if self.grid_dir is not None:
            self.grid_dir.mkdir(parents=True, exist_ok=True)
            name = f"grid_{key}.png"
            sample_grid(x, self.d_.samples_per_style, self.grid_dir / name, labels=self.row_labels(), title=title)
            self.grids[key] = name
        out["_samples"] = len(x)
        return out


@torch.no_grad()
def _predict(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([clf(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])


def _digital_ledger(model: nn.Module, diff: StyleDiffusion, n: int, K: int, seed: int, adc_bits) -> Ledger:
    """The same sampling (all DDIM steps, guidance included) counted as if the whole
    network ran on the digital unit; ``n`` samples (the counts are per sample)."""
    led = Ledger(adc_bits=adc_bits or 8)
    labels = torch.arange(n) % K
    with counted(model, led, as_digital=True):
        diff.sample(model, labels, torch.Generator().manual_seed(seed))
    return led


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def run_seed(task: StyleTask, ds, learn: list[int], forget: list[int], add: list[int], d_: StyleDefaults,
             cfg: DemoConfig, seed: int, out_dir: Path | None, n_val: int, n_test: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timing[name] = round(time.perf_counter() - t0, 2)

    gen = seed_everything(seed)
    dev = torch.device(d_.device)
    profile = load_profile(cfg.profile)
    prog = cfg.progress
    data = StyleData(task, ds, learn, forget, add, seed, n_val, n_test, dev)
    K = len(data.order)
    diff = StyleDiffusion(d_, null_label=K)
    forget_idx, new_idx = data.idx(forget), data.idx(add)

    t0 = time.perf_counter()
    clf, clf_info = train_classifier(data, d_, seed, prog)
    tick("classifier", t0)
    evaluate = Evaluator(data, d_, diff, clf, seed, out_dir, prog)

    # 1. learn the first styles (float), deploy them
    t0 = time.perf_counter()
    model = build_dit(d_, K, seed).to(dev)
    if cfg.pretrained:
        load_weights(model, cfg.pretrained)
        for p in model.parameters():
            p.requires_grad_(False)
        pre_hist: dict[str, Any] = {"loaded_from": str(cfg.pretrained)}
    else:
        pre_hist = train_float(model, *data.xy("train", learn), d_, diff, seed, prog, "pretrain (float)")
    tick("pretrain", t0)
    float_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    scores: dict[str, dict[str, Any]] = {}
    scores["float"] = evaluate(model, "pretrained_float", "pretrained (float)")
    chip = SimulatedChip(cfg.preset, seed=seed, device=dev)
    dep = deploy(model, chip, exclude=d_.digital_layers, profile=profile)
    field_chip = copy.deepcopy(chip)
    scores["deployed"] = evaluate(model, "pretrained_deployed", f"pretrained, deployed on {cfg.preset}")
    tick("deploy_and_evaluate", t0)

    lora = AdapterPath(model, chip, profile, r=d_.rank, alpha=d_.alpha, targets=d_.targets)
    full_model = copy.deepcopy(model)
    full = FullPath(full_model, next(m.core.chip for m in full_model.modules() if hasattr(m, "core")), field_chip,
                    profile)

    # 2. forget: the forgotten labels towards pure noise, the kept styles rehearsed
    xr, yr = data.xy("train", data.retained)
    f_names = [ds.names[c] for c in forget]
    f_label = "forget-" + "-".join(f_names)
    f_lab = torch.tensor(forget_idx, device=dev)
    n_val_noise = max(4, d_.n_val)
    val_noise = (noise_images(n_val_noise * len(forget_idx), torch.Generator().manual_seed(seed + 11), d_.image_size,
                              dev), f_lab.repeat_interleave(n_val_noise))
    forget_stage = Stage(diff, d_, [data.xy("val", data.retained), val_noise], seed + 12)

    def forget_loss(m: nn.Module, step: int) -> torch.Tensor:
        bs = d_.unlearn_lora.batch_size
        nf = max(1, round(bs * d_.forget_fraction))
        nr = max(1, bs - nf)
        pick = torch.randint(len(yr), (nr,), generator=gen).to(dev)
        x_r = xr[pick]
        flip = (torch.rand(nr, generator=gen) < 0.5).to(dev)
        x_r = torch.where(flip[:, None, None, None], x_r.flip(3), x_r)
        x_f = noise_images(nf, gen, d_.image_size, dev)
        y_f = f_lab[torch.randint(len(f_lab), (nf,), generator=gen).to(dev)]
        x0, y = torch.cat([x_r, x_f]), torch.cat([yr[pick], y_f])
        droppable = torch.cat([torch.ones(nr, dtype=torch.bool), torch.zeros(nf, dtype=torch.bool)]).to(dev)
        return diff.loss(m, x0, y, gen, droppable=droppable)

    stages: dict[str, dict[str, Any]] = {"lora": {}, "full": {}}
    results: dict[str, dict[str, Any]] = {"lora": {}, "full": {}}
    for path, tcfg in ((lora, d_.unlearn_lora), (full, d_.unlearn_full)):
        t0 = time.perf_counter()
        stages[path.name]["forget"] = run_stage(path, f_label, forget_loss, tcfg, forget_stage, chip.adc_bits, prog)
        results[path.name]["after_forget"] = evaluate(path.model, f"after_forget_{path.name}",
                                                      f"after forgetting {', '.join(f_names)} ({path.name})")
        tick(f"forget_{path.name}", t0)

    # 3. learn the new styles: a new adapter (the forget adapter stays active), digital embedding rows
    n_names = [ds.names[c] for c in add]
    n_label = "learn-" + "-".join(n_names)
    xn, yn = data.xy("train", add)
    xh, yh = data.rehearsal(d_.rehearsal_per_class, gen)
    learn_stage = Stage(diff, d_, [data.xy("val", add), data.xy("val", data.retained), val_noise], seed + 13)

    def learn_loss(m: nn.Module, step: int) -> torch.Tensor:
        bs = d_.learn_lora.batch_size
        ng = round(bs * d_.noise_guard_fraction)
        nn_ = max(1, (bs - ng) // 2)
        nh = max(1, bs - ng - nn_)
        pn = torch.randint(len(yn), (nn_,), generator=gen).to(dev)
        ph = torch.randint(len(yh), (nh,), generator=gen).to(dev)
        x_real = torch.cat([xn[pn], xh[ph]])
        flip = (torch.rand(len(x_real), generator=gen) < 0.5).to(dev)
        x_real = torch.where(flip[:, None, None, None], x_real.flip(3), x_real)
        y_real = torch.cat([yn[pn], yh[ph]])
        x_g = noise_images(ng, gen, d_.image_size, dev)
        y_g = f_lab[torch.randint(len(f_lab), (ng,), generator=gen).to(dev)]
        droppable = torch.cat([torch.ones(len(y_real), dtype=torch.bool), torch.zeros(ng, dtype=torch.bool)]).to(dev)
        return diff.loss(m, torch.cat([x_real, x_g]), torch.cat([y_real, y_g]), gen, droppable=droppable)

    new_rows: dict[str, dict[str, torch.Tensor]] = {}
    inference: dict[str, Ledger] = {}
    inference_tally: dict[str, dict[str, int]] = {"lora": {}, "full": {}}
    for path, tcfg in ((lora, d_.learn_lora), (full, d_.learn_full)):
        t0 = time.perf_counter()
        rows = attach_rows(path.model, new_idx)
        stages[path.name]["add"] = run_stage(path, n_label, learn_loss, tcfg, learn_stage, chip.adc_bits, prog,
                                             rows=rows, rows_lr=d_.rows_lr)
        new_rows[path.name] = fold_rows(path.model)
        inference[path.name] = Ledger(adc_bits=chip.adc_bits or 8)
        results[path.name]["final"] = evaluate(path.model, f"final_{path.name}",
                                               f"after learning {', '.join(n_names)} ({path.name})",
                                               ledger=inference[path.name], tally=inference_tally[path.name])
        tick(f"learn_{path.name}", t0)

    # 4. the reference: retrained from scratch on the kept and new styles, deployed
    t0 = time.perf_counter()
    retrain = build_dit(d_, K, seed + 2).to(dev)
    ret_hist = train_float(retrain, *data.xy("train", data.retained + add), d_, diff, seed + 2, prog,
                           "retrain on kept + new styles (reference)")
    retrain_state = {k: v.detach().cpu().clone() for k, v in retrain.state_dict().items()}
    scores["retrain_float"] = evaluate(retrain, "retrain_float", "retrained from scratch on kept + new styles (float)")
    deploy(retrain, SimulatedChip(cfg.preset, seed=seed + 2, device=dev), exclude=d_.digital_layers, profile=profile)
    scores["retrain"] = evaluate(retrain, "retrain", "retrained from scratch on kept + new styles, deployed")
    tick("retrain", t0)

    # 5. costs: both stages together; inference = one sampling run per sample
    out: dict[str, Any] = {"seed": seed, "classifier": clf_info,
                           "pretrain": _jsonable_hist(pre_hist), "retrain_history": _jsonable_hist(ret_hist),
                           "pretrained": {"float": _strip(scores["float"]), "deployed": _strip(scores["deployed"])},
                           "deployment": dep.summary(),
                           "retrain": {**_strip(scores["retrain"]), "float": _strip(scores["retrain_float"])}}
    figs = {}
    n_samples = results["lora"]["final"]["_samples"]
    for path in (lora, full):
        st = stages[path.name]
        train_led = st["forget"]["train"].copy().merge(st["add"]["train"])
        deploy_led = st["forget"]["deploy"].copy().merge(st["add"]["deploy"])
        figs[path.name] = cost_figures(train_led, deploy_led, inference[path.name], n_samples, profile)
        fin = _strip(results[path.name]["final"])
        out[path.name] = {
            **{k: fin[k] for k in RATES}, "fd_per_class": fin["fd_per_class"], "per_style_rate": fin["per_style_rate"],
            "noise_share_forgotten": fin["noise_share_forgotten"],
            "costs": figs[path.name].to_dict(),
            "after_forget": _strip(results[path.name]["after_forget"]),
            "cost_breakdown": {"training_J": train_led.energy(profile), "deployment_J": deploy_led.energy(profile),
                               "inference_J_per_sample": {k: v / n_samples for k, v in
                                                          inference[path.name].energy(profile).items()},
                               "training_counts": dict(train_led.counts),
                               # the attention's activation products (digital, the same on both paths)
                               "training_attention_J": profile.mac_J * sum(st[s]["attention_macs"]
                                                                           for s in ("forget", "add")),
                               "inference_attention_J_per_sample": profile.mac_J * inference_tally[path.name].get(
                                   "attention_macs", 0) / n_samples},
            "stage_costs": {s: cost_figures(st[s]["train"], st[s]["deploy"], Ledger(), 1, profile).to_dict()
                            for s in ("forget", "add")},
            "best_steps": {s: st[s]["history"]["best_step"] for s in ("forget", "add")},
            "val_losses_end": {s: st[s]["val_losses_end"] for s in ("forget", "add")},
        }
    out["full"]["reprogrammed_cells_during_training"] = full.reprogrammed_cells
    n_dig = min(4, n_samples)
    digital = _digital_ledger(full_model, diff, n_dig, K, seed, chip.adc_bits)
    out["digital_inference_energy_J"] = digital.energy(profile)["total"] / n_dig
    out["ratios"] = ratios(figs["full"], figs["lora"])
    out["ratios"]["inference_energy_vs_digital"] = out["digital_inference_energy_J"] / figs["lora"].inference_energy_J
    out["class_index"] = {n: i for i, n in enumerate(data.names)}
    out["grids"] = dict(evaluate.grids)

    if out_dir is not None:
        w = out_dir / "weights"
        w.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in float_state.items()}, str(w / "pretrained.safetensors"))
        for label in (f_label, n_label):
            save_adapter(model, label, w / f"adapter-{label}.safetensors")
        save_file({k: v.cpu().contiguous() for k, v in new_rows["lora"].items()}, str(w / "digital-rows.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in full_model.state_dict().items() if "lora" not in k},
                  str(w / "full-update.safetensors"))
        save_file({k: v.contiguous() for k, v in retrain_state.items()}, str(w / "retrain.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in chip.state_dict().items()}, str(w / "chip-cells.safetensors"))
        out["adapters"] = [f_label, n_label]
    timing["total"] = round(time.perf_counter() - t_start, 2)
    out["timing_s"] = timing
    return out


def _jsonable_hist(h: dict) -> dict:
    return {k: v for k, v in h.items() if isinstance(v, (int, float, str))}


# --------------------------------------------------------------------------- the demo
def _split_sizes(ds, labels: list[int], d_: StyleDefaults) -> tuple[int, int]:
    """Validation and test images per style: the configuration's for the procedural set,
    scaled down for a small folder (at least 2 each, 2 left for training)."""
    counts = [int(torch.unique(ds.image_ids[ds.labels == c]).numel()) for c in labels]
    n_min = min(counts)
    if n_min < 6:
        worst = ds.names[labels[counts.index(n_min)]]
        raise RmloraError(f"style {worst!r} has {n_min} images in {ds.source}; the style demo needs at least 6 "
                          "per style (2 validation, 2 test, 2 training)")
    if n_min >= d_.n_val + d_.n_test + 8:
        return d_.n_val, d_.n_test
    n_test = max(2, n_min // 5)
    n_val = max(2, n_min // 10)
    return n_val, n_test


def run_style_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the style scenario and write the run folder; returns the summary.

    Every input is checked (styles, scenario, data, preset, profile, checkpoint,
    options, SRAM capacity) before the run folder is created, so a bad input
    writes nothing.
    """
    if cfg.task != "style":
        raise RmloraError(f"run_style_demo runs the style task, not {cfg.task!r}")
    if cfg.threads < 1:
        raise RmloraError("--threads must be >= 1")
    torch.set_num_threads(cfg.threads)
    if cfg.seeds is not None and cfg.seeds < 1:
        raise RmloraError("--seeds must be >= 1")
    method = cfg.method or "noise"
    if method not in METHODS:
        raise RmloraError(f"unknown method {method!r} for the style task; known: {', '.join(METHODS)} "
                          "(forgotten styles are trained towards random-noise images)")
    task = StyleTask()
    d_ = style_config(cfg)
    profile = load_profile(cfg.profile)
    SimulatedChip(cfg.preset)  # validates the preset before anything is written
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise RmloraError(f"checkpoint {cfg.pretrained} does not exist")
    ds = task.load(cfg.data_dir, cfg.seed, cfg.download)
    learn, forget, add = resolve_styles(ds, d_, cfg)
    n_val, n_test = _split_sizes(ds, learn + add, d_)
    task.split(ds, learn + add, cfg.seed, n_val=n_val, n_test=n_test)  # refuses too-small styles now
    check_sram(d_, len(learn) + len(add), len(add), profile.sram_capacity_bits)
    if cfg.pretrained:
        load_weights(build_dit(d_, len(learn) + len(add), cfg.seed), cfg.pretrained)
    out = new_run_dir(cfg.out)
    n_seeds = cfg.seeds or d_.seeds
    seeds = [cfg.seed + k for k in range(n_seeds)]
    write_json(out / "run.json", {"task": "style", "config": _jsonable_cfg(cfg), "method": method, "seeds": seeds,
                                  "style_config": d_.to_dict(), "dataset": {"kind": ds.kind, "source": ds.source},
                                  "versions": versions()})
    per_seed = []
    for k, s in enumerate(tqdm(seeds, desc="seeds", disable=not cfg.progress or n_seeds == 1)):
        per_seed.append(run_seed(task, ds, learn, forget, add, d_, cfg, s, out if k == 0 else None, n_val, n_test))
    summary = summarise(ds, cfg, d_, method, learn, forget, add, per_seed)
    for r in per_seed:
        af = r["lora"]["after_forget"]
        records.append(out / "deletion_ledger.jsonl", classes=summary["scenario"]["forget"],
                       adapter=f"forget-{'-'.join(summary['scenario']['forget'])}",
                       metrics={"forget_style_rate": af["forget_style_rate"],
                                "kept_style_rate": af["kept_style_rate"],
                                "forget_style_rate_before": r["pretrained"]["deployed"]["forget_style_rate"]},
                       extra={"seed": r["seed"], "task": "style", "preset": cfg.preset, "method": method})
    write_json(out / "per_seed.json", per_seed)
    write_style_report(out, summary)
    write_json(out / "summary.json", summary)
    return summary


def _jsonable_cfg(cfg: DemoConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}


def _mean_tree(values: list[Any]) -> Any:
    """Mean over seeds of numbers, recursively through dicts of the same keys."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean_tree([v[k] for v in values]) for k in first if all(k in v for v in values)}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        a = np.array([float(v) for v in values], dtype=float)
        a = a[~np.isnan(a)]
        return float(a.mean()) if a.size else float("nan")
    return first


def _std(values: list[float]) -> float:
    a = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return float(a.std()) if a.size else float("nan")


def summarise(ds, cfg: DemoConfig, d_: StyleDefaults, method: str, learn, forget, add,
              per_seed: list[dict]) -> dict[str, Any]:
    """Means over seeds in the documented keys (``std`` and ``per_seed`` of the rates alongside)."""
    m = _mean_tree(per_seed)
    s: dict[str, Any] = summary_header("style", ds, cfg, method, learn, forget, add, per_seed)
    s["scenario"]["config"] = d_.config
    s |= {
        "model": {"class": "diffusers.DiTTransformer2DModel", **d_.model_kwargs(len(learn) + len(add)),
                  "parameters": sum(p.numel() for p in build_dit(d_, len(learn) + len(add), 0).parameters()),
                  "prediction_type": d_.prediction_type, "beta_schedule": d_.beta_schedule,
                  "sampler": f"DDIMScheduler, {d_.sample_steps} steps", "guidance_scale": d_.guidance_scale,
                  "adapters": {"rank": d_.rank, "alpha": d_.alpha, "targets": d_.targets},
                  "device": d_.device},
        "samples_per_style": d_.samples_per_style,
        "classifier": m["classifier"],
        "pretrained": m["pretrained"],
        "deployment": per_seed[0]["deployment"],
    }
    for p in ("lora", "full", "retrain"):
        s[p] = m[p]
        s[p]["std"] = {k: _std([r[p][k] for r in per_seed]) for k in RATES}
        s[p]["per_seed"] = {k: [r[p][k] for r in per_seed] for k in RATES}
    s["ratios"] = m["ratios"]
    s["digital_inference_energy_J"] = m["digital_inference_energy_J"]
    s["paper_ratios"] = PAPER_RATIOS
    s["class_index"] = per_seed[0]["class_index"]
    s["grids"] = per_seed[0]["grids"]
    s["adapters"] = per_seed[0].get("adapters", [])
    s["timing_s"] = m["timing_s"]
    s["training"] = {"pretrain": m["pretrain"], "retrain": m["retrain_history"],
                     "stages": {k: {"steps": getattr(d_, k).steps, "lr": getattr(d_, k).lr,
                                    "batch_size": getattr(d_, k).batch_size}
                                for k in ("pretrain", "unlearn_lora", "unlearn_full", "learn_lora", "learn_full")}}
    return s


# --------------------------------------------------------------------------- report
def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.0f}%"


def _fd(block: dict, names: list[str]) -> str:
    fd = block.get("fd_per_class", {})
    vals = [fd.get(n, float("nan")) for n in names]
    vals = [v for v in vals if not math.isnan(v)]
    return f"{np.mean(vals):.1f}" if vals else "–"


def scores_table(s: dict) -> str:
    """Markdown: recognition rates and mean Fréchet distances per stage and path."""
    sc = s["scenario"]
    kept = [n for n in sc["learn"] if n not in sc["forget"]]
    rows = ["| model | forgotten styles recognised | kept styles | new styles | FD forgotten | FD kept | FD new |",
            "|---|---|---|---|---|---|---|"]

    def row(name: str, b: dict, new: bool = True) -> str:
        return (f"| {name} | {_pct(b['forget_style_rate'])} | {_pct(b['kept_style_rate'])} | "
                f"{_pct(b['new_style_rate']) if new else '– (not learned yet)'} | {_fd(b, sc['forget'])} | "
                f"{_fd(b, kept)} | {_fd(b, sc['add']) if new else '–'} |")
    rows.append(row("pretrained, float", s["pretrained"]["float"], new=False))
    rows.append(row("pretrained, deployed", s["pretrained"]["deployed"], new=False))
    rows.append(row("LoRA, after forgetting", s["lora"]["after_forget"], new=False))
    rows.append(row("full update, after forgetting", s["full"]["after_forget"], new=False))
    rows.append(row("**LoRA, final**", s["lora"]))
    rows.append(row("**full update, final**", s["full"]))
    if "float" in s["retrain"]:
        rows.append(row("retrained (kept + new), float", s["retrain"]["float"]))
    rows.append(row("**retrained (kept + new), deployed**", s["retrain"]))
    return "\n".join(rows)


def _x(v: float) -> str:
    """A ratio for the tables: 147.8x, 4.56x, 0.031x."""
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.1f}x" if v >= 10 else (f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x")


def costs_table(s: dict) -> str:
    """Markdown: the three figures of both paths, their ratios and the paper's."""
    r, paper = s["ratios"], s["paper_ratios"]
    lo, fu = s["lora"]["costs"], s["full"]["costs"]
    steps = s["model"]["sampler"].split(", ")[-1]
    rows = [
        ("training cost", f"{lo['training_cost_J']:.3e} J", f"{fu['training_cost_J']:.3e} J",
         _x(r["training_cost"]), f"{paper['training_cost']}x"),
        ("deployment overhead", f"{lo['deployment_overhead_J']:.3e} J, {lo['deployment_time_s']:.2e} s",
         f"{fu['deployment_overhead_J']:.3e} J, {fu['deployment_time_s']:.2e} s", _x(r["deployment_overhead"]),
         f"{paper['deployment_overhead']}x"),
        (f"inference energy / sample (all {steps})", f"{lo['inference_energy_J']:.3e} J",
         f"{fu['inference_energy_J']:.3e} J", _x(r["inference_energy"]), "–"),
        ("inference energy vs all-digital", f"{lo['inference_energy_J']:.3e} J",
         f"{s['digital_inference_energy_J']:.3e} J (digital)", _x(r["inference_energy_vs_digital"]),
         f"{paper['inference_energy']}x"),
    ]
    head = ["| figure | LoRA path | full update | full / LoRA | paper (up to) |", "|---|---|---|---|---|"]
    return "\n".join(head + ["| " + " | ".join(row) + " |" for row in rows])


def style_tables(summary: dict) -> str:
    """The score table and the cost table (markdown), as the CLI prints them."""
    return scores_table(summary) + "\n\n" + costs_table(summary)


def per_style_table(s: dict) -> str:
    names = list(s["class_index"])
    blocks = [("float", s["pretrained"]["float"]), ("deployed", s["pretrained"]["deployed"]),
              ("LoRA forget", s["lora"]["after_forget"]), ("full forget", s["full"]["after_forget"]),
              ("LoRA final", s["lora"]), ("full final", s["full"]), ("retrain float", s["retrain"]["float"]),
              ("retrain deployed", s["retrain"])]
    rows = ["| style | " + " | ".join(b for b, _ in blocks) + " |", "|---|" + "---|" * len(blocks)]
    for n in names:
        cells = [f"{_pct(b['per_style_rate'].get(n))} / {b['fd_per_class'].get(n, float('nan')):.1f}"
                 for _, b in blocks]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _share(block: dict, what: str) -> str:
    b = block["cost_breakdown"]
    if what == "training":
        part, total = b["training_attention_J"], b["training_J"]["total"]
    else:
        part, total = b["inference_attention_J_per_sample"], b["inference_J_per_sample"]["total"]
    return f"{100 * part / total:.0f}%" if total > 0 else "–"


def write_style_report(out: Path, s: dict) -> None:
    """``report.md`` of a style run (the grids are already in the folder)."""
    sc, dep, mo = s["scenario"], s["deployment"], s["model"]
    g = s["grids"]
    clf = s["classifier"]

    def img(key: str, caption: str) -> str:
        return f"**{caption}**\n\n![{caption}]({g[key]})\n" if key in g else ""
    grids = "\n".join([
        img("pretrained_float", "pretrained, float"), img("pretrained_deployed", f"pretrained, deployed on {s['preset']}"),
        img("after_forget_lora", "after forgetting, LoRA path"), img("after_forget_full", "after forgetting, full update"),
        img("final_lora", "after learning the new styles, LoRA path"),
        img("final_full", "after learning the new styles, full update"),
        img("retrain_float", "retrained from scratch on the kept and new styles, float"),
        img("retrain", "retrained from scratch on the kept and new styles, deployed")])
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in s["timing_s"].items())
    text = f"""# rmlora style demo

**Scenario**: learn {', '.join(sc['learn'])}; deploy on `{s['preset']}`; forget {', '.join(sc['forget'])}
(labels trained towards pure-noise images, kept styles rehearsed); add {', '.join(sc['add'])} (new adapter, the
forget adapter active, digital embedding rows). Data: {s['dataset']['source']}. Configuration `{sc['config']}`,
seeds {s['seeds']}{' (every score: the mean over the seeds)' if len(s['seeds']) > 1 else ''}{' — quick run' if sc['quick'] else ''}.

**Model**: `DiTTransformer2DModel` in pixel space ({mo['sample_size']}x{mo['sample_size']} RGB, patch
{mo['patch_size']}, {mo['num_layers']} layers, {mo['num_attention_heads']} heads x {mo['attention_head_dim']},
{mo['parameters']} parameters), {mo['prediction_type']}, {mo['beta_schedule']} schedule, {mo['sampler']},
classifier-free guidance {mo['guidance_scale']}; LoRA rank {mo['adapters']['rank']}, alpha
{mo['adapters']['alpha']} on `{', '.join(mo['adapters']['targets'])}`.

## Scores

{scores_table(s)}

A style is *recognised* in a sample when the style classifier (trained on the real images of all
{len(s['class_index'])} styles of the scenario plus a class of pure-noise images; validation accuracy
{_pct(clf['val_acc'])}, test accuracy on real images {_pct(clf['test_acc'])}) calls the sample that style;
{s['samples_per_style']} samples per style with the same starting noise at every stage. FD: Fréchet
distance between the classifier's features of real test images and of the samples of a style, mean
over the styles of the group (lower is closer; with few samples it is biased upwards, compare within the
table only). Share of forgotten-style samples the classifier calls noise, final: LoRA
{_pct(s['lora']['noise_share_forgotten'])}, full update {_pct(s['full']['noise_share_forgotten'])}.

Per style (recognition rate / FD):

{per_style_table(s)}

## Costs

{costs_table(s)}

Training cost covers both updates (forget, then learn): forward and backward passes (the attention's
activation products counted as digital work on both paths), SRAM writes of the updated parameters and,
for the full update, the write-verify of every cell that moved beyond tolerance after each step
({s['full']['reprogrammed_cells_during_training']:.0f} cell programmings). Deployment overhead is writing
the adapters and the new embedding rows into SRAM versus write-verifying a chip in the field from the old
model to the new one (plus the same rows). Inference energy is one complete sampling run ({mo['sampler']},
guidance included) per sample; the last row counts the same sampling as if the whole network ran on the
digital unit. The attention's activation x activation products (QKᵀ, AV) have no fixed weights to store
in the arrays: they are counted as digital MACs on every path, including the all-digital reference
(LoRA path: {_share(s['lora'], 'training')} of the training energy, {_share(s['lora'], 'inference')} of
the inference energy). Every constant comes from the technology profile `{s['profile']}`.

## Sample grids

One row per style, the same starting noise in every grid.

{grids}
## Deployment of the pretrained model

{dep['cells']} cells on {dep['tiles']} tiles; {dep['mean_pulses_per_cell']:.2f} pulses per cell on average
(95th percentile {dep['p95_pulses_per_cell']:.0f}); {dep['failed_cells']} cells failed to converge; final
error {dep['error_mean_uS']:+.3f} ± {dep['error_std_uS']:.3f} µS; {dep['programming_energy_J']:.3e} J.

Wall time: {timing}.

## Files

`summary.json`, `per_seed.json`, `run.json` (configuration, package versions), `deletion_ledger.jsonl`
(hash-chained forget requests), `grid_*.png`, `weights/` (safetensors: the float pretrained DiT, each adapter
as INT8 codes, the new embedding rows, the full-update and retrained models, the chip's cells).
"""
    (out / "report.md").write_text(text)


# --------------------------------------------------------------------------- float pretraining script
def pretrain_main(argv: list[str] | None = None) -> int:
    """``python -m rmlora.style_pipeline pretrain`` (or ``accelerate launch -m rmlora.style_pipeline
    pretrain``): the float pretraining alone, saved as safetensors for ``--pretrained``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rmlora.style_pipeline pretrain",
                                 description="float pretraining of the style DiT (accelerate)")
    ap.add_argument("--out", required=True, help="safetensors file to write")
    ap.add_argument("--config", default="cpu", choices=CONFIGS)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--learn", nargs="*", default=None)
    ap.add_argument("--forget", nargs="*", default=None)
    ap.add_argument("--add", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra: dict[str, Any] = {"config": args.config}
    if args.device:
        extra["device"] = args.device
    if args.steps:
        extra["pretrain_steps"] = args.steps
    cfg = DemoConfig(task="style", data_dir=args.data_dir, learn=args.learn, forget=args.forget, add=args.add,
                     seed=args.seed, extra=extra)
    d_ = style_config(cfg)
    out = Path(args.out)
    if out.exists():
        raise RmloraError(f"{out} already exists; not overwritten")
    ds = StyleTask().load(args.data_dir, args.seed)
    learn, forget, add = resolve_styles(ds, d_, cfg)
    n_val, n_test = _split_sizes(ds, learn + add, d_)
    seed_everything(args.seed)
    data = StyleData(StyleTask(), ds, learn, forget, add, args.seed, n_val, n_test, torch.device(d_.device))
    K = len(data.order)
    model = build_dit(d_, K, args.seed).to(d_.device)
    hist = train_float(model, *data.xy("train", learn), d_, StyleDiffusion(d_, K), args.seed, True,
                       "pretrain (float)")
    from accelerate import PartialState
    if PartialState().is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out))
        print(f"wrote {out} ({hist['steps']} steps on {hist['processes']} process(es), loss {hist['final_loss']:.4f})")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by hand / accelerate launch
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "pretrain":
        print("usage: python -m rmlora.style_pipeline pretrain --out FILE [--config cpu|gpu] ...", file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(pretrain_main(args[1:]))
    except RmloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
