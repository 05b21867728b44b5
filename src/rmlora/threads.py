"""Thread counts of torch's intra-op pool, numba's pool and BLAS, in one place.

:func:`limit_threads` sets them for a block; :func:`configure_threads` sets
them once for a whole run (the CLI). torch is imported lazily, so that
:func:`quiet_openmp` can run before it (see there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Environment set by :func:`quiet_openmp` (only where OMP_WAIT_POLICY is unset):
#: idle OpenMP workers sleep at once instead of spin-waiting. GOMP_SPINCOUNT is
#: libgomp's (torch's runtime on Linux), KMP_BLOCKTIME (ms) Intel's libiomp5.
PASSIVE_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _set_numba(n: int) -> None:
    """Put numba's pool on ``n`` threads (capped to its size), if numba is loaded. The
    first call starts numba's pool, which resets torch's count (shared OpenMP runtime)."""
    nb = sys.modules.get("numba")
    if nb is not None:
        nb.set_num_threads(max(1, min(n, nb.config.NUMBA_NUM_THREADS)))


@contextmanager
def limit_threads(n: int | None = None, *, blas: int | None = None) -> Iterator[None]:
    """Run the block with torch on ``n`` threads (None: its current count), numba's
    pool in step with torch, and numpy/scipy BLAS on ``blas`` threads through
    threadpoolctl (None: untouched); the counts are put back afterwards."""
    import torch

    if n is not None and n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    before = torch.get_num_threads()
    want = before if n is None else int(n)
    _set_numba(want)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    try:
        if blas is None:
            yield
        else:
            with _blas_limit(blas):
                yield
    finally:
        if want != before:
            _set_numba(before)
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def _blas_limit(n: int) -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=max(1, int(n)), user_api="blas"):
        yield


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime (libgomp, libiomp5, libomp) is already loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:  # not Linux: torch loads its runtime on import
        return "torch" in sys.modules
    return any(lib in maps for lib in ("libgomp", "libiomp", "libomp."))


def quiet_openmp() -> bool:
    """Make idle OpenMP workers sleep instead of spin-waiting (:data:`PASSIVE_OPENMP`,
    left alone where OMP_WAIT_POLICY is set).

    The runtime reads these variables when it is loaded, i.e. on ``import torch``
    (or numba's first parallel call): call this before. Returns whether they can
    still take effect (no OpenMP runtime loaded yet). Trade-off measured by
    benchmarks/bench_threads.py: sleeping workers wake slowly, so tiny parallel
    regions run several times slower on an idle machine.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        for key, value in PASSIVE_OPENMP.items():
            os.environ.setdefault(key, value)
    return not openmp_loaded()


def free_cores() -> int:
    """Cores this process may use that are not already busy: :func:`usable_cores` minus the
    1-minute load average (rounded), at least 1."""
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # not available on this platform
        busy = 0
    return max(1, usable_cores() - busy)


def configure_threads(n: int) -> int:
    """Set torch (and numba) to ``n`` threads for the rest of the run, capped to
    :func:`free_cores`; returns the count used (``run.json`` records it).

    Why a cap rather than sleeping workers: on a 2-core machine with the other core
    busy, two spin-waiting OpenMP threads slowed small parallel regions 1.3–7.8x,
    while one thread ran them at 0.3–4.8x of the idle two-thread time; making the
    workers sleep (:func:`quiet_openmp`) lost 1.8–15x on an idle machine and must be
    set before ``import torch`` (``python benchmarks/bench_threads.py``, AMD EPYC,
    2 vCPUs, AVX2).
    """
    import torch

    n = max(1, min(int(n), free_cores()))
    torch.set_num_threads(n)
    _set_numba(n)
    if torch.get_num_threads() != n:  # numba's pool started just now
        torch.set_num_threads(n)
    return n
