"""`rmlora demo --task speaker --quick` on the real FSDD recordings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rmlora import records
from rmlora.cli import main
from rmlora.scenario import ScenarioResult

DATA = Path(os.environ.get("RMLORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {DATA}")
    out = tmp_path_factory.mktemp("spk") / "run"
    res = CliRunner().invoke(main, ["demo", "--task", "speaker", "--quick", "--no-progress", "--data-dir", str(DATA),
                                    "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, ScenarioResult.from_dict(json.loads((out / "summary.json").read_text()))


def test_speaker_scenario_forgets_enrols_and_keeps_forgotten(run):
    _, r = run
    assert r.dataset["kind"] == "fsdd"
    assert r.requests == ["learn:george+jackson+lucas+nicolas+theo", "forget:jackson", "add:yweweler"]
    assert r.method == "relabel"
    assert r.per_seed[0].pretrain["float_metrics"]["test_acc"] >= 0.85
    assert r.metric("lora", "forget_acc", 1)["mean"] <= 0.05
    assert r.metric("lora", "forget_acc")["mean"] <= 0.05  # still forgotten after enrolling the new speaker
    assert r.metric("lora", "new_class_acc")["mean"] >= 0.7
    assert r.metric("lora", "retain_acc")["mean"] >= 0.8


def test_adapter_path_is_cheaper_to_deploy_and_run_than_the_alternatives(run):
    _, r = run
    s = r.per_seed[0]
    # 337k synapses re-programmed by write-verify versus an 8-bit adapter written to SRAM
    assert r.ratio("deployment_overhead")["mean"] > 10
    assert s.paths["lora"].breakdown["deployment_J"]["write_verify"] == 0
    assert s.paths["full"].breakdown["deployment_J"]["write_verify"] > 0
    assert r.ratio("inference_energy_vs_digital")["mean"] > 1


def test_repair_and_noise_sweep(run):
    out, res = run
    r = res.per_seed[0].extras["repair"]
    for k in ("acc_before_noise", "acc_after_noise", "acc_after_repair"):
        assert 0.0 <= r[k] <= 1.0
    st = r["stress"]
    assert st["acc_after_noise"] < st["acc_before_noise"]
    assert st["acc_after_repair"] > st["acc_after_noise"]
    sw = r["sweep"]
    assert len(sw["levels_uS"]) == len(sw["mean"]) >= 3 and sw["mean"][0] >= sw["mean"][-1]
    hw = r["sweep_hardware_aware"]  # the same sweep of a model pretrained with the preset's weight noise
    assert hw["levels_uS"] == sw["levels_uS"] and hw["mean"] != sw["mean"] and r["hardware_aware_run"] is False
    assert (out / "noise_sweep.png").is_file()
    assert "Repair of write error" in (out / "report.md").read_text()
    assert len(records.verify(out / "deletion_ledger.jsonl")) == 1


def test_unknown_speaker_is_refused(tmp_path):
    if not (DATA / "fsdd").is_dir():
        pytest.skip("FSDD not found")
    res = CliRunner().invoke(main, ["demo", "--task", "speaker", "--quick", "--data-dir", str(DATA), "--forget", "alice",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "alice" in res.output and not (tmp_path / "r").exists()
