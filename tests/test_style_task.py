"""The style workload end to end: the quick scenario, in-process, on the procedural styles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmlora import records
from rmlora.errors import RmloraError
from rmlora.pipeline import DemoConfig
from rmlora.style_pipeline import run_style_demo, style_tables
from rmlora.tasks.style import DigitalEmbeddingRows, StyleDiffusion, attach_rows, build_dit, fold_rows, style_defaults

RATES = ("forget_style_rate", "kept_style_rate", "new_style_rate", "fd_per_class")
COSTS = ("training_cost_J", "deployment_overhead_J", "deployment_time_s", "inference_energy_J")
GRIDS = ("pretrained_float", "pretrained_deployed", "after_forget_lora", "after_forget_full", "final_lora",
         "final_full", "retrain")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("style") / "run"
    s = run_style_demo(DemoConfig(task="style", out=out, quick=True, progress=False))
    torch.set_num_threads(threads)
    return out, s


def test_summary_has_the_documented_keys(quick_run):
    out, s = quick_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(s, sort_keys=True)  # NaN-safe comparison
    assert s["task"] == "style" and s["preset"] == "rram-180nm" and s["seed"] == 0 and "diffusers" in s["versions"]
    assert s["dataset"]["kind"] == "procedural"
    assert s["scenario"]["learn"] == ["hatching", "cross_hatch", "stippling", "pointillism"]
    assert s["scenario"]["forget"] == ["cross_hatch", "stippling"]
    assert s["scenario"]["add"] == ["wavy", "cel"]
    assert s["model"]["class"] == "diffusers.DiTTransformer2DModel" and s["model"]["num_embeds_ada_norm"] == 6
    for p in ("lora", "full", "retrain"):
        for k in RATES:
            assert k in s[p], (p, k)
        assert set(s[p]["fd_per_class"]) == {"hatching", "cross_hatch", "stippling", "pointillism", "wavy", "cel"}
    for p in ("lora", "full"):
        for k in COSTS:
            assert s[p]["costs"][k] > 0, (p, k)
    for k in ("training_cost", "deployment_overhead", "inference_energy", "inference_energy_vs_digital"):
        assert s["ratios"][k] > 0
    assert s["paper_ratios"] == {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
    assert s["classifier"]["classes"][-1] == "noise" and s["classifier"]["val_acc"] > 0.8


def test_forgetting_lowers_the_forget_rate(quick_run):
    _, s = quick_run
    before = s["pretrained"]["deployed"]["forget_style_rate"]
    assert before > 0
    assert s["lora"]["after_forget"]["forget_style_rate"] < before
    assert s["full"]["after_forget"]["forget_style_rate"] < before


def test_adapter_deployment_writes_no_cell(quick_run):
    _, s = quick_run
    lo, fu = s["lora"], s["full"]
    assert lo["costs"]["deployment_time_s"] < fu["costs"]["deployment_time_s"]
    assert lo["cost_breakdown"]["deployment_J"]["write_verify"] == 0
    assert fu["cost_breakdown"]["deployment_J"]["write_verify"] > 0
    assert lo["cost_breakdown"]["training_counts"].get("set_pulses", 0) == 0
    assert fu["reprogrammed_cells_during_training"] > 0
    assert s["ratios"]["inference_energy_vs_digital"] > 1  # analogue backbone beats all-digital


def test_run_folder_files(quick_run):
    out, s = quick_run
    for f in ("report.md", "summary.json", "run.json", "per_seed.json", "deletion_ledger.jsonl"):
        assert (out / f).is_file(), f
    for key in GRIDS:
        png = out / s["grids"][key]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    entries = records.verify(out / "deletion_ledger.jsonl")
    assert len(entries) == 1 and entries[0]["forgotten"] == ["cross_hatch", "stippling"]
    w = out / "weights"
    adapter = load_file(str(w / "adapter-forget-cross_hatch-stippling.safetensors"))
    assert adapter and all(".ff.net." in k for k in adapter)
    assert all(not v.dtype.is_floating_point for k, v in adapter.items() if k.endswith(".codes"))
    for f in ("adapter-learn-wavy-cel.safetensors", "pretrained.safetensors", "digital-rows.safetensors",
              "full-update.safetensors", "retrain.safetensors", "chip-cells.safetensors"):
        assert (w / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "147.76x" in report and "387.95x" in report and "48.44x" in report
    assert all(s["grids"][k] in report for k in GRIDS)
    tables = style_tables(s)
    assert "| training cost |" in tables and "forgotten styles recognised" in tables


@pytest.mark.parametrize("kwargs, message", [
    ({"learn": ["hatching", "nope"]}, "unknown style"),
    ({"learn": ["hatching", "cross_hatch"], "forget": ["hatching", "cross_hatch"]}, "every learned style"),
    ({"forget": []}, "forget set is empty"),
    ({"forget": ["wavy"]}, "not learned"),
    ({"add": ["hatching"]}, "already learned"),
    ({"data_dir": "/nonexistent/styles"}, "does not exist"),
    ({"method": "ga"}, "unknown method"),
    ({"preset": "no-such-preset"}, "no-such-preset"),
    ({"extra": {"samples": 3}}, "unknown style option"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kwargs, message):
    out = tmp_path / "run"
    with pytest.raises(RmloraError, match=message) as exc:
        run_style_demo(DemoConfig(task="style", out=out, quick=True, progress=False, **kwargs))
    assert "\n" not in str(exc.value)
    assert not out.exists()


def test_an_out_folder_holding_a_run_is_refused(quick_run):
    out, _ = quick_run
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RmloraError, match="already holds a run"):
        run_style_demo(DemoConfig(task="style", out=out, quick=True, progress=False))
    assert sorted(p.name for p in out.iterdir()) == before


def test_new_embedding_rows_train_alone():
    d = style_defaults("quick")
    model = build_dit(d, 4, 0)
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
    d = style_defaults("quick")
    model = build_dit(d, 2, 0).eval()
    diff = StyleDiffusion(d, null_label=2)
    a = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    b = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


def test_pretrained_checkpoint_must_match(tmp_path, quick_run):
    out, _ = quick_run
    ok = out / "weights" / "pretrained.safetensors"
    with pytest.raises(RmloraError, match="does not match"):
        run_style_demo(DemoConfig(task="style", out=tmp_path / "r", quick=True, progress=False, pretrained=str(ok),
                                  add=["wavy"]))
    assert not (tmp_path / "r").exists()
    assert Path(ok).is_file()
