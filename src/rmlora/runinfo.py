"""Seeding, package versions and run folders: what every run records."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmlora.errors import RmloraError

_PACKAGES = ("rmlora", "torch", "numpy", "numba", "scipy", "pillow", "peft", "safetensors", "scikit-learn",
             "snntorch", "diffusers", "accelerate", "matplotlib")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Streams:
    """Named random streams of one run seed: every purpose (``"model:pretrain"``,
    ``"chip:lora"``, ``"batches:forget"``, ...) gets its own seed, derived from the run
    seed and the name through :class:`numpy.random.SeedSequence`, so adding a
    stream never shifts another one."""

    def __init__(self, seed: int) -> None:
        self.root = int(seed)

    def seed(self, name: str) -> int:
        """A 63-bit seed for ``name``."""
        import zlib

        key = [self.root & 0xFFFFFFFF, self.root >> 32, zlib.crc32(name.encode())]
        a, b = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
        return ((int(a) << 32) | int(b)) & (2 ** 63 - 1)

    def generator(self, name: str) -> torch.Generator:
        """A torch CPU generator seeded for ``name``."""
        return torch.Generator().manual_seed(self.seed(name))

    @contextmanager
    def global_rng(self, name: str) -> Iterator[None]:
        """torch's global generator seeded for ``name`` inside the block and restored after
        (for code such as ``nn.Linear`` initialisation that draws from it)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed(name))
            yield


def cpu_info() -> dict[str, Any]:
    """CPU model and the vector instruction sets that change float results (x86: AVX2, AVX-512)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "neon", "asimd")
           if f in flags]
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(), "isa": isa}


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
