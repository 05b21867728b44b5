"""Plain classification metrics: logits, accuracy, per-sample loss, Avg. Gap.

Every function takes a whole tensor of inputs ``x`` (N, ...) and labels ``y``
(N,), runs the model in eval mode in batches on the model's device, and hands
results back on the CPU.  The model's previous ``training`` flag is restored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from rmlora.errors import RmloraError

__all__ = ["predict", "accuracy", "per_class_accuracy", "per_sample_loss", "avg_gap"]


def model_device(model: torch.nn.Module) -> torch.device | None:
    """Device of ``model``'s first parameter (else buffer); None for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y):
        raise RmloraError(f"x has {len(x)} samples but y has {len(y)} labels")


@torch.no_grad()
def predict(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` (N, ...) in eval mode.

    Returns ``(logits, predictions)``: float logits (N, C) and the arg-max class
    (N,) int64, both on the CPU.  (Per-sample loss needs labels: see
    :func:`per_sample_loss`.)  The model's training flag is restored afterwards.
    An empty ``x`` gives logits of shape (0, C) when the model accepts an empty
    batch, otherwise (0, 0).
    """
    if batch_size < 1:
        raise RmloraError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        n = len(x)
        if n == 0:
            try:
                logits = model(x if device is None else x.to(device)).detach().float().cpu()
            except Exception:
                logits = torch.empty(0, 0)
            return logits, torch.empty(0, dtype=torch.long)
        chunks = []
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            if device is not None:
                xb = xb.to(device)
            chunks.append(model(xb).detach().float().cpu())
        logits = torch.cat(chunks)
        if logits.dim() != 2 or logits.shape[0] != n:
            raise RmloraError(
                f"model must return logits of shape (N, C) = ({n}, C); got {tuple(logits.shape)}"
            )
        return logits, logits.argmax(dim=1)
    finally:
        model.train(was_training)


def accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``x`` (N, ...) with labels ``y`` (N,).

    An empty ``x`` gives ``float('nan')``.
    """
    _check_xy(x, y)
    if len(x) == 0:
        return float("nan")
    _, pred = predict(model, x, batch_size)
    return float((pred == torch.as_tensor(y).cpu().long()).double().mean())


def per_class_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: Sequence[int],
    batch_size: int = 512,
) -> dict[int, float]:
    """Accuracy in [0, 1] restricted to the samples of each class in ``classes``.

    ``{class: accuracy}``; a class with no sample in ``y`` maps to NaN.
    """
    _check_xy(x, y)
    y_cpu = torch.as_tensor(y).cpu().long()
    out: dict[int, float] = {int(c): float("nan") for c in classes}
    if len(x) == 0 or not out:
        return out
    _, pred = predict(model, x, batch_size)
    correct = pred == y_cpu
    for c in out:
        mask = y_cpu == c
        if bool(mask.any()):
            out[c] = float(correct[mask].double().mean())
    return out


def per_sample_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Cross-entropy of each sample, no reduction: float tensor (N,) >= 0 on the CPU."""
    _check_xy(x, y)
    if len(x) == 0:
        return torch.empty(0)
    logits, _ = predict(model, x, batch_size)
    return F.cross_entropy(logits, torch.as_tensor(y).cpu().long(), reduction="none")


def avg_gap(
    metrics: Mapping[str, float], reference: Mapping[str, float], keys: Sequence[str]
) -> float:
    """The "Avg. Gap": mean over ``keys`` of ``|metrics[k] - reference[k]|``.

    The unlearning literature's distance to the retrained-from-scratch model
    (e.g. SalUn, Fan et al. 2024); same units as the inputs (fractions or %).
    Raises :class:`RmloraError` for no keys or a key missing from either dict.
    """
    keys = list(keys)
    if not keys:
        raise RmloraError("avg_gap needs at least one key")
    missing = [k for k in keys if k not in metrics or k not in reference]
    if missing:
        raise RmloraError(f"avg_gap: keys missing from metrics or reference: {missing}")
    gaps = [abs(float(metrics[k]) - float(reference[k])) for k in keys]
    return math.fsum(gaps) / len(gaps)
