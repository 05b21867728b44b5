"""The style workload's diffusion pipeline: diffusers' schedulers, the training loss, the sampler
and, for latent configurations, the frozen autoencoder between images and the denoiser.

* :class:`LatentCodec` — images in [-1, 1] ⇄ latents of a small :class:`diffusers.AutoencoderKL`
  (scaled to unit variance as Stable Diffusion's factor 0.18215 does for its VAE), or the
  identity in pixel space. The autoencoder is trained by :func:`train_vae` on the run's
  training images (no hub weights are reachable), then frozen and kept digital: it is not part
  of the arrays, so the cost figures leave it out (the report says so);
* :class:`StyleDiffusion` — :class:`diffusers.DDPMScheduler` adds the training noise,
  :class:`diffusers.DDIMScheduler` samples, with classifier-free guidance through the null label
  the class table keeps.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from rmlora.errors import RmloraError
from rmlora.tasks.style import StyleSettings
from rmlora.tasks.style_models import build_vae


def noise_images(n: int, generator: torch.Generator, size: int = 32, device: str | torch.device = "cpu"
                 ) -> torch.Tensor:
    """Pure-noise images in [-1, 1] (uniform per pixel): what the forgotten classes' labels are
    trained towards (the authors' uniform random noise targets)."""
    return (torch.rand((n, 3, size, size), generator=generator) * 2 - 1).to(device)


class LatentCodec:
    """Images (B, 3, S, S) in [-1, 1] ⇄ the denoiser's space: the identity (pixel space), or the
    scaled latent means of a frozen :class:`diffusers.AutoencoderKL` (``vae``)."""

    def __init__(self, vae: nn.Module | None = None, scale: float = 1.0) -> None:
        self.vae, self.scale = vae, float(scale)
        if vae is not None:
            vae.eval()
            for p in vae.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        if self.vae is None:
            return x
        return torch.cat([self.vae.encode(x[i:i + batch]).latent_dist.mean * self.scale
                          for i in range(0, len(x), batch)]) if len(x) else x[:0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch: int = 256) -> torch.Tensor:
        if self.vae is None:
            return z
        return torch.cat([self.vae.decode(z[i:i + batch] / self.scale).sample for i in range(0, len(z), batch)])


def train_vae(x: torch.Tensor, st: StyleSettings, seed: int, progress: bool = False) -> tuple[LatentCodec, dict]:
    """Train the small AutoencoderKL of ``st`` on images ``x`` (N, 3, S, S) in [-1, 1]: L1 + MSE
    reconstruction and a KL weight of ``st.vae_kl`` (Adam, cosine schedule), random flips. The
    latent scale is 1 / std of the training latents. Returns the codec and a record (steps,
    final reconstruction error, seconds)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    if len(x) == 0:
        raise RmloraError("the autoencoder needs training images")
    dev = torch.device(st.device)
    torch.manual_seed(seed)
    vae = build_vae(st.image_size, st.latent_channels, tuple(st.vae_widths)).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=st.vae_lr)
    sched = get_cosine_schedule_with_warmup(opt, max(1, st.vae_steps // 20), st.vae_steps)
    x = x.to(dev)
    t0, losses = time.perf_counter(), []
    for _ in tqdm(range(st.vae_steps), desc="autoencoder", leave=False, disable=not progress):
        idx = torch.randint(len(x), (min(st.vae_batch, len(x)),), generator=gen).to(dev)
        xb = x[idx]
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(dev)
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        post = vae.encode(xb).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        loss = (rec - xb).abs().mean() + (rec - xb).pow(2).mean() + st.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float((rec - xb).abs().mean().detach()))
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    scale = 1.0 / max(float(z.std()), 1e-6)
    return LatentCodec(vae, scale), {"steps": st.vae_steps, "l1": float(np.mean(losses[-50:])), "scale": scale,
                                     "seconds": round(time.perf_counter() - t0, 1)}


class StyleDiffusion:
    """Training loss and DDIM sampler around diffusers' schedulers, in the codec's space."""

    def __init__(self, cfg: StyleSettings, null_label: int, codec: LatentCodec | None = None) -> None:
        from diffusers import DDIMScheduler, DDPMScheduler

        self.cfg = cfg
        self.null_label = null_label
        self.codec = codec or LatentCodec()
        self.train_scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps,
                                             beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)
        self.sample_scheduler = DDIMScheduler.from_config(self.train_scheduler.config)

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.cfg.prediction_type
        if p == "epsilon":
            return noise
        if p == "v_prediction":
            return self.train_scheduler.get_velocity(x0, noise, t)
        return x0

    def loss(self, model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None, *,
             droppable: torch.Tensor | None = None, weights: torch.Tensor | None = None,
             fixed: tuple[torch.Tensor, torch.Tensor] | None = None, reduce: bool = True) -> torch.Tensor:
        """Diffusion loss of ``model`` on clean inputs ``x0`` (B, C, s, s) in the codec's space
        with ``labels``.

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
        """DDIM samples for ``labels``, decoded to images (N, 3, S, S) in [0, 1], from the initial
        noise of ``generator`` (the same generator state gives the same starting noise)."""
        from tqdm.auto import tqdm

        steps = steps or self.cfg.sample_steps
        w = self.cfg.guidance_scale if guidance is None else guidance
        dev = next(model.parameters()).device
        s, c = self.cfg.model_size, self.cfg.model_channels
        model.eval()
        x_all = torch.randn((len(labels), c, s, s), generator=generator)
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
            img = self.codec.decode(x)
            out.append(((img.clamp(-1, 1) + 1) / 2).float().cpu())
        return torch.cat(out)


__all__ = ["LatentCodec", "StyleDiffusion", "noise_images", "train_vae"]
