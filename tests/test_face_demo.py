"""The main job end to end: `rmlora demo --quick` on real AT&T photos and on procedural faces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from rmlora import records
from rmlora.cli import main
from rmlora.scenario import ScenarioResult

DATA = Path(os.environ.get("RMLORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
PATH_KEYS = ("forget_acc", "retain_acc", "test_acc", "new_class_acc", "mia_auc")
COST_KEYS = ("training_cost_J", "deployment_overhead_J", "deployment_time_s", "inference_energy_J")


def _run(args: list[str]):
    return CliRunner().invoke(main, ["demo", "--quick", "--no-progress", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def att_run(tmp_path_factory):
    if not (DATA / "att_faces").is_dir():
        pytest.skip(f"AT&T faces not found under {DATA}")
    out = tmp_path_factory.mktemp("att") / "run"
    res = _run(["--data-dir", str(DATA), "--out", str(out), "--seeds", "1"])
    assert res.exit_code == 0, res.output
    return out, res


def _result(out: Path) -> ScenarioResult:
    return ScenarioResult.from_dict(json.loads((out / "summary.json").read_text()))


def test_summary_has_the_documented_keys(att_run):
    out, _ = att_run
    r = _result(out)
    assert r.dataset["kind"] == "att" and "att_faces" in r.dataset["source"]
    assert r.chip["preset"] == "rram-180nm" and r.seeds == [0] and "torch" in r.environment["versions"]
    assert r.requests == ["learn:s1+s2+s3+s4+s5", "forget:s3", "add:s6"]
    assert r.method == "ga" and r.configuration == "quick"
    s = r.per_seed[0]
    for q in s.requests:
        for p in ("lora", "full", "retrain"):
            assert set(PATH_KEYS) <= set(q.paths[p].metrics), (q.request, p)
    for p in ("lora", "full"):
        for k in COST_KEYS:
            assert s.paths[p].costs[k] > 0
    for k in ("training_cost", "deployment_overhead", "inference_energy"):
        assert s.ratios[k] > 0


def test_adapter_path_forgets_and_learns(att_run):
    out, _ = att_run
    r = _result(out)
    # identity s3 is recognised before and not after forgetting; s6 is learned
    assert r.metric("lora", "forget_acc", 0)["mean"] >= 0.5
    assert r.metric("lora", "forget_acc", 1)["mean"] <= 0.2
    assert r.metric("lora", "forget_acc")["mean"] <= 0.2  # still forgotten after learning s6
    assert r.metric("lora", "new_class_acc")["mean"] >= 0.5
    assert r.metric("lora", "retain_acc")["mean"] >= 0.7


def test_adapter_deployment_never_reprograms_cells(att_run):
    out, _ = att_run
    s = _result(out).per_seed[0]
    # the adapter path only writes SRAM: no pulse energy in its deployment, so it is far cheaper in time
    assert s.paths["lora"].costs["deployment_time_s"] < s.paths["full"].costs["deployment_time_s"]
    assert s.paths["lora"].breakdown["deployment_J"]["write_verify"] == 0
    assert s.paths["full"].reprogrammed_cells > 0 and s.paths["lora"].reprogrammed_cells == 0


def test_run_folder_files(att_run):
    out, res = att_run
    for f in ("report.md", "summary.json", "run.json", "deletion_ledger.jsonl", "accuracy_requests.png",
              "costs.png"):
        assert (out / f).is_file(), f
    w = out / "weights"
    adapter = load_file(str(w / "adapter-1-forget-s3.safetensors"))
    assert any(k.endswith(".codes") for k in adapter)
    assert all(v.dtype.is_floating_point is False for k, v in adapter.items() if k.endswith(".codes"))
    assert (w / "pretrained.safetensors").is_file() and (w / "chip-cells.safetensors").is_file()
    entries = records.verify(out / "deletion_ledger.jsonl")
    assert len(entries) == 1 and entries[0]["forgotten"] == ["s3"]
    assert "| adapter path (LoRA) |" in res.output and "report.md" in res.output
    report = (out / "report.md").read_text()
    assert "accuracy_requests.png" in report and "147.76" in report
    # retention: every time point on every chip, the repair from 1 h on; the per-layer table
    s = _result(out).per_seed[0]
    ret = s.retention
    assert list(ret["plain"]) == ["1 s", "1 h", "1 day", "1 week", "1 month", "1 year"]
    assert all(len(v) == ret["chips"] == 3 and all(0 <= a <= 1 for a in v) for v in ret["plain"].values())
    assert list(ret["repaired"]) == ["1 h", "1 day", "1 week", "1 month", "1 year"]
    assert "## Retention" in report and (out / "retention.png").is_file()
    layers = s.deployment["layers"]
    assert [r["layer"] for r in layers][:2] == ["embed", "head"]
    assert all(r["tiles"] >= 1 and r["inference_energy_J"] > 0 and 0 <= r["adc_clipped_fraction"] < 0.2
               for r in layers)
    assert sum(r["cells"] for r in layers) == s.deployment["cells"]
    assert "| layer | tiles | cells |" in report


def test_existing_run_is_not_overwritten(att_run):
    out, _ = att_run
    before = (out / "summary.json").read_bytes()
    res = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 2
    assert "already holds a run" in res.output
    assert (out / "summary.json").read_bytes() == before


def test_pretrained_checkpoint_is_reused_and_checked(att_run, tmp_path):
    out, _ = att_run
    # a mismatched checkpoint (a model with another number of classes) is refused before any output
    res = _run(["--data-dir", str(DATA), "--learn", "0,1,2", "--forget", "1", "--add", "3",
                "--pretrained", str(out / "weights" / "pretrained.safetensors"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not match" in res.output
    assert not (tmp_path / "r").exists()


def test_ledger_detects_tampering(att_run, tmp_path):
    out, _ = att_run
    text = (out / "deletion_ledger.jsonl").read_text().replace('"s3"', '"s4"')
    (tmp_path / "l.jsonl").write_text(text)
    with pytest.raises(Exception, match="altered"):
        records.verify(tmp_path / "l.jsonl")


def test_procedural_faces_when_no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    res = _run(["--out", str(tmp_path / "p"), "--seeds", "1", "--forget", "proc-1", "--method", "relabel"])
    assert res.exit_code == 0, res.output
    r = _result(tmp_path / "p")
    assert r.dataset["kind"] == "procedural"
    assert r.requests[1] == "forget:proc-1" and r.method == "relabel"
    assert r.metric("lora", "forget_acc", 1)["mean"] < r.metric("lora", "forget_acc", 0)["mean"]


@pytest.mark.parametrize("args,message", [
    (["--forget", "s99"], "unknown identity"),
    (["--forget", "0,1,2,3,4"], "cannot forget every learned"),
    (["--forget", "7"], "must name learned"),
    (["--add", "1"], "not learned yet"),
    (["--forget", ""], "--forget is empty"),
    (["--requests", "forget:s3,undo:2"], "no earlier request 2"),
    (["--method", "nope"], "unknown method"),
    (["--preset", "nope"], "unknown device preset"),
])
def test_bad_scenarios_fail_with_one_line_and_write_nothing(tmp_path, args, message):
    if not (DATA / "att_faces").is_dir():
        pytest.skip("AT&T faces not found")
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["demo", "--quick", "--data-dir", str(DATA), "--out", str(out), *args])
    assert res.exit_code == 2
    assert message in res.output
    assert res.output.strip().count("\n") == 0 and res.output.startswith("error:")
    assert not out.exists()


def test_missing_data_folder_and_tiny_sram(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    res = CliRunner().invoke(main, ["demo", "--quick", "--data-dir", str(tmp_path / "none"), "--out",
                                    str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output
    prof = json.loads((Path(__file__).resolve().parents[1] / "src/rmlora/costs/profiles/cmos-180nm.json").read_text())
    prof["constants"]["sram_capacity_bits"]["value"] = 1000
    (tmp_path / "tiny.json").write_text(json.dumps(prof))
    res = CliRunner().invoke(main, ["demo", "--quick", "--profile", str(tmp_path / "tiny.json"), "--out",
                                    str(tmp_path / "r")])
    assert res.exit_code == 2 and "needs" in res.output and "SRAM" in res.output
    assert not (tmp_path / "r").exists()
