"""The unlearning evaluation: the field's methods side by side on both paths, random-sample and
class-wise forgetting, the attacks (likelihood ratio, loss threshold, MIA-efficacy where defined,
relearning, linear probe), statistics with bootstrap intervals, the threat model, bad input.

Quick variants only (procedural faces, tiny budgets, 3 seeds); the full protocols run in
scripts/refresh_docs.sh (docs/evaluation.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rmlora.cli import main
from rmlora.config import Request, ScenarioConfig, parse_requests
from rmlora.errors import RmloraError
from rmlora.scenario import ScenarioResult, plan_scenario, run_scenario
from rmlora.scenario.runner import _SeedRun, draw_samples

#: tiny budgets: these tests check the machinery and what must hold whatever the accuracy
TINY = {"pretrain": {"steps": 80}, "forget_lora": {"steps": 10, "eval_every": 5},
        "forget_full": {"steps": 10, "eval_every": 5}, "augment_copies": 1, "retention_chips": 0, "split_seed": 0,
        "audit": {"relearn_max_steps": 4, "relearn_every": 2}}


def _cfg(requests: str, methods: list[str], **kw) -> ScenarioConfig:
    return ScenarioConfig(workload="face", configuration="quick", requests=parse_requests(requests), seeds=3,
                          progress=False, methods=methods, settings=TINY, **kw)


@pytest.fixture(autouse=True)
def _procedural(monkeypatch, tmp_path):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))


def _procedural_run(tmp, cfg: ScenarioConfig, out=None) -> ScenarioResult:
    mp = pytest.MonkeyPatch()
    mp.delenv("RMLORA_DATA_DIR", raising=False)
    mp.setenv("SCIKIT_LEARN_DATA", str(tmp / "sk"))
    try:
        return run_scenario(cfg, out)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def classwise(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    return _procedural_run(tmp, _cfg("forget:proc-2", ["ft", "mask"]), tmp / "class"), tmp / "class"


@pytest.fixture(scope="module")
def samplewise(tmp_path_factory):
    return _procedural_run(tmp_path_factory.mktemp("eval"), _cfg("forget:30%", ["ft"]))


# --------------------------------------------------------------------------- class-wise
def test_every_method_gets_both_paths_and_both_references(classwise):
    r, _ = classwise
    assert r.methods == ["ft", "mask"]
    assert r.lanes() == ["lora:ft", "full:ft", "lora:mask", "full:mask", "retrain", "retrain-float"]
    for s in r.per_seed:
        last = s.requests[-1].paths
        assert last["lora:mask"].metrics["forget_acc"] == 0  # the mask removes the class from every answer
        assert last["lora:mask"].training_J == 0 and "output masked" in last["lora:mask"].note
        assert last["retrain"].metrics["forget_acc"] == 0  # never trained on it
        assert s.paths["retrain"].costs["training_cost_J"] > s.paths["retrain-float"].costs["training_cost_J"] > 0
        assert s.paths["retrain"].reprogrammed_cells > 0  # the hardware-aware reference trained on its chip
        assert s.avg_gap["retrain-float"] == s.avg_gap["retrain-float"]  # finite: measured against the chip one


def test_field_table_has_every_number_with_an_interval(classwise):
    r, _ = classwise
    ev = r.evaluation()
    assert ev["attack"]["available"] and ev["attack"]["shadows"] == 2 and ev["attack"]["negatives_per_seed"] == 6
    rows = ev["lanes"]
    assert list(rows) == ["deployed", *r.lanes()]
    for lane in ("lora:ft", "full:ft", "lora:mask", "retrain-float"):
        row = rows[lane]
        for k in ("UA", "RA", "TA", "mia_gap", "lira_auc", "lira_tpr", "relearn_steps", "probe_acc", "avg_gap",
                  "seconds", "training_cost_J", "deployment_overhead_J", "inference_energy_J"):
            st = row[k]
            assert len(st["per_seed"]) == 3 and math.isfinite(st["mean"]), (lane, k)
            lo, hi = st["ci95"]
            assert lo - 1e-12 <= st["mean"] <= hi + 1e-12, (lane, k)
        assert 0 <= row["lira_auc"]["mean"] <= 1 and 0 <= row["mia_gap"]["mean"] <= 0.5
    # MIA-efficacy is left out for a forgotten class; the reference is not attacked against itself
    assert all(math.isnan(v) for v in rows["lora:ft"]["mia_efficacy"]["per_seed"])
    assert "lira_auc" not in rows["retrain"] and rows["retrain"]["avg_gap"]["mean"] == 0
    # the Avg. Gap is averaged per seed: the mean of the per-seed gaps, not the gap of the means
    assert rows["lora:ft"]["avg_gap"]["per_seed"] == [s.avg_gap["lora:ft"] for s in r.per_seed]


def test_switched_off_adapters_and_lifted_masks_give_the_forgotten_class_back(classwise):
    r, _ = classwise
    rows = r.evaluation()["lanes"]
    # with the mask lifted the deployed model answers again: it recognises the class as it did before
    before = [s.requests[0].paths["lora:mask"].metrics["forget_acc"] for s in r.per_seed]
    after = rows["lora:mask"]["adapters_off_forget_acc"]["per_seed"]
    assert after == pytest.approx(before, abs=0.34)
    # the adapter path's forget adapter can be switched off; merging it into the arrays costs write-verify
    for s in r.per_seed:
        a = s.paths["lora:ft"].audit
        assert "forget_acc" in a["adapters_off"] and a["merge"]["energy_J"] > 0 and a["merge"]["programmed_cells"] > 0
        assert "adapters_off" not in s.paths["full:ft"].audit and "merge" not in s.paths["full:ft"].audit
        assert len(a["attack_stats"]) == 6  # every forgotten training photo of proc-2


def test_report_states_the_threat_model_and_the_table(classwise):
    r, out = classwise
    text = (out / "report.md").read_text()
    assert "## Unlearning evaluation" in text and "## Threat model" in text
    assert "U-LiRA AUC" in text and "[" in text.split("## Unlearning evaluation")[1]  # intervals
    assert "**not** exact unlearning" in text and "docs/threat-model.md" in text
    assert "adapter path, mask" in text and "retrained in float" in text
    d = json.loads((out / "summary.json").read_text())
    assert "evaluation" in d["aggregate"] and d["methods"] == ["ft", "mask"]
    back = ScenarioResult.from_dict(d)
    assert back.evaluation()["lanes"]["lora:ft"]["UA"]["mean"] == pytest.approx(
        r.evaluation()["lanes"]["lora:ft"]["UA"]["mean"])
    assert (out / "weights" / "adapter-1-forget-proc-2-ft.safetensors").is_file()


# --------------------------------------------------------------------------- random samples
def test_random_sample_forgetting_draws_the_same_examples_for_every_seed_and_keeps_every_class():
    cfg = _cfg("forget:30%", ["ft"])
    plan = plan_scenario(cfg)
    rows = []
    for seed in plan.seeds:
        run = _SeedRun(plan, seed, None)
        data = plan.workload.prepare(plan.ds, plan.order, plan.settings, seed, run.streams.generator("data"))
        draw_samples(plan, data)
        rows.append(data.samples[1])
        state = plan.states[-1]
        xf, yf = data.forget_xy(state, plan.order)
        xr, yr = data.retain_xy(state, plan.order)
        n_train = len(data.splits["train"].labels)
        assert len(yf) == round(0.3 * n_train) and len(yf) + len(yr) == n_train  # a partition of the training set
        assert set(yr.tolist()) == set(range(len(plan.order)))  # no class emptied
    assert all(torch.equal(rows[0], x) for x in rows)  # fixed split: the same forget set, so seeds can be shadows


def test_random_sample_run_defines_mia_efficacy_and_attacks_the_samples(samplewise):
    r = samplewise
    assert r.lanes() == ["lora", "full", "retrain", "retrain-float"]
    ev = r.evaluation()
    plan = plan_scenario(_cfg("forget:30%", ["ft"]))
    data = plan.workload.prepare(plan.ds, plan.order, plan.settings, 0, torch.Generator())
    draw_samples(plan, data)
    assert ev["attack"]["negatives_per_seed"] == len(data.samples[1]) == round(0.3 * len(data.splits["train"].labels))
    row = ev["lanes"]["lora"]
    assert all(0 <= v <= 1 for v in row["mia_efficacy"]["per_seed"])  # defined for samples
    assert 0 <= row["lira_auc"]["mean"] <= 1
    last = r.per_seed[0].requests[-1]
    assert last.forgotten == [] and set(last.paths["retrain"].per_class["test_acc"]) == set(last.kept)  # no class gone


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, message", [
    (["--methods", "ft,forgetful"], "unknown method 'forgetful'"),
    (["--requests", "forget:150%"], "must lie in (0, 1)"),
    (["--requests", "forget:0%"], "must lie in (0, 1)"),
    (["--requests", "forget:95%"], "would leave identity"),
    (["--requests", "forget:10%", "--methods", "ft,mask"], "random-sample forget request has none to mask"),
    (["--workload", "style", "--quick", "--requests", "forget:10%"], "forgets classes, not random samples"),
])
def test_bad_evaluation_input_is_one_clear_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["demo", "--quick", *args, "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and message in res.output
    assert not out.exists()


def test_more_shadow_models_than_seeds_allow_is_refused(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('workload = "face"\nconfiguration = "eval-quick"\nseeds = 3\n[settings.audit]\nshadows = 5\n')
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["demo", "--config", str(toml), "--out", str(out)])
    assert res.exit_code == 2 and "asked for 5 shadow models" in res.output and not out.exists()
    toml.write_text('workload = "face"\nseeds = 4\n[settings.audit]\nshadows = 2\n')
    res = CliRunner().invoke(main, ["demo", "--config", str(toml), "--out", str(out)])
    assert res.exit_code == 2 and "splits the data anew" in res.output and not out.exists()


def test_requests_parse_fractions_and_refuse_the_impossible():
    r = Request.parse("forget:12.5%")
    assert r.fraction == pytest.approx(0.125) and str(r) == "forget:12.5%"
    assert Request.parse("forget:0.1").fraction == pytest.approx(0.1)
    with pytest.raises(RmloraError, match="only forget:10% forgets a random sample"):
        Request("add", fraction=0.1)
    with pytest.raises(RmloraError, match="classes or a fraction, not both"):
        Request("forget", ["s3"], fraction=0.1)
    plan = plan_scenario(ScenarioConfig(workload="face", configuration="quick", requests=parse_requests("learn:all")))
    assert len(plan.states[0].kept) == len(plan.ds.names)  # learn:all learns every class


@pytest.mark.parametrize("workload", ["face", "speaker"])
def test_evaluation_defaults_are_the_validation_search_choices(workload):
    """Every searched default of the evaluation configuration equals the choice recorded in
    docs/tuning_<workload>.json (scores on validation data only, benchmarks/tune_unlearning.py)."""
    from pathlib import Path

    from rmlora.scenario.tuning import choose
    from rmlora.scenario.workload import get_workload

    t = json.loads((Path(__file__).resolve().parents[1] / "docs" / f"tuning_{workload}.json").read_text())
    st = get_workload(workload).settings("eval")
    steps, lr = choose(t["pretrain"]["scores"]).split("@")
    assert (st.pretrain.steps, st.pretrain.lr) == (int(steps), float(lr))
    f = t["forget"]
    assert f["class"]["budget"]["lora"] == st.forget_lora.to_dict() and f["class"]["budget"]["full"] == st.forget_full.to_dict()
    for m, paths in f["class"]["scores"].items():
        for k, kind in enumerate(("lora", "full")):
            total = {lr: [x + y for x, y in zip(v, f["samples"]["scores"][m][kind][lr])] for lr, v in paths[kind].items()}
            assert st.method_lr[m][k] == pytest.approx(float(choose(total))), (m, kind)
    assert set(st.method_lr) == set(f["class"]["scores"])  # every trained method was searched, on both paths


def test_default_demo_settings_found_on_test_data_were_chosen_again_on_validation_data():
    """The issue's two defaults picked by looking at test data or attacks: face's gradient-ascent cap,
    speaker's rehearsal size; both now equal the validation search's choice."""
    from pathlib import Path

    from rmlora.scenario.tuning import choose
    from rmlora.scenario.workload import get_workload

    for workload, name in (("face", "ga_cap"), ("speaker", "rehearsal_per_class")):
        t = json.loads((Path(__file__).resolve().parents[1] / "docs" / f"tuning_{workload}.json").read_text())
        d = t["default"]
        assert d["setting"] == name
        both = {v: [x + y for x, y in zip(s["lora"], s["full"])] for v, s in d["scores"].items()}
        assert getattr(get_workload(workload).settings("default"), name) == pytest.approx(float(choose(both)))


def test_an_output_mask_is_lifted_by_undo_and_by_an_attacker(tmp_path):
    from rmlora.scenario.runner import _Lane

    lane = _Lane(None, [0, 1, 2], None, None)
    lane.masked[1] = ([0, 1, 2], [1])
    lane.columns = [0, None, 2, 5]  # class 1 masked, class 5 added later
    assert lane.unmasked() == [0, 1, 2, 5]
    r = _procedural_run(tmp_path, ScenarioConfig(workload="face", configuration="quick", seeds=1, progress=False,
                                                 methods=["mask"], requests=parse_requests("forget:proc-2,undo:1"),
                                                 settings=TINY))
    deployed, masked, lifted = (q.paths["lora"] for q in r.per_seed[0].requests)
    assert masked.metrics["forget_acc"] == 0 and masked.per_class["test_acc"]["proc-2"] == 0
    assert "output mask lifted" in lifted.note and lifted.training_J == 0
    assert deployed.per_class["test_acc"]["proc-2"] > 0  # the deployed model recognises proc-2 ...
    # ... and once the mask is lifted it answers as before (the same network on the same chip)
    assert lifted.per_class["test_acc"]["proc-2"] == pytest.approx(deployed.per_class["test_acc"]["proc-2"], abs=0.5)
