"""Stylized image generation as a scenario workload.

1. a float DiT is trained on the learned styles (``accelerate``: the same code
   runs on one CPU, one GPU or, under ``accelerate launch``, several GPUs) and
   every Linear/Conv2d is deployed onto the chip;
2. a forget request trains the forgotten styles' labels towards pure-noise
   images while rehearsing the kept styles;
3. an add request learns new styles (their class-embedding rows trained
   digitally on both paths) while the earlier adapters stay active and the
   forgotten labels are kept on noise; a repair request does the same with no
   new style;
4. scores come from a style classifier trained on the real images of every
   style of the scenario (plus a "noise" class): recognition rates of samples
   generated for forgotten, kept and new styles, per-style Fréchet distances in
   its feature space, sample grids.

Every model choice is made on validation data; test images only enter the
Fréchet distances and the classifier's reported test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rmlora.costs import Ledger, counting
from rmlora.data import styles as style_data
from rmlora.errors import RmloraError
from rmlora.metrics.generation import fd_per_class, sample_grid, style_rates, train_style_classifier
from rmlora.scenario.workload import CALIBRATION_EXAMPLES, ClassState, Columns, Evaluation, Extension, Objective
from rmlora.tasks.style import (CONFIGS, StyleDiffusion, StyleSettings, attach_rows, build_dit, fold_rows,
                                label_tables, noise_images, style_settings)


# --------------------------------------------------------------------------- data
class StyleData:
    """Images (in [-1, 1], on the device) and model labels of one seed's split."""

    def __init__(self, ds, order: list[int], splits: dict[str, Any], device: torch.device, gen: torch.Generator,
                 settings: StyleSettings) -> None:
        self.ds, self.order, self.splits, self.device, self.gen, self.settings = ds, order, splits, device, gen, settings
        self.index = {lab: i for i, lab in enumerate(order)}
        self.names = [ds.names[c] for c in order]
        self.diff = StyleDiffusion(settings, null_label=len(order))
        self.classifier: nn.Module | None = None
        self.classifier_info: dict[str, Any] = {}
        self.grid_dir: Path | None = None
        self.grids: dict[str, str] = {}

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

    def rehearsal(self, labels: list[int], per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` (all if None) training images of each of ``labels``."""
        xs, ys = [], []
        for c in labels:
            x, y = self.xy("train", [c])
            pick = torch.randperm(len(y), generator=self.gen)[:per_class or len(y)].to(y.device)
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


def train_classifier(data: StyleData, seed: int, progress: bool) -> tuple[nn.Module, dict]:
    """The style classifier of the run: real training images of every style of the scenario
    (plus a noise class), checkpoint chosen on the validation images."""
    st = data.settings
    K = len(data.order)
    xt, yt = data.xy("train", data.order, unit=True)
    xv, yv = data.xy("val", data.order, unit=True)
    classes = list(data.names)
    if st.classifier_noise_class:
        gen = torch.Generator().manual_seed(seed)
        per = max(2, len(yt) // K)
        xt = torch.cat([xt, _noise_class_images(per, gen, xt.shape[-1])])
        yt = torch.cat([yt, torch.full((per,), K, dtype=torch.long)])
        pv = max(2, len(yv) // K)
        xv = torch.cat([xv, _noise_class_images(pv, gen, xv.shape[-1])])
        yv = torch.cat([yv, torch.full((pv,), K, dtype=torch.long)])
        classes.append("noise")
    dev = "cuda" if data.device.type == "cuda" else "cpu"
    clf, val_acc = train_style_classifier(xt, yt, xv, yv, len(classes), steps=st.classifier_steps, seed=seed,
                                          progress=progress, device=dev)
    clf = clf.cpu().eval()
    xs, ys = data.xy("test", data.order, unit=True)
    test_rates = style_rates(clf, xs, ys)
    info = {"classes": classes, "val_acc": val_acc, "steps": st.classifier_steps,
            "test_acc": float(np.mean(list(test_rates.values()))),
            "test_acc_per_style": {data.names[k]: v for k, v in test_rates.items()}}
    return clf, info


# --------------------------------------------------------------------------- counting
@contextmanager
def counted(model: nn.Module, ledger: Ledger, as_digital: bool = False) -> Iterator[Ledger]:
    """:func:`rmlora.costs.counting` plus the attention's activation x activation products
    (QKᵀ and AV: 2·T²·C MACs per sample and layer, three times with gradients), which
    have no fixed weights for the arrays and run on the digital unit on every path."""
    from diffusers.models.attention_processor import Attention

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        b, t, c = out.shape
        ledger.add("activation_macs", (3 if torch.is_grad_enabled() else 1) * 2 * b * t * t * c)
    with ExitStack() as stack:
        stack.enter_context(counting(model, ledger, as_digital=as_digital))
        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Attention)]
        stack.callback(lambda: [h.remove() for h in hooks])
        yield ledger


# --------------------------------------------------------------------------- float training
def train_float(model: nn.Module, x: torch.Tensor, y: torch.Tensor, st: StyleSettings, diff: StyleDiffusion,
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

    tc = st.pretrain
    dev = torch.device(st.device)
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
    ema = EMAModel(acc.unwrap_model(net).parameters(), decay=st.ema_decay, use_ema_warmup=True, power=0.75)
    gen = torch.Generator().manual_seed((seed + acc.process_index) % 2 ** 63)
    losses: list[float] = []
    bar = tqdm(total=tc.steps, desc=desc, leave=False, disable=not progress or not acc.is_local_main_process)
    step = 0
    while step < tc.steps:
        for x0, yb in loader:
            flip = (torch.rand(len(yb), generator=gen) < 0.5).to(x0.device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            loss = diff.loss(net, x0, yb, gen, droppable=torch.ones_like(yb, dtype=torch.bool))
            acc.backward(loss)
            if st.grad_clip and acc.sync_gradients:
                acc.clip_grad_norm_(net.parameters(), st.grad_clip)
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


# --------------------------------------------------------------------------- stage scores
class Stage:
    """One stage's validation batches: fixed noise and time steps, so scores compare."""

    def __init__(self, diff: StyleDiffusion, st: StyleSettings, parts: list[tuple[torch.Tensor, torch.Tensor]],
                 seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.diff, self.parts = diff, []
        k = st.val_timesteps
        for x, y in parts:
            if len(y) == 0:
                continue
            x, y = x.repeat(k, 1, 1, 1), y.repeat(k)
            noise = torch.randn(x.shape, generator=gen).to(x.device)
            t = torch.linspace(0, st.train_timesteps - 1, len(y)).long()[torch.randperm(len(y), generator=gen)]
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


@torch.no_grad()
def _predict(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([clf(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.0f}%"


# --------------------------------------------------------------------------- the workload
class StyleWorkload:
    """Stylized image generation on procedural styles or a style folder."""

    name = "style"
    unit = "style"
    description = "stylized image generation: a class-conditional diffusion transformer (diffusers DiT), 32 px"
    settings_type = StyleSettings
    configurations = CONFIGS
    request_metrics = (("forget_style_rate", "forgotten"), ("kept_style_rate", "kept"),
                       ("new_style_rate", "new"))
    forget_metric = "forget_style_rate"
    methods = ("noise",)  # the forgotten labels are trained towards pure-noise images

    def settings(self, configuration: str) -> StyleSettings:
        return style_settings(configuration)

    def load(self, data_dir: str | None, seed: int, download: bool = False) -> style_data.StyleSet:
        if download:
            raise RmloraError("--download: the style workload has nothing to download (the procedural set is "
                              "built in; use --data-dir for a <style>/<content>/<image> folder)")
        return style_data.load_styles(data_dir, seed=seed, size=32)

    def default_classes(self, ds: style_data.StyleSet, st: StyleSettings) -> tuple[list, list, list]:
        """The default scenario's styles: the settings' on the procedural set; on a folder
        the first four learned, the 2nd and 3rd forgotten, the 5th and 6th added."""
        if ds.kind == "procedural":
            return st.learn, st.forget, st.add
        n = ds.n_styles
        return list(range(min(4, n))), list(range(1, min(3, n))), list(range(4, min(6, n)))

    def _split_sizes(self, ds, labels: list[int], st: StyleSettings) -> tuple[int, int]:
        """Validation and test images per style: the settings' on the procedural set, scaled
        down for a small folder (at least 2 each, 2 left for training)."""
        counts = [int(torch.unique(ds.image_ids[ds.labels == c]).numel()) for c in labels]
        n_min = min(counts)
        if n_min < 6:
            worst = ds.names[labels[counts.index(n_min)]]
            raise RmloraError(f"style {worst!r} has {n_min} images in {ds.source}; the style workload needs at "
                              "least 6 per style (2 validation, 2 test, 2 training)")
        if n_min >= st.n_val + st.n_test + 8:
            return st.n_val, st.n_test
        return max(2, n_min // 10), max(2, n_min // 5)

    def prepare(self, ds, order: list[int], settings: StyleSettings, seed: int, gen: torch.Generator) -> StyleData:
        n_val, n_test = self._split_sizes(ds, order, settings)
        splits = style_data.split_by_image(ds, order, n_val=n_val, n_test=n_test, seed=seed)
        return StyleData(ds, order, splits, torch.device(settings.device), gen, settings)

    def initial_columns(self, state: ClassState, order: list[int]) -> Columns:
        """Every style of the scenario has its embedding row from the start (untrained until added)."""
        return list(order)

    def build_model(self, n_columns: int, settings: StyleSettings) -> nn.Module:
        return build_dit(settings, n_columns).to(settings.device)

    def deploy_exclude(self, settings: StyleSettings) -> tuple[str, ...]:
        return tuple(settings.digital_layers)

    def calibration(self, data: StyleData, classes: list[int], columns: Columns, settings: StyleSettings
                    ) -> Callable[[nn.Module], Any]:
        """Converter calibration at deployment: the denoiser's inputs in training (noisy
        training images at random time steps, class labels) for up to CALIBRATION_EXAMPLES images."""
        x, y = data.xy("train", classes)
        keep = torch.linspace(0, len(x) - 1, min(len(x), CALIBRATION_EXAMPLES)).long() if len(x) else y[:0]
        x, y = x[keep], y[keep]

        def feed(model: nn.Module) -> None:
            gen = torch.Generator().manual_seed(0)
            for i in range(0, len(x), 64):
                data.diff.loss(model, x[i:i + 64], y[i:i + 64], gen)
        feed.examples = len(x)
        return feed

    def counting(self, model: nn.Module, ledger: Ledger, as_digital: bool = False) -> AbstractContextManager:
        return counted(model, ledger, as_digital)

    def setup(self, data: StyleData, seed: int, progress: bool) -> None:
        """Train the judge of every stage, once per seed, on the real images."""
        data.classifier, data.classifier_info = train_classifier(data, seed, progress)

    def pretrain(self, model: nn.Module, data: StyleData, classes: list[int], columns: Columns,
                 settings: StyleSettings, seed: int, progress: bool, desc: str) -> dict[str, Any]:
        return train_float(model, *data.xy("train", classes), settings, data.diff, seed, progress, desc)

    def objective(self, kind: str, model: nn.Module, data: StyleData, *, forget: list[int], new: list[int],
                  state: ClassState, columns: Columns, settings: StyleSettings, method: str,
                  gen: torch.Generator, seed: int) -> Objective:
        """``forget``: the forgotten labels towards pure noise, the kept styles rehearsed;
        ``learn``: new styles (none for a repair) with kept styles rehearsed and every
        forgotten label kept on noise."""
        st, dev, diff = settings, data.device, data.diff
        kept = [c for c in state.kept if c not in forget and c not in new]
        gone = [c for c in state.forgotten if c not in new] + [c for c in forget if c not in state.forgotten]
        n_val_noise = max(4, st.n_val)
        vgen = torch.Generator().manual_seed(seed)
        gone_lab = torch.tensor(data.idx(gone), dtype=torch.long, device=dev)
        val_noise = (noise_images(n_val_noise * len(gone), vgen, st.image_size, dev),
                     gone_lab.repeat_interleave(n_val_noise))

        def flip(x: torch.Tensor) -> torch.Tensor:
            f = (torch.rand(len(x), generator=gen) < 0.5).to(dev)
            return torch.where(f[:, None, None, None], x.flip(3), x)

        if kind == "forget":
            xr, yr = data.xy("train", kept)
            f_lab = torch.tensor(data.idx(forget), device=dev)
            stage = Stage(diff, st, [data.xy("val", kept), val_noise], seed + 1)

            def forget_loss(step: int) -> torch.Tensor:
                bs = st.forget_lora.batch_size
                nf = max(1, round(bs * st.forget_fraction))
                nr = max(1, bs - nf)
                pick = torch.randint(len(yr), (nr,), generator=gen).to(dev)
                x_f = noise_images(nf, gen, st.image_size, dev)
                y_f = f_lab[torch.randint(len(f_lab), (nf,), generator=gen).to(dev)]
                x0, y = torch.cat([flip(xr[pick]), x_f]), torch.cat([yr[pick], y_f])
                droppable = torch.cat([torch.ones(nr, dtype=torch.bool), torch.zeros(nf, dtype=torch.bool)]).to(dev)
                return diff.loss(model, x0, y, gen, droppable=droppable)
            return Objective(forget_loss, lambda: stage.score(model))

        xh, yh = data.rehearsal(kept, st.rehearsal_per_class if new else None)  # a repair: every image
        xn, yn = data.xy("train", new) if new else (xh[:0], yh[:0])
        stage = Stage(diff, st, [data.xy("val", new), data.xy("val", kept), val_noise], seed + 2)

        def learn_loss(step: int) -> torch.Tensor:
            bs = st.learn_lora.batch_size
            ng = round(bs * st.noise_guard_fraction) if gone else 0
            nn_ = max(1, (bs - ng) // 2) if new else 0
            nh = max(1, bs - ng - nn_)
            pn = torch.randint(max(1, len(yn)), (nn_,), generator=gen).to(dev)
            ph = torch.randint(len(yh), (nh,), generator=gen).to(dev)
            x_real = flip(torch.cat([xn[pn], xh[ph]]))
            y_real = torch.cat([yn[pn], yh[ph]])
            x_g = noise_images(ng, gen, st.image_size, dev)
            y_g = gone_lab[torch.randint(max(1, len(gone_lab)), (ng,), generator=gen).to(dev)]
            droppable = torch.cat([torch.ones(len(y_real), dtype=torch.bool), torch.zeros(ng, dtype=torch.bool)])
            return diff.loss(model, torch.cat([x_real, x_g]), torch.cat([y_real, y_g]), gen,
                             droppable=droppable.to(dev))
        return Objective(learn_loss, lambda: stage.score(model))

    def extend(self, model: nn.Module, path: str, new: list[int], columns: Columns, chip: Any, label: str,
               bits: int) -> Extension:
        """The new styles' class-embedding rows of every block, trained digitally (both paths)."""
        idx = [columns.index(c) for c in new]
        before = [getattr(p, a).weight.detach()[idx].clone() for p, a in label_tables(model)]
        rows = attach_rows(model, idx)

        def undo(current: Columns) -> Columns:  # the rows as they were before the request
            with torch.no_grad():
                for (p, a), w in zip(label_tables(model), before):
                    getattr(p, a).weight[idx] = w
            return current
        return Extension([r.rows for r in rows], sum(r.bits(bits) for r in rows), list(columns),
                         finish=lambda: fold_rows(model), undo=undo)

    # -- evaluation ----------------------------------------------------------
    @torch.no_grad()
    def retention_metric(self, model: nn.Module, data: StyleData, state: ClassState, columns: Columns
                         ) -> tuple[str, float]:
        """Denoising loss on the kept styles' validation images at fixed noise and time steps (lower
        is better): sampling and judging at every retention point would cost minutes each."""
        x, y = data.xy("val", state.kept)
        gen = torch.Generator().manual_seed(4049)
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        t = torch.linspace(0, data.settings.train_timesteps - 1, len(y)).long().to(x.device)
        model.eval()
        vals = [data.diff.loss(model, x[i:i + 64], y[i:i + 64], None, fixed=(noise[i:i + 64], t[i:i + 64]),
                               reduce=False) for i in range(0, len(y), 64)]
        return "val_denoising_loss", float(torch.cat(vals).mean())

    def evaluate(self, model: nn.Module, data: StyleData, state: ClassState, columns: Columns, *, key: str = "",
                 title: str = "") -> Evaluation:
        """Samples every style of the scenario with a fixed generator and scores them."""
        st = data.settings
        K = len(data.order)
        labels = torch.arange(K).repeat_interleave(st.samples_per_style)
        gen = torch.Generator().manual_seed(7919)
        x = data.diff.sample(model, labels, gen)
        clf = data.classifier
        rates = style_rates(clf, x, labels)
        pred = _predict(clf, x)
        real_x, real_y = data.xy("test", data.order, unit=True)
        fd = fd_per_class(clf, real_x, real_y, x, labels, list(range(K)))
        f_idx, k_idx, n_idx = data.idx(state.forgotten), data.idx(state.kept), data.idx(state.added)

        def mean(idx: list[int]) -> float:
            return float(np.mean([rates[i] for i in idx])) if idx else float("nan")
        noise_share = (float(np.mean([float((pred[labels == i] == K).float().mean()) for i in f_idx]))
                       if f_idx and st.classifier_noise_class else float("nan"))
        m = {"forget_style_rate": mean(f_idx), "kept_style_rate": mean(k_idx), "new_style_rate": mean(n_idx),
             "noise_share_forgotten": noise_share}
        if data.grid_dir is not None and key:
            tags = {**{i: " (forgotten)" for i in f_idx}, **{i: " (new)" for i in n_idx}}
            names = [n + tags.get(i, "") for i, n in enumerate(data.names)]
            name = f"grid_{key}.png"
            sample_grid(x, st.samples_per_style, data.grid_dir / name, labels=names, title=title)
            data.grids[key] = name
        return Evaluation(m, {"style_rate": {data.names[i]: rates[i] for i in range(K)},
                              "fd": {data.names[i]: fd[i] for i in range(K)}})

    def inference(self, model: nn.Module, data: StyleData, state: ClassState, columns: Columns, ledger: Ledger,
                  as_digital: bool = False) -> int:
        """Count complete sampling runs (every DDIM step, guidance included) of a few samples."""
        n = min(4, len(data.order))
        with counted(model, ledger, as_digital):
            data.diff.sample(model, torch.arange(n), torch.Generator().manual_seed(1))
        return n

    def extras(self, ctx: Any) -> dict[str, Any]:
        data: StyleData = ctx.data
        return {"classifier": data.classifier_info, "grids": dict(data.grids)}

    # -- report ---------------------------------------------------------------
    def report_section(self, result: Any, out: Path | None) -> str:
        """Model, classifier, per-style scores, attention share, sample grids."""
        from rmlora.scenario.report import mean_of

        s0 = result.per_seed[0]
        st = StyleSettings.from_dict(result.settings)
        clf = s0.extras.get("classifier", {})
        grids = s0.extras.get("grids", {})
        names = list(s0.class_names)
        lines = ["## Style model and judge\n",
                 f"`DiTTransformer2DModel` in pixel space ({st.image_size}x{st.image_size} RGB, patch {st.patch_size}, "
                 f"{st.num_layers} layers, {st.num_attention_heads} heads x {st.attention_head_dim}), "
                 f"{st.prediction_type}, {st.beta_schedule} schedule, DDIM {st.sample_steps} steps, classifier-free "
                 f"guidance {st.guidance_scale}; LoRA rank {result.adapter['rank']}, alpha {result.adapter['alpha']} "
                 f"on `{', '.join(result.adapter['target_modules'] or ['every analogue layer'])}`.\n",
                 f"A style is *recognised* in a sample when the style classifier (trained on the real images of all "
                 f"{len(names)} styles of the scenario plus a class of pure-noise images; validation accuracy "
                 f"{_pct(clf.get('val_acc'))}, test accuracy on real images {_pct(clf.get('test_acc'))}) calls the "
                 f"sample that style; {st.samples_per_style} samples per style with the same starting noise at every "
                 f"stage. FD: Fréchet distance between the classifier's features of real test images and of the "
                 f"samples of a style (lower is closer; with few samples it is biased upwards: compare within the "
                 f"table only).\n", "Per style after the last request (recognition rate / FD, first seed):\n"]
        paths = [p for p in ("lora", "full", "retrain") if p in s0.requests[-1].paths]
        lines.append("| style | " + " | ".join(paths) + " |")
        lines.append("|---|" + "---|" * len(paths))
        for n in names:
            cells = []
            for p in paths:
                pc = s0.requests[-1].paths[p].per_class
                cells.append(f"{_pct(pc.get('style_rate', {}).get(n))} / {pc.get('fd', {}).get(n, float('nan')):.1f}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        share = []
        for p in ("lora", "full"):
            b = s0.paths[p].breakdown
            tot = b["inference_J_per_sample"]["total"]
            share.append(f"{p}: {100 * b['inference_activation_J_per_sample'] / tot:.0f}%" if tot else f"{p}: –")
        lines.append(f"\nThe attention's activation x activation products (QKᵀ, AV) have no fixed weights to store in "
                     f"the arrays: they are digital MACs on every path, the all-digital reference included "
                     f"(share of the inference energy, first seed: {', '.join(share)}). Noise share of the "
                     f"forgotten styles' samples (the classifier calls them noise), last request, mean over seeds: "
                     f"LoRA {_pct(mean_of(result, 'lora', 'noise_share_forgotten'))}, full update "
                     f"{_pct(mean_of(result, 'full', 'noise_share_forgotten'))}.\n")
        if grids:
            lines.append("### Sample grids (first seed)\n\nOne row per style, the same starting noise in every grid.\n")
            for key, fname in grids.items():
                lines.append(f"**{key.replace('_', ' ')}**\n\n![{key}]({fname})\n")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- float pretraining script
def pretrain_main(argv: list[str] | None = None) -> int:
    """``python -m rmlora.tasks.style_workload pretrain`` (or ``accelerate launch -m
    rmlora.tasks.style_workload pretrain``): the float pretraining alone, saved as safetensors
    for ``rmlora demo --workload style --pretrained FILE``."""
    import argparse

    from safetensors.torch import save_file

    from rmlora.config import ScenarioConfig
    from rmlora.runinfo import Streams
    from rmlora.scenario.runner import plan_scenario

    ap = argparse.ArgumentParser(prog="python -m rmlora.tasks.style_workload pretrain",
                                 description="float pretraining of the style DiT (accelerate)")
    ap.add_argument("--out", required=True, help="safetensors file to write")
    ap.add_argument("--configuration", default="cpu", choices=CONFIGS)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the configuration's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise RmloraError(f"{out} already exists; not overwritten")
    settings = {"pretrain": {"steps": args.steps}} if args.steps else {}
    plan = plan_scenario(ScenarioConfig(workload="style", configuration=args.configuration, data_dir=args.data_dir,
                                        seed=args.seed, settings=settings))
    streams, w, st = Streams(args.seed), plan.workload, plan.settings
    data = w.prepare(plan.ds, plan.order, st, args.seed, streams.generator("data"))
    with streams.global_rng("model:pretrain"):
        model = w.build_model(len(plan.order), st)
    hist = w.pretrain(model, data, plan.states[0].kept, plan.order, st, streams.seed("train:pretrain"), True,
                      "pretrain (float)")
    from accelerate import PartialState
    if PartialState().is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out))
        print(f"wrote {out} ({hist['steps']} steps on {hist['processes']} process(es), loss {hist['final_loss']:.4f})")
    return 0


if __name__ == "__main__":  # pragma: no cover - run by hand / accelerate launch
    import sys

    if sys.argv[1:2] != ["pretrain"]:
        print("usage: python -m rmlora.tasks.style_workload pretrain --out FILE [--configuration cpu|gpu] ...",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(pretrain_main(sys.argv[2:]))
    except RmloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
