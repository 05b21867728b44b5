"""The deletion ledger: one append-only, hash-chained entry per forget (or undone forget)
request, with a signed head.

``deletion_ledger.jsonl`` holds one JSON object per line: its ``index``, the ``time``,
the classes ``forgotten``, the ``adapter`` that forgets them, the ``metrics`` after
it, the request's own fields, ``prev_sha256`` (the previous entry's hash, 64 zeros
for the first) and ``sha256`` over everything else. ``deletion_ledger.head.json``
beside it holds the number of entries and the last hash, signed with HMAC-SHA256.

The key is either the user's (a file named by ``$RMLORA_LEDGER_KEY`` or
``rmlora ledger verify --key``), or one created for the folder and stored beside the
ledger (``deletion_ledger.key``). What a successful :func:`verify` proves:

* every entry is as it was written and in its place: an edited, removed, inserted or
  reordered entry breaks the chain, and removing the last entries (or all of them)
  disagrees with the signed count and head hash;
* with a user key kept away from the folder: that whoever wrote the head held that key;
  a chain rewritten with recomputed hashes cannot be signed again without it.

What it does not prove: with the folder's own key, anyone who can write to the folder
can read the key and re-sign a rewritten ledger, so the signature then only catches
accidents and careless edits; deleting the ledger, its head and its key together leaves
a folder with no ledger at all (verification then fails, it cannot tell what was
there); the times are the writer's clock; and an entry says that an adapter was trained
to forget, not that the data are gone: the arrays still hold the pretrained weights
(adapter-based forgetting is not exact unlearning).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmlora.errors import RmloraError
from rmlora.runinfo import utc_now

GENESIS = "0" * 64
LEDGER = "deletion_ledger.jsonl"
KEY_ENV = "RMLORA_LEDGER_KEY"
#: fields every entry has, written by :func:`append` only
RESERVED = ("index", "time", "forgotten", "adapter", "metrics", "prev_sha256", "sha256")
_TYPES = {"index": int, "time": str, "forgotten": list, "adapter": str, "metrics": dict, "prev_sha256": str,
          "sha256": str}
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: a key shorter than this (bytes) is refused
MIN_KEY_BYTES = 16


def head_path(path: str | Path) -> Path:
    """The signed head beside ledger ``path`` (``deletion_ledger.head.json``)."""
    path = Path(path)
    return path.with_name(path.stem + ".head.json")


def key_path(path: str | Path) -> Path:
    """The folder's own key beside ledger ``path`` (``deletion_ledger.key``)."""
    path = Path(path)
    return path.with_name(path.stem + ".key")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def _digest(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "sha256"})).hexdigest()


def key_id(key: bytes) -> str:
    """A key's fingerprint: the first 16 hex digits of its SHA-256 (the key stays secret)."""
    return hashlib.sha256(key).hexdigest()[:16]


def read_key(path: str | Path, what: str = "ledger key") -> bytes:
    """The key in file ``path`` (surrounding whitespace stripped), at least 16 bytes."""
    path = Path(path)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise RmloraError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if len(key) < MIN_KEY_BYTES:
        raise RmloraError(f"{what} {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}")
    return key


def user_key(key: str | Path | None = None) -> bytes | None:
    """The user's key: the file ``key``, else the file named by ``$RMLORA_LEDGER_KEY``, else None."""
    if key is not None:
        return read_key(key)
    env = os.environ.get(KEY_ENV)
    return read_key(env, f"${KEY_ENV}") if env else None


@dataclass
class Verified:
    """A verified ledger: its entries and the key its head was signed with."""

    entries: list[dict[str, Any]]
    key: str  # "user" or "folder"
    key_id: str


def _read_head(path: Path) -> dict[str, Any]:
    hp = head_path(path)
    if not hp.is_file():
        raise RmloraError(f"{path}: its signed head {hp.name} is missing, so removed entries cannot be ruled out")
    try:
        head = json.loads(hp.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise RmloraError(f"{hp}: the signed head is not readable JSON") from None
    need = {"entries": int, "head_sha256": str, "key": str, "key_id": str, "hmac_sha256": str}
    if not isinstance(head, dict) or any(not isinstance(head.get(k), t) or isinstance(head.get(k), bool)
                                         for k, t in need.items()):
        raise RmloraError(f"{hp}: the signed head lacks one of {', '.join(need)}")
    if head["key"] not in ("user", "folder"):
        raise RmloraError(f"{hp}: unknown key kind {head['key']!r}")
    return head


def _signature(key: bytes, head: dict[str, Any]) -> str:
    body = {k: head[k] for k in ("entries", "head_sha256", "key", "key_id")}
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def _signing_key(path: Path, head: dict[str, Any] | None, key: str | Path | None, create: bool
                 ) -> tuple[bytes, str]:
    """(key, "user" | "folder") for ``path``: the user's if given, else the folder's."""
    given = user_key(key)
    if head is not None:
        if head["key"] == "user" and given is None:
            raise RmloraError(f"{path} is signed with a user key (fingerprint {head['key_id']}); give it with "
                              f"--key FILE or ${KEY_ENV}")
        if head["key"] == "folder" and given is not None and key_id(given) != head["key_id"]:
            raise RmloraError(f"{path} is signed with the folder's own key {key_path(path).name}, not with the "
                              f"key given (fingerprint {key_id(given)}): it was not written under that key")
    if given is not None:
        return given, "user" if head is None or head["key"] == "user" else "folder"
    kp = key_path(path)
    if not kp.exists():
        if not create:
            raise RmloraError(f"{path}: its key file {kp.name} is missing")
        kp.write_text(secrets.token_hex(32) + "\n")
        try:
            kp.chmod(0o600)
        except OSError:
            pass
    return read_key(kp, "folder key"), "folder"


def check(path: str | Path, key: str | Path | None = None) -> Verified:
    """Read the ledger at ``path`` and check every entry, link and the signed head;
    :class:`RmloraError` names the first defect."""
    path = Path(path)
    if not path.exists():
        raise RmloraError(f"ledger {path} does not exist")
    if not path.is_file():
        raise RmloraError(f"ledger {path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RmloraError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RmloraError(f"ledger {path}: cannot read ({exc.strerror or exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    for i, line in enumerate(lines):
        try:
            e = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise RmloraError(f"{path}: entry {i} is not JSON") from None
        if not isinstance(e, dict):
            raise RmloraError(f"{path}: entry {i} is not a JSON object")
        for k, t in _TYPES.items():
            if not isinstance(e.get(k), t) or isinstance(e.get(k), bool):
                raise RmloraError(f"{path}: entry {i} has no valid {k!r}")
        if e["index"] != i:
            raise RmloraError(f"{path}: entry {i} says it is entry {e['index']}: entries were removed, inserted "
                              "or reordered")
        if not _HEX64.fullmatch(e["sha256"]) or e["sha256"] != _digest(e):
            raise RmloraError(f"{path}: entry {i} was altered (its hash does not match its content)")
        if e["prev_sha256"] != prev:
            raise RmloraError(f"{path}: entry {i} does not follow entry {i - 1}: an entry before it was altered, "
                              "removed or reordered")
        prev = e["sha256"]
        entries.append(e)
    head = _read_head(path)
    k, _ = _signing_key(path, head, key, create=False)
    if key_id(k) != head["key_id"] or not hmac.compare_digest(_signature(k, head), head["hmac_sha256"]):
        raise RmloraError(f"{path}: the head's signature does not verify with the {head['key']} key: the head "
                          "(or the key) was replaced")
    if head["entries"] != len(entries) or head["head_sha256"] != prev:
        raise RmloraError(f"{path}: the signed head covers {head['entries']} entries ending in "
                          f"{head['head_sha256'][:12]}, the file holds {len(entries)} ending in {prev[:12]}: "
                          "entries were removed, added or rewritten")
    return Verified(entries, head["key"], head["key_id"])


def verify(path: str | Path, key: str | Path | None = None) -> list[dict[str, Any]]:
    """The entries of the ledger at ``path`` once :func:`check` passed."""
    return check(path, key).entries


def append(path: str | Path, *, classes: list[str], adapter: str, metrics: dict[str, Any],
           extra: dict[str, Any] | None = None, key: str | Path | None = None) -> dict[str, Any]:
    """Append one forget request to the ledger at ``path`` (verified first) and sign the new
    head; returns the entry. ``extra`` may not set the reserved fields."""
    path = Path(path)
    clash = sorted(set(extra or {}) & set(RESERVED))
    if clash:
        raise RmloraError(f"ledger entry: {clash[0]!r} is a reserved field")
    head = _read_head(path) if path.exists() or head_path(path).exists() else None
    entries = verify(path, key) if head is not None else []
    k, origin = _signing_key(path, head, key, create=True)
    entry = json.loads(_canonical({
        **(extra or {}),
        "index": len(entries),
        "time": utc_now(),
        "forgotten": list(classes),
        "adapter": adapter,
        "metrics": metrics,
        "prev_sha256": entries[-1]["sha256"] if entries else GENESIS,
    }))
    entry["sha256"] = _digest(entry)
    with path.open("a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    new_head = {"entries": len(entries) + 1, "head_sha256": entry["sha256"], "key": origin, "key_id": key_id(k)}
    new_head["hmac_sha256"] = _signature(k, new_head)
    tmp = head_path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new_head, indent=1) + "\n")
    os.replace(tmp, head_path(path))
    return entry


__all__ = ["GENESIS", "KEY_ENV", "LEDGER", "RESERVED", "Verified", "append", "check", "head_path", "key_path",
           "read_key", "user_key", "verify"]
