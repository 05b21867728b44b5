"""The deletion ledger proves what it says: every kind of tampering is detected, malformed
files give one clear error, reserved fields stay the ledger's, and ``rmlora ledger verify``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmlora import records
from rmlora.cli import main
from rmlora.errors import RmloraError


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _ledger(folder: Path, n: int = 3, key: str | None = None) -> Path:
    path = folder / records.LEDGER
    for i in range(n):
        records.append(path, classes=[f"s{i}"], adapter=f"{i}-forget-s{i}",
                       metrics={"forget_acc": 0.0, "test_acc": 0.9, "new_class_acc": math.nan},
                       extra={"request": f"forget:s{i}", "seed": 0}, key=key)
    return path


def _rewrite(path: Path, entries: list[dict]) -> None:
    """Write ``entries`` back with a freshly recomputed hash chain (what a forger without the
    key can do)."""
    prev, lines = records.GENESIS, []
    for i, e in enumerate(entries):
        e = {**e, "index": i, "prev_sha256": prev}
        e["sha256"] = records._digest(e)
        prev = e["sha256"]
        lines.append(json.dumps(e, sort_keys=True))
    path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def user_key(tmp_path, monkeypatch) -> Path:
    key = tmp_path / "user.key"
    key.write_text("a secret the folder never sees, 32+ bytes\n")
    return key


def test_append_and_verify_round_trip(tmp_path):
    path = _ledger(tmp_path)
    v = records.check(path)
    assert [e["forgotten"] for e in v.entries] == [["s0"], ["s1"], ["s2"]]
    assert v.key == "folder" and records.key_path(path).is_file() and records.head_path(path).is_file()
    assert math.isnan(v.entries[0]["metrics"]["new_class_acc"])  # NaN survives the round trip
    assert [e["index"] for e in v.entries] == [0, 1, 2] and v.entries[0]["prev_sha256"] == records.GENESIS


@pytest.mark.parametrize("tamper", ["drop-last", "drop-all", "drop-middle", "swap", "edit", "edit-rehashed",
                                    "append-forged", "head-gone"])
def test_every_kind_of_tampering_is_detected(tmp_path, tamper):
    path = _ledger(tmp_path)
    lines = path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    if tamper == "drop-last":  # the old verify passed this: no signed count
        path.write_text("".join(line + "\n" for line in lines[:-1]))
    elif tamper == "drop-all":
        path.write_text("")
    elif tamper == "drop-middle":
        path.write_text(lines[0] + "\n" + lines[2] + "\n")
    elif tamper == "swap":
        path.write_text(lines[1] + "\n" + lines[0] + "\n" + lines[2] + "\n")
    elif tamper == "edit":
        path.write_text(path.read_text().replace('"s1"', '"s9"'))
    elif tamper == "edit-rehashed":  # a consistent chain, recomputed: only the signed head catches it
        entries[1]["forgotten"] = ["s9"]
        _rewrite(path, entries)
    elif tamper == "append-forged":
        _rewrite(path, entries + [{**entries[-1], "forgotten": ["s7"]}])
    else:
        records.head_path(path).unlink()
    with pytest.raises(RmloraError):
        records.verify(path)
    res = _cli("ledger", "verify", str(tmp_path))
    assert res.exit_code == 2 and res.output.startswith("error:") and res.output.count("\n") == 1, res.output


def test_a_rewritten_and_resigned_ledger_fails_under_the_users_key(tmp_path, user_key, monkeypatch):
    monkeypatch.setenv(records.KEY_ENV, str(user_key))
    path = _ledger(tmp_path)
    assert records.check(path).key == "user" and not records.key_path(path).exists()
    # a forger without the key rewrites the chain and signs the head with a folder key of their own
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[0]["forgotten"] = ["nobody"]
    _rewrite(path, entries)
    records.head_path(path).unlink()
    monkeypatch.delenv(records.KEY_ENV)
    forged = tmp_path / "forged"
    forged.mkdir()
    for e in entries:
        records.append(forged / records.LEDGER, classes=e["forgotten"], adapter=e["adapter"], metrics=e["metrics"])
    for name in (records.head_path(path).name, records.key_path(path).name):
        (tmp_path / name).write_bytes((forged / name).read_bytes())
    path.write_bytes((forged / records.LEDGER).read_bytes())
    assert len(records.verify(path)) == 3  # with the folder's key it looks fine...
    with pytest.raises(RmloraError, match="folder's own key"):  # ...the user's key says it is not theirs
        records.verify(path, user_key)
    res = _cli("ledger", "verify", str(path), "--key", str(user_key))
    assert res.exit_code == 2 and "not written under that key" in res.output


def test_a_user_signed_ledger_needs_the_key(tmp_path, user_key, monkeypatch):
    monkeypatch.setenv(records.KEY_ENV, str(user_key))
    path = _ledger(tmp_path, 2)
    monkeypatch.delenv(records.KEY_ENV)
    with pytest.raises(RmloraError, match="signed with a user key"):
        records.verify(path)
    with pytest.raises(RmloraError, match="signed with a user key"):  # nor can it be extended without it
        records.append(path, classes=["x"], adapter="a", metrics={})
    other = tmp_path / "other.key"
    other.write_text("another key of enough bytes, 1234567890")
    with pytest.raises(RmloraError, match="does not verify"):
        records.verify(path, other)
    assert len(records.verify(path, user_key)) == 2
    short = tmp_path / "short.key"
    short.write_text("tiny")
    with pytest.raises(RmloraError, match="at least 16"):
        records.verify(path, short)


@pytest.mark.parametrize("content", [b"[1,2]\n", b"\xff\xfe not utf-8\n", b"{not json\n", b'"a string"\n',
                                     b'{"index": 0}\n', b"\n\n", b'{"index": true, "sha256": 5}\n'])
def test_malformed_ledgers_give_one_error(tmp_path, content):
    path = _ledger(tmp_path, 1)
    path.write_bytes(content)
    with pytest.raises(RmloraError):  # never AttributeError, UnicodeDecodeError, KeyError...
        records.verify(path)


@pytest.mark.parametrize("head", ["[]", "{}", "not json", '{"entries": "1", "head_sha256": 1}', "\udcff"])
def test_malformed_heads_give_one_error(tmp_path, head):
    path = _ledger(tmp_path, 1)
    records.head_path(path).write_bytes(head.encode("utf-8", "surrogateescape"))
    with pytest.raises(RmloraError):
        records.verify(path)


def test_missing_files_give_one_error(tmp_path):
    with pytest.raises(RmloraError, match="does not exist"):
        records.verify(tmp_path / "none.jsonl")
    with pytest.raises(RmloraError, match="not a file"):
        records.verify(tmp_path)
    path = _ledger(tmp_path, 1)
    records.key_path(path).unlink()
    with pytest.raises(RmloraError, match="key file"):
        records.verify(path)
    res = _cli("ledger", "verify", str(tmp_path / "none.jsonl"))
    assert res.exit_code == 2 and res.output.startswith("error:") and "does not exist" in res.output


def test_reserved_fields_cannot_be_overridden(tmp_path):
    for field in records.RESERVED:
        with pytest.raises(RmloraError, match="reserved"):
            records.append(tmp_path / records.LEDGER, classes=["s1"], adapter="a", metrics={},
                           extra={field: "forged"})
    assert not (tmp_path / records.LEDGER).exists()


def test_cli_prints_the_entries_and_what_the_key_proves(tmp_path):
    _ledger(tmp_path, 2)
    res = _cli("ledger", "verify", str(tmp_path))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "forget:s0" in lines[0] and "forgot s0" in lines[0] and "adapter 0-forget-s0" in lines[0]
    assert "verified: 2 entries" in res.output and "folder" in res.output and "RMLORA_LEDGER_KEY" in res.output
