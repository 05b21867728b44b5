"""Seeding, package versions, inputs read and run folders: what every run records."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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


# --------------------------------------------------------------------------- what a run read
_INPUTS: ContextVar[dict[str, set[Path]] | None] = ContextVar("rmlora_inputs", default=None)


def note_input(path: str | os.PathLike, kind: str = "constants") -> None:
    """Record that the run in progress read ``path`` (``kind``: ``data``, ``constants`` for
    presets and profiles, ``config``, ``checkpoint``); a no-op outside :func:`recording_inputs`."""
    seen = _INPUTS.get()
    if seen is not None:
        seen.setdefault(kind, set()).add(Path(path).resolve())


@contextmanager
def recording_inputs() -> Iterator[dict[str, set[Path]]]:
    """Collect the files read inside the block by kind (see :func:`note_input`); inside an
    outer block, the outer one's collection is used (and yielded)."""
    outer = _INPUTS.get()
    if outer is not None:
        yield outer
        return
    seen: dict[str, set[Path]] = {}
    token = _INPUTS.set(seen)
    try:
        yield seen
    finally:
        _INPUTS.reset(token)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(paths: Iterable[Path]) -> tuple[dict[str, Any], str]:
    """The fingerprint of a set of files and its manifest.

    Returns ({"files", "bytes", "root", "sha256"}, manifest): the manifest holds one
    ``<sha256>  <path relative to root>`` line per file in name order (``sha256sum -c``
    reads it from ``root``); ``sha256`` is the SHA-256 of the manifest, so it does not
    depend on where the files live."""
    paths = sorted({Path(p) for p in paths if Path(p).is_file()})
    if not paths:
        return {"files": 0, "bytes": 0, "root": None, "sha256": None}, ""
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    manifest = "".join(f"{file_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in paths)
    return ({"files": len(paths), "bytes": sum(p.stat().st_size for p in paths), "root": str(root),
             "sha256": hashlib.sha256(manifest.encode()).hexdigest()}, manifest)


def inputs_record(seen: dict[str, set[Path]], folder: Path | None = None) -> dict[str, Any]:
    """``run.json``'s ``inputs``: the data files as one fingerprint (the manifest goes to
    ``folder/data_files.sha256``), every other file read with its own SHA-256."""
    fp, manifest = fingerprint(seen.get("data", ()))
    if folder is not None and manifest:
        (folder / "data_files.sha256").write_text(manifest)
        fp["manifest"] = "data_files.sha256"
    out: dict[str, Any] = {"data": fp}
    package = Path(__file__).resolve().parent
    for kind in sorted(set(seen) - {"data"}):  # built-in files named inside the package: rmlora/device/...
        out[kind] = {(f"rmlora/{p.relative_to(package).as_posix()}" if p.is_relative_to(package) else str(p)):
                     file_sha256(p) for p in sorted(seen[kind]) if p.is_file()}
    return out


def git_commit(where: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding rmlora's source, None outside one."""
    import subprocess

    folder = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        mine = subprocess.run(["git", "-C", str(folder), "ls-files", "--error-unmatch", "__init__.py"],
                              capture_output=True, text=True, timeout=10)
        if mine.returncode != 0:  # not a checkout, or a checkout of something else that holds an install
            return None
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_COMMAND: list[str] = []


def set_command(args: list[str]) -> None:
    """The command line to record (the CLI sets it; otherwise ``sys.argv`` is recorded)."""
    _COMMAND[:] = [str(a) for a in args]


def environment(threads: int | None = None, threads_requested: int | None = None) -> dict[str, Any]:
    """What a run records about where and how it ran: package versions, CPU, thread counts,
    the git commit of rmlora, the command line and the start time (``finished`` and
    ``inputs`` are added at the end)."""
    return {"versions": versions(), "cpu": cpu_info(), "threads": threads, "threads_requested": threads_requested,
            "git": git_commit(), "command": shlex.join(_COMMAND or [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": utc_now()}


# --------------------------------------------------------------------------- run folders
def _busy(path: Path, marker: str, what: str, kind: str = "run") -> None:
    """Refuse ``path`` unless it is absent or an empty folder (other than the current one)."""
    if Path.cwd().is_relative_to(path.resolve()):
        raise RmloraError(f"{what} {path} is the current folder or holds it; name a new folder")
    if path.exists() and not path.is_dir():
        raise RmloraError(f"{what} {path} exists and is not a folder")
    if not path.is_dir():
        return
    names = sorted(p.name for p in path.iterdir())
    if marker in names:
        raise RmloraError(f"{what} {path} already holds a {kind} ({marker}); choose another folder")
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise RmloraError(f"{what} {path} is not empty (holds {shown}); choose a new or empty folder")


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold SIGINT back inside the block (renames that must happen together) and raise
    KeyboardInterrupt after it if one came; a no-op outside the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


def temp_sibling(folder: Path) -> Path:
    """A new empty folder ``.<name>.tmp-XXXX`` beside ``folder``, with the permissions a
    plain ``mkdir`` would give it (not mkdtemp's 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.absolute().parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def swap_in(tmp: Path, folder: Path) -> None:
    """Put the complete folder ``tmp`` at ``folder`` (replacing it), never leaving neither:
    the old folder is moved aside, ``tmp`` renamed into place, then the old one removed."""
    aside = folder.parent / f".{folder.name}.old-{time.time_ns()}"
    with deferred_interrupt():
        moved = folder.exists()
        if moved:
            folder.rename(aside)
        try:
            tmp.rename(folder)
        except BaseException:
            if moved:
                aside.rename(folder)
            raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


class RunFolder:
    """An output folder written through a temporary sibling.

    ``--out`` must be absent or an empty folder (a folder holding ``marker`` is a
    finished run and is refused, so is one holding anything else). Entering
    creates ``.<name>.tmp-XXXX`` beside it (so an unwritable place fails before any
    work); the run writes into :attr:`tmp`; on success the folder is renamed into
    place. On failure or interruption nothing is left at ``--out``: an empty
    temporary folder is removed, one with files becomes ``<name>.failed`` holding
    ``error.txt`` (the error, with its traceback for a bug), and the exception says
    where (attribute ``rmlora_kept``). A rerun with the same ``--out`` works.
    """

    def __init__(self, out: str | os.PathLike, marker: str = "summary.json", what: str = "--out",
                 kind: str = "run") -> None:
        self.path, self.marker, self.what, self.kind = Path(out), marker, what, kind
        _busy(self.path, marker, what, kind)
        self.tmp: Path | None = None
        self.created: list[Path] = []

    def __enter__(self) -> RunFolder:
        parent = self.path.absolute().parent
        missing = []
        p = parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            raise RmloraError(f"{self.what} {self.path}: {p} is not a folder")
        try:
            for d in reversed(missing):
                d.mkdir()
                self.created.append(d)
            self.tmp = temp_sibling(self.path)
        except OSError as exc:
            self._remove_created()
            raise RmloraError(f"cannot create {self.what} {self.path}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            try:
                self.finish()
            except BaseException as late:
                self.fail(late)
                raise
        else:
            self.fail(exc)
        return False

    def finish(self) -> None:
        """Rename the complete temporary folder into place."""
        _busy(self.path, self.marker, self.what, self.kind)  # something may have appeared there meanwhile
        if self.path.is_dir():
            self.path.rmdir()
        swap_in(self.tmp, self.path)

    def fail(self, exc: BaseException) -> Path | None:
        """Clean up after ``exc``: the partial run becomes ``<name>.failed`` (returned) or,
        when nothing was written yet, disappears."""
        tmp, self.tmp = self.tmp, None
        if tmp is None or not tmp.is_dir():
            return None
        if not any(tmp.iterdir()):
            tmp.rmdir()
            self._remove_created()
            return None
        if isinstance(exc, RmloraError):
            text = f"error: {exc}\n"
        elif isinstance(exc, KeyboardInterrupt):
            text = "error: interrupted (SIGINT)\n"
        else:
            import traceback

            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        (tmp / "error.txt").write_text(f"{utc_now()} {text}")
        failed = self.path.parent / f"{self.path.name}.failed"
        k = 1
        while failed.exists() and not (failed / "error.txt").is_file():  # someone else's folder: keep it
            k += 1
            failed = self.path.parent / f"{self.path.name}.failed-{k}"
        try:
            swap_in(tmp, failed)
        except OSError:
            return None
        try:
            exc.rmlora_kept = str(failed)  # type: ignore[attr-defined]
        except AttributeError:
            pass
        return failed

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []


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
