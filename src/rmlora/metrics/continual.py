"""Continual-learning summaries of a task accuracy matrix.

Definitions follow Lopez-Paz & Ranzato, "Gradient Episodic Memory for
Continual Learning" (GEM, NeurIPS 2017) for average accuracy and backward
transfer, and Chaudhry et al. 2018 ("Riemannian Walk") for forgetting, the
maximum-based form also used by Avalanche's forgetting metrics family.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rmlora.errors import RmloraError

__all__ = ["accuracy_matrix_summary"]


def accuracy_matrix_summary(R: Any) -> dict[str, float]:
    """Summarise ``R`` (T, T): ``R[t][i]`` = accuracy on task i after training task t.

    Entries with ``i > t`` (tasks not trained yet) may be NaN; the last row and
    the diagonal must be finite.  Returns, in the units of ``R``:

    * ``average_accuracy`` = mean_i R[T-1][i]  (GEM's ACC)
    * ``forgetting`` = mean over i < T-1 of (max_{t < T-1} R[t][i] - R[T-1][i])
      (NaNs skipped in the max; >= 0 for a lower-triangular R)
    * ``backward_transfer`` = mean over i < T-1 of (R[T-1][i] - R[i][i])  (GEM's BWT)

    With T == 1, forgetting and backward transfer are 0.0.
    """
    A = np.asarray(R, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise RmloraError(f"accuracy matrix must be square T x T with T >= 1, got shape {A.shape}")
    T = A.shape[0]
    last = A[T - 1]
    diag = np.diag(A)
    if not np.isfinite(last).all():
        raise RmloraError("accuracy matrix: the last row (after the final task) must be finite")
    if not np.isfinite(diag).all():
        raise RmloraError("accuracy matrix: the diagonal R[i][i] must be finite")
    average_accuracy = float(last.mean())
    if T == 1:
        return {"average_accuracy": average_accuracy, "forgetting": 0.0, "backward_transfer": 0.0}
    earlier = A[: T - 1, : T - 1]  # rows t < T-1, columns i < T-1
    best = np.nanmax(earlier, axis=0)  # finite: R[i][i] is in column i
    forgetting = float(np.mean(best - last[: T - 1]))
    backward_transfer = float(np.mean(last[: T - 1] - diag[: T - 1]))
    return {
        "average_accuracy": average_accuracy,
        "forgetting": forgetting,
        "backward_transfer": backward_transfer,
    }
