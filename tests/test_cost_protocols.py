"""Issue 11: cost protocols, the digital unit as a designer builds it (spikes as events, register
reuse, optimiser state, leakage), per-layer attribution, sensitivity and the projection of any
module's figures, checked against fully counted runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmlora.adapters import add_adapter
from rmlora.config import AdapterConfig, TrainConfig
from rmlora.costs import Ledger, counting, load_profile
from rmlora.costs.counting import MvmGeometry
from rmlora.costs.ledger import KINDS, UPDATE_KEYS
from rmlora.costs.profile import PROFILE_DIR
from rmlora.costs.project import Schedule, project
from rmlora.costs.protocols import PROTOCOLS, PathLedgers, evaluate, protocol_ledgers
from rmlora.costs.sensitivity import spans, sweep
from rmlora.errors import RmloraError
from rmlora.hardware import SimulatedChip, deploy
from rmlora.methods import fit
from rmlora.methods.paths import AdapterPath, FullPath
from rmlora.methods.train import ADAM_FP32_OPS, ADAM_STATE_BITS

PROF = load_profile("cmos-180nm")
COMPUTE = ("dac_conversions", "cell_reads", "adc_conversions", "tile_mvms", "digital_macs", "digital_adds",
           "reference_macs", "reference_adds", "reference_weight_bits", "sram_read_bits", "register_read_bits",
           "samples")
UPDATE = ("sram_write_bits", "optimizer_bits", "fp32_ops", "optimizer_steps", "trained_params")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    # tanh, not ReLU: no activation is exactly zero, so event-driven counts do not depend on how the
    # chip's programming error moves a ReLU's zeros
    return nn.Sequential(nn.Linear(40, 150), nn.Tanh(), nn.Linear(150, 60), nn.Tanh(), nn.Linear(60, 7))


def data(b: int = 16, binary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(b, 40, generator=g) < 0.3).float() if binary else torch.rand(b, 40, generator=g) + 0.05
    return x, torch.randint(0, 7, (b,), generator=g)


def loss_of(x, y):
    return lambda model, _ex=None: nn.functional.cross_entropy(model(x), y)


# ---------------------------------------------------------------------------
# the projection against a fully counted run on the chip
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True])
def test_projection_counts_match_a_fully_counted_run(binary):
    """Three optimiser steps of each path on a deployed MLP, counted as a scenario counts them,
    against the projection of the float MLP: the same compute and update counts."""
    x, y = data(binary=binary)
    steps, adapter = 3, AdapterConfig(rank=3, alpha=6.0, target_modules=["0", "2"])
    proj = project(mlp(), x, adapter=adapter, schedule=Schedule(steps=steps, batch=len(x)),
                   loss_fn=lambda m, ex: nn.functional.cross_entropy(m(ex), y))
    cfg = TrainConfig(steps=steps, lr=1e-3, batch_size=len(x), eval_every=0)
    for name in ("lora", "full"):
        model = mlp()
        chip = SimulatedChip("rram-180nm", seed=0, read_noise=False)
        deploy(model, chip, calibrate=x)
        if name == "lora":
            path = AdapterPath(model, chip, PROF, adapter)
        else:
            path = FullPath(model, chip, SimulatedChip("rram-180nm", seed=1), PROF)
        led = Ledger(register_bits=PROF.pe_register_bits)
        fit(model, path.begin("a"), lambda step: nn.functional.cross_entropy(model(x), y), cfg, ledger=led,
            after_step=lambda: path.after_step(led), progress=False)
        got, want = led.counts, proj.paths[name].train.counts
        for k in COMPUTE + UPDATE:
            assert want[k] == pytest.approx(got[k], rel=0.01, abs=0), (name, k)
        assert got["dac_conversions"] > 0 and got["optimizer_steps"] == steps
        if binary:
            assert got["reference_adds"] > 0 and got["digital_adds"] > 0  # spikes: accumulates, on both paths
        if name == "full":  # every trained cell after every step (no validation: no restore at the end)
            assert got["trained_cells"] == steps * proj.assumptions["cells"] == proj.paths[name].train.counts[
                "trained_cells"]
            assert got["programmed_cells"] > 0
        # inference of one batch
        inf = Ledger(register_bits=PROF.pe_register_bits)
        with torch.no_grad(), counting(model.eval(), inf):
            model(x)
        for k in COMPUTE:
            assert proj.paths[name].inference.counts[k] == pytest.approx(inf.counts[k], rel=0.01, abs=0), (name, k)


def test_layer_geometry_is_the_tiles_the_chip_allocates():
    model = mlp()
    chip = SimulatedChip("rram-180nm", seed=0, read_noise=False)
    deploy(model, chip)
    for m in model:
        if hasattr(m, "core"):
            h, geo = m.core.handle, m.core.geometry()
            assert geo.mvms == h.row_tiles * h.col_tiles
            assert geo == MvmGeometry.dense(m.in_features, m.out_features, (128, 128), 1, True)


def test_projection_refuses_bad_input():
    x, _ = data()
    with pytest.raises(RmloraError, match="steps"):
        Schedule(steps=0)
    with pytest.raises(RmloraError, match="moved_per_step"):
        Schedule(moved_per_step=1.5)
    with pytest.raises(RmloraError, match="no Linear"):
        project(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(RmloraError, match="LoRA targets"):
        project(mlp(), x, adapter=AdapterConfig(target_modules=["nope*"]))
    with pytest.raises(RmloraError, match="unknown cost protocol"):
        project(mlp(), x, protocols=["cheapest"])


# ---------------------------------------------------------------------------
# the digital unit
# ---------------------------------------------------------------------------

def _deployed_with_adapter(r: int = 4) -> nn.Module:
    model = nn.Sequential(nn.Linear(64, 32))
    deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=torch.rand(64, 64))
    add_adapter(model, "a", r=r, bits=8)
    return model


def test_spikes_are_events_for_the_adapters_and_the_digital_reference():
    r = 4
    model = _deployed_with_adapter(r)
    x = (torch.rand(5, 64, generator=torch.Generator().manual_seed(2)) < 0.2).float()
    nnz = int(x.sum())
    led = Ledger()
    with torch.no_grad(), counting(model, led):
        model(x)
    c = led.counts
    assert c["digital_adds"] == nnz * r  # A·x: each active input adds its r weights
    assert c["digital_macs"] == 5 * 32 * r  # B·(A·x) is dense
    assert c["reference_adds"] == nnz * 32 and c["reference_macs"] == 0  # the all-digital reference
    ref = Ledger()
    with torch.no_grad(), counting(model, ref, as_digital=True):
        model(x)
    assert ref.counts["digital_adds"] == nnz * 32 + nnz * r
    # dense inputs: multiply-accumulates everywhere
    dense = Ledger()
    with torch.no_grad(), counting(model, dense):
        model(torch.rand(5, 64) + 0.1)
    assert dense.counts["digital_adds"] == 0 and dense.counts["digital_macs"] == 5 * r * (64 + 32)


def test_adapter_weights_stay_in_the_pe_registers_when_they_fit():
    model = _deployed_with_adapter(4)  # (4 x 64 + 32 x 4) x 8 bits = 3072 bits
    x = torch.rand(3, 64) + 0.1
    for capacity, key in ((4096, "register_read_bits"), (2048, "sram_read_bits"), (None, "sram_read_bits")):
        led = Ledger(register_bits=capacity)
        with torch.no_grad(), counting(model, led):
            model(x)
        other = "sram_read_bits" if key == "register_read_bits" else "register_read_bits"
        assert led.counts[key] == 3 * 3072 and led.counts[other] == 0
    assert Ledger(counts=Ledger().counts).energy(PROF)["sram"] == 0


def test_optimiser_state_is_counted_on_both_paths():
    led = Ledger()
    from rmlora.methods.train import count_update
    count_update(led, [(None, 100, 30)], bits=8)
    assert led.counts["optimizer_bits"] == 100 * ADAM_STATE_BITS
    assert led.counts["fp32_ops"] == 100 * ADAM_FP32_OPS
    assert led.counts["sram_write_bits"] == 30 * 8  # the weights in the arrays are reprogrammed instead
    e = led.energy(PROF)
    assert e["optimizer"] == pytest.approx(100 * ADAM_STATE_BITS * PROF.sram_bit_J + 100 * ADAM_FP32_OPS * PROF.fp32_op_J)
    assert e["leakage"] == pytest.approx(PROF.leakage_W * led.time(PROF)["total"])
    assert set(KINDS) <= set(e)


def test_work_is_booked_per_layer_under_the_arrays_names():
    model = _deployed_with_adapter(4)
    led = Ledger()
    with torch.no_grad(), counting(model, led):
        model(torch.rand(2, 64) + 0.1)
    assert set(led.layers) == {"0"}
    for k, v in led.counts.items():
        if k != "samples":
            assert led.layers["0"][k] == v, k
    by = led.energy_by_layer(PROF)["0"]
    total = led.energy(PROF)
    assert by["total"] == pytest.approx(total["total"] - total["leakage"])


def test_training_books_the_optimiser_and_sram_writes_under_the_adapted_layer():
    from rmlora.config import TrainConfig
    from rmlora.methods.train import fit
    model = _deployed_with_adapter(4)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    led = Ledger()
    x = torch.rand(8, 64)
    fit(model, params, lambda step: model(x).square().mean(), TrainConfig(steps=3, lr=1e-3, batch_size=8),
        ledger=led, progress=False)
    n = sum(p.numel() for p in params)
    assert led.counts["optimizer_steps"] == 3
    for key, per_step in (("optimizer_bits", n * ADAM_STATE_BITS), ("sram_write_bits", n * 8), ("trained_params", n)):
        assert led.counts[key] == led.layers["0"][key] == 3 * per_step, key
    e = led.energy_by_layer(PROF)["0"]
    assert e["optimizer"] > 0 and e["sram"] > 0


# ---------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------

def _paths() -> dict[str, PathLedgers]:
    lt, ft = Ledger(), Ledger()
    for led, n in ((lt, 100), (ft, 1000)):
        led.add("dac_conversions", 5000, "l")
        led.add("reference_macs", 20000, "l")
        led.add("digital_macs", 3 * n, "l")
        from rmlora.methods.train import count_update
        count_update(led, [("l", n, n if led is lt else 10)], 8)
    ft.add("trained_cells", 1000, "l")
    ft.add("programmed_cells", 20, "l")  # the mixed-precision update reprogrammed 20 cells ...
    ft.add("set_pulses", 60, "l")  # ... with 3 SET and 1 RESET pulse and 5 verify reads each
    ft.add("reset_pulses", 20, "l")
    ft.add("verify_reads", 100, "l")
    ld, fd = Ledger(), Ledger()
    ld.add("sram_write_bits", 800)
    fd.add("programmed_cells", 1000, "l")
    fd.add("set_pulses", 9000, "l")
    fd.add("verify_reads", 12000, "l")
    inf = Ledger()
    inf.add("dac_conversions", 64, "l")
    inf.add("reference_macs", 640, "l")
    inf.add("reference_weight_bits", 640 * 8, "l")
    return {"lora": PathLedgers(lt, ld, inf, 1), "full": PathLedgers(ft, fd, inf, 1)}


def test_the_protocols_price_the_same_ledgers_three_ways():
    paths = _paths()
    lora, full = paths["lora"], paths["full"]
    # measured: the ledgers as they are
    assert protocol_ledgers("measured", "full", full)[0] is full.train
    # reprogram-every-step: only update work; every trained cell at the measured work per cell
    t, _, _ = protocol_ledgers("reprogram-every-step", "full", full)
    assert set(t.counts) <= UPDATE_KEYS
    assert (t.counts["set_pulses"], t.counts["reset_pulses"], t.counts["verify_reads"]) == (3000, 1000, 5000)
    assert t.counts["programmed_cells"] == 1000
    tl, _, _ = protocol_ledgers("reprogram-every-step", "lora", lora)
    assert tl.counts["dac_conversions"] == 0 and tl.counts["optimizer_bits"] == lora.train.counts["optimizer_bits"]
    # offchip-finetune: the full update's passes on the digital unit, no write-verify while training
    t, d, _ = protocol_ledgers("offchip-finetune", "full", full)
    assert t.counts["dac_conversions"] == 0 and t.counts["set_pulses"] == 0
    assert t.counts["digital_macs"] == 20000 + 3000
    assert d is full.deploy
    assert protocol_ledgers("offchip-finetune", "lora", lora)[0] is lora.train
    figs = evaluate(paths, PROF)
    assert set(figs) == set(PROTOCOLS)
    for f in figs.values():
        assert f["ratios"]["deployment_energy"] == pytest.approx(f["full"]["deployment_overhead_J"]
                                                                 / f["lora"]["deployment_overhead_J"])
        ref = inf_ref = paths["full"].inference.as_reference()
        assert f["digital_inference_J"] == pytest.approx(ref.energy(PROF)["total"])
        assert inf_ref.counts["digital_macs"] == 640 and inf_ref.counts["dac_conversions"] == 0
    # more pulses per reprogrammed cell make only the every-step protocol's full update dearer
    costly = _paths()
    costly["full"].train.layers["l"]["set_pulses"] *= 10
    costly["full"].train.counts["set_pulses"] *= 10
    more = evaluate(costly, PROF)
    assert more["reprogram-every-step"]["ratios"]["training_energy"] > figs["reprogram-every-step"]["ratios"]["training_energy"]
    assert more["offchip-finetune"]["ratios"]["training_energy"] == figs["offchip-finetune"]["ratios"]["training_energy"]
    with pytest.raises(RmloraError, match="unknown cost protocol"):
        protocol_ledgers("cheapest", "lora", lora)


def test_sensitivity_moves_each_constant_across_its_cited_range():
    s = spans(PROF)
    assert s["node_energy_scale"] == (16.0, 35.0, "cited range")
    assert s["dac_J"] == (PROF.dac_J / 2, PROF.dac_J * 2, "x/÷ 2")
    assert "pe_macs_per_cycle" not in s and "sram_capacity_bits" not in s  # structural
    rows = sweep(_paths(), PROF)
    assert [r["swing"] for r in rows] == sorted((r["swing"] for r in rows), reverse=True)
    pulse = next(r for r in rows if r["constant"] == "set_pulse_J")
    # dearer pulses make the full update's deployment dearer against the SRAM write
    assert pulse["deployment_energy"]["high"] > pulse["deployment_energy"]["base"] > pulse["deployment_energy"]["low"]
    assert all(math.isfinite(r["training_energy"]["low"]) for r in rows)


def test_profile_ranges_and_strict_mode(edited_copy):
    def outside(c):
        c["node_energy_scale"]["value"] = 50.0
    path = str(edited_copy(PROFILE_DIR / "cmos-180nm.json", outside))
    assert load_profile(path).node_energy_scale == 50.0
    with pytest.raises(RmloraError, match="outside its cited range"):
        load_profile(path, strict=True)

    def reversed_range(c):
        c["node_energy_scale"]["range"] = [35.0, 16.0]
    with pytest.raises(RmloraError, match="range"):
        load_profile(str(edited_copy(PROFILE_DIR / "cmos-180nm.json", reversed_range)))

    def zero_clock(c):
        c["clock_hz"]["value"] = 0
    with pytest.raises(RmloraError, match="clock_hz"):
        load_profile(str(edited_copy(PROFILE_DIR / "cmos-180nm.json", zero_clock)))


# ---------------------------------------------------------------------------
# rmlora costs
# ---------------------------------------------------------------------------

def test_rmlora_costs_projects_a_paper_model_under_every_protocol():
    import json

    from click.testing import CliRunner

    from rmlora.cli import main

    run = CliRunner().invoke(main, ["costs", "--model", "face-mixer", "--json"])
    assert run.exit_code == 0, run.output
    d = json.loads(run.output)
    assert set(d["figures"]) == set(PROTOCOLS)
    assert d["assumptions"]["lora_parameters"] < d["assumptions"]["parameters"]
    assert d["schedule"]["full_steps"] == 200 and d["schedule"]["steps"] == 16  # the authors' face schedule
    for f in d["figures"].values():
        assert f["ratios"]["deployment_energy"] > 1 and f["ratios"]["inference_energy_vs_digital"] > 1
    text = CliRunner().invoke(main, ["costs", "--model", "face-mixer", "--protocol", "measured"])
    assert text.exit_code == 0 and "measured" in text.output and "offchip" not in text.output
    for bad, msg in ((["--model", "nope"], "unknown model"), (["--model", "face-mixer", "--steps", "0"], "steps"),
                     ([], "--model"), (["--model", "face-mixer", "--protocol", "cheapest"], "cheapest")):
        r = CliRunner().invoke(main, ["costs", *bad])
        assert r.exit_code == 2 and msg in r.output, (bad, r.output)


def test_the_all_digital_reference_reads_a_layer_once_per_sample_however_many_tokens():
    """Tokens are vectors of one sample: the reference (counted with each analogue MVM, or by
    counting as_digital) reads a layer's weights once per sample and call, as for adapters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=torch.rand(64, 8))
    x = torch.rand(3, 10, 8) + 0.1  # 3 samples of 10 tokens
    led, dig = Ledger(), Ledger()
    with torch.no_grad():
        with counting(model, led):
            model(x)
        with counting(model, dig, as_digital=True):
            model(x)
    ref = led.as_reference()
    assert ref.counts["sram_read_bits"] == dig.counts["sram_read_bits"] == 3 * (8 * 16 + 16 * 4) * 8
    assert ref.counts["digital_macs"] == dig.counts["digital_macs"] == 30 * (8 * 16 + 16 * 4)
    proj = project(nn.Linear(8, 16), x, schedule=Schedule(steps=1, batch=3))
    assert proj.paths["full"].inference.counts["reference_weight_bits"] == 3 * 8 * 16 * 8


def test_offchip_finetune_writes_the_array_weights_to_digital_memory():
    paths = _paths()
    t, _, _ = protocol_ledgers("offchip-finetune", "full", paths["full"])
    arr = paths["full"].train.counts["array_param_updates"]
    assert arr == 1000 - 10
    assert t.counts["sram_write_bits"] == paths["full"].train.counts["sram_write_bits"] + arr * 8


def test_work_booked_without_a_layer_has_its_own_row_so_the_layers_add_up():
    led = Ledger()
    led.add("digital_macs", 1000, "a")
    led.add("sram_write_bits", 64)  # no layer
    by = led.energy_by_layer(PROF)
    assert set(by) == {"a", Ledger.NO_LAYER}
    assert by[Ledger.NO_LAYER]["sram"] == pytest.approx(64 * PROF.sram_bit_J) and by["a"]["sram"] == 0
    total = led.energy(PROF)
    assert sum(d["total"] for d in by.values()) == pytest.approx(total["total"] - total["leakage"])
    led2 = Ledger()
    led2.add("digital_macs", 10, "a")
    assert set(led2.energy_by_layer(PROF)) == {"a"}
