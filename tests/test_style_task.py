"""The style workload end to end: the quick scenario, in-process, on the procedural styles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmlora import records
from rmlora.config import ScenarioConfig
from rmlora.errors import RmloraError
from rmlora.scenario import ScenarioResult, run_scenario
from rmlora.scenario.report import costs_table, metrics_table
from rmlora.tasks.style import DigitalEmbeddingRows, StyleDiffusion, attach_rows, build_dit, fold_rows, style_settings

RATES = ("forget_style_rate", "kept_style_rate", "new_style_rate")
COSTS = ("training_cost_J", "deployment_overhead_J", "deployment_time_s", "inference_energy_J")
STYLES = {"hatching", "cross_hatch", "stippling", "pointillism", "wavy", "cel"}


def _cfg(**kw) -> ScenarioConfig:
    return ScenarioConfig(workload="style", configuration="quick", progress=False, **kw)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("style") / "run"
    r = run_scenario(_cfg(), out)
    torch.set_num_threads(threads)
    return out, r


def test_summary_has_the_documented_keys(quick_run):
    out, r = quick_run
    on_disk = ScenarioResult.from_dict(json.loads((out / "summary.json").read_text()))
    assert on_disk.to_dict() == r.to_dict()
    assert r.workload == "style" and r.chip["preset"] == "rram-180nm" and r.seeds == [0]
    assert "diffusers" in r.environment["versions"] and r.dataset["kind"] == "procedural"
    assert r.requests == ["learn:hatching+cross_hatch+stippling+pointillism", "forget:cross_hatch+stippling",
                          "add:wavy+cel"]
    s = r.per_seed[0]
    assert s.class_names == ["hatching", "cross_hatch", "stippling", "pointillism", "wavy", "cel"]
    for p in ("lora", "full", "retrain"):
        last = s.requests[-1].paths[p]
        assert set(RATES) <= set(last.metrics), p
        assert set(last.per_class["fd"]) == STYLES
    for p in ("lora", "full"):
        for k in COSTS:
            assert s.paths[p].costs[k] > 0, (p, k)
    for k in ("training_cost", "deployment_overhead", "inference_energy", "inference_energy_vs_digital"):
        assert s.ratios[k] > 0
    assert r.paper_ratios == {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
    clf = s.extras["classifier"]
    assert clf["classes"][-1] == "noise" and clf["val_acc"] > 0.8


def test_forgetting_lowers_the_forget_rate(quick_run):
    _, r = quick_run
    before = r.metric("lora", "forget_style_rate", 0)["mean"]
    assert before > 0
    assert r.metric("lora", "forget_style_rate", 1)["mean"] < before
    assert r.metric("full", "forget_style_rate", 1)["mean"] < before


def test_adapter_deployment_writes_no_cell(quick_run):
    _, r = quick_run
    lo, fu = r.per_seed[0].paths["lora"], r.per_seed[0].paths["full"]
    assert lo.costs["deployment_time_s"] < fu.costs["deployment_time_s"]
    assert lo.breakdown["deployment_J"]["write_verify"] == 0
    assert fu.breakdown["deployment_J"]["write_verify"] > 0
    assert lo.breakdown["training_counts"].get("set_pulses", 0) == 0
    assert fu.reprogrammed_cells > 0
    assert lo.breakdown["inference_activation_J_per_sample"] > 0  # the attention products, counted digital
    assert r.ratio("inference_energy_vs_digital")["mean"] > 1  # analogue backbone beats all-digital


def test_run_folder_files(quick_run):
    out, r = quick_run
    for f in ("report.md", "summary.json", "run.json", "deletion_ledger.jsonl"):
        assert (out / f).is_file(), f
    grids = r.per_seed[0].extras["grids"]
    assert {"pretrained_float", "deployed", "1-forget-cross_hatch-stippling_lora",
            "2-add-wavy-cel_full", "2-add-wavy-cel_retrain"} <= set(grids)
    for name in grids.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    entries = records.verify(out / "deletion_ledger.jsonl")
    assert len(entries) == 1 and entries[0]["forgotten"] == ["cross_hatch", "stippling"]
    w = out / "weights"
    adapter = load_file(str(w / "adapter-1-forget-cross_hatch-stippling.safetensors"))
    assert adapter and all(".ff.net." in k for k in adapter)
    assert all(not v.dtype.is_floating_point for k, v in adapter.items() if k.endswith(".codes"))
    for f in ("adapter-2-add-wavy-cel.safetensors", "pretrained.safetensors", "lora-path-digital.safetensors",
              "full-update.safetensors", "retrain.safetensors", "chip-cells.safetensors"):
        assert (w / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "147.76x" in report and "387.95x" in report and "48.44x" in report
    assert "## Retention" in report and r.per_seed[0].retention["metric"] == "val_denoising_loss"
    assert all(name in report for name in grids.values())
    assert "| training cost |" in costs_table(r) and "forget_style_rate" in metrics_table(r)


@pytest.mark.parametrize("kwargs, message", [
    ({"learn": ["hatching", "nope"]}, "unknown style"),
    ({"learn": ["hatching", "cross_hatch"], "forget": ["hatching", "cross_hatch"]}, "every learned style"),
    ({"forget": ["wavy"]}, "not a learned style"),
    ({"add": ["hatching"]}, "already learned"),
    ({"data_dir": "/nonexistent/styles"}, "does not exist"),
    ({"method": "ga"}, "unknown method"),
    ({"settings": {"samples": 3}}, "unknown key 'samples'"),
    ({"settings": {"samples_per_style": 1}}, "samples_per_style must be >= 2"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kwargs, message):
    out = tmp_path / "run"
    with pytest.raises(RmloraError, match=message) as exc:
        run_scenario(_cfg(**kwargs), out)
    assert "\n" not in str(exc.value)
    assert not out.exists()


def test_an_out_folder_holding_a_run_is_refused(quick_run):
    out, _ = quick_run
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RmloraError, match="already holds a run"):
        run_scenario(_cfg(), out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_new_embedding_rows_train_alone():
    d = style_settings("quick")
    model = build_dit(d, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = attach_rows(model, [2, 3])
    assert len(rows) == d.num_layers and all(isinstance(r, DigitalEmbeddingRows) for r in rows)
    opt = torch.optim.SGD([r.rows for r in rows], lr=1.0)
    diff = StyleDiffusion(d, null_label=4)
    loss = diff.loss(model, torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3]), torch.Generator())
    loss.backward()
    opt.step()
    saved = fold_rows(model)
    assert len(saved) == d.num_layers
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in after.items():
        if "embedding_table" in k:
            assert torch.equal(v[:2], before[k][:2]) and torch.equal(v[4:], before[k][4:])
            assert not torch.equal(v[2:4], before[k][2:4])
        else:
            assert torch.equal(v, before[k]), k


def test_sampling_is_reproducible():
    d = style_settings("quick")
    model = build_dit(d, 2).eval()
    diff = StyleDiffusion(d, null_label=2)
    a = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    b = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


def test_pretrained_checkpoint_must_match(tmp_path, quick_run):
    out, _ = quick_run
    ok = out / "weights" / "pretrained.safetensors"
    with pytest.raises(RmloraError, match="does not match"):
        run_scenario(_cfg(pretrained=str(ok), add=["wavy"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert Path(ok).is_file()
