"""The deletion ledger: one append-only, hash-chained entry per forget request.

Each line of ``deletion_ledger.jsonl`` is a JSON object with the time, the
classes forgotten, the adapter that forgets them, the metrics after it, the
previous entry's hash and its own ``sha256`` over everything else, so that
an edited or removed entry breaks the chain (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from rmlora.errors import RmloraError

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def append(path: str | Path, *, classes: list[str], adapter: str, metrics: dict[str, Any],
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one forget request to the ledger at ``path`` and return the entry."""
    path = Path(path)
    entries = verify(path) if path.exists() else []
    entry = {
        "index": len(entries),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "forgotten": classes,
        "adapter": adapter,
        "metrics": metrics,
        **(extra or {}),
        "prev_sha256": entries[-1]["sha256"] if entries else GENESIS,
    }
    entry["sha256"] = _digest(entry)
    with path.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    return entry


def verify(path: str | Path) -> list[dict[str, Any]]:
    """Read the ledger and check every hash and link; RmloraError names the first bad entry."""
    entries, prev = [], GENESIS
    for i, line in enumerate(Path(path).read_text().splitlines()):
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            raise RmloraError(f"{path}: entry {i} is not JSON") from None
        if e.get("prev_sha256") != prev or e.get("sha256") != _digest(e):
            raise RmloraError(f"{path}: entry {i} was altered or an entry before it is missing")
        prev = e["sha256"]
        entries.append(e)
    return entries
