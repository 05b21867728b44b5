"""Unlearning objectives and the training loop on a small separable problem."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmlora.config import TrainConfig
from rmlora.methods import METHODS, Batches, fit, make_objective, snapshot
from rmlora.metrics import accuracy


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


@pytest.mark.parametrize("method", METHODS)
def test_each_objective_forgets_class_1_and_keeps_the_rest(method):
    x, y, g = _problem()
    m = _trained(x, y)
    f, r = y == 1, y != 1
    assert accuracy(m, x[f], y[f]) > 0.9
    teacher = snapshot(m)
    loss = make_objective(method, m, Batches(x[f], y[f], 32, g), Batches(x[r], y[r], 64, g),
                          retained_classes=[0, 2, 3], generator=g, teacher=teacher, cap=4.0)
    fit(m, list(m.parameters()), loss, TrainConfig(steps=150, lr=5e-3, eval_every=10),
        score_fn=lambda: accuracy(m, x[r], y[r]) - accuracy(m, x[f], y[f]), progress=False)
    assert accuracy(m, x[f], y[f]) <= 0.1
    assert accuracy(m, x[r], y[r]) >= 0.9


def test_unknown_method_and_scrub_without_teacher():
    x, y, g = _problem()
    m = _trained(x, y)
    b = Batches(x, y, 8, g)
    with pytest.raises(ValueError, match="unknown unlearning method"):
        make_objective("nope", m, b, b, retained_classes=[0], generator=g)
    with pytest.raises(ValueError, match="teacher"):
        make_objective("scrub", m, b, b, retained_classes=[0], generator=g)


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
