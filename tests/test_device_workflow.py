"""A device that lives between commands: deploy, forget, add, undo, status on a saved folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rmlora import records
from rmlora.cli import main
from rmlora.config import Request
from rmlora.errors import RmloraError
from rmlora.scenario.device import DEVICE_SCHEMA, Device

TOML = """workload = "face"
configuration = "quick"
progress = false
[settings]
augment_copies = 1
pretrain = {steps = 120}
forget_lora = {steps = 20}
learn_lora = {steps = 20}
"""


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RMLORA_DATA_DIR", raising=False)
        root = tmp_path_factory.mktemp("dev")
        mp.setenv("SCIKIT_LEARN_DATA", str(root / "sk"))
        (root / "s.toml").write_text(TOML)
        dev = root / "DEV"
        res = _cli("deploy", "--config", str(root / "s.toml"), "--out", str(dev))
        assert res.exit_code == 0, res.output
        for args in (("forget", str(dev), "--classes", "proc-2"), ("add", str(dev), "--classes", "proc-5"),
                     ("undo", str(dev), "1")):
            res = _cli(*args, "--no-progress") if args[0] != "undo" else _cli(*args)
            assert res.exit_code == 0, res.output
        yield root, dev, mp


def test_commands_act_on_the_saved_device(device):
    _, dev, _ = device
    for f in ("device.json", "pretrained.safetensors", "chip.safetensors", "digital.safetensors",
              "adapters/adapter-1-forget-proc-2.safetensors", "adapters/adapter-2-add-proc-5.safetensors",
              "reports/00-learn.md", "reports/01-forget.md", "reports/02-add.md", "reports/03-undo.md"):
        assert (dev / f).is_file(), f
    entries = records.verify(dev / "deletion_ledger.jsonl")
    assert [e["request"] for e in entries] == ["forget:proc-2", "undo:1"]
    assert entries[1]["restored"] == ["proc-2"]
    res = _cli("status", str(dev))
    assert res.exit_code == 0, res.output
    kept = next(line for line in res.output.splitlines() if line.startswith("kept: "))
    assert sorted(kept[6:].split(", ")) == [f"proc-{k}" for k in range(6)]  # proc-2 is back
    assert "adapters and rows in SRAM: 2-add-proc-5, 2-add-proc-5-rows" in res.output
    assert "hash chain verified" in res.output and "(undone)" in res.output
    assert "deleted adapter 1-forget-proc-2" in (dev / "reports/03-undo.md").read_text()


def test_a_reloaded_device_computes_exactly_what_the_saved_one_did(device):
    _, dev, _ = device
    x = torch.linspace(0, 1, 4 * 256).view(4, 1, 16, 16)
    a, b = Device.load(dev), Device.load(dev)
    with torch.no_grad():  # read noise on: the saved read-noise stream continues where it stopped
        ya, yb = a.lane.path.model(x), b.lane.path.model(x)
    assert torch.equal(ya, yb) and ya.shape == (4, 6)
    assert a.lane.columns == b.lane.columns and len(a.lane.columns) == 6


def test_bad_requests_leave_the_device_untouched(device):
    _, dev, _ = device
    before = _digest(dev)
    for args, message in ((("forget", str(dev), "--classes", "nope"), "unknown identity 'nope'"),
                          (("add", str(dev), "--classes", "proc-1"), "already learned"),
                          (("undo", str(dev), "1"), "already undone"),
                          (("undo", str(dev), "9"), "no earlier request 9")):
        res = _cli(*args)
        assert res.exit_code == 2 and message in res.output and res.output.startswith("error:"), res.output
    assert _digest(dev) == before


def test_an_interrupted_command_leaves_the_device_as_it_was(device, monkeypatch):
    root, dev, _ = device
    before = _digest(dev)
    d = Device.load(dev)
    d.apply(Request("forget", ["proc-3"]))

    def crash(self, out):
        (out / "chip.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(Device, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        d.save(dev)
    assert _digest(dev) == before
    assert not [p for p in root.iterdir() if p.name.startswith(".DEV.")]  # no temporary copy left behind


def test_a_damaged_device_folder_is_refused(device, tmp_path):
    import shutil

    _, dev, _ = device
    bad = tmp_path / "bad"
    shutil.copytree(dev, bad)
    raw = bytearray((bad / "chip.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (bad / "chip.safetensors").write_bytes(bytes(raw))
    res = _cli("status", str(bad))
    assert res.exit_code == 2 and "chip.safetensors fails its checksum" in res.output
    (bad / "chip.safetensors").unlink()
    res = _cli("status", str(bad))
    assert res.exit_code == 2 and "chip.safetensors is missing" in res.output
    res = _cli("status", str(tmp_path))
    assert res.exit_code == 2 and "not a device folder" in res.output
    text = (dev / "device.json").read_text().replace(f'"schema_version": {DEVICE_SCHEMA}', '"schema_version": 99')
    shutil.copytree(dev, tmp_path / "other")
    (tmp_path / "other" / "device.json").write_text(text)
    res = _cli("status", str(tmp_path / "other"))
    assert res.exit_code == 2 and "device schema version 99" in res.output


def test_deploy_refuses_a_folder_in_use(device):
    root, dev, _ = device
    res = _cli("deploy", "--config", str(root / "s.toml"), "--out", str(dev))
    assert res.exit_code == 2 and "already holds a device" in res.output


def test_the_device_ledger_is_signed_and_checked_before_any_training(device, tmp_path, monkeypatch):
    import json
    import shutil

    _, dev, _ = device
    v = records.check(dev / records.LEDGER)
    assert v.key == "folder" and len(v.entries) == 2
    res = _cli("ledger", "verify", str(dev))
    assert res.exit_code == 0 and "verified: 2 entries" in res.output, res.output
    bad = tmp_path / "bad"
    shutil.copytree(dev, bad)
    ledger = bad / records.LEDGER
    ledger.write_text(ledger.read_text().splitlines()[0] + "\n")  # the undo entry removed...
    meta = json.loads((bad / "device.json").read_text())
    meta["files"][records.LEDGER] = hashlib.sha256(ledger.read_bytes()).hexdigest()  # ...and the checksum redone
    (bad / "device.json").write_text(json.dumps(meta))
    before = _digest(bad)

    def never(*a, **k):
        raise AssertionError("a request ran on a device whose ledger fails")
    monkeypatch.setattr(Device, "apply", never)
    res = _cli("forget", str(bad), "--classes", "proc-3", "--no-progress")
    assert res.exit_code == 2 and res.output.startswith("error:") and "signed head covers 2 entries" in res.output
    assert _digest(bad) == before


def test_an_interrupted_device_command_exits_130_and_changes_nothing(device, monkeypatch):
    _, dev, _ = device
    before = _digest(dev)

    def interrupted(self, req):
        raise KeyboardInterrupt
    monkeypatch.setattr(Device, "apply", interrupted)
    res = _cli("repair", str(dev), "--no-progress")
    assert res.exit_code == 130 and res.output.strip() == "error: interrupted", res.output
    assert _digest(dev) == before


def test_a_failed_deploy_leaves_nothing_behind(device, tmp_path, monkeypatch):
    root, _, _ = device

    def fails(cfg):
        raise RmloraError("pretrain: the loss became NaN")
    monkeypatch.setattr(Device, "deploy_new", fails)
    out = tmp_path / "new" / "DEV"
    res = _cli("deploy", "--config", str(root / "s.toml"), "--out", str(out))
    assert res.exit_code == 2 and "the loss became NaN" in res.output
    assert not (tmp_path / "new").exists()
