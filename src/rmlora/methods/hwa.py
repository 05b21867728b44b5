"""Hardware-aware float pretraining: weight noise drawn from a device preset's statistics.

Inside :func:`noise_injection` every ``nn.Linear``/``Conv1d``/``Conv2d`` of a
model computes with W + σ_w·N(0, 1), a fresh draw per forward call (shared
by the batch, as aihwkit's ``forward.w_noise`` in hardware-aware training),
the gradient flowing to W unchanged (additive noise). Per output row,

    σ_w = σ_weight / span · max|W_row|

where span (µS) is the conductance swing that encodes max|W_row| (the
mapping's per-row scale, :func:`rmlora.device.mapping.output_scale`) and
σ_weight (µS) the spread of one weight on the chip: √2 cells (a cell and its
reference, or G+ and G−) each with the programming error σ_p measured by
simulating write-verify on the preset (20 000 cells, targets spread over
the window) and the read noise σ_r: σ_weight = √(2(σ_p² + σ_r²)).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.device import load_preset, physics
from rmlora.device.params import DeviceParams


def weight_sigma_uS(preset: DeviceParams | str, cells: int = 20_000, seed: int = 0) -> float:
    """Spread (µS) of one programmed weight as the chip reads it: √(2(σ_p² + σ_r²))."""
    p = preset if isinstance(preset, DeviceParams) else load_preset(preset)
    if p.noiseless:
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    g, d2d, stuck = physics.new_cells(cells, p, gen)
    target = p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(cells, generator=gen)
    r = physics.program(g, target, d2d, stuck, p, gen)
    ok = r.converged & (stuck == 0)
    sp = float(r.error[ok].std())
    sr = float(torch.as_tensor(physics.read_sigma(r.g[ok], p)).float().pow(2).mean().sqrt())
    return (2 * (sp ** 2 + sr ** 2)) ** 0.5


def _span_uS(p: DeviceParams) -> float:
    if p.mapping == "differential":
        return p.g_max_uS - p.g_min_uS
    return min(p.g_max_uS - p.reference_uS, p.reference_uS - p.g_min_uS)


@contextmanager
def noise_injection(model: nn.Module, preset: DeviceParams | str, generator: torch.Generator | None = None,
                    scale: float = 1.0) -> Iterator[float]:
    """Train ``model`` with the weight noise of ``preset`` (see the module docstring) inside the
    block; ``scale`` multiplies σ. Yields σ_weight / span (the relative σ per unit max|W_row|)."""
    p = preset if isinstance(preset, DeviceParams) else load_preset(preset)
    rel = scale * weight_sigma_uS(p) / _span_uS(p)
    layers = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d)]
    saved = []

    def noisy(w: torch.Tensor) -> torch.Tensor:
        row = w.detach().flatten(1).abs().amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
        z = torch.randn(w.shape, generator=generator).to(w.device, w.dtype)
        return w + rel * row * z

    for m in layers:
        if isinstance(m, nn.Linear):
            fwd = (lambda mod: lambda x: F.linear(x, noisy(mod.weight), mod.bias))(m)
        else:
            fwd = (lambda mod: lambda x: mod._conv_forward(x, noisy(mod.weight), mod.bias))(m)
        saved.append((m, m.__dict__.get("forward")))
        m.forward = fwd
    try:
        yield rel
    finally:
        for m, old in saved:
            if old is None:
                del m.forward
            else:
                m.forward = old
