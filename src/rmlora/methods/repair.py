"""Write noise and its repair by a digital calibration adapter (the paper's speaker figure).

* :func:`repair_experiment` — deploy a float model on an ideal chip and on a noisy one,
  then train a LoRA adapter (digital, in SRAM) on the noisy one to win the lost
  accuracy back; the analogue cells are never rewritten.
* :func:`noise_sweep` — test accuracy against the programming-noise σ (µS) of the
  authors' Gaussian write-noise model (each cell = target + N(0, σ)), over several
  chip draws per level.
* :func:`plot_sweep` — that sweep as an error-bar figure (PNG).

Model selection uses validation data only; test data is only ever evaluated.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.adapters import adapter_bits, adapter_parameters, add_adapter
from rmlora.device.params import DeviceParams, load_preset
from rmlora.hardware import Chip, deploy, make_chip
from rmlora.config import ChipConfig, TrainConfig
from rmlora.methods.train import Batches, fit
from rmlora.metrics import accuracy

__all__ = ["repair_experiment", "noise_sweep", "plot_sweep"]

XY = tuple[torch.Tensor, torch.Tensor]


def _acc(model: nn.Module, xy: XY) -> float:
    a = accuracy(model, *xy)
    return 0.0 if math.isnan(a) else float(a)


def _fresh_copy(model_float: nn.Module, build_model: Callable[[], nn.Module] | None) -> nn.Module:
    """An independent copy of ``model_float``: built and loaded, or deep-copied."""
    if build_model is None:
        return copy.deepcopy(model_float)
    m = build_model()
    m.load_state_dict(model_float.state_dict())
    return m


def _deployed_copy(model_float: nn.Module, chip: Chip, calibration: torch.Tensor,
                   build_model: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A copy of ``model_float`` deployed on ``chip``, converters calibrated on ``calibration``."""
    m = _fresh_copy(model_float, build_model).eval()
    deploy(m, chip, calibrate=_batches(calibration))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _batches(x: torch.Tensor, n: int = 512, size: int = 256) -> list[torch.Tensor]:
    """Up to ``n`` evenly spaced rows of ``x`` in batches: the converter calibration inputs."""
    x = x[torch.linspace(0, len(x) - 1, min(len(x), n)).long()]
    return [x[i:i + size] for i in range(0, len(x), size)]


def repair_experiment(model_float: nn.Module, build_model: Callable[[], nn.Module] | None,
                      preset: DeviceParams | str, train_xy: XY, val_xy: XY, test_xy: XY, cfg: TrainConfig,
                      seed: int, rank: int = 4, alpha: float = 8.0, progress: bool = False) -> dict:
    """Accuracy before write noise, after it, and after a digital repair adapter.

    Args:
        model_float: the trained float model (left unchanged; deep copies are deployed).
        build_model: a factory of fresh float models of the same architecture; each chip
            gets ``build_model()`` loaded with ``model_float``'s state (None: deep copies).
        preset: device preset (name or :class:`DeviceParams`) of the noisy chip.
        train_xy, val_xy, test_xy: (inputs, labels) for adapter training, selection, report.
        cfg: adapter training (steps, lr, batch size, validation interval).
        seed: chip and batch-order seed.
        rank, alpha: LoRA rank and alpha (scale alpha/rank) of the adapter ``"repair"``
            on every analogue layer.

    Returns:
        ``acc_before_noise`` (ideal chip), ``acc_after_noise``, ``acc_after_repair`` (test),
        the validation accuracies ``val_after_noise`` / ``val_after_repair``,
        ``recovered_fraction`` = (after_repair − after_noise) / (before − after_noise)
        (NaN when the noise cost nothing), ``adapter_bits`` (SRAM bits of the adapter),
        ``best_step`` (0: the adapter did not beat the unrepaired chip on validation and
        was left at zero), ``preset``, ``seed`` and the training ``history``.
    """
    device = preset if isinstance(preset, DeviceParams) else load_preset(preset)

    ideal = _deployed_copy(model_float, make_chip(ChipConfig(), seed, preset="ideal"), train_xy[0], build_model)
    acc_before = _acc(ideal, test_xy)
    del ideal

    noisy = _deployed_copy(model_float, make_chip(ChipConfig(), seed, preset=device), train_xy[0], build_model)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # read noise of the analogue layers
    acc_after_noise = _acc(noisy, test_xy)
    val_noise = _acc(noisy, val_xy)

    add_adapter(noisy, "repair", r=rank, alpha=alpha)
    params = adapter_parameters(noisy, "repair")
    start = [p.detach().clone() for p in params]
    batches = Batches(train_xy[0], train_xy[1], cfg.batch_size, gen)

    def loss(step: int) -> torch.Tensor:
        xb, yb = batches.sample()
        return F.cross_entropy(noisy(xb), yb)

    hist = fit(noisy, params, loss, cfg, score_fn=lambda: _acc(noisy, val_xy), desc="repair adapter",
               progress=progress)
    best_step = hist["best_step"]
    if hist["best_score"] < val_noise:  # the zero adapter (no repair) scored better on validation
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        best_step = 0
    noisy.eval()
    acc_after_repair = _acc(noisy, test_xy)
    val_repair = _acc(noisy, val_xy)
    lost = acc_before - acc_after_noise
    recovered = (acc_after_repair - acc_after_noise) / lost if lost > 0 else float("nan")
    return {
        "preset": device.name,
        "seed": seed,
        "acc_before_noise": acc_before,
        "acc_after_noise": acc_after_noise,
        "acc_after_repair": acc_after_repair,
        "val_after_noise": val_noise,
        "val_after_repair": val_repair,
        "recovered_fraction": recovered,
        "adapter_bits": adapter_bits(noisy, "repair"),
        "best_step": best_step,
        "history": {k: hist[k] for k in ("step", "loss", "score")},
    }


def noise_sweep(model_float: nn.Module, xy_test: XY, levels_uS: list[float], draws: int = 20, seed: int = 0,
                base_preset: str | DeviceParams = "ideal", calibration: torch.Tensor | None = None) -> dict:
    """Test accuracy against programming noise σ (µS): for each level, ``draws`` chips of
    ``base_preset`` with ``relax_sigma_floor_uS=σ`` (and no verify-dependent spread), 8-bit
    DAC/ADC, each holding a fresh deep copy of ``model_float``.

    Returns ``{"levels_uS", "mean", "std", "acc"}`` with ``acc[i][k]`` the accuracy of draw
    ``k`` at level ``i`` (draw seeds ``seed + k``, the same at every level). Converters are
    calibrated on ``calibration`` inputs (training data; required).
    """
    if calibration is None:
        raise ValueError("noise_sweep needs calibration inputs for the converters")
    if draws < 1:
        raise ValueError("noise_sweep needs draws >= 1")
    base = base_preset if isinstance(base_preset, DeviceParams) else load_preset(base_preset)
    acc: list[list[float]] = []
    with torch.no_grad():
        for sigma in levels_uS:
            if sigma < 0:
                raise ValueError(f"noise level must be >= 0 µS, got {sigma}")
            dev = base.replace(relax_sigma_floor_uS=float(sigma), relax_sigma_iter_uS=0.0)
            row = []
            for k in range(draws):
                chip = make_chip(ChipConfig(dac_bits=8, adc_bits=8), seed + k, preset=dev)
                m = copy.deepcopy(model_float).eval()
                deploy(m, chip, calibrate=_batches(calibration))
                torch.manual_seed(seed + k)  # read noise, if the base preset has any
                row.append(_acc(m, xy_test))
            acc.append(row)
    t = torch.tensor(acc, dtype=torch.float64)
    return {"levels_uS": [float(s) for s in levels_uS], "mean": t.mean(1).tolist(),
            "std": t.std(1, unbiased=False).tolist(), "acc": acc, "draws": draws, "seed": seed,
            "base_preset": base.name}


def plot_sweep(sweeps: dict, path: str | Path, title: str) -> Path:
    """Accuracy (%) against σ (µS), mean ± std over the draws, with each draw as a dot; PNG.
    ``sweeps``: one :func:`noise_sweep` result, or several by label (drawn side by side)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    named = {"": sweeps} if "levels_uS" in sweeps else sweeps
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    lows = []
    for k, (label, sweep) in enumerate(named.items()):
        colour = ("tab:blue", "tab:orange", "tab:green")[k % 3]
        step = max(sweep["levels_uS"]) * 0.01 * k  # side by side
        lv = [v + step for v in sweep["levels_uS"]]
        mean = [100.0 * m for m in sweep["mean"]]
        std = [100.0 * s for s in sweep["std"]]
        for x, row in zip(lv, sweep["acc"]):
            ax.plot([x] * len(row), [100.0 * a for a in row], "o", color=colour, alpha=0.25, markersize=3, zorder=1)
        ax.errorbar(lv, mean, yerr=std, fmt="-o", color=colour, ecolor="black", capsize=4, linewidth=1.8,
                    markersize=5, zorder=2,
                    label=f"{label + ', ' if label else ''}mean ± std, {len(sweep['acc'][0])} chips")
        lows += [100.0 * min(r) for r in sweep["acc"]] + [m - s for m, s in zip(mean, std)]
    ax.set_xlabel("programming noise σ (µS)")
    ax.set_ylabel("test accuracy (%) (dots: single chips)")
    ax.set_title(title)
    ax.set_ylim(max(0.0, min(lows) - 5.0), 101.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
