"""Stylized image generation as a scenario workload: style x subject classes.

1. per seed, the judge (a classifier of style, with a noise class, and of subject) is trained on
   the real images, and for latent configurations a small AutoencoderKL (frozen, digital, saved
   as ``weights/vae.safetensors`` in the run folder);
2. a float denoiser (the ConvNeXt-block DiT by default) is trained on the learned classes with
   ``accelerate`` (the same code on one CPU, one GPU or, under ``accelerate launch``, several) and
   every Linear and Conv2d — the depthwise convolutions included — is deployed onto the chip;
3. a forget request trains the forgotten classes' labels towards uniform random noise while the
   kept classes are rehearsed;
4. an add request learns new classes (their class-embedding rows trained digitally on both
   paths) with kept classes replayed 3 old : 1 new, the earlier adapters active and the
   forgotten labels kept on noise; a repair request does the same with no new class;
5. scores: recognition of style and subject in samples of forgotten, kept and new classes, per
   subject; whether a forgotten style leaks into other classes; KID and Fréchet distance on the
   judge's features; sample grids.

Every model choice is made on validation data; test images only enter the distances and the
judge's reported test accuracy.
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
from rmlora.config import TrainConfig
from rmlora.data import styles as style_data
from rmlora.errors import RmloraError
from rmlora.metrics.generation import (frechet_distance, classifier_features, kernel_distance, predict,
                                       sample_grid, train_style_classifier)
from rmlora.scenario.workload import CALIBRATION_EXAMPLES, ClassState, Columns, Evaluation, Extension, Objective
from rmlora.tasks.style import CONFIGS, StyleSettings, style_settings
from rmlora.tasks.style_models import attach_rows, fold_rows, label_tables
from rmlora.tasks.style_pipeline import LatentCodec, StyleDiffusion, noise_images, train_vae


#: offset of the procedural seed of the judge's own images (a draw the generator never sees)
JUDGE_DRAW = 1_000_003


# --------------------------------------------------------------------------- data
class StyleData:
    """One seed's split: images, the denoiser's inputs (pixels in [-1, 1] or latents, on the
    device) and model labels (column k = dataset class ``order[k]``)."""

    def __init__(self, ds: style_data.StyleSet, order: list[int], splits: dict[str, Any], device: torch.device,
                 gen: torch.Generator, settings: StyleSettings) -> None:
        self.ds, self.order, self.splits, self.device, self.gen, self.settings = ds, order, splits, device, gen, settings
        self.index = {lab: i for i, lab in enumerate(order)}
        self.names = [ds.names[c] for c in order]
        self.style_of = [ds.class_style[c] for c in order]  # dataset style index of each column
        self.subject_of = [ds.class_subject[c] for c in order]
        self.codec = LatentCodec()
        self.diff = StyleDiffusion(settings, null_label=len(order), codec=self.codec)
        self.classifier: nn.Module | None = None
        self.classifier_info: dict[str, Any] = {}
        self.vae_info: dict[str, Any] = {}
        self.grid_dir: Path | None = None
        self.grids: dict[str, str] = {}
        self._encoded: dict[str, torch.Tensor] = {}

    def set_codec(self, codec: LatentCodec) -> None:
        self.codec = codec
        self.diff = StyleDiffusion(self.settings, null_label=len(self.order), codec=codec)
        self._encoded = {}

    def idx(self, labels: list[int]) -> list[int]:
        return [self.index[c] for c in labels]

    def xy(self, split: str, labels: list[int], unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of ``labels`` and their model labels: the denoiser's (pixels in [-1, 1] or latents,
        on the device), or with ``unit`` the images in [0, 1] on the CPU."""
        s = self.splits[split]
        keep = torch.isin(s.labels, torch.tensor(labels, dtype=torch.long))
        y = torch.tensor([self.index[int(v)] for v in s.labels[keep]], dtype=torch.long)
        if unit:
            return s.images[keep], y
        if split not in self._encoded:
            self._encoded[split] = self.codec.encode((s.images * 2 - 1).to(self.device))
        return self._encoded[split][keep.to(self.device)], y.to(self.device)

    def noise_targets(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Uniform-noise images in the denoiser's space: the forgotten labels' targets."""
        return self.codec.encode(noise_images(n, gen, self.settings.image_size, self.device))

    def rehearsal(self, labels: list[int], per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` (all if None) training inputs of each of ``labels``."""
        xs, ys = [], []
        for c in labels:
            x, y = self.xy("train", [c])
            pick = torch.randperm(len(y), generator=self.gen)[:per_class or len(y)].to(y.device)
            xs.append(x[pick])
            ys.append(y[pick])
        return torch.cat(xs), torch.cat(ys)

    # -- the judge's classes ----------------------------------------------------------
    @property
    def styles(self) -> list[int]:
        """Dataset styles of the scenario, in the order of the judge's style head (then "noise")."""
        return sorted(set(self.style_of))

    @property
    def subjects(self) -> list[int]:
        return sorted(set(self.subject_of))


def _noise_class_images(n: int, gen: torch.Generator, size: int) -> torch.Tensor:
    """Pure-noise images in [0, 1] for the judge's noise class: uniform, Gaussian
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


def train_classifier(data: StyleData, seed: int, progress: bool, source: dict[str, Any] | None = None
                     ) -> tuple[nn.Module, dict]:
    """The judge: a style head (the scenario's styles plus a noise class) and a subject head,
    trained on real images of every class of the scenario — ``source``'s train and val splits (a
    separate draw of the classes), else the seed's — with no subject for the noise images;
    checkpoint chosen on the validation images. Its test accuracy is on the seed's test images."""
    st = data.settings
    styles, subjects = data.styles, data.subjects
    s_of = {s: i for i, s in enumerate(styles)}
    b_of = {b: i for i, b in enumerate(subjects)}
    splits = source or data.splits

    def labelled(part: Any, gen: torch.Generator | None):
        keep = torch.isin(part.labels, torch.tensor(data.order, dtype=torch.long))
        x, lab = part.images[keep], part.labels[keep]
        ys = torch.tensor([s_of[data.ds.class_style[int(k)]] for k in lab], dtype=torch.long)
        yb = torch.tensor([b_of[data.ds.class_subject[int(k)]] for k in lab], dtype=torch.long)
        if st.classifier_noise_class and gen is not None:
            per = max(2, len(lab) // len(data.order))
            noise = _noise_class_images(per, gen, x.shape[-1])
            if st.latent:  # what a decoder makes of noise: the judge must call it noise too
                noise = (data.codec.decode(data.codec.encode(noise.to(data.device) * 2 - 1)).clamp(-1, 1).cpu() + 1) / 2
            x = torch.cat([x, noise])
            ys = torch.cat([ys, torch.full((per,), len(styles), dtype=torch.long)])
            yb = torch.cat([yb, torch.full((per,), -1, dtype=torch.long)])
        return x, ys, yb
    gen = torch.Generator().manual_seed(seed)
    xt, yt, bt = labelled(splits["train"], gen)
    xv, yv, bv = labelled(splits["val"], gen)
    dev = "cuda" if data.device.type == "cuda" else "cpu"
    n_style = len(styles) + (1 if st.classifier_noise_class else 0)
    clf, val_acc = train_style_classifier(xt, yt, xv, yv, n_style, steps=st.classifier_steps, seed=seed,
                                          progress=progress, device=dev, train_subject=bt, val_subject=bv,
                                          n_subjects=len(subjects))
    clf = clf.cpu().eval()
    xs, ys, bs = labelled(data.splits["test"], None)
    ps, pb = predict(clf, xs)
    info = {"styles": [data.ds.style_names[s] for s in styles] + (["noise"] if st.classifier_noise_class else []),
            "subjects": [data.ds.subject_names[b] for b in subjects], "val_acc": val_acc, "steps": st.classifier_steps,
            "trained_on": "a separate procedural draw" if source else "the seed's training images",
            "test_style_acc": float((ps == ys).float().mean()), "test_subject_acc": float((pb == bs).float().mean())}
    return clf, info


# --------------------------------------------------------------------------- counting
@contextmanager
def counted(model: nn.Module, ledger: Ledger) -> Iterator[Ledger]:
    """:func:`rmlora.costs.counting` plus, for attention blocks, the activation x activation
    products (QKᵀ and AV: 2·T²·C MACs per sample and layer, three times with gradients), which
    have no fixed weights for the arrays and run on the digital unit on every path. The
    ConvNeXt blocks have none: their depthwise convolutions are analogue layers."""
    from diffusers.models.attention_processor import Attention

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        b, t, c = out.shape
        ledger.add("activation_macs", (3 if torch.is_grad_enabled() else 1) * 2 * b * t * t * c)
    with ExitStack() as stack:
        stack.enter_context(counting(model, ledger))
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


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.0f}%"


# --------------------------------------------------------------------------- the workload
class StyleWorkload:
    """Stylized image generation on style x subject classes (procedural or a folder)."""

    name = "style"
    unit = "class"
    description = ("stylized image generation: a class-conditional diffusion transformer (ConvNeXt-block DiT by "
                   "default) on style x subject classes")
    settings_type = StyleSettings
    configurations = CONFIGS
    request_metrics = (("forget_style_rate", "forgotten"), ("kept_class_rate", "kept"), ("new_class_rate", "new"))
    forget_metric = "forget_style_rate"
    methods = ("noise",)  # the forgotten labels are trained towards uniform random noise

    def __init__(self) -> None:
        self._sets: dict[tuple, style_data.StyleSet] = {}
        self._judges: dict[tuple, tuple[nn.Module, dict]] = {}

    def settings(self, configuration: str) -> StyleSettings:
        return style_settings(configuration)

    def load(self, data_dir: str | None, seed: int, download: bool = False) -> style_data.StyleSet:
        if download:
            raise RmloraError("--download: the style workload has nothing to download (the procedural set is "
                              "built in; use --data-dir for a <style>/<subject>/<image> folder)")
        ds = style_data.load_styles(data_dir, seed=seed, size=32)
        ds.recipe = (data_dir, seed)  # to read it again at a configuration's image size (prepare)
        return ds

    def _at_size(self, ds: style_data.StyleSet, st: StyleSettings) -> style_data.StyleSet:
        """``ds`` at the configuration's image side and class count (read or drawn again, once)."""
        recipe = getattr(ds, "recipe", None)
        if recipe is None or (ds.size == st.image_size and (ds.kind != "procedural" or st.per_class == 40)):
            return ds
        data_dir, seed = recipe
        key = (data_dir, seed, st.image_size, st.per_class)
        if key not in self._sets:
            self._sets[key] = (style_data.load_style_folder(data_dir, size=st.image_size) if data_dir is not None
                               else style_data.make_procedural(seed=seed, size=st.image_size, per_class=st.per_class))
            self._sets[key].recipe = recipe
        return self._sets[key]

    def default_classes(self, ds: style_data.StyleSet, st: StyleSettings) -> tuple[list, list, list]:
        """The default scenario: the settings' styles on the procedural set; on a folder the first
        four styles learned, the third forgotten, the fifth added (as far as there are styles)."""
        if ds.kind == "procedural":
            return st.learn, st.forget, st.add
        names = [f"style:{n}" for n in ds.style_names]
        return names[:4], names[2:3] if len(names) > 3 else names[1:2], names[4:5]

    def _split_sizes(self, ds, labels: list[int], st: StyleSettings) -> tuple[int, int]:
        """Validation and test images per class: the settings' on the procedural set, scaled
        down for a small folder (at least 2 each, 2 left for training)."""
        counts = [int(torch.unique(ds.image_ids[ds.labels == c]).numel()) for c in labels]
        n_min = min(counts)
        if n_min < 6:
            worst = ds.names[labels[counts.index(n_min)]]
            raise RmloraError(f"class {worst!r} has {n_min} images in {ds.source}; the style workload needs at "
                              "least 6 per class (2 validation, 2 test, 2 training)")
        if n_min >= st.n_val + st.n_test + 8:
            return st.n_val, st.n_test
        return max(2, n_min // 10), max(2, n_min // 5)

    def prepare(self, ds, order: list[int], settings: StyleSettings, seed: int, gen: torch.Generator) -> StyleData:
        ds = self._at_size(ds, settings)
        n_val, n_test = self._split_sizes(ds, order, settings)
        splits = style_data.split_by_image(ds, order, n_val=n_val, n_test=n_test, seed=seed)
        return StyleData(ds, order, splits, torch.device(settings.device), gen, settings)

    def initial_columns(self, state: ClassState, order: list[int]) -> Columns:
        """Every class of the scenario has its embedding row from the start (untrained until added)."""
        return list(order)

    def build_model(self, n_columns: int, settings: StyleSettings) -> nn.Module:
        return settings.build(n_columns).to(settings.device)

    def deploy_exclude(self, settings: StyleSettings) -> tuple[str, ...]:
        return tuple(settings.digital_layers)

    def calibration(self, data: StyleData, classes: list[int], columns: Columns, settings: StyleSettings
                    ) -> Callable[[nn.Module], Any]:
        """Converter calibration at deployment: the denoiser's inputs in training (noisy training
        inputs at random time steps, class labels) for up to CALIBRATION_EXAMPLES images."""
        x, y = data.xy("train", classes)
        keep = torch.linspace(0, len(x) - 1, min(len(x), CALIBRATION_EXAMPLES)).long() if len(x) else y[:0]
        x, y = x[keep], y[keep]

        def feed(model: nn.Module) -> None:
            gen = torch.Generator().manual_seed(0)
            for i in range(0, len(x), 64):
                data.diff.loss(model, x[i:i + 64], y[i:i + 64], gen)
        feed.examples = len(x)
        return feed

    def counting(self, model: nn.Module, ledger: Ledger) -> AbstractContextManager:
        return counted(model, ledger)

    def setup(self, data: StyleData, seed: int, progress: bool) -> None:
        """Per seed: the autoencoder of a latent configuration (trained on this seed's training
        images, or read from ``vae_checkpoint``; saved with the run), then the judge."""
        st = data.settings
        if st.latent:
            data.set_codec(self._codec(data, seed, progress))
        recipe = getattr(data.ds, "recipe", None)
        if data.ds.kind != "procedural" or recipe is None or st.latent:  # a folder: the seed's own images
            data.classifier, data.classifier_info = train_classifier(data, seed, progress)
            return
        # procedural: a separate draw of the same classes (never the generator's images), one judge per run
        key = (recipe[1], st.image_size, tuple(data.order), st.classifier_steps, st.per_class, st.n_val)
        if key not in self._judges:
            judge_ds = style_data.make_procedural(seed=recipe[1] + JUDGE_DRAW, size=st.image_size,
                                                  per_class=st.per_class)
            source = style_data.split_by_image(judge_ds, data.order, n_val=st.n_val, n_test=0, seed=recipe[1])
            self._judges[key] = train_classifier(data, recipe[1], progress, source)
        data.classifier, data.classifier_info = self._judges[key]

    def _codec(self, data: StyleData, seed: int, progress: bool) -> LatentCodec:
        from safetensors.torch import load_file, save_file

        from rmlora.tasks.style_models import build_vae

        st = data.settings
        if st.vae_checkpoint:
            path = Path(st.vae_checkpoint)
            if not path.is_file():
                raise RmloraError(f"settings.vae_checkpoint {path} does not exist")
            try:
                sd = load_file(str(path))
                vae = build_vae(st.image_size, st.latent_channels, tuple(st.vae_widths))
                scale = float(sd.pop("rmlora.latent_scale"))
                vae.load_state_dict(sd)
            except Exception as exc:  # corrupt file, other shapes
                raise RmloraError(f"settings.vae_checkpoint {path} is not an autoencoder of these settings "
                                  f"({exc.__class__.__name__})") from None
            data.vae_info = {"loaded_from": str(path), "scale": scale}
            return LatentCodec(vae.to(data.device), scale)
        x, _ = data.xy("train", data.order, unit=True)
        codec, data.vae_info = train_vae(x * 2 - 1, st, seed, progress)
        data.vae_info["parameters"] = sum(p.numel() for p in codec.vae.parameters())
        if data.grid_dir is not None:
            (data.grid_dir / "weights").mkdir(exist_ok=True)
            sd = {k: v.detach().cpu().contiguous() for k, v in codec.vae.state_dict().items()}
            sd["rmlora.latent_scale"] = torch.tensor(codec.scale)
            save_file(sd, str(data.grid_dir / "weights" / "vae.safetensors"))
            data.vae_info["saved"] = "weights/vae.safetensors"
        return codec

    def pretrain(self, model: nn.Module, data: StyleData, classes: list[int], columns: Columns,
                 settings: StyleSettings, seed: int, progress: bool, desc: str) -> dict[str, Any]:
        return train_float(model, *data.xy("train", classes), settings, data.diff, seed, progress, desc)

    def objective(self, kind: str, model: nn.Module, data: StyleData, *, forget: list[int], new: list[int],
                  state: ClassState, columns: Columns, settings: StyleSettings, method: str,
                  gen: torch.Generator, seed: int, budget: TrainConfig | None = None) -> Objective:
        """``forget``: the forgotten labels towards uniform noise, the kept classes rehearsed;
        ``learn``: new classes (none for a repair) with kept classes replayed ``replay_old`` : 1
        and every forgotten label kept on noise. ``budget``: the stage's steps and batch size
        (each path's own; default the LoRA stage's)."""
        st, dev, diff = settings, data.device, data.diff
        kept = [c for c in state.kept if c not in forget and c not in new]
        gone = [c for c in state.forgotten if c not in new] + [c for c in forget if c not in state.forgotten]
        n_val_noise = max(4, st.n_val)
        vgen = torch.Generator().manual_seed(seed)
        gone_lab = torch.tensor(data.idx(gone), dtype=torch.long, device=dev)
        val_noise = (data.noise_targets(n_val_noise * len(gone), vgen), gone_lab.repeat_interleave(n_val_noise))

        def flip(x: torch.Tensor) -> torch.Tensor:
            f = (torch.rand(len(x), generator=gen) < 0.5).to(dev)
            return torch.where(f[:, None, None, None], x.flip(3), x)

        if kind == "forget":
            xr, yr = data.xy("train", kept)
            f_lab = torch.tensor(data.idx(forget), device=dev)
            stage = Stage(diff, st, [data.xy("val", kept), val_noise], seed + 1)

            def forget_loss(step: int) -> torch.Tensor:
                bs = (budget or st.forget_lora).batch_size
                nf = max(1, round(bs * st.forget_fraction))
                nr = max(1, bs - nf)
                pick = torch.randint(len(yr), (nr,), generator=gen).to(dev)
                x_f = data.noise_targets(nf, gen)
                y_f = f_lab[torch.randint(len(f_lab), (nf,), generator=gen).to(dev)]
                x0, y = torch.cat([flip(xr[pick]), x_f]), torch.cat([yr[pick], y_f])
                droppable = torch.cat([torch.ones(nr, dtype=torch.bool), torch.zeros(nf, dtype=torch.bool)]).to(dev)
                return diff.loss(model, x0, y, gen, droppable=droppable)
            return Objective(forget_loss, lambda: stage.score(model))

        xh, yh = data.rehearsal(kept, st.rehearsal_per_class if new else None)  # a repair: every image
        xn, yn = data.xy("train", new) if new else (xh[:0], yh[:0])
        stage = Stage(diff, st, [data.xy("val", new), data.xy("val", kept), val_noise], seed + 2)

        def learn_loss(step: int) -> torch.Tensor:
            bs = (budget or st.learn_lora).batch_size
            ng = round(bs * st.noise_guard_fraction) if gone else 0
            real = bs - ng
            nn_ = max(1, round(real / (st.replay_old + 1))) if new else 0  # replay_old old : 1 new
            nh = max(1, real - nn_)
            pn = torch.randint(max(1, len(yn)), (nn_,), generator=gen).to(dev)
            ph = torch.randint(len(yh), (nh,), generator=gen).to(dev)
            x_real = flip(torch.cat([xn[pn], xh[ph]]))
            y_real = torch.cat([yn[pn], yh[ph]])
            x_g = data.noise_targets(ng, gen)
            y_g = gone_lab[torch.randint(max(1, len(gone_lab)), (ng,), generator=gen).to(dev)]
            droppable = torch.cat([torch.ones(len(y_real), dtype=torch.bool), torch.zeros(ng, dtype=torch.bool)])
            return diff.loss(model, torch.cat([x_real, x_g]), torch.cat([y_real, y_g]), gen,
                             droppable=droppable.to(dev))
        return Objective(learn_loss, lambda: stage.score(model))

    def extend(self, model: nn.Module, path: str, new: list[int], columns: Columns, chip: Any, label: str,
               bits: int) -> Extension:
        """The new classes' class-embedding rows, trained digitally (both paths)."""
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
        """Denoising loss on the kept classes' validation images at fixed noise and time steps (lower
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
        """Samples every class of the scenario from a fixed generator and judges them: per class the
        share whose style is the class's (``style_rate``) and whose style and subject both are
        (``class_rate``); per subject the forgotten styles' rate and their leakage into the other
        classes; KID and Fréchet distance to the real test images of each group."""
        st = data.settings
        K = len(data.order)
        labels = torch.arange(K).repeat_interleave(st.samples_per_class)
        x = data.diff.sample(model, labels, torch.Generator().manual_seed(7919))
        clf = data.classifier
        ps, pb = predict(clf, x)
        s_head = {s: i for i, s in enumerate(data.styles)}
        b_head = {b: i for i, b in enumerate(data.subjects)}
        want_s = torch.tensor([s_head[data.style_of[k]] for k in labels.tolist()])
        want_b = torch.tensor([b_head[data.subject_of[k]] for k in labels.tolist()])
        style_ok = ps == want_s
        class_ok = style_ok & (pb == want_b)
        f_idx, n_idx = data.idx(state.forgotten), data.idx(state.added)
        k_idx = data.idx(state.retained_initial)

        def rate(ok: torch.Tensor, idx: list[int]) -> float:
            sel = torch.isin(labels, torch.tensor(idx, dtype=torch.long))
            return float(ok[sel].float().mean()) if idx else float("nan")
        gone_styles = {s_head[data.style_of[k]] for k in f_idx}
        leaks = torch.tensor([int(p) in gone_styles for p in ps.tolist()])
        others = [k for k in range(K) if k not in f_idx]
        subj = {}
        for b in data.subjects:
            name = data.ds.subject_names[b]
            fb = [k for k in f_idx if data.subject_of[k] == b]
            ob = [k for k in others if data.subject_of[k] == b]
            subj[name] = (rate(style_ok, fb), rate(leaks, ob))
        noise = len(data.styles) if st.classifier_noise_class else None
        m = {"forget_style_rate": rate(style_ok, f_idx), "kept_class_rate": rate(class_ok, k_idx),
             "new_class_rate": rate(class_ok, n_idx), "forget_class_rate": rate(class_ok, f_idx),
             "kept_style_rate": rate(style_ok, k_idx), "new_style_rate": rate(style_ok, n_idx),
             "forget_style_rate_worst_subject": max((v[0] for v in subj.values() if v[0] == v[0]),
                                                    default=float("nan")),
             "leak_rate": rate(leaks, others) if f_idx else float("nan"),
             "noise_share_forgotten": rate(ps == noise, f_idx) if noise is not None else float("nan")}
        real_x, real_y = data.xy("test", data.order, unit=True)
        for group, idx in (("kept", k_idx), ("new", n_idx), ("forgotten", f_idx)):
            if not idx:
                m.update({f"kid_{group}": float("nan"), f"kid_{group}_std": float("nan"), f"fd_{group}": float("nan")})
                continue
            r = real_x[torch.isin(real_y, torch.tensor(idx))]
            g = x[torch.isin(labels, torch.tensor(idx))]
            m[f"kid_{group}"], m[f"kid_{group}_std"] = kernel_distance(clf, r, g, st.kid_subsets, seed=1)
            m[f"fd_{group}"] = frechet_distance(classifier_features(clf, r), classifier_features(clf, g))
        if data.grid_dir is not None and key:
            tags = {**{i: " (forgotten)" for i in f_idx}, **{i: " (new)" for i in n_idx}}
            names = [n + tags.get(i, "") for i, n in enumerate(data.names)]
            name = f"grid_{key}.png"
            sample_grid(x, st.samples_per_class, data.grid_dir / name, labels=names, title=title)
            data.grids[key] = name
        per_class = {"class_rate": {data.names[k]: rate(class_ok, [k]) for k in range(K)},
                     "style_rate": {data.names[k]: rate(style_ok, [k]) for k in range(K)},
                     "forget_style_rate_by_subject": {n: v[0] for n, v in subj.items()},
                     "leak_rate_by_subject": {n: v[1] for n, v in subj.items()}}
        return Evaluation(m, per_class)

    def inference(self, model: nn.Module, data: StyleData, state: ClassState, columns: Columns, ledger: Ledger
                  ) -> int:
        """Count complete sampling runs (every DDIM step, guidance included) of a few samples; the
        autoencoder's decoder (latent configurations) is digital, the same on every path, and left
        out of the figures."""
        n = min(4, len(data.order))
        with counted(model, ledger):
            data.diff.sample(model, torch.arange(n), torch.Generator().manual_seed(1))
        return n

    def extras(self, ctx: Any) -> dict[str, Any]:
        data: StyleData = ctx.data
        return {"classifier": data.classifier_info, "grids": dict(data.grids), "vae": dict(data.vae_info)}

    # -- report ---------------------------------------------------------------
    def report_section(self, result: Any, out: Path | None) -> str:
        """Model and judge, per-subject forgetting and leakage, distances with intervals, per-class
        rates, the attention's share (attention blocks), sample grids."""
        from rmlora.scenario.results import stats

        s0 = result.per_seed[0]
        st = StyleSettings.from_dict(result.settings)
        clf = s0.extras.get("classifier", {})
        vae = s0.extras.get("vae", {})
        grids = s0.extras.get("grids", {})
        names = list(s0.class_names)
        paths = [p for p in ("lora", "full", "retrain") if p in s0.requests[-1].paths]
        n_params = sum(p.numel() for p in st.replace(device="cpu").build(len(names)).parameters())
        blocks = ("ConvNeXt blocks (adaLN-Zero, 7x7 depthwise convolution in place of attention, GELU MLP)"
                  if st.block == "convnext" else "attention blocks (diffusers' `DiTTransformer2DModel`)")
        space = (f"in pixel space ({st.image_size}x{st.image_size} RGB)" if not st.latent else
                 f"on {st.model_size}x{st.model_size}x{st.latent_channels} latents of {st.image_size} px images "
                 f"(a small `AutoencoderKL` trained on this seed's training images, {vae.get('parameters', '?')} "
                 f"weights, frozen and digital: its decoder runs once per sample on every path, the all-digital "
                 f"reference included, and is left out of the cost figures)")

        def agg(path: str, get) -> dict:
            return stats([get(s.requests[-1].paths[path]) for s in result.per_seed])

        def pm(a: dict, pct: bool = True, digits: int = 3) -> str:
            f = (lambda v: _pct(v)) if pct else (lambda v: "–" if v != v else f"{v:.{digits}g}")
            if a["std"] != a["std"]:
                return f(a["mean"])
            n = len([v for v in a["per_seed"] if v == v])
            half = _t975(n - 1) * a["std"] / math.sqrt(n)
            return f"{f(a['mean'])} ± {f(a['std'])} [{f(a['mean'] - half)}, {f(a['mean'] + half)}]"
        seeds = len(result.per_seed)
        lines = ["## Style model and judge\n",
                 f"A class-conditional diffusion transformer with {st.num_layers} {blocks}, hidden {st.hidden_size}, "
                 f"patch {st.patch_size}, {n_params:,} weights, {space}; {st.prediction_type}, {st.beta_schedule} "
                 f"schedule, DDIM {st.sample_steps} steps, classifier-free guidance {st.guidance_scale}; LoRA rank "
                 f"{result.adapter['rank']}, alpha {result.adapter['alpha']} on "
                 f"`{', '.join(result.adapter['target_modules'] or ['every analogue layer'])}`. Every Linear and "
                 f"Conv2d sits in the arrays"
                 + (" — the depthwise convolutions as packed kernel blocks, each read by its own MVM "
                    "(docs/style.md)" if st.block == "convnext" else "") + ".\n",
                 f"The judge is a CNN with two heads trained on real images of all {len(names)} classes "
                 f"({clf.get('trained_on', 'the training images')}): the "
                 f"style ({', '.join(clf.get('styles', []))}) and the subject ({', '.join(clf.get('subjects', []))}); "
                 f"validation score {_pct(clf.get('val_acc'))}, test accuracy on real images: style "
                 f"{_pct(clf.get('test_style_acc'))}, subject {_pct(clf.get('test_subject_acc'))} (first seed). A "
                 f"sample of a class is *recognised* when both heads name its style and subject; a forgotten class "
                 f"counts as generated whenever its style is recognised at all (`forget_style_rate`, the stricter "
                 f"test); {st.samples_per_class} samples per class from the same starting noise at every stage.\n",
                 f"### Forgotten styles per subject (after the last request, mean ± std over {seeds} seed(s) "
                 f"[95% t-interval])\n",
                 "Rate: samples of a forgotten class whose style the judge recognises. Leak: samples of every other "
                 "class of that subject that the judge calls a forgotten style.\n",
                 "| subject | " + " | ".join(f"{p} rate | {p} leak" for p in paths) + " |",
                 "|---|" + "---|---|" * len(paths)]
        subjects = list(s0.requests[-1].paths[paths[0]].per_class.get("forget_style_rate_by_subject", {}))
        for b in subjects:
            cells = []
            for p in paths:
                cells.append(pm(agg(p, lambda x: x.per_class["forget_style_rate_by_subject"].get(b, float("nan")))))
                cells.append(pm(agg(p, lambda x: x.per_class["leak_rate_by_subject"].get(b, float("nan")))))
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines += ["", f"### Distances to the real test images (after the last request, mean ± std over {seeds} "
                      "seed(s) [95% t-interval])\n",
                  "KID: unbiased MMD² with a cubic kernel on the judge's features (torchmetrics' estimator; the "
                  "spread of one seed over random subsets is in `summary.json` as `kid_*_std`). FD: the Fréchet "
                  "distance on the same features, biased upwards with few samples: compare within the table. For "
                  "the forgotten classes a *large* distance is the goal.\n",
                  "| group | " + " | ".join(f"{p} KID | {p} FD" for p in paths) + " |", "|---|" + "---|---|" * len(paths)]
        for g in ("kept", "new", "forgotten"):
            cells = []
            for p in paths:
                cells.append(pm(agg(p, lambda x: x.metrics.get(f"kid_{g}", float("nan"))), pct=False))
                cells.append(pm(agg(p, lambda x: x.metrics.get(f"fd_{g}", float("nan"))), pct=False))
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines += ["", "### Per class (after the last request, mean over seeds: recognised / style recognised)\n",
                  "| class | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
        for n in names:
            cells = [f"{_pct(agg(p, lambda x: x.per_class['class_rate'].get(n, float('nan')))['mean'])} / "
                     f"{_pct(agg(p, lambda x: x.per_class['style_rate'].get(n, float('nan')))['mean'])}" for p in paths]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        if st.block == "attention":
            share = []
            for p in ("lora", "full"):
                b = s0.paths[p].breakdown
                tot = b["inference_J_per_sample"]["total"]
                share.append(f"{p}: {100 * b['inference_activation_J_per_sample'] / tot:.0f}%" if tot else f"{p}: –")
            lines.append(f"\nThe attention's activation x activation products (QKᵀ, AV) have no fixed weights to "
                         f"store in the arrays: they are digital MACs on every path, the all-digital reference "
                         f"included (share of the inference energy, first seed: {', '.join(share)}).\n")
        else:
            lines.append("\nNo product without a fixed weight is left: the depthwise convolutions that replace "
                         "attention are analogue layers like the MLPs (their tiles and MVMs are in the per-layer "
                         "table below).\n")
        if grids:
            lines.append("### Sample grids (first seed)\n\nOne row per class, the same starting noise in every grid.\n")
            for key, fname in grids.items():
                lines.append(f"**{key.replace('_', ' ')}**\n\n![{key}]({fname})\n")
        return "\n".join(lines) + "\n"


def _t975(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats as sps

    return float(sps.t.ppf(0.975, df)) if df >= 1 else float("nan")


# --------------------------------------------------------------------------- float pretraining script
def check_processes(processes: int, device_type: str, devices: int) -> None:
    """Refuse an ``accelerate`` launch that asks for more processes than there are devices."""
    if device_type == "cuda" and processes > devices:
        raise RmloraError(f"accelerate asks for {processes} processes but torch sees {devices} CUDA device(s); "
                          "launch at most one process per GPU")


def pretrain_main(argv: list[str] | None = None) -> int:
    """``python -m rmlora.tasks.style_workload pretrain`` (or ``accelerate launch -m
    rmlora.tasks.style_workload pretrain``): the float pretraining alone (and, for a latent
    configuration, its autoencoder beside it as ``vae.safetensors``), saved as safetensors for
    ``rmlora demo --workload style --pretrained FILE`` (with ``vae_checkpoint`` in ``[settings]``)."""
    import argparse

    from accelerate import PartialState
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
    state = PartialState()
    check_processes(state.num_processes if state.distributed_type != "NO" else 1,
                    "cuda" if torch.cuda.is_available() else "cpu", torch.cuda.device_count())
    settings = {"pretrain": {"steps": args.steps}} if args.steps else {}
    plan = plan_scenario(ScenarioConfig(workload="style", configuration=args.configuration, data_dir=args.data_dir,
                                        seed=args.seed, settings=settings))
    streams, w, st = Streams(args.seed), plan.workload, plan.settings
    data = w.prepare(plan.ds, plan.order, st, args.seed, streams.generator("data"))
    if st.latent:
        data.grid_dir = out.parent if state.is_main_process else None
        out.parent.mkdir(parents=True, exist_ok=True)
        data.set_codec(w._codec(data, streams.seed("setup") % 2 ** 31, True))
    with streams.global_rng("model:pretrain"):
        model = w.build_model(len(plan.order), st)
    hist = w.pretrain(model, data, plan.states[0].kept, plan.order, st, streams.seed("train:pretrain"), True,
                      "pretrain (float)")
    if state.is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out))
        print(f"wrote {out} ({hist['steps']} steps on {hist['processes']} process(es), loss {hist['final_loss']:.4f})")
    return 0


if __name__ == "__main__":  # pragma: no cover - run by hand / accelerate launch
    import sys

    if sys.argv[1:2] != ["pretrain"]:
        print("usage: python -m rmlora.tasks.style_workload pretrain --out FILE [--configuration cpu|gpu|paper] ...",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(pretrain_main(sys.argv[2:]))
    except RmloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
