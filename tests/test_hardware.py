"""Behaviour of tiles, converters, analogue layers and deployment."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rmlora.device import load_preset
from rmlora.errors import RmloraError
from rmlora.hardware import (AnalogConv1d, AnalogConv2d, AnalogLinear, SimulatedChip, analog_layers, calibrate,
                             deploy, redeploy)
from rmlora.hardware.converters import dac, levels, quantise

RRAM = load_preset("rram-180nm")
QUIET = RRAM.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0, relax_sigma_floor_uS=0.0,
                     relax_sigma_iter_uS=0.0, stuck_low_fraction=0.0, stuck_high_fraction=0.0)


class SmallNet(nn.Module):
    """Conv1d -> Conv2d -> Linear, a few hundred weights."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 5, 3, padding=1, stride=2)
        self.fc = nn.Linear(5 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = torch.relu(self.c1(x)).view(b, 4, 8, 8)
        h = torch.relu(self.c2(h))
        return self.fc(h.flatten(1))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------
# deployment on the ideal preset is exact
# ---------------------------------------------------------------------------

def test_ideal_deploy_reproduces_float_outputs():
    torch.manual_seed(0)
    model = SmallNet()
    ref = copy.deepcopy(model)
    chip = SimulatedChip("ideal", seed=0)
    report = deploy(model, chip)
    kinds = {type(m) for _, m in analog_layers(model)}
    assert kinds == {AnalogConv1d, AnalogConv2d, AnalogLinear}
    n_weights = sum(m.weight.numel() for m in ref.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)))
    assert report.cells == n_weights  # offset mapping: one cell per weight
    assert report.failed_cells == 0
    x = torch.randn(3, 3, 64)
    with torch.no_grad():
        y, y_ref = model(x), ref(x)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) < 1e-5
    # the float weights stay, frozen
    for _, m in analog_layers(model):
        assert not m.weight.requires_grad


def test_rram_deploy_is_close_but_not_exact():
    model = mlp(0)
    ref = copy.deepcopy(model)
    report = deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=torch.randn(512, 64))
    x = torch.randn(64, 64)
    with torch.no_grad():
        err = rel_err(model(x), ref(x))
    assert 0 < err < 0.5, err
    s = report.summary()
    assert s["mean_pulses_per_cell"] > 0 and s["programming_energy_J"] > 0 and s["programming_time_s"] > 0


# ---------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mapping", ["offset", "differential"])
def test_tiling_of_a_300x200_linear(mapping):
    p = QUIET.replace(mapping=mapping)
    chip = SimulatedChip(p, tile=(128, 128), seed=0)
    layer = AnalogLinear.from_float(nn.Linear(300, 200), chip, "big")
    h = layer.core.handle
    rows, cols = 300, 200 * p.cells_per_weight
    expected = math.ceil(300 / 128) * math.ceil(200 * p.cells_per_weight / 128)
    assert (h.rows, h.cols) == (rows, cols)
    assert len(h.placements) == expected == chip.tiles_used
    assert len({pl.tile for pl in h.placements}) == expected
    cover = torch.zeros(rows, cols, dtype=torch.int32)
    for pl in h.placements:
        assert 1 <= pl.rows <= 128 and 1 <= pl.cols <= 128
        cover[pl.row0:pl.row0 + pl.rows, pl.col0:pl.col0 + pl.cols] += 1
    assert int(cover.min()) == 1 and int(cover.max()) == 1
    assert int(sum(pl.rows * pl.cols for pl in h.placements)) == rows * cols


@pytest.mark.parametrize("mapping", ["offset", "differential"])
def test_without_converters_the_layer_is_a_direct_matmul(mapping):
    chip = SimulatedChip(QUIET.replace(mapping=mapping), seed=0, dac_bits=None, adc_bits=None, read_noise=False)
    torch.manual_seed(1)
    lin = AnalogLinear.from_float(nn.Linear(300, 140), chip, "l")  # 3 row tiles, 2 or 3 column tiles
    lin.program()
    x = torch.randn(8, 300)
    with torch.no_grad():
        y = lin(x)
    w_eff = lin.core.effective_weight()
    assert torch.allclose(y, x @ w_eff.t() + lin.bias, rtol=1e-5, atol=1e-5)


def test_tiled_adc_error_is_bounded_per_tile():
    """With an ADC, each (row tile, column tile) block is digitised separately against its own frozen
    full scale; calibrated at the 100th percentile on the same inputs nothing clips and the output
    error is at most the sum of half steps of the row tiles."""
    bits = 6
    chip = SimulatedChip(QUIET, seed=0, dac_bits=None, adc_bits=bits, read_noise=False, calibration_percentile=100)
    torch.manual_seed(2)
    lin = AnalogLinear.from_float(nn.Linear(300, 140, bias=False), chip, "l")
    lin.program()
    x = torch.randn(8, 300)
    calibrate(lin, x)
    with torch.no_grad():
        y = lin(x)
    assert lin.core.clipped == [0, 0]
    c, scale = lin.core.signed, lin.core.scale
    bound = torch.zeros(8, 140)
    for i, r0 in enumerate(range(0, 300, 128)):
        part = x[:, r0:r0 + 128] @ c[r0:r0 + 128]  # µS·V partial currents of one row tile
        for k, c0 in enumerate(range(0, 140, 128)):
            fs = lin.core.ranges.adc[i, k]
            assert float(fs) == pytest.approx(float(part[:, c0:c0 + 128].abs().max()), rel=1e-6)
            bound[:, c0:c0 + 128] += fs / levels(bits) / 2
    exact = x @ lin.core.effective_weight().t()
    err = (y - exact).abs()
    assert bool((err <= bound / scale + 1e-5).all())
    assert float(err.max()) > 0  # the ADC does quantise


# ---------------------------------------------------------------------------
# converters
# ---------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(bits=st.integers(2, 10), fs=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_quantise_codes_range_and_error(bits, fs, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(2000, generator=gen) * 2 - 1) * 1.5 * fs  # half of it outside ±fs
    q = quantise(x, fs, bits)
    n = 2 ** (bits - 1) - 1
    assert levels(bits) == n
    step = fs / n
    assert float(q.abs().max()) <= fs * (1 + 1e-5)
    codes = torch.round(q / step)
    assert torch.allclose(q, codes * step, atol=step * 1e-3)
    assert float(codes.min()) >= -n and float(codes.max()) <= n
    assert q.unique().numel() <= 2 * n + 1
    inside = x.abs() <= fs
    assert bool(((q - x)[inside].abs() <= step / 2 * (1 + 1e-4)).all())
    # outside the range the converter clips to the end codes
    assert torch.allclose(q[x > fs], torch.tensor(fs, dtype=q.dtype))
    assert torch.allclose(q[x < -fs], torch.tensor(-fs, dtype=q.dtype))


def test_quantise_without_bits_is_identity_and_needs_two_bits():
    x = torch.randn(10)
    assert torch.equal(quantise(x, 1.0, None), x)
    assert dac(x, None, torch.ones(())) == (x, 0)
    with pytest.raises(RmloraError):
        levels(1)
    with pytest.raises(RmloraError, match="integer"):
        levels(7.5)


@settings(deadline=None, max_examples=25)
@given(bits=st.integers(2, 10), seed=st.integers(0, 2**31 - 1), mag=st.floats(1e-3, 1e3))
def test_dac_clips_at_its_frozen_full_scale_and_counts_the_clips(bits, seed, mag):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 33, generator=gen) * mag
    fs = torch.tensor(float(x.abs().quantile(0.9)))
    q, clipped = dac(x, bits, fs)
    step = float(fs) / levels(bits)
    assert float(q.abs().max()) <= float(fs) * (1 + 1e-5)
    inside = x.abs() <= fs
    assert float((q - x)[inside].abs().max()) <= step / 2 * (1 + 1e-4)
    assert clipped == int((x.abs() > fs + step / 2).sum())
    # the eager path (other devices and dtypes) agrees with the compiled one
    q64, c64 = dac(x.double(), bits, fs)
    assert c64 == clipped and torch.allclose(q64.float(), q, atol=step * 1e-3)
    # one full scale per vector (noise management): every row uses its own
    rows = x.abs().amax(dim=1, keepdim=True)
    qr, cr = dac(x, bits, rows)
    assert cr == 0 and torch.allclose(qr.abs().amax(dim=1), rows.squeeze(1), rtol=1e-6)


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

def test_running_out_of_tiles_raises():
    chip = SimulatedChip("ideal", tile=(128, 128), n_tiles=2)
    AnalogLinear.from_float(nn.Linear(128, 128), chip, "a")  # one tile
    with pytest.raises(RmloraError, match="tiles"):
        AnalogLinear.from_float(nn.Linear(200, 100), chip, "b")  # two tiles, one free
    assert chip.tiles_used == 1
    with pytest.raises(RmloraError, match="tiles"):
        deploy(mlp(0), SimulatedChip("ideal", tile=(32, 32), n_tiles=4))


def test_running_out_of_tiles_leaves_the_model_usable():
    """The refusal comes after the first layer fit: the model must not be left half on the chip."""
    model = mlp(0)
    ref = copy.deepcopy(model)
    chip = SimulatedChip("ideal", tile=(128, 128), n_tiles=2)  # layers need 1 + 1 + 1 tiles
    with pytest.raises(RmloraError, match="tiles"):
        deploy(model, chip)
    assert [type(m) for m in model] == [type(m) for m in ref]
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_grouped_convolution_without_a_tile_mapping_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(64, 64, 7, groups=2))  # a group's block: 1568 rows
    chip = SimulatedChip("ideal")
    with pytest.raises(RmloraError, match="group"):
        deploy(model, chip)
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.Conv2d
    assert chip.tiles_used == 0


def test_nan_weights_refused_and_model_unchanged():
    model = mlp(0)
    with torch.no_grad():
        model[2].weight[3, 5] = float("nan")
    before = [type(m) for m in model]
    chip = SimulatedChip("ideal")
    with pytest.raises(RmloraError, match="NaN"):
        deploy(model, chip)
    assert [type(m) for m in model] == before
    assert analog_layers(model) == []
    assert chip.tiles_used == 0


def test_redeploy_refuses_nan_weights():
    model = mlp(0)
    chip = SimulatedChip("ideal")
    deploy(model, chip)
    state = {k: v.clone() for k, v in chip.state_dict().items()}
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(RmloraError):
        redeploy(model, chip)
    after = chip.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


# ---------------------------------------------------------------------------
# incremental reprogramming
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["ideal", "rram-180nm"])
def test_redeploy_programs_only_moved_cells(preset):
    model = mlp(0)
    chip = SimulatedChip(preset, seed=0)
    first = deploy(model, chip)
    assert first.programmed_cells == first.cells
    again = redeploy(model, chip)
    assert again.programmed_cells == 0
    assert again.set_pulses + again.reset_pulses + again.verify_reads == 0
    assert again.energy_J == 0
    w = model[2].weight
    row = w[7].abs()
    j = int(row.argmin())  # not the row maximum: the scale of the output stays
    with torch.no_grad():
        w[7, j] += 0.5 * float(row.max() - row[j])
    third = redeploy(model, chip)
    assert third.programmed_cells == 1  # offset mapping: one cell per weight
    assert third.cells == first.cells


def test_redeploy_reaches_the_new_weights_on_the_ideal_preset():
    model = mlp(0)
    chip = SimulatedChip("ideal")
    deploy(model, chip)
    with torch.no_grad():
        model[0].weight.mul_(0.5)
    redeploy(model, chip)
    x = torch.randn(16, 64)
    ref = mlp(0)
    with torch.no_grad():
        ref[0].weight.mul_(0.5)
        assert rel_err(model(x), ref(x)) < 1e-5


# ---------------------------------------------------------------------------
# gradients through analogue layers
# ---------------------------------------------------------------------------

def test_input_gradient_through_analogue_linear_is_w_eff_transposed():
    chip = SimulatedChip("ideal")
    torch.manual_seed(3)
    lin = AnalogLinear.from_float(nn.Linear(20, 7), chip, "l")
    lin.program()
    x = torch.randn(5, 20, requires_grad=True)
    gy = torch.randn(5, 7)
    lin(x).backward(gy)
    assert x.grad is not None
    w_eff = lin.core.effective_weight()  # (out, in)
    assert torch.allclose(x.grad, gy @ w_eff, atol=1e-5)
    assert lin.weight.grad is None  # analogue weights are frozen


def test_input_gradient_through_conv_layers():
    torch.manual_seed(4)
    model = SmallNet()
    ref = copy.deepcopy(model)
    deploy(model, SimulatedChip("ideal"))
    x = torch.randn(2, 3, 64, requires_grad=True)
    model(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref(x_ref).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)

    noisy = copy.deepcopy(ref)
    deploy(noisy, SimulatedChip("rram-180nm", seed=0), calibrate=torch.randn(64, 3, 64))
    x2 = x.detach().clone().requires_grad_(True)
    noisy(x2).square().sum().backward()
    assert x2.grad is not None and bool(torch.isfinite(x2.grad).all()) and float(x2.grad.abs().sum()) > 0


def test_weight_gradient_when_the_weight_is_trained():
    chip = SimulatedChip("ideal")
    torch.manual_seed(5)
    lin = AnalogLinear.from_float(nn.Linear(6, 3), chip, "l")
    lin.program()
    lin.weight.requires_grad_(True)
    x = torch.randn(4, 6)
    gy = torch.randn(4, 3)
    lin(x).backward(gy)
    assert torch.allclose(lin.weight.grad, gy.t() @ x, atol=1e-6)


def test_moving_a_deployed_model_moves_its_cell_state():
    # .to()/.double() must carry the cached conductances along with the parameters
    model = nn.Sequential(nn.Linear(8, 4))
    x = torch.randn(2, 8)
    ref = model(x).detach().double()
    deploy(model, SimulatedChip("ideal"))
    model.double()
    y = model(x.double())
    assert y.dtype == torch.float64
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_the_backward_pass_is_its_own_noisy_transposed_read():
    """dL/dx comes from reading the arrays again, transposed, with fresh read noise per vector:
    repeated backward passes differ, and their mean is dL/dy·W_eff (no converters here)."""
    chip = SimulatedChip(RRAM.replace(read_noise_abs_uS=2.0, read_noise_rel=0.0), seed=0, dac_bits=None,
                         adc_bits=None)
    torch.manual_seed(0)
    lin = AnalogLinear.from_float(nn.Linear(40, 30, bias=False), chip, "l")
    lin.program()
    gy = torch.randn(1, 30).expand(4000, 30).contiguous()
    x = torch.randn(4000, 40, requires_grad=True)
    lin(x).backward(gy)
    grads = x.grad
    assert not torch.allclose(grads[0], grads[1])
    exact = gy[:1] @ lin.core.effective_weight()
    sigma = 2.0 * float((gy[0] / lin.core.scale).norm())  # σ of one transposed MVM output
    assert float((grads.mean(0) - exact[0]).abs().max()) < 5 * sigma / 4000 ** 0.5
    assert float(grads.std(0).mean()) == pytest.approx(sigma, rel=0.05)


# ---------------------------------------------------------------------------
# converters a chip can have: frozen ranges, per-vector noise
# ---------------------------------------------------------------------------

def _layer(preset=RRAM, *, seed=0, n_in=300, n_out=200, **chip_kw):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    layer = AnalogLinear.from_float(lin, SimulatedChip(preset, seed=seed, **chip_kw), "l")
    layer.program()
    return lin, layer


@pytest.mark.parametrize("mode", ["calibrated", "per-vector"])
def test_a_sample_does_not_depend_on_its_batch(mode):
    """Bit for bit without read noise: a neighbour with 20x larger inputs changes nothing."""
    _, layer = _layer(read_noise=False, range_mode=mode)
    x = torch.randn(600, 300)
    calibrate(layer, x[:512])
    with torch.no_grad():
        alone = layer(x[512:516])
        mixed = layer(torch.cat([x[512:516], 20 * x[516:520]]))[:4]
        one = torch.cat([layer(x[512 + i:513 + i]) for i in range(4)])
    assert torch.equal(alone, mixed) and torch.equal(alone, one)


def test_with_read_noise_a_sample_keeps_its_distribution_whatever_its_batch():
    _, layer = _layer(n_in=140, n_out=40)
    x = torch.randn(512, 140)
    calibrate(layer, x)
    with torch.no_grad():
        alone = torch.stack([layer(x[:1])[0] for _ in range(300)])
        mixed = torch.stack([layer(torch.cat([x[:1], 20 * x[1:3]]))[0] for _ in range(300)])
    se = (alone.var(0) / 300 + mixed.var(0) / 300).sqrt()
    assert float(((alone.mean(0) - mixed.mean(0)) / se).abs().max()) < 5
    assert float((alone.std(0) / mixed.std(0) - 1).abs().max()) < 0.35  # 300 draws: sd of the ratio ~ 8 %


def test_calibrated_ranges_are_frozen_saved_and_restored():
    _, layer = _layer(read_noise=False)
    x = torch.randn(512, 300)
    r = calibrate(layer, x)[""]  # by module name: the layer itself
    assert r is layer.core.ranges
    chip = layer.core.chip
    sd = chip.state_dict()
    assert {"l/range.dac", "l/range.adc", "l/range.adc_t"} <= set(sd)
    assert r.adc.shape == (3, 2) and r.adc_t.shape == (2, 3) and float(r.dac) > 0
    # the DAC full scale is the 99.9th percentile of |x| over the calibration inputs
    assert float(r.dac) == pytest.approx(float(x.abs().flatten().kthvalue(round(0.999 * x.numel())).values), rel=1e-6)
    with torch.no_grad():
        y = layer(x[:8])
    other = SimulatedChip(RRAM, seed=0, read_noise=False)
    torch.manual_seed(0)
    twin = AnalogLinear.from_float(nn.Linear(300, 200), other, "l")
    other.load_state_dict(sd)
    twin.core.scale = layer.core.scale
    twin.core.refresh()
    with torch.no_grad():
        assert torch.equal(twin(x[:8]) - twin.bias, y - layer.bias)


def test_an_uncalibrated_chip_refuses_to_compute():
    _, layer = _layer()
    with pytest.raises(RmloraError, match="not calibrated"):
        layer(torch.randn(2, 300))


@pytest.mark.parametrize("feed", [torch.zeros(8, 300), torch.zeros(0, 300)])
def test_calibration_on_zero_or_empty_inputs_is_refused(feed):
    _, layer = _layer()
    with pytest.raises(RmloraError, match="calibration"):
        calibrate(layer, feed)
    assert layer.core.ranges is None


def test_unknown_range_mode_and_bad_percentile_are_refused():
    with pytest.raises(RmloraError, match="range mode"):
        SimulatedChip(RRAM, range_mode="per-call")
    with pytest.raises(RmloraError, match="percentile"):
        SimulatedChip(RRAM, calibration_percentile=120)


def test_clipping_is_counted_in_the_ledger():
    from rmlora.costs import Ledger, counting

    _, layer = _layer(read_noise=False)
    x = torch.randn(512, 300)
    calibrate(layer, x)
    led = Ledger()
    with torch.no_grad(), counting(layer, led):
        layer(x[:4])
        small = led.counts["dac_clipped"]
        layer(10 * x[:4])
    assert small < 0.01 * 4 * 300
    assert led.counts["dac_clipped"] - small > 0.5 * 4 * 300
    assert led.counts["adc_clipped"] > 0


def test_duplicates_in_a_batch_get_independent_read_noise():
    _, layer = _layer()
    x = torch.randn(512, 300)
    calibrate(layer, x)
    with torch.no_grad():
        y = layer(x[:1].expand(64, 300).contiguous())
        y2 = layer(x[:1].expand(64, 300).contiguous())
    assert not torch.equal(y[0], y[1]) and not torch.equal(y, y2)
    # correlation between two duplicates' deviations is that of independent draws
    d = y - y.mean(0)
    r = torch.corrcoef(d[:2])[0, 1]
    assert abs(float(r)) < 0.3


@pytest.mark.parametrize("rel", [0.0, 0.004])
@pytest.mark.parametrize("mapping", ["offset", "differential"])
def test_output_noise_of_one_mvm_matches_the_cell_model(rel, mapping):
    """Without converters, the outputs of one input vector spread with variance
    Σᵢ xᵢ²σᵢⱼ² (plus the reference column's Σᵢ xᵢ²σ_ref,ᵢ² with the offset mapping)."""
    p = RRAM.replace(read_noise_abs_uS=0.3, read_noise_rel=rel, mapping=mapping)
    _, layer = _layer(p, n_in=200, n_out=60, dac_bits=None, adc_bits=None)
    core = layer.core
    x = torch.randn(200)
    n = 4000
    with torch.no_grad():
        y = layer(x.expand(n, 200).contiguous())
    g = core.chip.conductance(core.handle)
    s = core.chip.read_sigma(core.handle)
    if mapping == "differential":
        var = (x ** 2) @ (s[:, 0::2] ** 2 + s[:, 1::2] ** 2)
        shared = torch.zeros_like(var)
    else:
        _, s_ref = core.chip.reference(core.handle)
        var = (x ** 2) @ (s ** 2)
        shared = ((x ** 2) @ (s_ref[:, :1] ** 2)).expand_as(var)
        var = var + shared
    shared = shared / var  # share of each column's variance drawn once for the whole tile
    var = var / core.scale ** 2
    ratio = y.var(0) / var
    # the sample variance of n draws has relative sd sqrt(2/(n-1)) = 2.2 %; averaged over the
    # columns it shrinks by sqrt(cols), except for the reference column's draw that all share
    f = float(shared.mean())
    sd_mean = (2 / (n - 1)) ** 0.5 * (f ** 2 + (1 - f ** 2) / var.numel()) ** 0.5
    assert float(ratio.mean()) == pytest.approx(1.0, abs=5 * sd_mean)
    assert float((ratio - 1).abs().max()) < 5 * (2 / (n - 1)) ** 0.5
    mean_err = (y.mean(0) - (x @ core.signed) / core.scale - layer.bias) / (var / n).sqrt()
    assert float(mean_err.abs().max()) < 5
    del g


def test_reference_columns_are_real_cells_with_programming_error():
    _, layer = _layer()
    g_ref, s_ref = layer.core.chip.reference(layer.core.handle)
    assert g_ref.shape == (300, 2)
    err = g_ref - RRAM.reference_uS
    assert 0.2 < float(err.std()) < 3 and float(s_ref.min()) > 0
    # the signed conductance is measured against the tile's own reference cells
    g = layer.core.chip.conductance(layer.core.handle)
    assert torch.allclose(layer.core.signed[:, 0], g[:, 0] - g_ref[:, 0])
    assert torch.allclose(layer.core.signed[:, 199], g[:, 199] - g_ref[:, 1])


def test_backward_converters_keep_gradients_close_to_exact():
    _, layer = _layer(read_noise=False)
    x = torch.randn(512, 300)
    calibrate(layer, x)
    xg = x[:64].clone().requires_grad_(True)
    gy = torch.randn(64, 200)
    layer(xg).backward(gy)
    exact = gy @ layer.core.effective_weight()
    assert rel_err(xg.grad, exact) < 0.05


# ---------------------------------------------------------------------------
# bit-serial inputs
# ---------------------------------------------------------------------------

def test_bit_serial_without_an_adc_equals_the_multibit_dac():
    """Shift-and-add of the two's-complement planes rebuilds the DAC codes exactly."""
    x = torch.randn(64, 300)
    outs = []
    for serial in (False, True):
        _, layer = _layer(read_noise=False, adc_bits=None, bit_serial=serial)
        calibrate(layer, x)
        with torch.no_grad():
            outs.append(layer(x[:16]))
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_bit_serial_counts_one_pass_per_plane_and_drives_only_set_bits():
    from rmlora.costs import Ledger, counting

    x = torch.randn(64, 300)
    _, layer = _layer(read_noise=False, bit_serial=True)
    calibrate(layer, x)
    led = Ledger()
    with torch.no_grad(), counting(layer, led):
        y = layer(x[:4])
    core = layer.core
    planes, w = core.bit_planes(torch.clamp(x[:4], -float(core.ranges.dac), float(core.ranges.dac)),
                                core.ranges.dac)
    assert w.numel() == 8 and float(w[-1]) < 0
    h = core.handle
    assert led.counts["adc_conversions"] == 8 * 4 * h.row_tiles * 200
    assert led.counts["tile_mvms"] == 8 * 4 * h.row_tiles * h.col_tiles
    # 1-bit row drives, priced as such (row_drive_J), not as multi-bit DAC conversions
    assert led.counts["row_drives"] == core.drives[0] * h.col_tiles < 8 * 4 * 300 * h.col_tiles
    assert led.counts["dac_conversions"] == 0
    # an 8-bit ADC per plane: close to the exact product
    exact = x[:4] @ core.effective_weight().t() + layer.bias
    assert rel_err(y, exact) < 0.1


def test_bit_serial_needs_an_integer_dac():
    with pytest.raises(RmloraError, match="bit-serial"):
        SimulatedChip(RRAM, dac_bits=None, bit_serial=True)
    from rmlora.config import ChipConfig
    with pytest.raises(RmloraError, match="bit_serial"):
        ChipConfig(dac_bits=None, bit_serial=True)
