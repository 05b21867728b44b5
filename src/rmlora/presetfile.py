"""Data files of constants where every number carries its source.

Format (JSON)::

    {"name": "...", "description": "...",
     "constants": {"g_min_uS": {"value": 20.0, "unit": "uS", "source": "..."}, ...}}

Both device presets (``device/presets``) and technology profiles
(``costs/profiles``) use it, so that a missing, non-numeric or negative
constant is refused the same way everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rmlora.errors import RmloraError


def preset_path(folder: Path, name_or_path: str, what: str) -> Path:
    """Resolve a built-in name (file stem in ``folder``) or a path to a JSON file."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return p
    candidate = folder / f"{name_or_path}.json"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(f.stem for f in folder.glob("*.json")))
    raise RmloraError(f"unknown {what} {name_or_path!r}; known: {known} (or a path to a .json file)")


def load_constants(path: Path, required: dict[str, type], what: str,
                   may_be_null: frozenset[str] = frozenset(), signed: frozenset[str] = frozenset()
                   ) -> tuple[dict[str, Any], dict]:
    """Read ``path`` and return ({name: value}, raw document).

    ``required`` maps each constant name to ``float``, ``int``, ``str`` or
    ``bool``. Numbers must be finite and non-negative (names in ``signed``,
    such as polynomial coefficients, may be negative); names in
    ``may_be_null`` may be ``null`` (feature switched off).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RmloraError(f"{what} {path}: cannot read ({exc})") from None
    consts = doc.get("constants")
    if not isinstance(consts, dict):
        raise RmloraError(f"{what} {path}: no 'constants' object")
    values: dict[str, Any] = {}
    for key, typ in required.items():
        if key not in consts:
            raise RmloraError(f"{what} {path}: missing constant {key!r}")
        entry = consts[key]
        value = entry.get("value") if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and not entry.get("source"):
            raise RmloraError(f"{what} {path}: constant {key!r} has no source")
        if value is None:
            if key in may_be_null:
                values[key] = None
                continue
            raise RmloraError(f"{what} {path}: constant {key!r} is null")
        if typ in (float, int):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RmloraError(f"{what} {path}: constant {key!r} must be a number, got {value!r}")
            if not math.isfinite(value) or (value < 0 and key not in signed):
                raise RmloraError(f"{what} {path}: constant {key!r} must be finite and >= 0, got {value!r}")
            values[key] = typ(value)
        elif typ is bool:
            if not isinstance(value, bool):
                raise RmloraError(f"{what} {path}: constant {key!r} must be true or false")
            values[key] = value
        else:
            values[key] = str(value)
    return values, doc
