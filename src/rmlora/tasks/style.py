"""Stylized image generation: a class-conditional diffusion transformer in pixel space.

The paper's third workload (arXiv 2601.10037) generates images in painting
styles with a DiT; it forgets styles by training their class labels towards
random noise and learns new styles with a new adapter. Here:

* data: :mod:`rmlora.data.styles` (10 procedural styles x 3 animals, or a
  ``<style>/<content>/<image>`` folder), 32x32 RGB, split per image;
* model: :class:`diffusers.DiTTransformer2DModel` working directly on the
  pixels (no VAE): patches of 4 pixels, adaLN-zero conditioning on the
  time step and the style label; ``num_embeds_ada_norm`` is the number of
  styles of the whole scenario (learned + added), so the added styles have
  their (untrained) embedding rows from the start;
* diffusion: :class:`diffusers.DDPMScheduler` (cosine schedule,
  v-prediction) adds the training noise, :class:`diffusers.DDIMScheduler`
  samples; optional classifier-free guidance with the null label that the
  DiT's label embedding reserves.

:class:`StyleTask` bundles data, model and the defaults of the three
configurations (``quick`` for tests, ``cpu`` the default, ``gpu``);
:class:`StyleDiffusion` the training loss and the sampler. The scenario
runner is :func:`rmlora.style_pipeline.run_style_demo`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmlora.data import styles as style_data
from rmlora.errors import RmloraError
from rmlora.methods.train import TrainConfig
from rmlora.tasks.base import TaskDefaults

#: Names of the configurations :meth:`StyleTask.defaults` knows.
CONFIGS = ("quick", "cpu", "gpu")


@dataclass
class StyleDefaults(TaskDefaults):
    """Scenario, model, diffusion and evaluation settings of the style workload.

    The :class:`TaskDefaults` fields keep their meaning (``pretrain`` is the
    float pretraining and the retrain reference, the four others the hybrid
    stages; ``rehearsal_per_class`` real training images of each kept style
    may be rehearsed when forgetting and learning). The rest:
    """

    config: str = "cpu"
    device: str = "cpu"
    # -- model (DiTTransformer2DModel) --
    image_size: int = 32
    patch_size: int = 4
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    #: glob patterns of Linear/Conv2d layers kept digital at deployment (``deploy(exclude=...)``); the
    #: class-embedding tables are ``nn.Embedding`` and digital anyway
    digital_layers: tuple[str, ...] = ()
    # -- diffusion --
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = 5.0  # Min-SNR loss weighting (Hang et al. 2023); None: plain MSE
    p_uncond: float = 0.1  # label dropout for classifier-free guidance (real images only)
    guidance_scale: float = 2.0  # 1.0: no guidance
    sample_steps: int = 25  # DDIM steps
    ema_decay: float = 0.999  # float pretraining keeps an EMA of the weights (diffusers EMAModel)
    grad_clip: float = 1.0
    # -- stages --
    rows_lr: float = 1e-2  # Adam learning rate of the new styles' digital embedding rows
    forget_fraction: float = 0.5  # share of a forget-stage batch that is noise targets of the forgotten styles
    noise_guard_fraction: float = 0.125  # share of a learn-stage batch that keeps the forgotten labels on noise
    val_timesteps: int = 4  # noise levels per validation image in the stage scores
    # -- evaluation --
    samples_per_style: int = 16
    classifier_steps: int = 250
    classifier_noise_class: bool = True  # the style classifier has one extra "noise" class
    n_val: int = 12  # images per style (procedural set; a folder scales them down)
    n_test: int = 24

    def model_kwargs(self, n_styles: int) -> dict[str, Any]:
        """Keyword arguments of :class:`diffusers.DiTTransformer2DModel`."""
        return {"num_attention_heads": self.num_attention_heads, "attention_head_dim": self.attention_head_dim,
                "in_channels": 3, "out_channels": 3, "num_layers": self.num_layers, "sample_size": self.image_size,
                "patch_size": self.patch_size, "num_embeds_ada_norm": n_styles, "norm_type": "ada_norm_zero"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tc(steps: int, lr: float, bs: int, every: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, batch_size=bs, eval_every=every)


def style_defaults(config: str = "cpu") -> StyleDefaults:
    """The settings of one configuration: ``quick`` (tests, about a minute on one
    thread), ``cpu`` (the default, well under 30 minutes on two busy cores) or
    ``gpu`` (a bigger DiT, longer training, more samples; see docs/style.md)."""
    names = list(style_data.STYLE_NAMES)
    common: dict[str, Any] = {"learn": names[:4], "forget": [names[1], names[2]], "add": [names[4], names[5]],
                              "method": "noise", "rank": 4, "alpha": 8.0, "targets": ["*ff.net*"], "seeds": 1}
    if config == "quick":
        return StyleDefaults(
            **common, config="quick",
            pretrain=_tc(400, 3e-3, 32, 0), unlearn_lora=_tc(40, 1e-2, 32, 10), unlearn_full=_tc(40, 1e-3, 32, 10),
            learn_lora=_tc(40, 1e-2, 32, 10), learn_full=_tc(40, 1e-3, 32, 10), rehearsal_per_class=8,
            num_layers=2, num_attention_heads=4, attention_head_dim=16, sample_steps=10, samples_per_style=8,
            prediction_type="sample", snr_gamma=None, classifier_steps=60, ema_decay=0.99, n_val=8, n_test=16)
    if config == "cpu":
        return StyleDefaults(
            **common, config="cpu",
            pretrain=_tc(1500, 2e-3, 64, 0), unlearn_lora=_tc(300, 5e-3, 32, 25),
            unlearn_full=_tc(300, 2e-4, 32, 25), learn_lora=_tc(300, 5e-3, 32, 25),
            learn_full=_tc(300, 2e-4, 32, 25), rehearsal_per_class=16)
    if config == "gpu":
        return StyleDefaults(
            **common, config="gpu", device="cuda",
            pretrain=_tc(30000, 1e-3, 256, 0), unlearn_lora=_tc(1500, 3e-3, 128, 100),
            unlearn_full=_tc(1500, 1e-4, 128, 100), learn_lora=_tc(1500, 3e-3, 128, 100),
            learn_full=_tc(1500, 1e-4, 128, 100), rehearsal_per_class=32,
            patch_size=2, num_layers=6, num_attention_heads=6, attention_head_dim=32, sample_steps=50,
            samples_per_style=64, classifier_steps=1500, ema_decay=0.9995)
    raise RmloraError(f"unknown style configuration {config!r}; known: {', '.join(CONFIGS)}")


# --------------------------------------------------------------------------- model
def build_dit(cfg: StyleDefaults, n_styles: int, seed: int) -> nn.Module:
    """A :class:`diffusers.DiTTransformer2DModel` for ``n_styles`` styles (+ the null label).

    diffusers' label embedding drops labels for classifier-free guidance inside
    every block independently (``torch.rand`` per block); its dropout is set to 0
    here and the training loss drops labels itself, the same for all blocks
    (:meth:`StyleDiffusion.loss`), with the null row ``n_styles`` that the
    embedding keeps.
    """
    from diffusers import DiTTransformer2DModel
    from diffusers.models.embeddings import LabelEmbedding

    if n_styles < 1:
        raise RmloraError("the style model needs at least one style")
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**cfg.model_kwargs(n_styles))
    for m in model.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0
    return model


def label_tables(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every class-embedding table of the DiT (one per block)."""
    from diffusers.models.embeddings import LabelEmbedding

    return [(m, "embedding_table") for m in model.modules() if isinstance(m, LabelEmbedding)]


class DigitalEmbeddingRows(nn.Module):
    """A class-embedding table whose ``rows`` are trainable digital parameters and the
    rest frozen: the new styles' conditioning vectors, learned without touching
    anything else."""

    def __init__(self, base: nn.Embedding, rows: list[int]) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.register_buffer("index", torch.tensor(rows, dtype=torch.long, device=base.weight.device))
        self.rows = nn.Parameter(base.weight.detach()[self.index].clone())

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        w = self.base.weight.index_copy(0, self.index, self.rows)
        return nn.functional.embedding(labels, w)

    def fold(self) -> nn.Embedding:
        """Write the rows into the table and return it (a plain ``nn.Embedding`` again)."""
        with torch.no_grad():
            self.base.weight[self.index] = self.rows.detach()
        return self.base

    def bits(self, bits: int = 8) -> int:
        """SRAM bits of the rows: INT codes plus one 32-bit scale."""
        return self.rows.numel() * bits + 32


def attach_rows(model: nn.Module, rows: list[int]) -> list[DigitalEmbeddingRows]:
    """Make the embedding ``rows`` of every block trainable (digital); see :func:`fold_rows`."""
    out = []
    for parent, attr in label_tables(model):
        wrapped = DigitalEmbeddingRows(getattr(parent, attr), rows)
        setattr(parent, attr, wrapped)
        out.append(wrapped)
    return out


def fold_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """Undo :func:`attach_rows`, keeping the trained rows; returns them by table name."""
    saved = {}
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, DigitalEmbeddingRows):
                saved[f"{name}.{child_name}.rows"] = child.rows.detach().clone()
                setattr(m, child_name, child.fold())
    return saved


# --------------------------------------------------------------------------- diffusion
def noise_images(n: int, generator: torch.Generator, size: int = 32, device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
    """Pure-noise images in the model's range [-1, 1] (uniform per pixel): the targets
    that the forgotten styles' labels are trained towards."""
    return (torch.rand((n, 3, size, size), generator=generator) * 2 - 1).to(device)


class StyleDiffusion:
    """Training loss and DDIM sampler around diffusers' schedulers."""

    def __init__(self, cfg: StyleDefaults, null_label: int) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler

        self.cfg = cfg
        self.null_label = null_label
        self.train_scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps,
                                             beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)
        self.sample_scheduler = DDIMScheduler.from_config(self.train_scheduler.config)

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.cfg.prediction_type
        if p == "epsilon":
            return noise
        if p == "v_prediction":
            return self.train_scheduler.get_velocity(x0, noise, t)
        if p == "sample":
            return x0
        raise RmloraError(f"unknown prediction type {p!r}")

    def loss(self, model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
             droppable: torch.Tensor | None = None, weights: torch.Tensor | None = None,
             fixed: tuple[torch.Tensor, torch.Tensor] | None = None, reduce: bool = True) -> torch.Tensor:
        """Diffusion loss of ``model`` on images ``x0`` (B, 3, S, S) in [-1, 1] with ``labels``.

        Noise and time steps are drawn from ``generator`` (or ``fixed`` = (noise, t)
        for validation); labels where ``droppable`` is true are replaced by the
        null label with probability ``p_uncond`` (classifier-free guidance);
        ``weights`` (B,) weigh the per-example losses. Min-SNR weighting when
        ``snr_gamma`` is set.
        """
        from diffusers.training_utils import compute_snr

        dev = x0.device
        if fixed is None:
            noise = torch.randn(x0.shape, generator=generator).to(dev)
            t = torch.randint(0, self.cfg.train_timesteps, (x0.shape[0],), generator=generator).to(dev)
            if droppable is not None and self.cfg.p_uncond > 0:
                drop = (torch.rand(x0.shape[0], generator=generator) < self.cfg.p_uncond).to(dev) & droppable
                labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        else:
            noise, t = fixed
        xt = self.train_scheduler.add_noise(x0, noise, t)
        pred = model(xt, timestep=t, class_labels=labels).sample
        per = (pred.float() - self._target(x0, noise, t).float()).pow(2).mean(dim=(1, 2, 3))
        if self.cfg.snr_gamma:
            snr = compute_snr(self.train_scheduler, t)
            g = torch.clamp(snr, max=self.cfg.snr_gamma)
            w = g / (snr + 1) if self.cfg.prediction_type == "v_prediction" else g / snr.clamp_min(1e-8)
            per = per * w.to(per.device)
        if weights is not None:
            per = per * weights
        return per.mean() if reduce else per

    @torch.no_grad()
    def sample(self, model: nn.Module, labels: torch.Tensor, generator: torch.Generator, *,
               steps: int | None = None, guidance: float | None = None, batch_size: int = 256,
               progress: bool = False, desc: str = "sampling") -> torch.Tensor:
        """DDIM samples (N, 3, S, S) in [0, 1] for ``labels`` from the initial noise of
        ``generator`` (the same generator state gives the same starting noise)."""
        from tqdm.auto import tqdm

        steps = steps or self.cfg.sample_steps
        w = self.cfg.guidance_scale if guidance is None else guidance
        dev = next(model.parameters()).device
        size = self.cfg.image_size
        model.eval()
        x_all = torch.randn((len(labels), 3, size, size), generator=generator)
        out = []
        sched = self.sample_scheduler
        for i in range(0, len(labels), batch_size):
            y = labels[i:i + batch_size].to(dev)
            x = x_all[i:i + batch_size].to(dev)
            sched.set_timesteps(steps, device=dev)
            for t in tqdm(sched.timesteps, desc=desc, leave=False, disable=not progress):
                tt = t.expand(len(y)).to(dev)
                if w == 1.0:
                    pred = model(x, timestep=tt, class_labels=y).sample
                else:
                    both = model(torch.cat([x, x]), timestep=torch.cat([tt, tt]),
                                 class_labels=torch.cat([y, torch.full_like(y, self.null_label)])).sample
                    cond, unc = both.chunk(2)
                    pred = unc + w * (cond - unc)
                x = sched.step(pred, t, x).prev_sample
            out.append(((x.clamp(-1, 1) + 1) / 2).float().cpu())
        return torch.cat(out)


# --------------------------------------------------------------------------- the task
class StyleTask:
    """Stylized image generation on procedural styles or a style folder."""

    name = "style"
    unit = "style"

    def defaults(self, quick: bool, config: str | None = None) -> StyleDefaults:
        return style_defaults("quick" if quick else (config or "cpu"))

    def load(self, data_dir: str | None, seed: int, download: bool = False) -> style_data.StyleSet:
        if download:
            raise RmloraError("--download: the style task has nothing to download (the procedural set is built in; "
                              "use --data-dir for a <style>/<content>/<image> folder)")
        return style_data.load_styles(data_dir, seed=seed, size=32)

    def split(self, ds: style_data.StyleSet, labels: list[int], seed: int, n_val: int = 12, n_test: int = 24
              ) -> dict[str, style_data.StyleSet]:
        return style_data.split_by_image(ds, labels, n_val=n_val, n_test=n_test, seed=seed)

    def inputs(self, ds: style_data.StyleSet) -> torch.Tensor:
        """Images in the model's range [-1, 1]."""
        return ds.images * 2 - 1

    def augment(self, ds: style_data.StyleSet, generator: torch.Generator, copies: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and ``copies`` horizontally mirrored copies (the styles are mirror-invariant)."""
        x = self.inputs(ds)
        return torch.cat([x] + [x.flip(3)] * copies), ds.labels.repeat(1 + copies)

    def build_model(self, n_classes: int, seed: int, cfg: StyleDefaults | None = None) -> nn.Module:
        return build_dit(cfg or style_defaults("cpu"), n_classes, seed)


__all__ = ["CONFIGS", "DigitalEmbeddingRows", "StyleDefaults", "StyleDiffusion", "StyleTask", "attach_rows",
           "build_dit", "fold_rows", "label_tables", "noise_images", "style_defaults"]
