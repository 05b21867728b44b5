"""Hand-computed checks for rmlora.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rmlora.errors import RmloraError
from rmlora.metrics import (
    accuracy,
    accuracy_matrix_summary,
    avg_gap,
    entropy,
    forget_mia_auc,
    loss_auc,
    mia_efficacy,
    per_class_accuracy,
    per_sample_loss,
    predict,
)


class StoredLogits(nn.Module):
    """A 'model' whose input is a vector of sample indices and whose output is stored logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits.float())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx.long()]


def identity_linear() -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return lin


# predictions = argmax of the row: 0, 1, 0, 1, 1
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 2.0]])
Y = torch.tensor([0, 1, 0, 0, 1])  # sample 3 is wrong -> 4/5 correct


# ---------------------------------------------------------------- classification
def test_accuracy_linear_model_and_training_flag_restored():
    model = identity_linear()
    model.train()
    assert accuracy(model, X, Y) == pytest.approx(0.8)
    assert model.training  # restored
    model.eval()
    assert accuracy(model, X, Y, batch_size=2) == pytest.approx(0.8)
    assert not model.training


def test_predict_shapes_and_batching():
    model = identity_linear()
    logits, pred = predict(model, X, batch_size=2)
    assert logits.shape == (5, 2)
    assert torch.equal(pred, torch.tensor([0, 1, 0, 1, 1]))
    assert torch.allclose(logits, X)  # identity weights, zero bias


def test_per_class_accuracy():
    model = identity_linear()
    # class 0: samples 0, 2, 3 -> predicted 0, 0, 1 -> 2/3; class 1: samples 1, 4 -> 2/2; class 2: none
    out = per_class_accuracy(model, X, Y, [0, 1, 2])
    assert out[0] == pytest.approx(2 / 3)
    assert out[1] == pytest.approx(1.0)
    assert math.isnan(out[2])


def test_per_sample_loss_hand_values():
    model = identity_linear()
    loss = per_sample_loss(model, X, Y)
    assert loss.shape == (5,)
    # logits [1, 0], label 0: -log(e / (e + 1)) = log(1 + e^-1)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # logits [0, 3], label 0: log(1 + e^3)
    assert loss[3].item() == pytest.approx(math.log(1 + math.exp(3)), abs=1e-5)


def test_accuracy_empty_is_nan():
    model = identity_linear()
    assert math.isnan(accuracy(model, X[:0], Y[:0]))


def test_avg_gap():
    m = {"ua": 0.9, "ra": 0.95, "ta": 0.85, "mia": 0.1}
    ref = {"ua": 0.8, "ra": 1.0, "ta": 0.85, "mia": 0.3}
    # |0.1| + |-0.05| + 0 + |-0.2| = 0.35 -> / 4 = 0.0875
    assert avg_gap(m, ref, ["ua", "ra", "ta", "mia"]) == pytest.approx(0.0875)
    # subset in percent units: (|90-80| + |10-30|) / 2 = 15
    pm = {k: 100 * v for k, v in m.items()}
    pr = {k: 100 * v for k, v in ref.items()}
    assert avg_gap(pm, pr, ["ua", "mia"]) == pytest.approx(15.0)
    with pytest.raises(RmloraError):
        avg_gap(m, ref, [])
    with pytest.raises(RmloraError):
        avg_gap(m, {"ua": 0.8}, ["ua", "ra"])


# ---------------------------------------------------------------- MIA
def test_loss_auc_extremes_and_ties():
    assert loss_auc(torch.tensor([0.1, 0.2, 0.3]), np.array([0.5, 0.9])) == pytest.approx(1.0)
    assert loss_auc([0.5, 0.9], [0.1, 0.2, 0.3]) == pytest.approx(0.0)
    # pairs (m, n): (1,2)=1, (1,3)=1, (2,2)=tie=0.5, (2,3)=1 -> 3.5 / 4
    assert loss_auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(0.875)
    # an infinite non-member loss still ranks as the highest loss
    assert loss_auc([0.1], [float("inf")]) == pytest.approx(1.0)


def test_loss_auc_identical_distributions():
    rng = np.random.default_rng(0)
    a = rng.exponential(1.0, 5000)
    b = rng.exponential(1.0, 5000)
    assert loss_auc(a, b) == pytest.approx(0.5, abs=0.03)  # sd ~ 0.006


def test_loss_auc_empty_raises():
    with pytest.raises(RmloraError):
        loss_auc([], [1.0])
    with pytest.raises(RmloraError):
        loss_auc(torch.tensor([1.0]), torch.empty(0))


def test_entropy():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    h = entropy(p)
    assert h.tolist() == pytest.approx([math.log(4), 0.0, math.log(2)])


def _two_class_logits(d: np.ndarray) -> torch.Tensor:
    """Label-0 confidence = sigmoid(d) for rows [d, 0]."""
    d = torch.as_tensor(d, dtype=torch.float32)
    return torch.stack([d, torch.zeros_like(d)], dim=1)


def _mia_setup(forget_like: str):
    rng = np.random.default_rng(1)
    n_retain, n_test, n_forget = 300, 100, 50
    retain_d = rng.uniform(4.0, 6.0, n_retain)  # confidence 0.982 .. 0.998
    test_d = rng.uniform(-1.5, 0.5, n_test)  # confidence 0.18 .. 0.62
    forget_d = rng.uniform(4.0, 6.0, n_forget) if forget_like == "retain" else rng.uniform(-1.5, 0.5, n_forget)
    logits = _two_class_logits(np.concatenate([retain_d, test_d, forget_d]))
    model = StoredLogits(logits)
    idx = torch.arange(len(logits))
    r = idx[:n_retain]
    t = idx[n_retain : n_retain + n_test]
    f = idx[n_retain + n_test :]
    zeros = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731  all true labels are class 0
    return model, (r, zeros(n_retain), t, zeros(n_test), f, zeros(n_forget))


def test_mia_efficacy_forget_looks_like_test_is_high():
    model, args = _mia_setup("test")
    eff = mia_efficacy(model, *args, seed=0)
    assert eff >= 0.9
    assert eff == mia_efficacy(model, *args, seed=0)  # deterministic


def test_mia_efficacy_forget_looks_like_retain_is_low():
    model, args = _mia_setup("retain")
    assert mia_efficacy(model, *args, seed=3) <= 0.1


def test_mia_efficacy_empty_raises():
    model, (rx, ry, tx, ty, fx, fy) = _mia_setup("test")
    with pytest.raises(RmloraError):
        mia_efficacy(model, rx, ry, tx, ty, fx[:0], fy[:0])
    with pytest.raises(RmloraError):
        mia_efficacy(model, rx[:0], ry[:0], tx, ty, fx, fy)


def test_forget_mia_auc():
    # 4 training photos with low loss (confident), 4 held-out with high loss
    logits = _two_class_logits(np.array([5.0, 4.0, 6.0, 4.5, -1.0, 0.0, -2.0, 0.5]))
    model = StoredLogits(logits)
    y = torch.zeros(4, dtype=torch.long)
    train_idx, held_idx = torch.arange(4), torch.arange(4, 8)
    assert forget_mia_auc(model, train_idx, y, held_idx, y) == pytest.approx(1.0)
    # a model that treats both alike (identical logits) -> every pair tied -> 0.5
    same = StoredLogits(_two_class_logits(np.full(8, 1.0)))
    assert forget_mia_auc(same, train_idx, y, held_idx, y) == pytest.approx(0.5)
    with pytest.raises(RmloraError):
        forget_mia_auc(model, train_idx[:0], y[:0], held_idx, y)


# ---------------------------------------------------------------- continual
def test_accuracy_matrix_summary_3x3():
    nan = float("nan")
    R = np.array(
        [
            [0.5, nan, nan],
            [0.7, 0.8, nan],
            [0.6, 0.75, 0.9],
        ]
    )
    s = accuracy_matrix_summary(R)
    # ACC = (0.6 + 0.75 + 0.9) / 3 = 0.75
    assert s["average_accuracy"] == pytest.approx(0.75)
    # forgetting: task 0: max(0.5, 0.7) - 0.6 = 0.1; task 1: max(nan, 0.8) - 0.75 = 0.05 -> 0.075
    assert s["forgetting"] == pytest.approx(0.075)
    # BWT: task 0: 0.6 - 0.5 = 0.1; task 1: 0.75 - 0.8 = -0.05 -> 0.025
    assert s["backward_transfer"] == pytest.approx(0.025)


def test_accuracy_matrix_summary_single_task_and_bad_shape():
    s = accuracy_matrix_summary(np.array([[0.8]]))
    assert s == {"average_accuracy": pytest.approx(0.8), "forgetting": 0.0, "backward_transfer": 0.0}
    with pytest.raises(RmloraError):
        accuracy_matrix_summary(np.zeros((2, 3)))
    with pytest.raises(RmloraError):
        accuracy_matrix_summary(np.zeros((0, 0)))


# --------------------------------------------------------------------------- unlearning attacks
def test_kept_view_statistic_is_the_logit_scaled_confidence_over_the_reported_classes():
    from rmlora.metrics import kept_view_statistic

    z = torch.tensor([[2.0, 0.0, 1.0, 9.0], [0.5, 3.0, 0.0, 9.0]])
    y = torch.tensor([0, 3])  # class 3 is not reported (forgotten): the top reported class is used
    s = kept_view_statistic(z, y, [0, 1, 2])
    p0 = torch.softmax(z[0, :3].double(), 0)[0]
    assert float(s[0]) == pytest.approx(float(torch.log(p0 / (1 - p0))))
    p1 = torch.softmax(z[1, :3].double(), 0)[1]
    assert float(s[1]) == pytest.approx(float(torch.log(p1 / (1 - p1))))
    with pytest.raises(RmloraError, match="two reported classes"):
        kept_view_statistic(z, y, [0])


def test_likelihood_ratio_attack_separates_shifted_models_and_not_equal_ones():
    from rmlora.metrics import likelihood_ratio, tpr_at_fpr, ulira

    rng = np.random.default_rng(0)
    n, k = 40, 10
    mu = rng.normal(0, 2, n)  # per-example difficulty, shared by every model
    retrained = [mu + rng.normal(0, 0.3, n) for _ in range(k)]
    same = [mu + rng.normal(0, 0.3, n) for _ in range(k)]
    shifted = [mu + 1.0 + rng.normal(0, 0.3, n) for _ in range(k)]
    far = ulira(shifted, retrained, shadows=k - 1)
    near = ulira(same, retrained, shadows=k - 1)
    assert np.mean([r["auc"] for r in far]) > 0.95 and np.mean([r["tpr"] for r in far]) > 0.5
    assert abs(np.mean([r["auc"] for r in near]) - 0.5) < 0.1
    # per example, not pooled: a shift smaller than the spread between examples is still found
    assert likelihood_ratio(shifted[0], np.stack(shifted[1:]), np.stack(retrained[1:])).mean() > 0
    assert tpr_at_fpr(np.array([3.0, 2.0]), np.array([1.0, 2.5, 0.0])) == pytest.approx(0.5)  # FPR 0 resolvable only
    with pytest.raises(RmloraError, match="asked for 10 shadow models.*leave 9"):
        ulira(shifted, retrained, shadows=10)
    with pytest.raises(RmloraError, match="one fixed forget set"):
        ulira([x[:5] for x in shifted[:3]] + [shifted[3]], retrained[:4], shadows=2)


def test_bootstrap_interval_of_the_mean_is_seeded_and_honest():
    from rmlora.scenario.results import bootstrap_ci, stats

    vals = [0.1, 0.4, 0.35, 0.2, 0.5, 0.3, 0.25, 0.45, 0.15, 0.3]
    st = stats(vals)
    assert st["std"] == pytest.approx(np.std(vals, ddof=1))
    lo, hi = st["ci95"]
    assert lo < st["mean"] < hi and hi - lo < 4 * st["std"]
    assert stats(vals)["ci95"] == st["ci95"]  # the same data give the same interval
    assert bootstrap_ci(np.array([0.7])) == [0.7, 0.7]
    assert stats([float("nan"), 0.2, None, 0.4])["mean"] == pytest.approx(0.3)  # NaN (undefined) skipped


def test_linear_probe_reads_what_the_features_hold():
    from rmlora.metrics import linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(20)
    f = torch.nn.functional.one_hot(y, 3).float() * 3 + torch.randn(60, 3, generator=g) * 0.3
    assert linear_probe(f[:30], y[:30], f[30:], y[30:]) == 1.0
    noise = torch.randn(60, 3, generator=g)
    assert linear_probe(noise[:30], y[:30], noise[30:], y[30:]) < 0.7
    with pytest.raises(RmloraError, match="two classes"):
        linear_probe(f[:3], torch.zeros(3, dtype=torch.long), f, y)


def test_relearning_counts_steps_and_leaves_the_model_as_it_was():
    from rmlora.config import ChipConfig
    from rmlora.hardware import deploy, make_chip
    from rmlora.metrics import relearn_steps

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat_interleave(30)
    x = centres[y] + torch.randn(len(y), 8, generator=g) * 0.5
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    keep = y != 2  # class 2 never learned
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(m(x[keep]), y[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    deploy(m, make_chip(ChipConfig(dac_bits=None, adc_bits=None, read_noise=False), 0, preset="ideal"))
    before = m(x).detach().clone()
    kw = dict(rank=2, alpha=4.0, lr=5e-2, batch_size=16, every=1, target=0.9, generator=g)
    learned = relearn_steps(m, lambda mm: mm, (x[keep][:20], y[keep][:20]), (x, y), max_steps=50, **kw)
    assert learned == 0  # already recognised
    steps = relearn_steps(m, lambda mm: mm, (x[~keep], y[~keep]), (x[keep], y[keep]), max_steps=50, **kw)
    assert 1 <= steps <= 50
    assert relearn_steps(m, lambda mm: mm, (x[~keep], y[~keep]), (x[keep], y[keep]), max_steps=1,
                         **{**kw, "lr": 1e-9}) == 2  # censored: the budget plus one check interval
    assert torch.equal(m(x).detach(), before)  # the attacker's adapter is gone again
