"""One exception type for every user-facing mistake, and the "did you mean" of unknown names.

The CLI turns an :class:`RmloraError` into a single ``error: ...`` line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RmloraError(Exception):
    """Bad input from a user: unknown preset or class, corrupt file, missing data, ..."""


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or ``""``."""
    match = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def refuse_unknown(keys: Iterable[str], known: Iterable[str], where: str, what: str = "key") -> None:
    """One error naming the first key of ``keys`` not in ``known``, with the closest known one."""
    known = list(known)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise RmloraError(f"{where}: unknown {what} {unknown[0]!r}{closest(unknown[0], known)}")
