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

:func:`style_settings` gives the settings of the three
configurations (``quick`` for tests, ``cpu`` the default, ``gpu``);
:class:`StyleDiffusion` the training loss and the sampler. The workload
(:class:`rmlora.tasks.style_workload.StyleWorkload`) runs them in the scenario.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rmlora.data import styles as style_data
from rmlora.errors import RmloraError
from rmlora.config import AdapterConfig, TrainConfig
from rmlora.scenario.workload import WorkloadSettings

#: Names of the configurations :func:`style_settings` knows.
CONFIGS = ("cpu", "quick", "gpu")


def _f(default: Any, text: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class StyleSettings(WorkloadSettings):
    """Scenario, model, diffusion and evaluation settings of the style workload.

    The :class:`WorkloadSettings` fields keep their meaning (``pretrain`` is the
    float pretraining and the retrain reference, the four others the hybrid
    stages; ``rehearsal_per_class`` real training images of each kept style
    are rehearsed when learning). The rest:
    """

    config: str = _f("cpu", "configuration name (quick, cpu, gpu)")
    device: str = _f("cpu", "torch device of the model, the loops and the simulated arrays (cpu, cuda)")
    # -- model (DiTTransformer2DModel) --
    image_size: int = _f(32, "image side (pixels)")
    patch_size: int = _f(4, "DiT patch side (pixels)")
    num_layers: int = _f(4, "DiT blocks")
    num_attention_heads: int = _f(4, "attention heads")
    attention_head_dim: int = _f(16, "channels per head")
    digital_layers: list[str] = _f([], "glob patterns of Linear/Conv2d layers kept digital at deployment")
    # -- diffusion --
    train_timesteps: int = _f(1000, "diffusion steps of the training schedule")
    beta_schedule: str = _f("squaredcos_cap_v2", "diffusers beta schedule")
    prediction_type: str = _f("v_prediction", "epsilon, v_prediction or sample")
    snr_gamma: float | None = _f(5.0, "Min-SNR loss weighting (Hang et al. 2023); None: plain MSE")
    p_uncond: float = _f(0.1, "label dropout for classifier-free guidance (real images only)")
    guidance_scale: float = _f(2.0, "classifier-free guidance scale (1: none)")
    sample_steps: int = _f(25, "DDIM steps per sample")
    ema_decay: float = _f(0.999, "EMA decay of the float pretraining (diffusers EMAModel)")
    grad_clip: float = _f(1.0, "gradient-norm clip of the float pretraining")
    # -- stages --
    forget_fraction: float = _f(0.5, "share of a forget-stage batch that is noise targets of the forgotten styles")
    noise_guard_fraction: float = _f(0.125, "share of a learn-stage batch that keeps the forgotten labels on noise")
    val_timesteps: int = _f(4, "noise levels per validation image in the stage scores")
    # -- evaluation --
    samples_per_style: int = _f(16, "samples generated per style and stage")
    classifier_steps: int = _f(250, "training steps of the style classifier")
    classifier_noise_class: bool = _f(True, "the style classifier has one extra noise class")
    n_val: int = _f(12, "validation images per style (procedural set; a folder scales them down)")
    n_test: int = _f(24, "test images per style")

    def __post_init__(self) -> None:
        for k in ("image_size", "patch_size", "num_layers", "num_attention_heads", "attention_head_dim",
                  "sample_steps", "val_timesteps", "classifier_steps", "n_val", "n_test", "train_timesteps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RmloraError(f"settings.{k} must be an integer >= 1, got {v!r}")
        if self.samples_per_style < 2:
            raise RmloraError("settings.samples_per_style must be >= 2 (Fréchet distances need two samples)")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 1:
            raise RmloraError(f"settings.guidance_scale must be a number >= 1, got {self.guidance_scale!r}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise RmloraError(f"settings.prediction_type must be epsilon, v_prediction or sample, "
                              f"got {self.prediction_type!r}")
        for k in ("forget_fraction", "noise_guard_fraction", "p_uncond"):
            if not 0 <= getattr(self, k) < 1:
                raise RmloraError(f"settings.{k} must be in [0, 1), got {getattr(self, k)!r}")
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise RmloraError(f"unknown torch device {self.device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RmloraError(f"device {self.device!r} requested but torch sees no CUDA GPU")

    def model_kwargs(self, n_styles: int) -> dict[str, Any]:
        """Keyword arguments of :class:`diffusers.DiTTransformer2DModel`."""
        return {"num_attention_heads": self.num_attention_heads, "attention_head_dim": self.attention_head_dim,
                "in_channels": 3, "out_channels": 3, "num_layers": self.num_layers, "sample_size": self.image_size,
                "patch_size": self.patch_size, "num_embeds_ada_norm": n_styles, "norm_type": "ada_norm_zero"}


def _tc(steps: int, lr: float, bs: int, every: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, batch_size=bs, eval_every=every)


def style_settings(config: str = "cpu") -> StyleSettings:
    """The settings of one configuration: ``quick`` (tests, about a minute on one
    thread), ``cpu`` (the default, well under 30 minutes on two busy cores) or
    ``gpu`` (a bigger DiT, longer training, more samples; see docs/style.md)."""
    names = list(style_data.STYLE_NAMES)
    common: dict[str, Any] = {"learn": names[:4], "forget": [names[1], names[2]], "add": [names[4], names[5]],
                              "method": "noise", "adapter": AdapterConfig(rank=4, alpha=8.0, target_modules=["*ff.net*"]),
                              "seeds": 1, "rows_lr": 1e-2}
    if config == "quick":
        return StyleSettings(
            **common, config="quick",
            pretrain=_tc(400, 3e-3, 32, 0), forget_lora=_tc(40, 1e-2, 32, 10), forget_full=_tc(40, 1e-3, 32, 10),
            learn_lora=_tc(40, 1e-2, 32, 10), learn_full=_tc(40, 1e-3, 32, 10), rehearsal_per_class=8,
            num_layers=2, num_attention_heads=4, attention_head_dim=16, sample_steps=10, samples_per_style=8,
            prediction_type="sample", snr_gamma=None, classifier_steps=60, ema_decay=0.99, n_val=8, n_test=16)
    if config == "cpu":
        return StyleSettings(
            **common, config="cpu",
            pretrain=_tc(1500, 2e-3, 64, 0), forget_lora=_tc(300, 5e-3, 32, 25),
            forget_full=_tc(300, 2e-4, 32, 25), learn_lora=_tc(300, 5e-3, 32, 25),
            learn_full=_tc(300, 2e-4, 32, 25), rehearsal_per_class=16)
    if config == "gpu":
        return StyleSettings(
            **common, config="gpu", device="cuda",
            pretrain=_tc(30000, 1e-3, 256, 0), forget_lora=_tc(1500, 3e-3, 128, 100),
            forget_full=_tc(1500, 1e-4, 128, 100), learn_lora=_tc(1500, 3e-3, 128, 100),
            learn_full=_tc(1500, 1e-4, 128, 100), rehearsal_per_class=32,
            patch_size=2, num_layers=6, num_attention_heads=6, attention_head_dim=32, sample_steps=50,
            samples_per_style=64, classifier_steps=1500, ema_decay=0.9995)
    raise RmloraError(f"unknown style configuration {config!r}; known: {', '.join(CONFIGS)}")


# --------------------------------------------------------------------------- model
def build_dit(cfg: StyleSettings, n_styles: int) -> nn.Module:
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

    def __init__(self, cfg: StyleSettings, null_label: int) -> None:
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


__all__ = ["CONFIGS", "DigitalEmbeddingRows", "StyleDiffusion", "StyleSettings", "attach_rows", "build_dit",
           "fold_rows", "label_tables", "noise_images", "style_settings"]
