"""Seeding, package versions and run folders: what every run records."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmlora.errors import RmloraError

_PACKAGES = ("rmlora", "torch", "numpy", "peft", "safetensors", "scikit-learn",
             "snntorch", "diffusers", "accelerate", "matplotlib")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on, plus python and platform."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def new_run_dir(out: str | os.PathLike, marker: str = "summary.json") -> Path:
    """Create ``out`` for a new run, refusing a folder that already holds one.

    A folder that exists but is empty (or holds no ``marker``) is accepted, so
    that ``--out`` can point at a fresh temporary directory.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RmloraError(f"--out {path} exists and is not a folder")
    if path.is_dir() and ((path / marker).exists() or (path / "run.json").exists()):
        raise RmloraError(f"--out {path} already holds a run; choose another folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file then rename), never half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")
    os.replace(tmp, path)


def _default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
