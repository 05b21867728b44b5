"""The scenario engine: configs as data, request sequences with undo, typed results, determinism."""

from __future__ import annotations

import json
import shutil
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rmlora import records
from rmlora.cli import main
from rmlora.config import AdapterConfig, ChipConfig, Request, ScenarioConfig, parse_requests
from rmlora.errors import RmloraError
from rmlora.scenario import SCHEMA_VERSION, ScenarioResult, plan_scenario, run_scenario

DATA = Path(os.environ.get("RMLORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: tiny budgets: the sequence tests check the machinery, not the accuracy
TINY = {"pretrain": {"steps": 120}, "forget_lora": {"steps": 20}, "forget_full": {"steps": 20},
        "learn_lora": {"steps": 20}, "learn_full": {"steps": 20}, "augment_copies": 1}


# --------------------------------------------------------------------------- configs
def test_requests_parse_and_print_back():
    reqs = parse_requests("forget:s3+s4, add:s6,repair,age:1d,undo:1")
    assert [r.kind for r in reqs] == ["forget", "add", "repair", "age", "undo"]
    assert reqs[0].classes == ["s3", "s4"] and reqs[3].seconds == 86400 and reqs[4].target == 1
    assert [str(r) for r in reqs] == ["forget:s3+s4", "add:s6", "repair", "age:86400s", "undo:1"]


@pytest.mark.parametrize("text, message", [
    ("erase:s3", "unknown request kind 'erase'"),
    ("forget:", "name at least one class"),
    ("undo:x", "undo needs the index"),
    ("age:soon", "not a duration"),
    ("repair:s3", "takes no argument"),
    ("forget:s3+s3", "same class twice"),
])
def test_bad_requests_are_refused(text, message):
    with pytest.raises(RmloraError, match=message):
        parse_requests(text)


def test_configs_refuse_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(RmloraError, match="unknown key 'rnak'"):
        AdapterConfig.from_dict({"rnak": 4})
    with pytest.raises(RmloraError, match=r"chip.adc_bits: expected"):
        ScenarioConfig.from_dict({"chip": {"adc_bits": "eight"}})
    with pytest.raises(RmloraError, match="adc_bits must be an integer in 1..24"):
        ChipConfig(adc_bits=0)
    toml = tmp_path / "s.toml"
    toml.write_text('workload = "face"\nseeds = 2\nrequests = "forget:s3,add:s6"\n'
                    '[chip]\nadc_bits = 6\n[adapter]\nrank = 2\n[settings]\nga_cap = 1.5\n')
    cfg = ScenarioConfig.from_toml(toml)
    assert cfg.chip.adc_bits == 6 and cfg.adapter.rank == 2 and cfg.seeds == 2
    assert [str(r) for r in cfg.requests] == ["forget:s3", "add:s6"]
    assert ScenarioConfig.from_dict(cfg.to_dict()) == cfg  # what run.json records reads back
    toml.write_text('workload = "face"\n[chip]\nadc_bitz = 6\n')
    with pytest.raises(RmloraError, match="chip: unknown key 'adc_bitz'"):
        ScenarioConfig.from_toml(toml)


def test_settings_overrides_are_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    with pytest.raises(RmloraError, match="settings: unknown key 'ga_cup'"):
        plan_scenario(ScenarioConfig(configuration="quick", settings={"ga_cup": 2.0}))
    plan = plan_scenario(ScenarioConfig(configuration="quick", settings={"ga_cap": 3.0}))
    assert plan.settings.ga_cap == 3.0


@pytest.mark.parametrize("requests, message", [
    ("forget:proc-9", "is not a learned identity"),
    ("add:proc-1", "is already learned"),
    ("forget:proc-1,undo:3", "no earlier request 3"),
    ("forget:proc-1,undo:1,undo:1", "was already undone"),
    ("age:1d,undo:1", "cannot be undone"),
    ("forget:proc-1,add:proc-1", "was forgotten; undo that request"),
    ("forget:proc-0+proc-1+proc-2+proc-3+proc-4", "cannot forget every learned"),
])
def test_impossible_sequences_are_refused_before_anything_is_written(tmp_path, monkeypatch, requests, message):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["demo", "--quick", "--requests", requests, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output and res.output.startswith("error:") and res.output.count("\n") == 1
    assert not out.exists()


def test_sram_is_checked_per_request(tmp_path, monkeypatch, edited_copy):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    src = Path(__file__).resolve().parents[1] / "src/rmlora/costs/profiles/cmos-180nm.json"
    # room for two adapters of the face workload (7.8 kbit each) and a digital row, not for three
    prof = edited_copy(src, lambda c: c["sram_capacity_bits"].update(value=20000))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["demo", "--quick", "--profile", str(prof), "--out", str(out),
                                    "--requests", "forget:proc-1,add:proc-5,forget:proc-2"])
    assert res.exit_code == 2 and "SRAM" in res.output and "request 3" in res.output, res.output
    assert not out.exists()
    # undoing the first forget frees its adapter, so the same requests fit with an undo in between
    plan = plan_scenario(ScenarioConfig(configuration="quick", chip=ChipConfig(profile=str(prof)),
                                        requests=parse_requests("forget:proc-1,add:proc-5,undo:1,forget:proc-2")))
    assert plan.sram_bits[3] < plan.sram_bits[2]


# --------------------------------------------------------------------------- a five-request sequence
@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    if not (DATA / "att_faces").is_dir():
        pytest.skip(f"AT&T faces not found under {DATA}")
    out = tmp_path_factory.mktemp("seq") / "run"
    cfg = ScenarioConfig(workload="face", configuration="quick", data_dir=str(DATA), seeds=1, progress=False,
                         requests=parse_requests("forget:s3,add:s6,forget:s1,add:s7,undo:1"), settings=TINY)
    return out, run_scenario(cfg, out)


def test_sequence_runs_every_request_on_every_path(sequence):
    out, r = sequence
    s = r.per_seed[0]
    assert [q.request for q in s.requests] == ["learn:s1+s2+s3+s4+s5", "forget:s3", "add:s6", "forget:s1",
                                               "add:s7", "undo:1"]
    assert all(set(q.paths) == {"lora", "full", "retrain", "retrain-float"} for q in s.requests)
    last = s.requests[-1]
    assert last.forgotten == ["s1"] and "s3" in last.kept and set(last.added) == {"s6", "s7"}
    # s1 stays forgotten through the later requests on the adapter path
    assert all(q.paths["lora"].metrics["forget_acc"] <= 0.5 for q in s.requests[3:])
    # the undo deleted an adapter: no training, no deployment cost, and a note saying so
    assert last.paths["lora"].training_J == 0 and "deleted adapter 1-forget-s3" in last.paths["lora"].note
    assert last.paths["full"].training_J > 0 and "relearned s3" in last.paths["full"].note
    c = s.paths["lora"].continual
    assert c["tasks"] == ["s2+s3+s4+s5", "s6", "s7"] and len(c["R"]) == 3
    assert {"average_accuracy", "backward_transfer", "forgetting"} <= set(c)


def test_sequence_report_and_summary(sequence):
    out, r = sequence
    report = (out / "report.md").read_text()
    for text in ("## After every request", "`undo:1`", "backward transfer", "forgetting", "| after \\ task |",
                 "147.76x"):
        assert text in report, text
    d = json.loads((out / "summary.json").read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    back = ScenarioResult.from_dict(d)
    assert back.per_seed[0].requests[-1].paths["lora"].note == r.per_seed[0].requests[-1].paths["lora"].note
    assert back.aggregate()["ratios"].keys() == r.aggregate()["ratios"].keys()
    ledger = records.verify(out / "deletion_ledger.jsonl")
    assert [e["request"] for e in ledger] == ["forget:s3", "forget:s1", "undo:1"]
    assert ledger[-1]["restored"] == ["s3"] and ledger[-1]["forgotten"] == []
    run = json.loads((out / "run.json").read_text())
    assert run["cpu"]["model"] and "threads" in run and run["config"]["seeds"] == 1
    assert "numba" in run["versions"] and run["requests"][-1] == "undo:1"


def test_summary_schema_version_is_checked(sequence):
    out, _ = sequence
    d = json.loads((out / "summary.json").read_text())
    d["schema_version"] = 1
    with pytest.raises(RmloraError, match="schema version 1"):
        ScenarioResult.from_dict(d)


# --------------------------------------------------------------------------- exactness and determinism
def _chip_outputs(tmp_path, requests: str):
    """The adapter path's logits on fixed inputs after each request (read noise off)."""
    from rmlora.scenario.runner import _SeedRun

    cfg = ScenarioConfig(workload="face", configuration="quick", seeds=1, progress=False,
                         chip=ChipConfig(read_noise=False), requests=parse_requests(requests), settings=TINY)
    plan = plan_scenario(cfg)
    seen = []
    run = _SeedRun(plan, 0, None)
    original = run._apply

    def spy(req, i, tag, lane, before, state, labels):
        step = original(req, i, tag, lane, before, state, labels)
        if lane.path.name == "lora":
            x = torch.linspace(0, 1, 3 * 256).view(3, 1, 16, 16)
            with torch.no_grad():
                seen.append(lane.path.model(x).clone())
        return step
    run._apply = spy
    run.run()
    return seen


def test_undo_of_the_last_request_restores_the_outputs_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    after = _chip_outputs(tmp_path, "forget:proc-1,add:proc-5,undo:2,undo:1")
    forgot, added, undo_add, undo_forget = after
    assert added.shape[1] == forgot.shape[1] + 1
    assert torch.equal(undo_add, forgot)  # the new class's rows and adapter are gone exactly
    assert not torch.equal(undo_forget, forgot)  # the forget adapter is gone too: a different function


def test_same_seed_same_summary(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    cfg = ScenarioConfig(workload="face", configuration="quick", seeds=1, progress=False, settings=TINY,
                         requests=parse_requests("forget:proc-1,add:proc-5"))

    def strip(r):
        d = r.to_dict()
        d.pop("environment")  # start and end times
        for s in d["per_seed"]:
            s.pop("timing_s")
            for q in s["requests"]:
                for p in q["paths"].values():
                    p.pop("seconds")
            for p in s["paths"].values():
                p.pop("seconds")
        for row in d["aggregate"]["evaluation"].get("lanes", {}).values():
            row.pop("seconds", None)
        return json.dumps(d, sort_keys=True)
    assert strip(run_scenario(cfg)) == strip(run_scenario(cfg))


def test_request_kinds_age_and_repair_run(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    r = run_scenario(ScenarioConfig(workload="face", configuration="quick", seeds=1, progress=False, settings=TINY,
                                    requests=parse_requests("age:1y,repair,undo:2")))
    age, repair, undo = r.per_seed[0].requests[1:]
    assert "drifted" in age.paths["lora"].note and age.paths["lora"].training_J == 0
    assert repair.paths["lora"].adapter == "2-repair" and repair.paths["lora"].training_J > 0
    assert "deleted adapter 2-repair" in undo.paths["lora"].note
    assert Request.parse("age:1y").seconds == pytest.approx(31557600.0)


def test_undoing_an_add_under_a_later_one_switches_its_rows_off(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    r = run_scenario(ScenarioConfig(workload="face", configuration="quick", seeds=1, progress=False, settings=TINY,
                                    requests=parse_requests("add:proc-5,add:proc-6,undo:1")))
    last = r.per_seed[0].requests[-1]
    assert last.forgotten == ["proc-5"] and "proc-6" in last.kept
    lora = last.paths["lora"]
    assert lora.metrics["forget_acc"] == 0.0  # its rows are off: proc-5 can never be predicted
    assert lora.per_class["test_acc"]["proc-5"] == 0.0
    assert "deleted adapter 1-add-proc-5" in lora.note
    assert "erased proc-5 by training" in last.paths["full"].note


def test_report_command_renders_the_same_report_again_from_the_summary(sequence, tmp_path):
    out, _ = sequence
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert json.loads((copy / "summary.json").read_text()) == json.loads((out / "summary.json").read_text())
    (copy / "summary.json").write_text("{")
    before = (copy / "report.md").read_text()
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and "not a readable summary" in res.output
    assert (copy / "report.md").read_text() == before  # nothing written over
