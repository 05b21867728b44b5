"""Unlearning objectives and the training loop on a small separable problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmlora.config import TrainConfig
from rmlora.errors import RmloraError
from rmlora.methods import FIELD_METHODS, METHODS, Batches, UnlearnConfig, fit, make_objective, resolve_methods, snapshot
from rmlora.methods.unlearn import l1_norm, random_other_labels, saliency_mask, scrub_schedule
from rmlora.metrics import accuracy

TRAINED = [m for m in METHODS if m != "mask"]


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=g) * 3
    y = torch.arange(4).repeat_interleave(40)
    x = centres[y] + torch.randn(len(y), 8, generator=g)
    return x, y, g


def _trained(x, y):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(200):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


@pytest.mark.parametrize("method", TRAINED)
def test_each_objective_forgets_class_1_and_keeps_the_rest(method):
    x, y, g = _problem()
    m = _trained(x, y)
    f, r = y == 1, y != 1
    assert accuracy(m, x[f], y[f]) > 0.9
    teacher = snapshot(m)
    # SCRUB's published schedule spends 6 of 150 steps on Df here; every round opens with max-steps instead
    cfg = UnlearnConfig(scrub_max_rounds=10) if method == "scrub" else None
    un = make_objective(method, m, Batches(x[f], y[f], 32, g), Batches(x[r], y[r], 64, g),
                        retained_classes=[0, 2, 3], generator=g, teacher=teacher, cap=4.0, steps=150, config=cfg)
    fit(m, list(m.parameters()), un.loss, TrainConfig(steps=150, lr=5e-3, eval_every=10),
        score_fn=lambda: accuracy(m, x[r], y[r]) - accuracy(m, x[f], y[f]), progress=False)
    un.finish()
    # fine-tuning on the retain set alone forgets a class only as far as it drifts; the others erase it
    assert accuracy(m, x[f], y[f]) <= (0.9 if method in ("ft", "l1") else 0.1)
    assert accuracy(m, x[r], y[r]) >= 0.9


def test_method_names_resolve_and_mask_has_no_objective():
    assert resolve_methods(["field"], METHODS) == list(FIELD_METHODS)
    assert resolve_methods(["scrub", "field"], METHODS)[0] == "scrub"
    with pytest.raises(RmloraError, match="unknown method 'forgetful'"):
        resolve_methods(["forgetful"], METHODS)
    x, y, g = _problem()
    with pytest.raises(ValueError, match="trains nothing"):
        make_objective("mask", _trained(x, y), Batches(x, y, 8, g), Batches(x, y, 8, g), retained_classes=[0],
                       generator=g)
    with pytest.raises(RmloraError, match="salun_ratio must lie in"):
        UnlearnConfig(salun_ratio=1.5)


def test_scrub_follows_the_published_schedule():
    """Max-steps open the first msteps rounds (one pass over Df, at most half a round), then min-steps only."""
    ph = scrub_schedule(100, rounds=10, max_rounds=3, forget_batches=2)
    assert len(ph) == 100
    rounds = [ph[i * 10:(i + 1) * 10] for i in range(10)]
    assert [sum(rd) for rd in rounds] == [2, 2, 2] + [0] * 7
    assert all(rd[:2] == [True, True] for rd in rounds[:3])
    assert sum(scrub_schedule(20, rounds=10, max_rounds=3, forget_batches=5)) == 3  # at most half of 2 steps


def test_random_labels_are_kept_classes_other_than_the_own():
    g = torch.Generator().manual_seed(0)
    kept = torch.tensor([0, 2, 3])
    y = torch.tensor([0, 2, 3, 1] * 50)
    z = random_other_labels(y, kept, g)
    assert bool(torch.isin(z, kept).all()) and not bool((z == y).any())


def test_salun_mask_keeps_the_most_salient_share_and_freezes_the_rest():
    x, y, g = _problem()
    m = _trained(x, y)
    f = y == 1
    masks = saliency_mask(m, Batches(x[f], y[f], 32, g), 0.5)
    share = sum(float(k.sum()) for k in masks) / sum(k.numel() for k in masks)
    assert 0.45 <= share <= 0.55
    before = [p.detach().clone() for p in m.parameters()]
    un = make_objective("salun", m, Batches(x[f], y[f], 32, g), Batches(x[~f], y[~f], 64, g),
                        retained_classes=[0, 2, 3], generator=g, config=UnlearnConfig(salun_ratio=0.5))
    fit(m, list(m.parameters()), un.loss, TrainConfig(steps=20, lr=5e-3), progress=False)
    un.finish()
    moved = [(p.detach() != b) for p, b in zip(m.parameters(), before)]
    frozen = sum(int((~mv).sum()) for mv in moved)
    assert frozen >= 0.45 * sum(mv.numel() for mv in moved)  # the non-salient half never moved


def test_l1_norm_acts_on_the_effective_weights_on_the_adapter_path():
    from rmlora.adapters import add_adapter
    from rmlora.config import ChipConfig
    from rmlora.hardware import deploy, make_chip

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    deploy(m, make_chip(ChipConfig(dac_bits=None, adc_bits=None, read_noise=False), 0, preset="ideal"))
    w = [l.weight.detach().clone() for l in (m[0], m[2])]
    for p in m.parameters():
        p.requires_grad_(False)
    assert float(l1_norm(m)) == 0.0  # nothing trainable yet
    add_adapter(m, "forget", r=2, alpha=4.0)
    base = sum(float(t.abs().sum()) for t in w)
    assert float(l1_norm(m)) == pytest.approx(base, rel=1e-5)  # B = 0: the effective weights are W
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.lora_B["forget"].parametrizations.weight.original.fill_(0.1)
    val = l1_norm(m)
    assert float(val) != pytest.approx(base, rel=1e-3)
    val.backward()
    assert m[0].lora_B["forget"].parametrizations.weight.original.grad is not None


def test_unknown_method_and_scrub_without_teacher():
    x, y, g = _problem()
    m = _trained(x, y)
    b = Batches(x, y, 8, g)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        make_objective("nope", m, b, b, retained_classes=[0], generator=g)
    with pytest.raises(ValueError, match="teacher"):
        make_objective("scrub", m, b, b, retained_classes=[0], generator=g)
    with pytest.raises(ValueError, match="step budget"):
        make_objective("l1", m, b, b, retained_classes=[0], generator=g)


def test_fit_restores_the_best_validation_state_and_counts_sram_writes():
    from rmlora.costs import Ledger
    p = nn.Parameter(torch.zeros(3))
    m = nn.Module()
    m.p = p
    scores = iter([0.1, 0.9, 0.2, 0.3])
    seen = []

    def loss(step):
        return -p.sum()  # keeps moving p upwards

    def score():
        seen.append(p.detach().clone())
        return next(scores)
    led = Ledger()
    hist = fit(m, [p], loss, TrainConfig(steps=4, lr=0.1, eval_every=1), score_fn=score, ledger=led, progress=False)
    assert hist["best_step"] == 2
    assert torch.equal(p.detach(), seen[1])  # the state scored 0.9 is back
    assert led.counts["sram_write_bits"] == 4 * 3 * 8  # 4 steps x 3 parameters x 8 bits


def test_hardware_aware_noise_injection_is_fresh_per_call_scaled_and_removed():
    from rmlora.methods.hwa import noise_injection, weight_sigma_uS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Conv1d(1, 2, 3))
    lin = model[0]
    x = torch.randn(4, 32)
    clean = lin(x).detach()
    sigma = weight_sigma_uS("rram-180nm")
    assert 0.8 < sigma < 2.0  # sqrt(2 (0.8² + 0.3²)) µS
    with noise_injection(model, "rram-180nm", torch.Generator().manual_seed(1)) as rel:
        a, b = lin(x), lin(x)
        assert rel == pytest.approx(sigma / 30.0)
        assert not torch.allclose(a, b) and not torch.allclose(a, clean)
        dev = (a - clean).std() / clean.std()
        assert 0.005 < float(dev) < 0.2
        a.sum().backward()
        assert lin.weight.grad is not None  # the noise is additive: the gradient reaches W
        model[2](torch.randn(2, 1, 8))
    assert torch.equal(lin(x), clean)  # the layers compute as before once the block ends
    with noise_injection(model, "ideal") as rel:
        assert rel == 0 and torch.equal(lin(x), clean)
