"""Cell physics: write-verify programming, relaxation, read noise, drift, faults.

All functions are vectorised over flat tensors of cells (float32 µS); no
Python loop runs over cells or rows. The write-verify loop iterates over
pulses (at most ``max_pulses`` + ``passes_required`` times) on the cells
still active, compacting them as they finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rmlora.device.params import DeviceParams

_CHUNK = 1 << 18  # cells per chunk: keeps the working set in cache


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


def read(g: torch.Tensor, p: DeviceParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """One noisy read of every cell (µS)."""
    if p.read_noise_abs_uS == 0 and p.read_noise_rel == 0:
        return g.clone()
    noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
    return g + read_sigma(g, p) * noise


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

    Targets are first clipped to the window and snapped to levels. Returns the
    per-cell record; ``g0`` is not modified.
    """
    target = quantise_levels(target.float(), p)
    n = target.numel()
    if p.programming == "exact":  # written exactly (then relaxed, if the preset says so)
        out_g = torch.where(stuck == 0, target, g0)
        sp = torch.zeros(n, dtype=torch.int16)
        rp, vr = sp.clone(), sp.clone()
        cv = (out_g - target).abs() <= max(p.tolerance_uS, 1e-6)
    else:
        out_g = torch.empty(n)
        sp = torch.empty(n, dtype=torch.int16)
        rp = torch.empty(n, dtype=torch.int16)
        vr = torch.empty(n, dtype=torch.int16)
        cv = torch.empty(n, dtype=torch.bool)
        for s in range(0, n, _CHUNK):
            e = min(n, s + _CHUNK)
            _program_chunk(g0[s:e], target[s:e], d2d[s:e], stuck[s:e], p, generator,
                           out_g[s:e], sp[s:e], rp[s:e], vr[s:e], cv[s:e])
    # relaxation right after programming: spread shrinking with verify iterations
    if p.relax_sigma_floor_uS > 0 or p.relax_sigma_iter_uS > 0:
        sigma = p.relax_sigma_floor_uS + p.relax_sigma_iter_uS / vr.float().clamp_min(1).sqrt()
        noise = torch.randn(n, generator=generator)
        moved = stuck == 0
        out_g = torch.where(moved, out_g + sigma * noise, out_g)
    out_g.clamp_(p.g_floor_uS, p.g_ceil_uS)
    return WriteVerifyResult(out_g, target, sp, rp, vr, cv)


def _program_chunk(g0, target, d2d, stuck, p: DeviceParams, gen, out_g, out_sp, out_rp, out_vr, out_cv):
    # State rows of one float32 matrix, so that compaction is a single index_select.
    IDX, G, T, GAIN, FREE, SP, RP, VR, PASS, RUN, ACT, CONV = range(12)
    n = target.numel()
    S = torch.zeros(12, n)
    S[IDX] = torch.arange(n, dtype=torch.float32)  # exact below 2**24 (chunk size 2**20)
    S[G] = g0
    S[T] = target
    S[GAIN] = d2d
    S[FREE] = (stuck == 0).float()
    S[ACT] = 1.0
    span = p.g_ceil_uS - p.g_floor_uS
    for _ in range(p.max_pulses + p.passes_required):
        g, t, act = S[G], S[T], S[ACT]
        r = read(g, p, gen)
        S[VR] += act
        diff = t - r
        ok = diff.abs() <= p.tolerance_uS
        S[PASS] = (S[PASS] + 1) * ok
        done = S[PASS] >= p.passes_required
        finished = done | ((S[SP] + S[RP]) >= p.max_pulses)
        active = (act > 0) & ~finished
        S[CONV] = torch.where((act > 0) & done, 1.0, S[CONV])
        S[ACT] = active.float()
        m = int(active.sum())
        if m == 0:
            break
        if m < 0.5 * S.shape[1]:  # compact: write the finished cells out, keep the rest
            _flush(S, ~active, (IDX, G, SP, RP, VR, CONV), out_g, out_sp, out_rp, out_vr, out_cv)
            keep = active.nonzero().squeeze(1)
            S = S.index_select(1, keep)
            diff, ok = diff.index_select(0, keep), ok.index_select(0, keep)
            active = torch.ones(m, dtype=torch.bool)
            g = S[G]
        pulse = active & ~ok
        up = diff > 0
        run = S[RUN]
        # incremental step: the run length grows while the direction is kept
        grown = torch.where(up, torch.where(run > 0, run + 1, 1.0), torch.where(run < 0, run - 1, -1.0))
        run = torch.where(pulse, grown, run)
        S[RUN] = run
        k = run.abs() - 1
        v_set = (p.v_set_start_V + p.v_step_V * k).clamp_(max=p.v_set_max_V)
        v_reset = (p.v_reset_start_V + p.v_step_V * k).clamp_(max=p.v_reset_max_V)
        d_set = p.set_gain_uS_per_V * (v_set - p.v_set_threshold_V) * (p.g_ceil_uS - g)
        d_reset = p.reset_gain_uS_per_V * (v_reset - p.v_reset_threshold_V) * (g - p.g_floor_uS)
        step = torch.where(up, d_set, -d_reset) * (S[GAIN] / span)
        if p.c2c_sigma > 0:
            step *= torch.exp(p.c2c_sigma * torch.randn(g.shape, generator=gen))
        moves = pulse & (S[FREE] > 0)
        S[G] = torch.where(moves, g + step, g).clamp_(p.g_floor_uS, p.g_ceil_uS)
        S[SP] += pulse & up
        S[RP] += pulse & ~up
    _flush(S, torch.ones(S.shape[1], dtype=torch.bool), (IDX, G, SP, RP, VR, CONV),
           out_g, out_sp, out_rp, out_vr, out_cv)


def _flush(S, mask, rows, out_g, out_sp, out_rp, out_vr, out_cv):
    IDX, G, SP, RP, VR, CONV = rows
    sel = mask.nonzero().squeeze(1)
    if sel.numel() == 0:
        return
    part = S.index_select(1, sel)
    i = part[IDX].long()
    out_g[i] = part[G]
    out_sp[i] = part[SP].to(torch.int16)
    out_rp[i] = part[RP].to(torch.int16)
    out_vr[i] = part[VR].to(torch.int16)
    out_cv[i] = part[CONV] > 0


def relax_drift(g: torch.Tensor, stuck: torch.Tensor, seconds: float, p: DeviceParams,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Conductance after ``seconds`` of retention (µS): mean decrease and spread per ln(t/t0)."""
    if seconds <= p.drift_t0_s or (p.drift_mean_uS_per_ln_t == 0 and p.drift_sigma_uS_per_ln_t == 0):
        return g.clone()
    lt = torch.log(torch.tensor(seconds / p.drift_t0_s)).item()
    noise = torch.randn(g.shape, generator=generator)
    moved = g - p.drift_mean_uS_per_ln_t * lt + p.drift_sigma_uS_per_ln_t * lt * noise
    return torch.where(stuck == 0, moved, g).clamp(p.g_floor_uS, p.g_ceil_uS)
