"""Grouped and depthwise convolutions on the arrays: the packed tile mapping, its reads and its counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmlora.costs import Ledger, counting
from rmlora.device import load_preset
from rmlora.errors import RmloraError
from rmlora.hardware import AnalogGroupedConv2d, SimulatedChip, calibrate, deploy, redeploy

RRAM = load_preset("rram-180nm")  # offset mapping: one cell per weight and a reference column per tile
DIFF = RRAM.replace(mapping="differential")


def _deployed(conv: nn.Conv2d, preset=RRAM, calib: torch.Tensor | None = None, **chip_kw):
    model = nn.Sequential(copy.deepcopy(conv))
    chip = SimulatedChip(preset, seed=3, **chip_kw)
    report = deploy(model, chip, calibrate=calib)
    return model, chip, report


@pytest.mark.parametrize("cin,cout,groups,k", [(32, 32, 32, 7), (16, 32, 16, 3), (12, 6, 3, 3), (8, 8, 2, 1)])
def test_ideal_grouped_conv_reproduces_the_float_layer(cin, cout, groups, k):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, stride=1 + (k == 3), groups=groups)
    model, _, _ = _deployed(conv, "ideal")
    assert type(model[0]) is AnalogGroupedConv2d
    x = torch.randn(3, cin, 9, 9)
    with torch.no_grad():
        assert torch.allclose(model(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("preset,channels_per_tile", [(RRAM, 256), (DIFF, 128)])
def test_a_depthwise_7x7_packs_two_kernels_per_column(preset, channels_per_tile):
    """49 rows per kernel: two kernels share a column (98 of 128 rows); 128 columns of single cells
    or 64 differential pairs per tile."""
    conv = nn.Conv2d(300, 300, 7, padding=3, groups=300)
    model, chip, report = _deployed(conv, preset)
    plan = model[0].plan
    assert (plan.rows, plan.width, plan.stack) == (49, 1, 2)
    assert report.tiles == chip.tiles_used == -(-300 // channels_per_tile)
    cpw = preset.cells_per_weight
    assert report.cells == 98 * 150 * cpw  # every weight once, plus nothing but block padding
    # a 768-channel DiT-B block's depthwise convolution: 6 tiles of differential pairs
    assert AnalogGroupedConv2d.tiles_needed(nn.Conv2d(768, 768, 7, groups=768), SimulatedChip(DIFF)) == 6


def test_each_block_is_its_own_mvm_in_the_ledger():
    """One MVM, one ADC conversion per output per position; each non-zero input drives one row of
    one block; the offset mapping reads one reference cell with every cell."""
    torch.manual_seed(1)
    conv = nn.Conv2d(20, 20, 3, padding=1, groups=20)
    x = torch.randn(2, 20, 5, 5)
    model, _, _ = _deployed(conv, calib=x)
    led = Ledger()
    with torch.no_grad(), counting(model, led):
        model(x)
    vectors = 2 * 5 * 5
    cols = nn.functional.unfold(x, 3, padding=1)
    drives = int((cols != 0).sum())  # zero padding drives nothing
    assert led.counts["tile_mvms"] == vectors * 20
    assert led.counts["adc_conversions"] == vectors * 20
    assert led.counts["dac_conversions"] == drives < vectors * 20 * 9
    assert led.counts["cell_reads"] == 2 * drives


def test_depthwise_dx_is_a_flipped_forward_read_per_block_and_the_weight_gradient_is_exact():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
    x = torch.randn(4, 16, 6, 6)
    model, _, _ = _deployed(conv, RRAM.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0), calib=x)
    layer = model[0]
    layer.weight.requires_grad_(True)
    xa = x.clone().requires_grad_(True)
    led = Ledger()
    with counting(model, led):
        model(xa).square().sum().backward()
    # the weight gradient is the digital product of the exact inputs and the output gradient
    with torch.no_grad():
        y = model(x)
    ref = copy.deepcopy(conv)
    ref.weight.grad = None
    torch.nn.functional.conv2d(x, ref.weight, None, 1, 3, 1, 16).mul(2 * y).sum().backward()  # dL/dy = 2y
    assert torch.allclose(layer.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    # the input gradient goes through the programmed kernels (close to the float one, not equal)
    xr = x.clone().requires_grad_(True)
    conv(xr).square().sum().backward()
    err = float((xa.grad - xr.grad).norm() / xr.grad.norm())
    assert 0 < err < 0.5
    vectors = 4 * 36
    assert led.counts["adc_conversions"] == 2 * vectors * 16  # one per output, one per input gradient
    assert led.counts["digital_macs"] == vectors * conv.weight.numel()


def test_read_noise_of_one_block_matches_the_cell_model():
    """Without converters: output c of one vector spreads as N(x_c·G_c, Σ x²(σ² + σ_ref²)) / scale²."""
    p = RRAM.replace(read_noise_abs_uS=0.3, read_noise_rel=0.0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    model, chip, _ = _deployed(conv, p, dac_bits=None, adc_bits=None)
    layer = model[0]
    x = torch.randn(1, 8, 3, 3)
    n = 3000
    with torch.no_grad():
        y = model(x.expand(n, -1, -1, -1).contiguous())[:, :, 1, 1]  # the centre: all 9 taps inside
    patch = x[0, :, :, :].reshape(8, 9)
    s = chip.read_sigma(layer.core.handle)[0, 0]
    _, s_ref = chip.reference(layer.core.handle)
    var = (patch ** 2).sum(1) * (s ** 2 + s_ref[0, 0] ** 2) * layer.core._gain() ** 2
    ratio = y.var(0) / var
    assert float((ratio - 1).abs().max()) < 5 * (2 / (n - 1)) ** 0.5


def test_per_block_ranges_are_calibrated_frozen_and_a_sample_ignores_its_batch():
    torch.manual_seed(4)
    conv = nn.Conv2d(24, 24, 5, padding=2, groups=24)
    x = torch.randn(16, 24, 6, 6)
    model, chip, _ = _deployed(conv, RRAM.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0))
    r = calibrate(model, x)["0"]
    assert r.adc.shape == (1, 24) and r.adc_t.shape == (1, 24)
    with torch.no_grad():
        alone = model(x[:2])
        mixed = model(torch.cat([x[:2], 30 * x[2:4]]))[:2]
    assert torch.equal(alone, mixed)
    assert "0/range.adc" in chip.state_dict()


def test_redeploy_moves_only_the_changed_kernels():
    torch.manual_seed(5)
    conv = nn.Conv2d(32, 32, 7, padding=3, groups=32)
    model, chip, report = _deployed(conv, RRAM)
    layer = model[0]
    with torch.no_grad():
        layer.weight[3] += 0.05  # one channel's kernel
    again = redeploy(model, chip)
    assert 0 < again.programmed_cells <= 49
    assert report.programmed_cells == report.cells


def test_a_group_block_larger_than_a_tile_has_no_packed_mapping():
    with pytest.raises(RmloraError, match="does not fit a tile"):
        deploy(nn.Sequential(nn.Conv2d(8, 8, 7, groups=2)), SimulatedChip(RRAM))  # 4·49 = 196 rows


@pytest.mark.parametrize("preset", [RRAM, DIFF])
def test_the_depthwise_convolution_read_equals_the_im2col_read(preset):
    """The convolution form computes the same block MVMs as im2col (read noise off): the same
    output up to float rounding, the same counts."""
    torch.manual_seed(6)
    conv = nn.Conv2d(40, 40, 7, padding=3, groups=40)
    x = torch.randn(3, 40, 8, 8)
    model, _, _ = _deployed(conv, preset.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0), calib=x)
    layer = model[0]
    assert layer.core.depthwise_kernel == 7
    leds = [Ledger(), Ledger()]
    outs = []
    for led in leds:
        with torch.no_grad(), counting(model, led):
            outs.append(model(x))
        layer.core.depthwise_kernel = None  # the second time: im2col
    lsb = float(layer.core.ranges.adc.max()) / 127 * float(layer.core._gain().max())
    assert float((outs[0] - outs[1]).abs().max()) <= 1.01 * lsb
    assert leds[0].counts == leds[1].counts
