"""Stylized image generation: settings and configurations of the workload.

The paper's third workload (arXiv 2601.10037; the authors' code: DiT-B/2 with ``--convnext``)
generates images of style x subject classes (10 painting styles x 3 animals), forgets classes by
training their labels towards random noise, and learns new classes with a new adapter while
kept classes are replayed (3 old : 1 new). Here:

* data: :mod:`rmlora.data.styles` (procedural styles x animals, or a ``<style>/<subject>/<image>``
  folder), classes ``<style>-<subject>``, split per image;
* models: :mod:`rmlora.tasks.style_models` (the ConvNeXt-block DiT, default, or diffusers' attention
  DiT; a small AutoencoderKL for latent configurations);
* diffusion: :mod:`rmlora.tasks.style_pipeline` (diffusers' schedulers, the loss, the sampler,
  the latent codec);
* the scenario: :mod:`rmlora.tasks.style_workload`.

:func:`style_settings` gives the four configurations: ``quick`` (tests), ``cpu`` (the default,
pixel space), ``gpu`` (one GPU, 64 px latents) and ``paper`` (DiT-B/2 dimensions on 16x16x4
latents of 128 px images); :func:`paper_model` builds the paper-size ConvNeXt DiT alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmlora.config import AdapterConfig, TrainConfig
from rmlora.data import styles as style_data
from rmlora.errors import RmloraError
from rmlora.scenario.workload import WorkloadSettings
from rmlora.tasks.style_models import BLOCKS, build_model

#: Names of the configurations :func:`style_settings` knows (the first is the default).
CONFIGS = ("cpu", "quick", "gpu", "paper", "cpu-attention")


def _f(default: Any, text: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class StyleSettings(WorkloadSettings):
    """Scenario, model, diffusion and evaluation settings of the style workload.

    The :class:`WorkloadSettings` fields keep their meaning (``pretrain`` is the float
    pretraining and the retrain reference, the four others the hybrid stages;
    ``rehearsal_per_class`` real training images of each kept class are replayed when
    learning). The rest:
    """

    config: str = _f("cpu", "configuration name (quick, cpu, gpu, paper, cpu-attention)")
    device: str = _f("cpu", "torch device of the model, the loops and the simulated arrays (cpu, cuda)")
    # -- model --
    block: str = _f("convnext", "convnext (7x7 depthwise convolution in place of attention, the paper's) "
                                "or attention (diffusers' DiTTransformer2DModel)")
    image_size: int = _f(32, "image side (pixels)")
    patch_size: int = _f(4, "patch side (pixels or latent cells)")
    num_layers: int = _f(4, "blocks")
    hidden_size: int = _f(64, "token width")
    num_attention_heads: int = _f(4, "attention heads (attention blocks)")
    kernel_size: int = _f(7, "depthwise kernel side (convnext blocks)")
    digital_layers: list[str] = _f([], "glob patterns of Linear/Conv2d layers kept digital at deployment")
    # -- latent space --
    space: str = _f("pixel", "pixel, or latent (a small AutoencoderKL trained on the run's images, frozen, "
                             "digital)")
    vae_widths: list[int] = _f([32, 64, 64], "AutoencoderKL block widths (each level after the first halves the side)")
    latent_channels: int = _f(4, "latent channels")
    vae_steps: int = _f(2000, "AutoencoderKL training steps")
    vae_lr: float = _f(1e-3, "AutoencoderKL Adam learning rate")
    vae_batch: int = _f(32, "AutoencoderKL batch size")
    vae_kl: float = _f(1e-6, "weight of the KL term (as Stable Diffusion's VAE: a nearly deterministic code)")
    vae_checkpoint: str | None = _f(None, "a vae.safetensors of an earlier run to reuse (None: train one)")
    # -- diffusion --
    train_timesteps: int = _f(1000, "diffusion steps of the training schedule")
    beta_schedule: str = _f("squaredcos_cap_v2", "diffusers beta schedule")
    prediction_type: str = _f("v_prediction", "epsilon, v_prediction or sample")
    snr_gamma: float | None = _f(5.0, "Min-SNR loss weighting (Hang et al. 2023); None: plain MSE")
    p_uncond: float = _f(0.1, "label dropout for classifier-free guidance (real images only)")
    guidance_scale: float = _f(2.0, "classifier-free guidance scale (1: none)")
    sample_steps: int = _f(20, "DDIM steps per sample")
    ema_decay: float = _f(0.999, "EMA decay of the float pretraining (diffusers EMAModel)")
    grad_clip: float = _f(1.0, "gradient-norm clip of the float pretraining")
    # -- stages --
    forget_fraction: float = _f(0.5, "share of a forget-stage batch that is noise targets of the forgotten classes")
    noise_guard_fraction: float = _f(0.125, "share of a learn-stage batch that keeps the forgotten labels on noise")
    replay_old: int = _f(3, "kept-class images replayed per new-class image when learning (the authors' 3 : 1)")
    val_timesteps: int = _f(4, "noise levels per validation image in the stage scores")
    # -- data and evaluation --
    per_class: int = _f(40, "images per class of the procedural set")
    samples_per_class: int = _f(8, "samples generated per class and stage")
    classifier_steps: int = _f(300, "training steps of the style-and-subject classifier")
    classifier_noise_class: bool = _f(True, "the classifier's style head has one extra noise class")
    kid_subsets: int = _f(50, "random subsets of the KID estimate (its spread is the interval)")
    n_val: int = _f(6, "validation images per class (procedural set; a folder scales them down)")
    n_test: int = _f(10, "test images per class")

    def __post_init__(self) -> None:
        for k in ("image_size", "patch_size", "num_layers", "hidden_size", "num_attention_heads", "kernel_size",
                  "sample_steps", "val_timesteps", "classifier_steps", "n_val", "n_test", "train_timesteps",
                  "latent_channels", "vae_steps", "vae_batch", "per_class", "kid_subsets", "replay_old"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RmloraError(f"settings.{k} must be an integer >= 1, got {v!r}")
        if self.block not in BLOCKS:
            raise RmloraError(f"settings.block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        if self.space not in ("pixel", "latent"):
            raise RmloraError(f"settings.space must be pixel or latent, got {self.space!r}")
        if self.vae_checkpoint is not None and not Path(self.vae_checkpoint).is_file():
            raise RmloraError(f"settings.vae_checkpoint {self.vae_checkpoint} does not exist")
        if self.kernel_size % 2 == 0:
            raise RmloraError(f"settings.kernel_size must be odd, got {self.kernel_size}")
        if not self.vae_widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.vae_widths):
            raise RmloraError(f"settings.vae_widths must be positive integers, got {self.vae_widths!r}")
        if self.model_size % self.patch_size:
            raise RmloraError(f"the model's input side {self.model_size} is not a multiple of the patch size "
                              f"{self.patch_size}")
        if self.samples_per_class < 2:
            raise RmloraError("settings.samples_per_class must be >= 2 (kernel and Fréchet distances need two)")
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
            raise RmloraError(f"device {self.device!r} requested but torch sees no CUDA GPU (the {self.config} "
                              "configuration needs one)")

    @property
    def latent(self) -> bool:
        return self.space == "latent"

    @property
    def model_size(self) -> int:
        """Side of the denoiser's input: the image side, or the latent side."""
        return self.image_size // 2 ** (len(self.vae_widths) - 1) if self.latent else self.image_size

    @property
    def model_channels(self) -> int:
        return self.latent_channels if self.latent else 3

    def build(self, n_classes: int) -> nn.Module:
        """The denoiser of these settings for ``n_classes`` classes (+ the null label)."""
        return build_model(self.block, n_classes, sample_size=self.model_size, channels=self.model_channels,
                           patch_size=self.patch_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                           num_attention_heads=self.num_attention_heads, kernel_size=self.kernel_size)


def _tc(steps: int, lr: float, bs: int, every: int) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, batch_size=bs, eval_every=every)


def style_settings(config: str = "cpu", device: str | None = None) -> StyleSettings:
    """The settings of one configuration (see docs/style.md for how each was chosen), on its own
    torch device or ``device``:

    * ``quick`` — the tests' (a minute or two on one thread);
    * ``cpu`` — the default: the ConvNeXt DiT in pixel space, 3 seeds, budgets set for a target of
      about 20 minutes on two CPU cores (the measured time is in the report);
    * ``cpu-attention`` — the same with diffusers' attention DiT, for the comparison;
    * ``gpu`` — one GPU: 64 px images as 16x16x4 latents of a small AutoencoderKL, a wider DiT;
    * ``paper`` — DiT-B/2 dimensions (depth 12, hidden 768, patch 2) on 16x16x4 latents of 128 px
      images, 30 classes (every procedural class), the authors' scenario.
    """
    kw = _configuration(config)
    return StyleSettings(**{**kw, **({"device": device} if device else {})})


def _configuration(config: str) -> dict[str, Any]:
    # the authors' scenario shape (learn 4 styles, forget, add with 3 : 1 replay), one style forgotten and
    # one added on CPU to fit its budget; LoRA rank 4, alpha 8 on the MLPs only, as their code
    names = list(style_data.STYLE_NAMES)
    common: dict[str, Any] = {"learn": [f"style:{n}" for n in names[:4]], "forget": [f"style:{names[2]}"],
                              "add": [f"style:{names[4]}"], "method": "noise", "seeds": 3, "rows_lr": 1e-2,
                              "adapter": AdapterConfig(rank=4, alpha=8.0, target_modules=["*ff.net*"])}
    if config == "quick":
        return dict(
            **{**common, "seeds": 1}, config="quick",
            pretrain=_tc(400, 3e-3, 32, 0), forget_lora=_tc(40, 5e-3, 16, 10), forget_full=_tc(40, 1e-3, 16, 10),
            learn_lora=_tc(40, 5e-3, 16, 10), learn_full=_tc(40, 1e-3, 16, 10), rehearsal_per_class=4,
            num_layers=2, hidden_size=64, sample_steps=8, samples_per_class=4, prediction_type="sample",
            snr_gamma=None, classifier_steps=150, ema_decay=0.99, n_val=3, n_test=4, per_class=16, kid_subsets=10,
            retention_chips=0)
    if config in ("cpu", "cpu-attention"):
        # budgets set by the wall-time target (3 seeds in about 20 minutes on two cores), not tuned on any
        # score; the retention section is left out (retention_chips 0) for the same reason
        return dict(
            **common, config=config, block="attention" if config == "cpu-attention" else "convnext",
            pretrain=_tc(1500, 2e-3, 32, 0), forget_lora=_tc(80, 5e-3, 16, 20),
            forget_full=_tc(80, 2e-4, 16, 20), learn_lora=_tc(80, 5e-3, 16, 20),
            learn_full=_tc(80, 2e-4, 16, 20), rehearsal_per_class=8, retention_chips=0, classifier_steps=600)
    if config == "gpu":
        return dict(
            **common, config="gpu", device="cuda", space="latent", image_size=64, vae_widths=[64, 128, 128],
            pretrain=_tc(30000, 1e-3, 256, 0), forget_lora=_tc(1500, 3e-3, 128, 100),
            forget_full=_tc(1500, 1e-4, 128, 100), learn_lora=_tc(1500, 3e-3, 128, 100),
            learn_full=_tc(1500, 1e-4, 128, 100), rehearsal_per_class=32, patch_size=2, num_layers=8,
            hidden_size=384, sample_steps=50, samples_per_class=32, classifier_steps=1500, ema_decay=0.9995,
            per_class=120, n_val=10, n_test=30, vae_steps=20000, vae_batch=64)
    if config == "paper":
        names4 = [f"style:{n}" for n in names]
        return dict(
            **{**common, "learn": names4[:4], "forget": names4[:2], "add": names4[4:6]}, config="paper",
            device="cuda", space="latent", image_size=128, vae_widths=[64, 128, 256, 256], patch_size=2,
            num_layers=12, hidden_size=768, num_attention_heads=12,
            pretrain=_tc(100000, 2e-4, 16, 0), forget_lora=_tc(10000, 2e-4, 16, 1000),
            forget_full=_tc(10000, 1e-4, 16, 1000), learn_lora=_tc(10000, 2e-4, 16, 1000),
            learn_full=_tc(10000, 1e-4, 16, 1000), rehearsal_per_class=64, sample_steps=50, samples_per_class=64,
            classifier_steps=3000, ema_decay=0.9999, per_class=200, n_val=20, n_test=50, vae_steps=50000,
            vae_batch=32)
    raise RmloraError(f"unknown style configuration {config!r}; known: {', '.join(CONFIGS)}")


def paper_model(n_classes: int = 30, device: str = "cpu") -> nn.Module:
    """The paper's image model at the paper's size: the ConvNeXt-block DiT-B/2 (depth 12, hidden 768,
    patch 2, 7x7 depthwise convolutions) on 16x16x4 latents of 128 px images, ``n_classes`` classes
    (+ the null label); LoRA rank 4, alpha 8 on the MLP layers (``*ff.net*``) is the adapter of the
    ``paper`` configuration (:func:`style_settings`). About 102 M weights; every Linear and Conv2d is deployable (the class table stays digital)."""
    return style_settings("paper", device=device).build(n_classes)


__all__ = ["CONFIGS", "StyleSettings", "paper_model", "style_settings"]
