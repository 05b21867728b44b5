"""Cell physics: write-verify programming, relaxation, read noise, drift, faults.

All functions work on flat tensors of cells (float32 µS); no Python loop runs
over cells or pulses. Programming and noisy reads run in the compiled kernels
of :mod:`rmlora.device.kernels`; the rest is torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rmlora.device import kernels
from rmlora.device.params import DeviceParams


@dataclass
class WriteVerifyResult:
    """Per-cell record of one programming run (all tensors shaped like the targets).

    ``g`` is the conductance after programming and relaxation (µS);
    ``set_pulses``/``reset_pulses``/``verify_reads`` count events per cell;
    ``converged`` is False for cells that hit ``max_pulses`` (failures).
    """

    g: torch.Tensor
    target: torch.Tensor
    set_pulses: torch.Tensor
    reset_pulses: torch.Tensor
    verify_reads: torch.Tensor
    converged: torch.Tensor

    @property
    def pulses(self) -> torch.Tensor:
        return self.set_pulses + self.reset_pulses

    @property
    def error(self) -> torch.Tensor:
        """Final conductance minus target, µS."""
        return self.g - self.target


def quantise_levels(target: torch.Tensor, p: DeviceParams) -> torch.Tensor:
    """Clip targets to the window and snap them to ``p.levels`` levels if set (µS)."""
    t = target.clamp(p.g_min_uS, p.g_max_uS)
    if p.levels is not None:
        step = (p.g_max_uS - p.g_min_uS) / (p.levels - 1)
        t = torch.round((t - p.g_min_uS) / step) * step + p.g_min_uS
    return t


def read_sigma(g: torch.Tensor, p: DeviceParams) -> torch.Tensor | float:
    """Standard deviation of one read of conductance ``g`` (µS)."""
    if p.read_noise_rel == 0:
        return p.read_noise_abs_uS
    return p.read_noise_abs_uS + p.read_noise_rel * g


def read(mean: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """One noisy read ``mean + sigma·N(0, 1)`` of every cell (µS), a fresh draw per call
    (a read of the cells themselves; the analogue layers draw the read noise of each MVM per
    input vector inside the ADC kernel, :mod:`rmlora.hardware.converters`).

    ``sigma`` is shaped like ``mean``. float32 CPU arrays use the compiled
    multi-threaded kernel (written into ``out`` if given, a contiguous buffer
    like ``mean``); others (CUDA, float64) use torch's generator.
    """
    mean, sigma = mean.detach(), sigma.detach()
    if mean.device.type == "cpu" and mean.dtype == sigma.dtype == torch.float32 and mean.shape == sigma.shape:
        mean, sigma = mean.contiguous(), sigma.contiguous()
        out = torch.empty(mean.shape) if out is None else out
        kernels.read_sample(mean.view(-1).numpy(), sigma.view(-1).numpy(), kernels.draw_seed(generator),
                            out.view(-1).numpy())
        return out
    return torch.addcmul(mean, sigma, torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                                                  device=mean.device))


def new_cells(n: int, p: DeviceParams, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh cells: (conductance µS, per-cell d2d gain, stuck code 0/1=low/2=high)."""
    g = torch.full((n,), p.g_init_uS, dtype=torch.float32)
    d2d = torch.exp(p.d2d_sigma * torch.randn(n, generator=generator)) if p.d2d_sigma > 0 \
        else torch.ones(n)
    stuck = torch.zeros(n, dtype=torch.int8)
    if p.stuck_low_fraction > 0 or p.stuck_high_fraction > 0:
        u = torch.rand(n, generator=generator)
        stuck[u < p.stuck_low_fraction] = 1
        stuck[(u >= p.stuck_low_fraction) & (u < p.stuck_low_fraction + p.stuck_high_fraction)] = 2
        g[stuck == 1] = p.g_floor_uS
        g[stuck == 2] = p.g_ceil_uS
    return g, d2d, stuck


def program(g0: torch.Tensor, target: torch.Tensor, d2d: torch.Tensor, stuck: torch.Tensor,
            p: DeviceParams, generator: torch.Generator | None = None) -> WriteVerifyResult:
    """Program flat cells from ``g0`` towards ``target`` (µS) and relax them.

    Targets are first clipped to the window and snapped to levels. The loop
    runs in :func:`rmlora.device.kernels.program_cells` on the CPU, or in
    :func:`rmlora.device.eager.program_cells` on the targets' device when that
    is not the CPU (a GPU: the same operations; bit-identical to the compiled kernel on the CPU, tested): per cell a verify read, then
    a SET or RESET pulse unless within tolerance, until ``passes_required``
    reads in a row pass or ``max_pulses`` are spent; then relaxation. Returns
    the per-cell record on the targets' device; ``g0`` is not modified.
    """
    dev = target.device
    seed = kernels.draw_seed(generator)
    target = quantise_levels(target.detach().float(), p).contiguous()
    g0, d2d = (t.detach().float().to(dev).contiguous() for t in (g0, d2d))
    stuck = stuck.detach().to(torch.int8).to(dev).contiguous()
    if dev.type != "cpu":
        from rmlora.device import eager
        g, sp, rp, vr, cv = eager.program_cells(g0, target, d2d, stuck, p, seed)
        return WriteVerifyResult(g, target, sp, rp, vr, cv)
    g, sp, rp, vr, cv = kernels.program_cells(g0.numpy(), target.numpy(), d2d.numpy(), stuck.numpy(), p, seed)
    return WriteVerifyResult(torch.from_numpy(g), target, *(torch.from_numpy(a) for a in (sp, rp, vr, cv)))


def relax_drift(g: torch.Tensor, stuck: torch.Tensor, seconds: float, p: DeviceParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Conductance after ``seconds`` of retention (µS): mean decrease and spread per ln(t/t0)."""
    if seconds <= p.drift_t0_s or (p.drift_mean_uS_per_ln_t == 0 and p.drift_sigma_uS_per_ln_t == 0):
        return g.clone()
    lt = torch.log(torch.tensor(seconds / p.drift_t0_s)).item()
    noise = torch.randn(g.shape, generator=generator)
    moved = g - p.drift_mean_uS_per_ln_t * lt + p.drift_sigma_uS_per_ln_t * lt * noise
    return torch.where(stuck == 0, moved, g).clamp(p.g_floor_uS, p.g_ceil_uS)
