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
from rmlora.tasks.style import paper_model, style_settings
from rmlora.tasks.style_models import ConvNeXtDiT, DigitalEmbeddingRows, attach_rows, fold_rows
from rmlora.tasks.style_pipeline import StyleDiffusion, train_vae
from rmlora.tasks.style_workload import check_processes

RATES = ("forget_style_rate", "kept_class_rate", "new_class_rate", "leak_rate", "kid_kept", "fd_kept")
COSTS = ("training_cost_J", "deployment_overhead_J", "deployment_time_s", "inference_energy_J")
CLASSES = [f"{s}-{b}" for s in ("hatching", "cross_hatch", "stippling", "pointillism", "wavy")
           for b in ("cat", "bird", "fish")]


def _cfg(**kw) -> ScenarioConfig:
    return ScenarioConfig(**{"workload": "style", "configuration": "quick", "progress": False, **kw})


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
    # style:NAME requests name every subject of the style
    assert r.requests == ["learn:" + "+".join(CLASSES[:12]), "forget:stippling-cat+stippling-bird+stippling-fish",
                          "add:wavy-cat+wavy-bird+wavy-fish"]
    s = r.per_seed[0]
    assert s.class_names == CLASSES
    for p in ("lora", "full", "retrain"):
        last = s.requests[-1].paths[p]
        assert set(RATES) <= set(last.metrics), p
        assert set(last.per_class["class_rate"]) == set(CLASSES)
        assert set(last.per_class["forget_style_rate_by_subject"]) == {"cat", "bird", "fish"}
        assert set(last.per_class["leak_rate_by_subject"]) == {"cat", "bird", "fish"}
    for p in ("lora", "full"):
        for k in COSTS:
            assert s.paths[p].costs[k] > 0, (p, k)
    for k in ("training_cost", "deployment_overhead", "inference_energy", "inference_energy_vs_digital"):
        assert s.ratios[k] > 0
    assert r.paper_ratios == {"training_cost": 147.76, "deployment_overhead": 387.95, "inference_energy": 48.44}
    clf = s.extras["classifier"]
    assert clf["styles"][-1] == "noise" and clf["subjects"] == ["cat", "bird", "fish"]
    assert clf["test_style_acc"] > 0.8


def test_the_depthwise_convolutions_sit_in_the_arrays(quick_run):
    _, r = quick_run
    layers = {row["layer"]: row for row in r.per_seed[0].deployment["layers"]}
    dw = [n for n in layers if n.endswith(".dwconv")]
    assert len(dw) == style_settings("quick").num_layers
    assert all(layers[n]["tiles"] == 1 and layers[n]["cells"] > 0 for n in dw)  # 64 channels: one tile each
    # no product without a fixed weight: nothing is counted as an activation x activation MAC
    assert r.per_seed[0].paths["lora"].breakdown["inference_counts"].get("activation_macs", 0) == 0


def test_after_forgetting_the_forgotten_style_is_not_generated(quick_run):
    _, r = quick_run
    for p in ("lora", "full", "retrain"):
        assert r.metric(p, "forget_style_rate", 1)["mean"] <= 0.25, p
        assert r.metric(p, "forget_style_rate", 2)["mean"] <= 0.25, p  # and stays so after the add


def test_the_forget_objective_pulls_the_forgotten_labels_to_noise():
    """The noise-target objective (the authors' forgetting): a few steps make the model's denoising of
    uniform-noise images under the forgotten labels far better, while the kept classes are rehearsed."""
    from rmlora.scenario.workload import ClassState, get_workload

    w, st = get_workload("style"), style_settings("quick")
    ds = w.load(None, 0)
    order = ds.expand("style:hatching") + ds.expand("style:stippling")
    forget = ds.expand("style:stippling")
    data = w.prepare(ds, order, st, 0, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = st.build(len(order))
    with torch.no_grad():  # off adaLN-Zero's start, so that labels matter
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    obj = w.objective("forget", model, data, forget=forget, new=[], state=ClassState(order, order), columns=order,
                      settings=st, method="noise", gen=torch.Generator().manual_seed(1), seed=2)
    g = torch.Generator().manual_seed(3)
    x = data.noise_targets(24, g)
    fixed = (torch.randn(x.shape, generator=g), torch.randint(0, st.train_timesteps, (24,), generator=g))

    def noise_loss(labels: list[int]) -> float:  # denoising of noise images under ``labels``
        with torch.no_grad():
            return float(data.diff.loss(model, x, torch.tensor(data.idx(labels)).repeat(8), None, fixed=fixed))
    kept = ds.expand("style:hatching")
    before = noise_loss(forget)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        opt.zero_grad()
        obj.loss(step).backward()
        opt.step()
    after = noise_loss(forget)
    assert after < 0.85 * before
    assert after < noise_loss(kept)  # noise is what the forgotten labels now mean, more than the kept ones


def test_adapter_deployment_writes_no_cell(quick_run):
    _, r = quick_run
    lo, fu = r.per_seed[0].paths["lora"], r.per_seed[0].paths["full"]
    assert lo.costs["deployment_time_s"] < fu.costs["deployment_time_s"]
    assert lo.breakdown["deployment_J"]["write_verify"] == 0
    assert fu.breakdown["deployment_J"]["write_verify"] > 0
    assert lo.breakdown["training_counts"].get("set_pulses", 0) == 0
    assert fu.reprogrammed_cells > 0
    assert r.ratio("inference_energy_vs_digital")["mean"] > 1  # analogue backbone beats all-digital


def test_run_folder_files(quick_run):
    out, r = quick_run
    for f in ("report.md", "summary.json", "run.json", "deletion_ledger.jsonl"):
        assert (out / f).is_file(), f
    grids = r.per_seed[0].extras["grids"]
    tag = "1-forget-stippling-cat-stippling-bird-stippling-fish"
    assert {"pretrained_float", "deployed", f"{tag}_lora", "2-add-wavy-cat-wavy-bird-wavy-fish_full"} <= set(grids)
    for name in grids.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    entries = records.verify(out / "deletion_ledger.jsonl")
    assert len(entries) == 1 and entries[0]["forgotten"] == ["stippling-cat", "stippling-bird", "stippling-fish"]
    w = out / "weights"
    adapter = load_file(str(w / f"adapter-{tag}.safetensors"))
    assert adapter and all(".ff.net." in k for k in adapter)
    assert all(not v.dtype.is_floating_point for k, v in adapter.items() if k.endswith(".codes"))
    for f in ("pretrained.safetensors", "lora-path-digital.safetensors", "full-update.safetensors",
              "retrain.safetensors", "chip-cells.safetensors"):
        assert (w / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "147.76x" in report and "387.95x" in report and "48.44x" in report
    assert "### Forgotten styles per subject" in report and "| fish |" in report and "KID" in report
    assert all(name in report for name in grids.values())
    assert "| training cost |" in costs_table(r) and "forget_style_rate" in metrics_table(r)


@pytest.mark.parametrize("kwargs, message", [
    ({"learn": ["style:hatching", "style:nope"]}, "unknown style 'nope'"),
    ({"learn": ["hatching-cat", "nope-cat"]}, "unknown class"),
    ({"learn": ["style:hatching"], "forget": ["style:hatching"]}, "every learned class"),
    ({"forget": ["style:wavy"]}, "not a learned class"),
    ({"add": ["hatching-fish"]}, "already learned"),
    ({"forget": ["subject:dog"]}, "unknown subject"),
    ({"data_dir": "/nonexistent/styles"}, "does not exist"),
    ({"method": "ga"}, "unknown method"),
    ({"settings": {"samples": 3}}, "unknown key 'samples'"),
    ({"settings": {"samples_per_class": 1}}, "samples_per_class must be >= 2"),
    ({"settings": {"block": "mamba"}}, "settings.block"),
    ({"configuration": "paper"}, "paper configuration needs one"),
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
    model = d.build(4)
    torch.manual_seed(0)
    with torch.no_grad():  # leave adaLN-Zero's start, where the labels have no effect yet
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = attach_rows(model, [2, 3])
    assert len(rows) == 1 and isinstance(rows[0], DigitalEmbeddingRows)  # one shared table in the ConvNeXt DiT
    opt = torch.optim.SGD([r.rows for r in rows], lr=1.0)
    diff = StyleDiffusion(d, null_label=4)
    loss = diff.loss(model, torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 3]), torch.Generator())
    loss.backward()
    opt.step()
    saved = fold_rows(model)
    assert len(saved) == 1
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in after.items():
        if "embedding_table" in k:
            assert torch.equal(v[:2], before[k][:2]) and torch.equal(v[4:], before[k][4:])
            assert not torch.equal(v[2:4], before[k][2:4])
        else:
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("block", ["convnext", "attention"])
def test_sampling_is_reproducible(block):
    d = style_settings("quick").replace(block=block)
    model = d.build(2).eval()
    diff = StyleDiffusion(d, null_label=2)
    a = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    b = diff.sample(model, torch.tensor([0, 1]), torch.Generator().manual_seed(5), steps=3)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


def test_the_convnext_block_starts_as_the_identity_and_has_no_attention():
    model = style_settings("quick").build(3)
    assert isinstance(model, ConvNeXtDiT)
    assert not any("attn" in n for n, _ in model.named_modules())
    x = torch.randn(2, 3, 32, 32)
    out = model(x, timestep=torch.tensor([10, 500]), class_labels=torch.tensor([0, 3])).sample
    assert out.shape == x.shape and float(out.abs().max()) == 0.0  # adaLN-Zero and a zero output layer


def test_the_paper_model_has_dit_b2_dimensions():
    model = paper_model()
    cfg = model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.patch_size, cfg.sample_size, cfg.in_channels) == (12, 768, 2, 16, 4)
    assert model.emb.class_embedder.embedding_table.num_embeddings == 31  # 30 classes + the null label
    dw = [m for n, m in model.named_modules() if n.endswith("dwconv")]
    assert len(dw) == 12 and all(m.groups == 768 and m.kernel_size == (7, 7) for m in dw)
    assert 95e6 < sum(p.numel() for p in model.parameters()) < 110e6


def test_a_small_autoencoder_trains_and_round_trips():
    st = style_settings("quick").replace(space="latent", vae_widths=[8, 16], vae_steps=3, vae_batch=4)
    assert st.model_size == 16 and st.model_channels == 4
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    codec, info = train_vae(x, st, seed=0)
    z = codec.encode(x)
    assert z.shape == (8, 4, 16, 16) and info["steps"] == 3 and info["scale"] > 0
    assert codec.decode(z).shape == x.shape
    assert not any(p.requires_grad for p in codec.vae.parameters())  # frozen


def test_more_processes_than_devices_is_refused():
    check_processes(2, "cuda", 2)
    check_processes(4, "cpu", 0)
    with pytest.raises(RmloraError, match="4 processes but torch sees 1 CUDA"):
        check_processes(4, "cuda", 1)


def test_pretrained_checkpoint_must_match(tmp_path, quick_run):
    out, _ = quick_run
    ok = out / "weights" / "pretrained.safetensors"
    with pytest.raises(RmloraError, match="does not match"):
        run_scenario(_cfg(pretrained=str(ok), add=["style:wavy", "style:cel"]), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert Path(ok).is_file()


@pytest.mark.parametrize("args, message", [
    (["--forget", "style:nope"], "unknown style 'nope'"),
    (["--learn", "style:hatching", "--forget", "style:hatching"], "every learned class"),
    (["--configuration", "paper"], "no CUDA GPU"),
])
def test_the_cli_refuses_bad_style_requests_with_one_error_line(tmp_path, args, message):
    from click.testing import CliRunner

    from rmlora.cli import main

    out = tmp_path / "run"
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, ["demo", "--workload", "style", "--quick", *args, "--out", str(out)]
                           if args[0] != "--configuration" else ["demo", "--workload", "style", *args, "--out", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists()


def test_the_comparison_table_of_refresh_docs(quick_run, tmp_path):
    """scripts/style_compare.py writes its table between the markers of a doc, and nothing else."""
    import importlib.util

    out, r = quick_run
    spec = importlib.util.spec_from_file_location("style_compare", Path(__file__).parents[1] / "scripts" /
                                                  "style_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = tmp_path / "style.md"
    doc.write_text(f"before\n{mod.BEGIN}\nold\n{mod.END}\nafter\n")
    summary = str(out / "summary.json")
    assert mod.main([summary, summary, str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| | convnext DiT | convnext DiT |" in text and "| kept classes recognised (LoRA) |" in text
    assert "| share of inference energy without fixed weights | 0.0% | 0.0% |" in text
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    assert mod.main([summary, summary, str(bare)]) == 2 and bare.read_text() == "no markers"


def test_a_latent_configuration_runs_end_to_end_and_its_autoencoder_is_reused(tmp_path):
    """Tiny budgets: the autoencoder is trained, saved in the run folder, and a second run reads it back."""
    tiny = {"space": "latent", "vae_widths": [8, 16], "vae_steps": 3, "vae_batch": 4, "pretrain": {"steps": 10},
            "forget_lora": {"steps": 2}, "forget_full": {"steps": 2}, "learn_lora": {"steps": 2},
            "learn_full": {"steps": 2}, "classifier_steps": 5, "samples_per_class": 2, "sample_steps": 2,
            "kid_subsets": 2}
    r = run_scenario(_cfg(settings=tiny, requests=["forget:style:stippling"]), tmp_path / "a")
    vae = tmp_path / "a" / "weights" / "vae.safetensors"
    assert vae.is_file() and r.per_seed[0].extras["vae"]["saved"] == "weights/vae.safetensors"
    assert "AutoencoderKL" in (tmp_path / "a" / "report.md").read_text()
    r2 = run_scenario(_cfg(settings={**tiny, "vae_checkpoint": str(vae)}, requests=["forget:style:stippling"]),
                      tmp_path / "b")
    assert r2.per_seed[0].extras["vae"]["loaded_from"] == str(vae)
    with pytest.raises(RmloraError, match="vae_checkpoint .* does not exist"):
        run_scenario(_cfg(settings={**tiny, "vae_checkpoint": str(tmp_path / "none.safetensors")}), tmp_path / "c")
    assert not (tmp_path / "c").exists()
