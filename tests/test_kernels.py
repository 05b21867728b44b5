"""The compiled CPU kernels: their random numbers, their independence from the
thread count, and their agreement with the eager torch paths used on other
devices (float64 here stands in for CUDA: it takes the same torch path)."""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from rmlora.device import kernels, load_preset, physics
from rmlora.errors import RmloraError
from rmlora.hardware import AnalogLinear, SimulatedChip, calibrate
from rmlora.hardware.converters import adc_sum, dac, levels

RRAM = load_preset("rram-180nm")


@pytest.fixture
def threads():
    """Set torch's (and so the kernels') thread count inside a test, restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _noise(n: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    return physics.read(torch.zeros(n), torch.ones(n)).double().numpy()


def test_read_noise_is_standard_normal():
    x = _noise(400_000, 0)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(x)) < 0.05
    tail = (np.abs(x) > 3).mean()
    assert abs(tail - 2 * stats.norm.sf(3)) < 5e-4
    assert np.abs(x).max() > 4  # the tails are there


def test_the_two_draws_of_a_pair_are_independent():
    # within a block of kernels.BLOCK cells, cell k and cell k + BLOCK/2 share one Box-Muller pair
    x = _noise(40 * kernels.BLOCK, 1).reshape(40, 2, kernels.BLOCK // 2)
    a, b = x[:, 0].ravel(), x[:, 1].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    assert abs(np.corrcoef(a ** 2, b ** 2)[0, 1]) < 0.01  # they do not share a radius
    assert stats.kstest(a, "norm").pvalue > 1e-3 and stats.kstest(b, "norm").pvalue > 1e-3


def test_read_is_fresh_each_call_and_follows_torch_manual_seed():
    mean, sigma = torch.full((300, 7), 50.0), torch.full((300, 7), 0.5)
    torch.manual_seed(3)
    a, b = physics.read(mean, sigma), physics.read(mean, sigma)
    torch.manual_seed(3)
    assert torch.equal(physics.read(mean, sigma), a)
    assert not torch.equal(a, b)
    assert abs(float((a - mean).std()) - 0.5) < 0.03
    assert torch.equal(physics.read(mean, torch.zeros_like(sigma)), mean)


def test_results_do_not_depend_on_the_thread_count(threads):
    gen_args = torch.Generator().manual_seed(0)
    g0, d2d, stuck = physics.new_cells(50_000, RRAM, gen_args)
    target = RRAM.g_min_uS + (RRAM.g_max_uS - RRAM.g_min_uS) * torch.rand(50_000, generator=gen_args)
    mean, sigma = torch.full((3000, 50), 40.0), torch.full((3000, 50), 0.3)
    out = {}
    for n in (1, 2):
        threads(n)
        res = physics.program(g0, target, d2d, stuck, RRAM, torch.Generator().manual_seed(5))
        r = physics.read(mean, sigma, torch.Generator().manual_seed(6))
        x = torch.randn(64, 300, generator=torch.Generator().manual_seed(7))
        part = torch.randn(3, 64, 300, generator=torch.Generator().manual_seed(8))
        out[n] = (res.g, res.pulses, res.verify_reads, res.converged, r, dac(x, 6, torch.tensor(2.0))[0],
                  adc_sum(part, 128, 8, torch.full((3, 3), 2.0), row_std=torch.full((3, 64), 0.1),
                          ref_std=torch.full((3, 64, 3), 0.05), seed=9)[0])
    for k, (a, b) in enumerate(zip(out[1], out[2])):
        assert torch.equal(a, b), (k, (a != b).sum())


def test_exp_polynomial_matches_exp_over_its_range():
    @nb.njit
    def run(y):
        out = np.empty_like(y)
        for i in range(y.shape[0]):
            out[i] = kernels._exp(y[i])
        return out

    y = np.linspace(-16, 16, 20_001).astype(np.float32)
    rel = np.abs(run(y).astype(np.float64) / np.exp(y.astype(np.float64)) - 1)
    assert rel.max() < 1e-5  # six float32 squarings: about 64 roundings of 6e-8


def test_presets_refuse_a_c2c_spread_beyond_the_kernel_range():
    with pytest.raises(RmloraError, match="c2c_sigma"):
        RRAM.replace(c2c_sigma=2.5)
    assert RRAM.replace(c2c_sigma=2.0).c2c_sigma == 2.0


@pytest.mark.parametrize("shape,width", [((3, 17, 200), 64), ((1, 5, 128), 128), ((8, 32, 70), 128)])
def test_compiled_adc_matches_the_eager_path(shape, width):
    part = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 30
    bits = 8
    n_ct = -(-shape[2] // width)
    fs = torch.full((shape[0], n_ct), 60.0)  # frozen full scales: some currents clip
    (fast, c32), (eager, c64) = adc_sum(part, width, bits, fs), adc_sum(part.double(), width, bits, fs)
    assert fast.dtype == torch.float32 and eager.dtype == torch.float64 and fast.shape == eager.shape
    assert c32 == c64 == int((part.abs() > 60.0 * (1 + 0.5 / levels(bits))).sum()) > 0
    step = 60.0 / levels(bits)
    diff = (fast.double() - eager).abs()
    assert float(diff.max()) <= shape[0] * float(step) * 1.001  # a code may round the other way per tile
    assert float((diff > 1e-4 * float(step)).double().mean()) < 0.01


def test_compiled_dac_matches_the_eager_path():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(9))
    fs = torch.tensor(2.5)
    (fast, _), (eager, _) = dac(x, 6, fs), dac(x.double(), 6, fs)
    step = 2.5 / levels(6)
    assert float((fast.double() - eager).abs().max()) <= step * 1.001
    assert float((fast.double() - eager).abs().gt(1e-6).double().mean()) < 0.01
    assert len(torch.unique(fast)) <= 2 * levels(6) + 1


def test_a_float64_layer_takes_the_eager_path_and_agrees():
    """``.double()`` (as ``.cuda()``) moves the cached cell state and computes with torch ops."""
    chip = SimulatedChip(RRAM, seed=0, dac_bits=8, adc_bits=8, read_noise=False)
    torch.manual_seed(0)
    lin = AnalogLinear.from_float(nn.Linear(300, 140), chip, "l")
    lin.program()
    calibrate(lin, torch.randn(512, 300))
    x = torch.randn(16, 300)
    with torch.no_grad():
        y32 = lin(x)
        y64 = lin.double()(x.double())
        exact = x.double() @ lin.core.effective_weight().t() + lin.bias
    assert y64.dtype == torch.float64
    err32, err64 = (y32.double() - exact).abs().max(), (y64 - exact).abs().max()
    assert float((y32.double() - y64).abs().max()) < 0.05 * float(exact.abs().max())
    assert math.isclose(float(err32), float(err64), rel_tol=0.5, abs_tol=1e-3)


def test_neighbouring_cells_program_independently():
    """Every cell's write-verify draws come from its own stream: cells with the same start and
    target end with uncorrelated errors and pulse counts, neighbours and far cells alike."""
    n = 200_000
    p = RRAM
    g0 = torch.full((n,), float(p.g_min_uS))
    target = torch.full((n,), 0.5 * (p.g_min_uS + p.g_max_uS))
    d2d = torch.ones(n)
    stuck = torch.zeros(n, dtype=torch.int8)
    res = physics.program(g0, target, d2d, stuck, p, torch.Generator().manual_seed(11))
    err, pulses = res.error.double().numpy(), res.pulses.double().numpy()
    assert err.std() > 0 and pulses.std() > 0
    for lag in (1, 2, 1024, 8192):
        for v in (err, pulses):
            assert abs(np.corrcoef(v[:-lag], v[lag:])[0, 1]) < 5 / math.sqrt(n)


def test_select_is_a_branch_free_conditional():
    @nb.njit
    def run(c, a, b):
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            out[i] = kernels.select(c[i], a[i], b[i])
        return out

    c = np.array([True, False, True])
    a, b = np.array([1.0, 2.0, 3.0], np.float32), np.array([-1.0, -2.0, -3.0], np.float32)
    assert run(c, a, b).tolist() == [1.0, -2.0, 3.0]


@pytest.mark.parametrize("preset", ["rram-180nm", "wan2022"])
def test_the_torch_write_verify_for_gpus_is_bit_identical_to_the_compiled_kernel(preset):
    """rmlora.device.eager runs write-verify in torch ops on any device (a GPU); on the CPU it
    must give the compiled kernel's results bit for bit: same streams, same float32 arithmetic."""
    from rmlora.device import eager

    p = load_preset(preset)
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    g0, d2d, stuck = physics.new_cells(n, p, gen)
    target = physics.quantise_levels(p.g_min_uS + (p.g_max_uS - p.g_min_uS) * torch.rand(n, generator=gen), p)
    compiled = kernels.program_cells(g0.numpy(), target.contiguous().numpy(), d2d.numpy(), stuck.numpy(), p, 77)
    torch_ops = eager.program_cells(g0, target, d2d, stuck, p, 77)
    for a, b in zip(compiled, torch_ops):
        assert torch.equal(torch.from_numpy(a), b)
    assert int(torch_ops[1].sum() + torch_ops[2].sum()) > n  # it did pulse
