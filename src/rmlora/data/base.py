"""What every labelled data set of rmlora shares: class names, lookup, subsets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from rmlora.errors import RmloraError


def name_list(names: Sequence[str], limit: int = 50) -> str:
    """``names`` joined for an error message, shortened past ``limit``."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 2]) + f", ... , {names[-1]}"


def data_folder(path: str | Path, what: str) -> Path:
    """``path`` (``~`` expanded) if it is an existing folder; one error line saying what it is
    otherwise (missing, or a file)."""
    root = Path(path).expanduser()
    if root.is_file():
        raise RmloraError(f"{what} {root} is a file, not a folder")
    if not root.is_dir():
        raise RmloraError(f"{what} {root} does not exist")
    return root


def plural(word: str, n: int = 2) -> str:
    """``word`` for ``n`` things: ``1 photo``, ``2 photos``, ``3 identities``."""
    if n == 1:
        return f"{n} {word}"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        many = word[:-1] + "ies"
    else:
        many = word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return f"{n} {many}"


def natural_key(s: str) -> tuple:
    """Sort key ordering digit runs numerically (``s2`` < ``s10``)."""
    parts = re.split(r"(\d+)", s)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)) + (s,)


class LabelledSet:
    """Mixin for dataclasses holding per-sample tensors (first dimension N), ``labels``
    (N,) indexing ``names``, and a ``source`` description. ``unit`` names a class in
    messages ("identity", "speaker", "style")."""

    unit: ClassVar[str] = "class"
    kinds: ClassVar[tuple[str, ...]] = ()  # the values ``kind`` may take
    names: list[str]
    labels: torch.Tensor
    source: str
    kind: str

    def _check_layout(self, data: torch.Tensor, expected: str, ok: bool, per_sample: Sequence[str]) -> None:
        """Refuse a set whose ``data`` is not laid out as ``expected`` (``ok`` False), whose
        ``per_sample`` tensors are not (N,) like it, or whose ``kind`` is not in ``kinds``."""
        cls = type(self).__name__
        if not ok:
            raise RmloraError(f"{cls} data must be {expected}, got shape {tuple(data.shape)}")
        n = data.shape[0]
        for name in per_sample:
            shape = tuple(getattr(self, name).shape)
            if shape != (n,):
                raise RmloraError(f"{cls} {name} must be ({n},) like its data, got {shape}")
        if self.kind not in self.kinds:
            raise RmloraError(f"{cls} kind must be one of {self.kinds}, got {self.kind!r}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def resolve(self, ident: str | int) -> int:
        """Label of a class given by index (int or digit string) or by name.

        Names win over digits (exact match, then a unique case-insensitive one).
        Raises :class:`RmloraError` naming the valid range and names.
        """
        k = len(self.names)
        if isinstance(ident, (int, np.integer)) and not isinstance(ident, bool):
            if 0 <= int(ident) < k:
                return int(ident)
        elif isinstance(ident, str):
            s = ident.strip()
            if s in self.names:
                return self.names.index(s)
            lowered = [n.lower() for n in self.names]
            if lowered.count(s.lower()) == 1:
                return lowered.index(s.lower())
            if re.fullmatch(r"[+-]?\d+", s) and 0 <= int(s) < k:
                return int(s)
        raise RmloraError(f"unknown {self.unit} {ident!r} in {self.source}: use an index 0..{k - 1} "
                          f"or one of the names {name_list(self.names)}")

    def subset(self, idx: torch.Tensor | Sequence[int] | np.ndarray | slice) -> Any:
        """Samples ``idx`` (indices, boolean mask or slice) as a new set of the same type;
        names, source and kind are kept."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(np.asarray(idx) if isinstance(idx, np.ndarray) else idx)
            if idx.dtype != torch.bool:
                idx = idx.long().reshape(-1)
        n = len(self)
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                v = v[idx]
            elif isinstance(v, list):
                v = list(v)
            fields[f.name] = v
        return type(self)(**fields)
