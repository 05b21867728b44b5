"""Behaviour of the cell physics: write-verify programming, presets, mapping, drift.

The write-verify tests are property-based (hypothesis) on small numbers of
cells; the statistical checks use a few thousand cells with a fixed seed.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmlora.device import load_preset, physics
from rmlora.device.mapping import output_scale, to_conductance, to_weight
from rmlora.device.params import PRESET_DIR
from rmlora.errors import RmloraError

PROPS = settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])

RRAM = load_preset("rram-180nm")
# relaxation off: what programming itself leaves behind
NO_RELAX = RRAM.replace(relax_sigma_floor_uS=0.0, relax_sigma_iter_uS=0.0)
NO_NOISE = NO_RELAX.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0)
NO_FAULTS = dict(stuck_low_fraction=0.0, stuck_high_fraction=0.0)


def _targets(n: int, p, gen: torch.Generator, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    lo = p.g_min_uS if lo is None else lo
    hi = p.g_max_uS if hi is None else hi
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _run(p, n: int, seed: int, targets: torch.Tensor | None = None):
    gen = torch.Generator().manual_seed(seed)
    g0, d2d, stuck = physics.new_cells(n, p, gen)
    t = _targets(n, p, gen) if targets is None else targets
    res = physics.program(g0, t, d2d, stuck, p, gen)
    return g0, d2d, stuck, t, res


def _max_read_sigma(p) -> float:
    return p.read_noise_abs_uS + p.read_noise_rel * p.g_ceil_uS


# ---------------------------------------------------------------------------
# write-verify stops
# ---------------------------------------------------------------------------

@PROPS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), max_pulses=st.integers(1, 40),
       passes=st.integers(1, 3), tol=st.floats(0.05, 3.0), noise=st.booleans(),
       stuck=st.floats(0.0, 0.3))
def test_write_verify_stops_within_its_pulse_and_read_budget(n, seed, max_pulses, passes, tol, noise, stuck):
    p = RRAM.replace(max_pulses=max_pulses, passes_required=passes, tolerance_uS=tol,
                     stuck_low_fraction=stuck / 2, stuck_high_fraction=stuck / 2)
    if not noise:
        p = p.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0)
    gen = torch.Generator().manual_seed(seed)
    g0, d2d, stuck_code = physics.new_cells(n, p, gen)
    g0_before = g0.clone()
    t = _targets(n, p, gen)
    res = physics.program(g0, t, d2d, stuck_code, p, gen)

    pulses = res.pulses.long()
    reads = res.verify_reads.long()
    assert res.g.shape == res.converged.shape == res.set_pulses.shape == (n,)
    assert int(pulses.max()) <= max_pulses
    assert int(reads.max()) <= max_pulses + passes
    assert int(res.set_pulses.min()) >= 0 and int(res.reset_pulses.min()) >= 0
    # every pulse follows a verify read that failed; every cell is read at least once
    assert bool((pulses <= reads).all())
    assert int(reads.min()) >= 1
    # a cell converges only after ``passes`` reads in tolerance
    assert bool((reads[res.converged] >= passes).all())
    # the input cells are not modified, stuck cells do not move
    assert torch.equal(g0, g0_before)
    assert torch.equal(res.g[stuck_code != 0], g0[stuck_code != 0])
    # the result stays inside the physical range
    assert float(res.g.min()) >= p.g_floor_uS and float(res.g.max()) <= p.g_ceil_uS


# ---------------------------------------------------------------------------
# converged cells are on target (before relaxation)
# ---------------------------------------------------------------------------

@PROPS
@given(targets=st.lists(st.floats(0.0, 130.0), min_size=1, max_size=64), seed=st.integers(0, 2**31 - 1),
       tol=st.floats(0.3, 3.0), passes=st.integers(1, 3))
def test_noiseless_converged_cells_end_within_tolerance(targets, seed, tol, passes):
    p = NO_NOISE.replace(tolerance_uS=tol, passes_required=passes)
    t = torch.tensor(targets, dtype=torch.float32)
    _, _, _, _, res = _run(p, t.numel(), seed, targets=t)
    # targets outside the window are clipped to it
    assert float(res.target.min()) >= p.g_min_uS and float(res.target.max()) <= p.g_max_uS
    assert torch.allclose(res.target, t.clamp(p.g_min_uS, p.g_max_uS))
    err = res.error[res.converged].abs()
    assert bool((err <= tol + 1e-4).all()), float(err.max())


@PROPS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), tol=st.floats(0.3, 3.0),
       passes=st.integers(1, 3))
def test_noisy_reads_converged_cells_within_tolerance_plus_read_sigmas(n, seed, tol, passes):
    p = NO_RELAX.replace(tolerance_uS=tol, passes_required=passes)
    assert p.read_noise_abs_uS > 0
    _, _, _, _, res = _run(p, n, seed)
    err = res.error[res.converged].abs()
    bound = tol + 4 * _max_read_sigma(p)
    assert bool((err <= bound).all()), (float(err.max()), bound)


def test_tighter_tolerance_costs_more_pulses():
    means = {}
    for tol in (0.5, 2.0):
        _, _, _, _, res = _run(NO_RELAX.replace(tolerance_uS=tol, **NO_FAULTS), 5000, seed=7)
        means[tol] = float(res.pulses.float().mean())
    # measured ~10.2 vs ~7.5 pulses; the standard error of each mean is ~0.06
    assert means[0.5] > means[2.0] + 1.0, means


# ---------------------------------------------------------------------------
# failures only where the target cannot be reached
# ---------------------------------------------------------------------------

@PROPS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), tol=st.floats(0.5, 3.0), noise=st.booleans(),
       relax=st.booleans())
def test_without_faults_every_cell_converges_given_enough_pulses(n, seed, tol, noise, relax):
    p = (RRAM if relax else NO_RELAX).replace(tolerance_uS=tol, max_pulses=1000, **NO_FAULTS)
    if not noise:
        p = p.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0)
    _, _, _, _, res = _run(p, n, seed)
    assert bool(res.converged.all()), int((~res.converged).sum())


@PROPS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1), tol=st.floats(0.5, 3.0),
       low=st.floats(0.0, 0.4), high=st.floats(0.0, 0.4), noise=st.booleans())
def test_with_stuck_faults_only_unreachable_cells_fail(n, seed, tol, low, high, noise):
    # floor and ceiling at the window edges: some stuck cells sit within tolerance of their target
    # 150 pulses: healthy cells need < 80 here (50,000 cells measured), stuck ones use them all
    p = NO_RELAX.replace(tolerance_uS=tol, max_pulses=150, stuck_low_fraction=low, stuck_high_fraction=high,
                         g_floor_uS=RRAM.g_min_uS, g_ceil_uS=RRAM.g_max_uS + 10.0)
    if not noise:
        p = p.replace(read_noise_abs_uS=0.0, read_noise_rel=0.0)
    gen = torch.Generator().manual_seed(seed)
    g0, d2d, stuck = physics.new_cells(n, p, gen)
    t = _targets(n, p, gen, lo=p.g_min_uS, hi=p.g_min_uS + 5.0)  # near the stuck-low value
    t[::2] = _targets(len(t[::2]), p, gen)
    res = physics.program(g0, t, d2d, stuck, p, gen)
    failed = ~res.converged
    out_of_tol = (g0 - res.target).abs() > tol
    assert bool((stuck[failed] != 0).all()), "a healthy cell failed"
    assert bool(out_of_tol[failed].all()), "a stuck cell already on target was reported failed"
    if not noise:  # without read noise a stuck cell off target can never pass verification
        assert bool(failed[(stuck != 0) & out_of_tol].all())


# ---------------------------------------------------------------------------
# multi-level cells
# ---------------------------------------------------------------------------

@PROPS
@given(levels=st.integers(2, 64), targets=st.lists(st.floats(0.0, 130.0), min_size=1, max_size=64),
       seed=st.integers(0, 2**31 - 1))
def test_targets_are_quantised_to_levels(levels, targets, seed):
    p = NO_NOISE.replace(levels=levels, **NO_FAULTS)
    t = torch.tensor(targets, dtype=torch.float32)
    _, _, _, _, res = _run(p, t.numel(), seed, targets=t)
    step = (p.g_max_uS - p.g_min_uS) / (levels - 1)
    k = (res.target - p.g_min_uS) / step
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert float(k.min()) > -1e-3 and float(k.max()) < levels - 1 + 1e-3
    # snapped to the nearest level of the clipped target
    assert bool(((res.target - t.clamp(p.g_min_uS, p.g_max_uS)).abs() <= step / 2 + 1e-3).all())
    assert bool((res.error[res.converged].abs() <= p.tolerance_uS + 1e-4).all())


def test_no_levels_keeps_continuous_targets():
    t = torch.tensor([20.0, 33.3, 50.01, 79.9])
    assert torch.equal(physics.quantise_levels(t, RRAM), t)


# ---------------------------------------------------------------------------
# the rram-180nm preset against its cited ranges
# ---------------------------------------------------------------------------

def test_rram_preset_pulses_and_error_spread_in_cited_ranges():
    _, _, stuck, _, res = _run(RRAM, 20000, seed=3)
    mean_pulses = float(res.pulses.float().mean())
    err_std = float(res.error[res.converged].std())
    assert 3.0 <= mean_pulses <= 30.0, mean_pulses
    # aihwkit / Wan 2022 range of the programming error spread
    assert 0.35 <= err_std <= 2.0, err_std
    # only the stuck cells (~0.15 %) fail
    assert int((~res.converged).sum()) <= int((stuck != 0).sum())


def test_ideal_preset_writes_targets_exactly():
    p = load_preset("ideal")
    _, _, _, t, res = _run(p, 500, seed=0)
    assert torch.equal(res.g, t)
    assert bool(res.converged.all())
    assert int(res.pulses.sum()) == 0


# ---------------------------------------------------------------------------
# load_preset refusals
# ---------------------------------------------------------------------------

def test_load_preset_by_name_and_by_path(tmp_path):
    copy = tmp_path / "mine.json"
    shutil.copy(PRESET_DIR / "rram-180nm.json", copy)
    assert load_preset(str(copy)).to_dict() == RRAM.to_dict()
    assert RRAM.name == "rram-180nm" and RRAM.tolerance_uS == 1.0 and RRAM.max_pulses == 30


def test_load_preset_unknown_name():
    with pytest.raises(RmloraError, match="no-such-preset"):
        load_preset("no-such-preset")


def test_load_preset_missing_constant(edited_copy):
    path = edited_copy(PRESET_DIR / "rram-180nm.json", lambda c: c.pop("tolerance_uS"))
    with pytest.raises(RmloraError, match="tolerance_uS"):
        load_preset(str(path))


def test_load_preset_negative_constant(edited_copy):
    def edit(c):
        c["read_noise_abs_uS"]["value"] = -0.1
    with pytest.raises(RmloraError, match="read_noise_abs_uS"):
        load_preset(str(edited_copy(PRESET_DIR / "rram-180nm.json", edit)))


@pytest.mark.parametrize("how", ["empty", "absent"])
def test_load_preset_constant_without_source(edited_copy, how):
    def edit(c):
        if how == "empty":
            c["g_min_uS"]["source"] = ""
        else:
            del c["g_min_uS"]["source"]
    with pytest.raises(RmloraError, match="g_min_uS"):
        load_preset(str(edited_copy(PRESET_DIR / "rram-180nm.json", edit)))


def test_replace_validates_like_a_file():
    with pytest.raises(RmloraError):
        RRAM.replace(not_a_constant=1.0)
    with pytest.raises(RmloraError):
        RRAM.replace(g_min_uS=90.0)  # above g_max


# ---------------------------------------------------------------------------
# weight <-> conductance mapping
# ---------------------------------------------------------------------------

@PROPS
@given(out=st.integers(1, 12), n_in=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       mag=st.floats(1e-3, 10.0), mapping=st.sampled_from(["offset", "differential"]))
def test_mapping_round_trip_and_window(out, n_in, seed, mag, mapping):
    p = RRAM.replace(mapping=mapping)
    gen = torch.Generator().manual_seed(seed)
    w = (2 * torch.rand(out, n_in, generator=gen) - 1) * mag
    scale = output_scale(w, p)
    assert scale.shape == (out,)
    g = to_conductance(w, scale, p)
    assert g.shape == (n_in, out * p.cells_per_weight)
    assert float(g.min()) >= p.g_min_uS - 1e-4 and float(g.max()) <= p.g_max_uS + 1e-4
    back = to_weight(g, scale, p)
    assert back.shape == w.shape
    assert torch.allclose(back, w, rtol=0, atol=1e-5 * max(1.0, mag))
    # per-output scale: the largest |w| of every output uses the whole half window / window
    if mapping == "offset":
        span = min(p.g_max_uS - p.reference_uS, p.reference_uS - p.g_min_uS)
        used = (g - p.reference_uS).abs().amax(dim=0)
    else:
        span = p.g_max_uS - p.g_min_uS
        used = (g[:, 0::2] - g[:, 1::2]).abs().amax(dim=0)
    assert torch.allclose(used, torch.full((out,), span), atol=1e-3)


def test_mapping_refuses_non_finite_weights():
    w = torch.ones(3, 4)
    w[1, 2] = float("nan")
    with pytest.raises(RmloraError):
        to_conductance(w, torch.ones(3), RRAM)


# ---------------------------------------------------------------------------
# relaxation drift
# ---------------------------------------------------------------------------

def test_relax_drift_moves_conductance_down_by_the_cited_mean():
    p = RRAM
    gen = torch.Generator().manual_seed(0)
    n = 100_000
    g = _targets(n, p, gen)
    healthy = torch.zeros(n, dtype=torch.int8)
    seconds = 1e4
    moved = physics.relax_drift(g, healthy, seconds, p, gen)
    lt = math.log(seconds / p.drift_t0_s)
    shift = float((moved - g).mean())
    assert shift < 0
    # mean -drift_mean·ln t (0.089 µS per ln t, aihwkit); standard error ~0.0012 µS
    assert shift == pytest.approx(-p.drift_mean_uS_per_ln_t * lt, abs=0.01)
    assert float((moved - g).std()) == pytest.approx(p.drift_sigma_uS_per_ln_t * lt, rel=0.05)
    # longer retention drifts further
    later = physics.relax_drift(g, healthy, 1e8, p, gen)
    assert float((later - g).mean()) < shift


def test_relax_drift_leaves_stuck_cells_and_short_times_alone():
    p = RRAM
    g = torch.linspace(p.g_min_uS, p.g_max_uS, 10)
    stuck = torch.tensor([1, 2] + [0] * 8, dtype=torch.int8)
    moved = physics.relax_drift(g, stuck, 1e6, p, torch.Generator().manual_seed(0))
    assert torch.equal(moved[:2], g[:2])
    assert not torch.equal(moved[2:], g[2:])
    assert torch.equal(physics.relax_drift(g, stuck, p.drift_t0_s, p), g)


# ---------------------------------------------------------------------------
# device statistics that match their source
# ---------------------------------------------------------------------------

def test_wan2022_write_verify_reproduces_the_published_sigma_curve():
    """The whole simulation (write-verify loop, verify-read noise, relaxation) gives, right after
    programming, the σ(g) of aihwkit's ReRamWan2022NoiseModel within 20% at every level of 1-40 µS."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("calibrate_device", Path(__file__).parents[1] / "benchmarks" /
                                                  "calibrate_device.py")
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    c = cal.sigma_curve("wan2022", 4000, seed=1, n_levels=10)
    ratios = [r for r in c["ratio_to_wan2022"] if r is not None]
    assert len(ratios) == 10
    assert all(0.8 <= r <= 1.2 for r in ratios), list(zip(c["levels_uS"], ratios))
    assert c["max_pulses"] <= 30  # NeuRRAM's cap
    # the curve is not flat: the spread at 12 µS is more than twice the spread at 1 µS
    assert c["sigma_uS"][3] > 2 * c["sigma_uS"][0]


def test_a_preset_whose_sigma_curve_goes_non_positive_is_refused():
    p = load_preset("wan2022")
    with pytest.raises(RmloraError, match="not positive"):
        p.replace(relax_poly_c0_uS=-0.5)  # σ(1 µS) < 0
    assert p.replace(relax_poly_c0_uS=0.5).relax_poly_c0_uS == 0.5


def test_preset_constants_equal_their_cited_values():
    p = load_preset("rram-180nm")
    assert p.relax_sigma_floor_uS == pytest.approx(0.412)  # aihwkit ReRamCMONoiseModel: 0.41183342
    assert p.read_noise_abs_uS == pytest.approx(0.01 * (p.g_max_uS - p.reference_uS))  # 1% of |w|max
    w = load_preset("wan2022")
    assert w.relax_poly == pytest.approx((0.348, 16.030, -43.853, 45.393, -16.815))
    assert w.read_noise_abs_uS == pytest.approx(0.01 * w.g_max_uS / 2 ** 0.5, rel=1e-3)
