"""The one place chips are built: :func:`make_chip` from a :class:`~rmlora.config.ChipConfig`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rmlora.config import ChipConfig
from rmlora.device.params import DeviceParams
from rmlora.errors import RmloraError
from rmlora.hardware.chip import Chip, SimulatedChip


def _simulator(cfg: ChipConfig, seed: int, preset: DeviceParams | str) -> Chip:
    return SimulatedChip(preset, tile=(cfg.tile, cfg.tile), dac_bits=cfg.dac_bits, adc_bits=cfg.adc_bits,
                         read_noise=cfg.read_noise, range_mode=cfg.range_mode,
                         calibration_percentile=cfg.calibration_percentile, bit_serial=cfg.bit_serial, seed=seed,
                         device=cfg.device)


#: chip backends by name: ``(config, seed, preset) -> Chip``; a test board registers here
BACKENDS: dict[str, Callable[[ChipConfig, int, DeviceParams | str], Chip]] = {"simulator": _simulator}


def make_chip(cfg: ChipConfig, seed: int, *, preset: DeviceParams | str | None = None) -> Chip:
    """A fresh chip of ``cfg``'s backend whose cells and read noise come from ``seed``
    (``cfg.seed`` wins when set); ``preset`` replaces ``cfg.preset`` (e.g. a stress variant)."""
    if cfg.backend not in BACKENDS:
        raise RmloraError(f"unknown chip backend {cfg.backend!r}; known: {', '.join(BACKENDS)}")
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise RmloraError(f"chip device {cfg.device!r} requested but torch sees no CUDA GPU")
    return BACKENDS[cfg.backend](cfg, cfg.seed if cfg.seed is not None else seed, preset or cfg.preset)
