"""The ledger's arithmetic, the counting conventions and technology profiles, checked by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from rmlora.adapters import DigitalRows, add_adapter
from rmlora.costs import CostFigures, Ledger, cost_figures, counting, load_profile, ratios
from rmlora.costs.profile import PROFILE_DIR
from rmlora.errors import RmloraError
from rmlora.hardware import AnalogLinear, SimulatedChip, calibrate, deploy

PROF = load_profile("cmos-180nm")
# constants of cmos-180nm.json used below (J, s):
SET_J, RESET_J, VERIFY_J = 5e-11, 5e-11, 5e-12
PULSE_S, VERIFY_S = 1e-7, 1e-7
DAC_J, CELL_J, ADC_FOM = 5e-13, 1.25e-13, 2e-14
SCALE = 16.0  # node_energy_scale: C·V² from 45 nm / 0.9 V to 180 nm / 1.8 V
MAC_J = (2e-13 + 1e-13) * SCALE  # Horowitz 45 nm: 8-bit multiply + 32-bit add, x node scale = 4.8 pJ
ADD_J = 1e-13 * SCALE  # a 32-bit accumulate
SRAM_BIT_J = 1.5625e-13 * SCALE
LEAK_W = 5e-11 * 1048576 + 1e-5  # SRAM leakage per bit x 128 KiB + the PE array
CLOCK, PE_MACS, SRAM_BITS_PER_CYCLE = 1e8, 64, 64


def approx(x: float):
    return pytest.approx(x, rel=1e-12, abs=0)


def test_profile_constants_are_the_ones_of_the_json():
    assert (PROF.set_pulse_J, PROF.reset_pulse_J, PROF.verify_read_J) == (SET_J, RESET_J, VERIFY_J)
    assert PROF.mac_J == approx(MAC_J)
    assert PROF.add_J == approx(ADD_J)
    assert PROF.sram_bit_J == approx(SRAM_BIT_J)
    assert PROF.leakage_W == approx(LEAK_W)
    assert PROF.ranges["node_energy_scale"] == (16.0, 35.0)
    assert PROF.adc_J(8) == approx(ADC_FOM * 256)  # 5.12 pJ
    assert PROF.adc_J(4) == approx(ADC_FOM * 16)


# ---------------------------------------------------------------------------
# ledger energy and time
# ---------------------------------------------------------------------------

def test_write_verify_energy_and_time():
    led = Ledger()
    led.add("set_pulses", 10)
    led.add("reset_pulses", 5)
    led.add("verify_reads", 7)
    e = led.energy(PROF)
    # 10 x 50 pJ + 5 x 50 pJ + 7 x 5 pJ = 785 pJ, and the digital unit leaks for 2.2 µs
    assert e["write_verify"] == approx(785e-12)
    assert e["dac"] == e["adc"] == e["array"] == e["digital"] == e["sram"] == 0
    assert e["leakage"] == approx(LEAK_W * 2.2e-6)
    assert e["total"] == approx(785e-12 + LEAK_W * 2.2e-6)
    t = led.time(PROF)
    # (15 pulses x 100 ns + 7 reads x 100 ns) / 1 write driver = 2.2 µs
    assert t["write_verify"] == approx(2.2e-6)
    assert t["total"] == approx(2.2e-6)
    faster = dataclasses.replace(PROF, write_parallel_cells=4)
    assert led.time(faster)["write_verify"] == approx(2.2e-6 / 4)


def test_digital_macs_with_node_scaling():
    led = Ledger()
    led.add("digital_macs", 1000)
    # 1000 x 0.3 pJ x 16 = 4.8 nJ; 1000 MACs / (64 per cycle x 100 MHz) = 156.25 ns
    assert led.energy(PROF)["digital"] == approx(4.8e-9)
    assert led.time(PROF)["digital"] == approx(1.5625e-7)
    led.add("digital_adds", 640)  # spikes: accumulates only, at 0.1 pJ x 16, on the same PEs
    assert led.energy(PROF)["digital"] == approx(4.8e-9 + 640 * 1.6e-12)
    assert led.time(PROF)["digital"] == approx(1640 / 6.4e9)
    assert led.energy(PROF.replace(node_energy_scale=35.0))["digital"] == approx((1000 * 0.3 + 640 * 0.1) * 35e-12)


def test_adc_energy_is_fom_times_2_pow_bits():
    for bits, per_conversion in ((8, 5.12e-12), (4, 3.2e-13), (6, 1.28e-12)):
        led = Ledger(adc_bits=bits)
        led.add("adc_conversions", 100)
        assert led.energy(PROF)["adc"] == approx(100 * per_conversion)


def test_analogue_and_sram_energy_and_time():
    led = Ledger()
    led.add("dac_conversions", 20)
    led.add("cell_reads", 1000)
    led.add("adc_conversions", 30)
    led.add("tile_mvms", 3)
    led.add("sram_read_bits", 640)
    led.add("sram_write_bits", 64)
    e = led.energy(PROF)
    # 20 x 0.5 pJ, 1000 x 0.125 pJ, 30 x 5.12 pJ
    assert (e["dac"], e["array"], e["adc"]) == (approx(10e-12), approx(125e-12), approx(153.6e-12))
    # 704 bits x 0.15625 pJ x 16
    assert e["sram"] == approx(704 * 2.5e-12)
    t = led.time(PROF)
    # 3 tile MVMs x 10 ns settling, and the 30 conversions on 16 ADCs: 2 rounds, but at least one per
    # MVM: 3 x 100 ns; one tile at a time = 0.33 µs
    assert t["array"] == approx(3.3e-7)
    # 704 bits / (64 bits per cycle x 100 MHz) = 110 ns
    assert t["sram"] == approx(1.1e-7)
    assert t["total"] == approx(3.3e-7 + 1.1e-7)
    full = Ledger()  # full 128-column tiles: 128 conversions each, 8 rounds of the 16 ADCs
    full.add("tile_mvms", 3)
    full.add("adc_conversions", 3 * 128)
    assert full.time(PROF)["array"] == approx(3 * (1e-8 + 8 * 1e-7))
    assert e["total"] == approx(288.6e-12 + 704 * 2.5e-12 + LEAK_W * t["total"])
    parallel = dataclasses.replace(PROF, parallel_tiles=3, adcs_per_tile=128)
    # one ADC per column: 10 ns + 100 ns per tile MVM, three tiles at once
    assert led.time(parallel)["array"] == approx(1.1e-7)


def test_ledger_keys_merge_copy():
    led = Ledger()
    with pytest.raises(KeyError):
        led.add("joules", 1)
    led.add("set_pulses", 3)
    other = led.copy()
    other.add("set_pulses", 2)
    assert led.counts["set_pulses"] == 3 and other.counts["set_pulses"] == 5
    led.merge(other)
    assert led.counts["set_pulses"] == 8


def test_deploy_report_prices_write_verify_with_the_profile():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    report = deploy(model, SimulatedChip("rram-180nm", seed=0))
    assert report.set_pulses > 0 and report.verify_reads > 0
    expected_s = (report.set_pulses + report.reset_pulses) * PULSE_S + report.verify_reads * VERIFY_S
    expected_J = report.set_pulses * SET_J + report.reset_pulses * RESET_J + report.verify_reads * VERIFY_J
    assert report.energy_J == pytest.approx(expected_J, rel=1e-9)
    assert report.time_s == pytest.approx(expected_s, rel=1e-9)


# ---------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------

def analog_linear(n_in: int, n_out: int) -> AnalogLinear:
    torch.manual_seed(0)
    layer = AnalogLinear.from_float(nn.Linear(n_in, n_out), SimulatedChip("rram-180nm", seed=0), "l")
    layer.program()
    calibrate(layer, dense_input(256, n_in))
    return layer


def dense_input(b: int, n: int) -> torch.Tensor:
    return torch.rand(b, n, generator=torch.Generator().manual_seed(1)) + 0.1  # no zeros


def test_counting_one_analogue_linear_in_inference():
    layer = analog_linear(64, 32)  # offset mapping: 64 rows x 32 columns on one 128x128 tile
    x = dense_input(4, 64)
    led = Ledger()
    with torch.no_grad(), counting(layer, led):
        layer(x)
    c = led.counts
    # every one of the 4 x 64 = 256 inputs is non-zero and drives its row in 1 column tile
    assert c["dac_conversions"] == 256 * 1
    # each driven row reads 32 weight cells + 1 reference column per column tile
    assert c["cell_reads"] == 256 * (32 + 1)
    # 4 vectors x 1 row tile x 32 outputs (reference subtracted in the analogue domain)
    assert c["adc_conversions"] == 4 * 1 * 32
    # 4 vectors x 1 row tile x 1 column tile
    assert c["tile_mvms"] == 4
    assert c["digital_macs"] == 0 and c["sram_read_bits"] == 0


def test_counting_the_transposed_read_for_input_gradients():
    layer = analog_linear(64, 32)
    x = dense_input(4, 64).requires_grad_(True)
    led = Ledger()
    with counting(layer, led):
        layer(x).sum().backward()
    c = led.counts
    # forward as above, plus the transposed read: 4 x 32 outputs driven into 1 row tile,
    # 4 x 2048 cells read, 4 x 1 column tile x 64 inputs digitised, 4 more tile MVMs
    assert c["dac_conversions"] == 256 + 4 * 32 * 1
    assert c["cell_reads"] == 256 * 33 + 4 * 64 * 32
    assert c["adc_conversions"] == 128 + 4 * 1 * 64
    assert c["tile_mvms"] == 4 + 4
    assert c["digital_macs"] == 0  # the analogue weight is frozen


def test_counting_is_event_driven_on_sparse_binary_inputs():
    layer = analog_linear(64, 200)  # 200 columns: 2 column tiles
    assert layer.core.handle.col_tiles == 2
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 64, generator=gen) < 0.2).float()
    nnz = int(x.sum())
    assert 0 < nnz < x.numel()
    led = Ledger()
    with torch.no_grad(), counting(layer, led):
        layer(x)
    assert led.counts["dac_conversions"] == nnz * 2
    assert led.counts["cell_reads"] == nnz * (200 + 2)
    assert led.counts["adc_conversions"] == 5 * 1 * 200  # every column is still read out
    assert led.counts["tile_mvms"] == 5 * 1 * 2


def test_counting_an_adapter_counts_its_digital_macs():
    r, n_in, n_out, b = 3, 64, 32, 4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n_in, n_out))
    deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=dense_input(256, n_in))
    add_adapter(model, "a", r=r, bits=8)
    x = dense_input(b, n_in)
    led = Ledger()
    with torch.no_grad(), counting(model, led):
        model(x)
    per_vector = r * (n_in + n_out)  # A: r x in, B: out x r
    assert led.counts["digital_macs"] == b * per_vector
    assert led.counts["sram_read_bits"] == b * per_vector * 8
    assert led.counts["dac_conversions"] == b * n_in  # the base layer is still counted on the chip
    # with gradients on, the digital work counts three times (forward, dL/dx, dL/dW)
    train = Ledger()
    with counting(model, train):
        model(x).sum().backward()
    assert train.counts["digital_macs"] == 3 * b * per_vector


def test_counting_as_digital_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=dense_input(256, 64))
    x = dense_input(4, 64)
    led = Ledger()
    with torch.no_grad(), counting(model, led, as_digital=True):
        model(x)
    assert led.counts["digital_macs"] == 4 * (64 * 32 + 32 * 10)
    assert led.counts["sram_read_bits"] == 4 * (64 * 32 + 32 * 10) * 8
    assert led.counts["dac_conversions"] == led.counts["adc_conversions"] == led.counts["tile_mvms"] == 0


def test_counting_as_digital_convolution_counts_per_output_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3))
    deploy(model, SimulatedChip("ideal"))
    led = Ledger()
    with torch.no_grad(), counting(model, led, as_digital=True):
        model(torch.randn(2, 2, 8))
    # 2 samples x 6 output positions x (3 x 2 x 3) weights
    assert led.counts["digital_macs"] == 2 * 6 * 18


def test_counting_digital_rows_and_detaching():
    layer = analog_linear(16, 8)
    head = DigitalRows(layer, 16, 3)
    x = dense_input(4, 16)
    led = Ledger()
    with torch.no_grad(), counting(head, led):
        head(x)
    assert led.counts["digital_macs"] == 4 * 16 * 3
    before = led.copy().counts
    with torch.no_grad():
        head(x)  # outside the block nothing is counted
    assert led.counts == before
    assert layer.ledger is None


# ---------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------

def test_load_profile_by_path(edited_copy):
    path = edited_copy(PROFILE_DIR / "cmos-180nm.json", lambda c: None)
    assert load_profile(str(path)).to_dict() == PROF.to_dict()


def test_load_profile_rejects_a_missing_constant(edited_copy):
    path = edited_copy(PROFILE_DIR / "cmos-180nm.json", lambda c: c.pop("adc_fom_J_per_step"))
    with pytest.raises(RmloraError, match="adc_fom_J_per_step"):
        load_profile(str(path))


def test_load_profile_rejects_a_negative_constant(edited_copy):
    def edit(c):
        c["set_pulse_J"]["value"] = -5e-11
    with pytest.raises(RmloraError, match="set_pulse_J"):
        load_profile(str(edited_copy(PROFILE_DIR / "cmos-180nm.json", edit)))


def test_load_profile_rejects_a_non_numeric_or_sourceless_constant(edited_copy):
    def text(c):
        c["clock_hz"]["value"] = "fast"
    with pytest.raises(RmloraError, match="clock_hz"):
        load_profile(str(edited_copy(PROFILE_DIR / "cmos-180nm.json", text)))

    def nosource(c):
        c["clock_hz"]["source"] = ""
    with pytest.raises(RmloraError, match="clock_hz"):
        load_profile(str(edited_copy(PROFILE_DIR / "cmos-180nm.json", nosource)))
    with pytest.raises(RmloraError):
        load_profile("no-such-profile")


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

def test_ratios_arithmetic():
    base = CostFigures(10.0, 1.0, 6.0, 2.0, 4.0, 0.5)
    lora = CostFigures(2.0, 1.0, 3.0, 0.5, 8.0, 0.1)
    assert ratios(base, lora) == {"training_cost": 5.0, "deployment_overhead": 2.0,
                                  "deployment_time": 4.0, "inference_energy": 0.5}
    free = CostFigures(2.0, 1.0, 0.0, 0.0, 8.0, 0.1)
    r = ratios(base, free)
    assert r["deployment_overhead"] == math.inf and r["deployment_time"] == math.inf


def test_cost_figures_divide_inference_by_samples():
    train, dep, inf = Ledger(), Ledger(), Ledger()
    train.add("digital_macs", 1000)
    dep.add("set_pulses", 10)
    inf.add("digital_macs", 4000)
    f = cost_figures(train, dep, inf, samples=4, profile=PROF)
    t_mac = 1000 / 6.4e9
    assert f.training_cost_J == approx(4.8e-9 + LEAK_W * t_mac)
    assert f.deployment_overhead_J == approx(500e-12 + LEAK_W * 1e-6)
    assert f.deployment_time_s == approx(1e-6)
    assert f.inference_energy_J == approx(4.8e-9 + LEAK_W * t_mac)  # 4000 MACs over 4 samples
    assert f.inference_time_s == approx(t_mac)
    assert set(f.to_dict()) == {"training_cost_J", "training_time_s", "deployment_overhead_J",
                                "deployment_time_s", "inference_energy_J", "inference_time_s"}
