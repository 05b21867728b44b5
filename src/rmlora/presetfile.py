"""Data files of constants where every number carries its source.

Format (JSON)::

    {"name": "...", "description": "...",
     "constants": {"g_min_uS": {"value": 20.0, "unit": "uS", "source": "..."}, ...}}

Both device presets (``device/presets``) and technology profiles
(``costs/profiles``) use it, so that every file is checked the same way, and a
constant added to either dataclass is covered without further code:

* the top level is an object with ``name``, ``description`` and ``constants``;
  each constant is an object with ``value``, ``source`` (non-empty) and
  optionally ``unit``, ``range`` and ``range_source``; an unknown key anywhere
  is refused with the closest known name suggested;
* types are exact: a number where a number is wanted (``true`` and ``"3"``
  are not), a string where a string is wanted; an integer constant must be
  integral (``7.9`` is refused, never truncated);
* numbers are finite in float32 and >= 0 (names in ``signed`` may be negative);
  integer constants (counts: pulses, ADCs, MACs per cycle, tiles...) and
  rates (names ending in ``_hz``) must be > 0, as are the names in
  ``positive``: the formulas divide by them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rmlora.errors import RmloraError, refuse_unknown
from rmlora.runinfo import note_input

TOP_KEYS = ("name", "description", "constants")
#: the largest float32 (numpy.finfo(numpy.float32).max): the compiled kernels compute in float32
FLOAT32_MAX = 3.4028234663852886e38
#: keys of one constant; ``range`` and ``range_source`` (the span a sensitivity analysis moves it
#: across, and where that span comes from) are optional and checked by the loader that uses them
ENTRY_KEYS = ("value", "unit", "source", "range", "range_source")


def preset_path(folder: Path, name_or_path: str, what: str) -> Path:
    """Resolve a built-in name (file stem in ``folder``) or a path to a JSON file."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        if not p.is_file():
            raise RmloraError(f"{what} {p} is not a file")
        note_input(p)
        return p
    candidate = folder / f"{name_or_path}.json"
    if candidate.is_file():
        note_input(candidate)
        return candidate
    known = ", ".join(sorted(f.stem for f in folder.glob("*.json")))
    raise RmloraError(f"unknown {what} {name_or_path!r}; known: {known} (or a path to a .json file)")


def must_be_positive(key: str, typ: type) -> bool:
    """Whether constant ``key`` of type ``typ`` must be > 0 by the generic rule (counts and rates)."""
    return typ is int or key.endswith("_hz")


def check_value(key: str, value: Any, typ: type, where: str, *, nullable: bool = False, signed: bool = False,
                positive: bool = False) -> Any:
    """``value`` of constant ``key`` checked against ``typ`` (``float``, ``int``, ``str`` or
    ``bool``) and returned as that type; one :class:`RmloraError` naming ``key`` otherwise."""
    if value is None:
        if nullable:
            return None
        raise RmloraError(f"{where}: constant {key!r} is null")
    if typ in (float, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RmloraError(f"{where}: constant {key!r} must be a number, got {value!r}")
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise RmloraError(f"{where}: constant {key!r} must be finite (|x| <= {FLOAT32_MAX:.3g}: the kernels "
                              f"compute in float32), got {value!r}")
        if typ is int and value != int(value):
            raise RmloraError(f"{where}: constant {key!r} must be an integer, got {value!r}")
        if (positive or must_be_positive(key, typ)) and value <= 0:
            raise RmloraError(f"{where}: constant {key!r} must be > 0, got {value!r}")
        if value < 0 and not signed:
            raise RmloraError(f"{where}: constant {key!r} must be >= 0, got {value!r}")
        return typ(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise RmloraError(f"{where}: constant {key!r} must be true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise RmloraError(f"{where}: constant {key!r} must be a string, got {value!r}")
    return value


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; one :class:`RmloraError` for an unreadable file, bad JSON
    or a top level that is not an object."""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = f"{type(exc).__name__}" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise RmloraError(f"{what} {path}: cannot read ({why})") from None
    if not isinstance(doc, dict):
        raise RmloraError(f"{what} {path}: the top level must be a JSON object, got {type(doc).__name__}")
    return doc


def load_constants(path: Path, required: dict[str, type], what: str,
                   may_be_null: frozenset[str] = frozenset(), signed: frozenset[str] = frozenset(),
                   positive: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict]:
    """Read ``path`` and return ({name: value}, raw document), checked as the module says.

    ``required`` maps each constant name to ``float``, ``int``, ``str`` or ``bool``;
    names in ``may_be_null`` may be ``null`` (feature switched off).
    """
    where = f"{what} {path}"
    doc = read_json_object(path, what)
    refuse_unknown(doc, TOP_KEYS, where)
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise RmloraError(f"{where}: {key!r} must be a string, got {doc[key]!r}")
    consts = doc.get("constants")
    if not isinstance(consts, dict):
        raise RmloraError(f"{where}: no 'constants' object")
    refuse_unknown(consts, required, where, "constant")
    values: dict[str, Any] = {}
    for key, typ in required.items():
        if key not in consts:
            raise RmloraError(f"{where}: missing constant {key!r}")
        entry = consts[key]
        if not isinstance(entry, dict):
            raise RmloraError(f"{where}: constant {key!r} must be an object with value, unit and source, "
                              f"got {entry!r}")
        refuse_unknown(entry, ENTRY_KEYS, f"{where}: constant {key!r}")
        if "value" not in entry:
            raise RmloraError(f"{where}: constant {key!r} has no value")
        if not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise RmloraError(f"{where}: constant {key!r} has no source")
        if "unit" in entry and not isinstance(entry["unit"], str):
            raise RmloraError(f"{where}: constant {key!r}: unit must be a string, got {entry['unit']!r}")
        values[key] = check_value(key, entry["value"], typ, where, nullable=key in may_be_null,
                                  signed=key in signed, positive=key in positive)
    return values, doc
