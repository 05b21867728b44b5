"""`rmlora demo --task speaker --quick` on the real FSDD recordings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmlora import records
from rmlora.cli import main

DATA = Path(os.environ.get("RMLORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {DATA}")
    out = tmp_path_factory.mktemp("spk") / "run"
    res = CliRunner().invoke(main, ["demo", "--task", "speaker", "--quick", "--no-progress", "--data-dir", str(DATA),
                                    "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "summary.json").read_text())


def test_speaker_scenario_forgets_enrols_and_keeps_forgotten(run):
    _, s = run
    assert s["dataset"]["kind"] == "fsdd"
    assert s["scenario"]["learn"] == ["george", "jackson", "lucas", "nicolas", "theo"]
    assert s["scenario"]["forget"] == ["jackson"] and s["scenario"]["add"] == ["yweweler"]
    assert s["scenario"]["method"] == "relabel"
    assert s["pretrained"]["float_test_acc"] >= 0.85
    assert s["lora"]["after_forget"]["forget_acc"] <= 0.05
    assert s["lora"]["forget_acc"] <= 0.05  # still forgotten after enrolling the new speaker
    assert s["lora"]["new_class_acc"] >= 0.7
    assert s["lora"]["retain_acc"] >= 0.8


def test_adapter_path_is_cheaper_to_deploy_and_run_than_the_alternatives(run):
    _, s = run
    # 337k synapses re-programmed by write-verify versus an 8-bit adapter written to SRAM
    assert s["ratios"]["deployment_overhead"] > 10
    assert s["lora"]["cost_breakdown_seed0"]["deployment_J"]["write_verify"] == 0
    assert s["full"]["cost_breakdown_seed0"]["deployment_J"]["write_verify"] > 0
    assert s["ratios"]["inference_energy_vs_digital"] > 1


def test_repair_and_noise_sweep(run):
    out, s = run
    r = s["repair"]
    for k in ("acc_before_noise", "acc_after_noise", "acc_after_repair"):
        assert 0.0 <= r[k] <= 1.0
    st = r["stress"]
    assert st["acc_after_noise"] < st["acc_before_noise"]
    assert st["acc_after_repair"] > st["acc_after_noise"]
    sw = r["sweep"]
    assert len(sw["levels_uS"]) == len(sw["mean"]) >= 3 and sw["mean"][0] >= sw["mean"][-1]
    assert (out / "noise_sweep.png").is_file()
    assert "Repair of write error" in (out / "report.md").read_text()
    assert len(records.verify(out / "deletion_ledger.jsonl")) == 1


def test_unknown_speaker_is_refused(tmp_path):
    if not (DATA / "fsdd").is_dir():
        pytest.skip("FSDD not found")
    res = CliRunner().invoke(main, ["demo", "--task", "speaker", "--quick", "--data-dir", str(DATA), "--forget", "alice",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "alice" in res.output and not (tmp_path / "r").exists()
