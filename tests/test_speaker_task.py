"""Behaviour of the speaker workload: the recurrent LIF network on the chip, the task's
data handling, and the write-noise / repair experiments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rmlora.costs import Ledger, counting
from rmlora.data.speech import SpeechSet
from rmlora.device import load_preset
from rmlora.hardware import AnalogLinear, SimulatedChip, analog_layers, deploy
from rmlora.methods.repair import noise_sweep, plot_sweep, repair_experiment
from rmlora.config import TrainConfig
from rmlora.methods.train import Batches, fit
from rmlora.metrics import accuracy
from rmlora.tasks.speaker import SpeakerRSNN, SpeakerWorkload
from rmlora.threads import limit_threads

LEARN = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Intra-op threads only slow these tiny models down on a shared machine."""
    with limit_threads(1):
        yield


def _spikes(n: int, seed: int = 0, p: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 10, 140, generator=g) < p).float()


@pytest.fixture(scope="module")
def proc() -> SpeechSet:
    """The task's own data with no data directory: the built-in procedural set."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RMLORA_DATA_DIR", raising=False)
        return SpeakerWorkload().load(None, seed=0, download=False)


@pytest.fixture(scope="module")
def trained(proc: SpeechSet):
    """A small RSNN trained (float) on 5 procedural speakers, and its splits."""
    task = SpeakerWorkload()
    sp = task.split(proc, LEARN, seed=0, settings=task.settings("quick"))
    g = torch.Generator().manual_seed(0)
    x, y = task.augment(sp["train"], g, copies=1)
    torch.manual_seed(0)
    model = SpeakerRSNN(5, hidden=64)
    batches = Batches(x, y, 32, g)

    def loss(step: int) -> torch.Tensor:
        xb, yb = batches.sample()
        return F.cross_entropy(model(xb), yb)
    val = (sp["val"].spikes, sp["val"].labels)
    fit(model, list(model.parameters()), loss, TrainConfig(steps=150, lr=3e-3, batch_size=32, eval_every=25),
        score_fn=lambda: accuracy(model, *val), progress=False)
    return model, sp


def _xy(sp, name):
    return sp[name].spikes, sp[name].labels


# --------------------------------------------------------------------------- the network
def test_forward_shape_binary_spikes_and_gradients() -> None:
    torch.manual_seed(0)
    model = SpeakerRSNN(3, hidden=32)
    x = _spikes(4)
    out = model(x)
    assert out.shape == (4, 3)
    h = model.hidden_spikes(x)
    assert h.shape == (4, 10, 32)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert h.sum() > 0, "the hidden layer never spikes"
    F.cross_entropy(out, torch.tensor([0, 1, 2, 0])).backward()
    for name in ("fc_in", "rec", "head"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"no surrogate gradient reached {name}"
    with pytest.raises(ValueError):
        model(x[0])


def test_model_keeps_no_state_between_calls() -> None:
    torch.manual_seed(0)
    model = SpeakerRSNN(3, hidden=16)
    x = _spikes(2)
    a = model(x)
    model(_spikes(5, seed=1)).sum().backward()
    b = model(x)
    torch.testing.assert_close(a, b)
    import copy
    copy.deepcopy(model)  # would fail if a non-leaf state tensor were kept on the module


def test_deploy_on_ideal_chip_matches_float_and_maps_every_matrix() -> None:
    torch.manual_seed(1)
    model = SpeakerRSNN(4, hidden=64).eval()
    x = _spikes(8, seed=2)
    with torch.no_grad():
        ref = model(x)
        ref_h = model.hidden_spikes(x)
    deploy(model, SimulatedChip("ideal"))
    names = sorted(n for n, _ in analog_layers(model))
    assert names == ["fc_in", "head", "rec"]
    assert all(isinstance(getattr(model, n), AnalogLinear) for n in names)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(model.hidden_spikes(x), ref_h)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_surrogate_training_works_through_analogue_layers() -> None:
    torch.manual_seed(0)
    model = SpeakerRSNN(3, hidden=32)
    deploy(model, SimulatedChip("rram-180nm", seed=0), calibrate=_spikes(16))
    for name in ("fc_in", "rec", "head"):
        getattr(model, name).weight.requires_grad_(True)
    F.cross_entropy(model(_spikes(4)), torch.tensor([0, 1, 2, 0])).backward()
    for name in ("fc_in", "rec", "head"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_event_driven_costs_count_spikes() -> None:
    torch.manual_seed(0)
    model = SpeakerRSNN(3, hidden=64).eval()
    deploy(model, SimulatedChip("ideal"))
    x = _spikes(6, seed=3, p=0.2)
    ct_in = model.fc_in.core.handle.col_tiles
    led = Ledger()
    with torch.no_grad(), counting(model.fc_in, led):
        model(x)
    assert led.counts["dac_conversions"] == int((x != 0).sum()) * ct_in
    assert led.counts["dac_conversions"] < x.numel() * ct_in  # silent inputs drive nothing

    # the whole network: every analogue layer sees binary spikes and is charged per spike
    seen = {"rec": [], "head": []}
    hooks = [getattr(model, n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach()))
             for n in seen]
    led = Ledger()
    with torch.no_grad(), counting(model, led):
        model(x)
    for h in hooks:
        h.remove()
    expected = int((x != 0).sum()) * ct_in
    for n, inputs in seen.items():
        assert inputs, f"{n} was never called"
        for t in inputs:
            assert set(t.unique().tolist()) <= {0.0, 1.0}, f"{n} got non-binary input"
        expected += sum(int((t != 0).sum()) for t in inputs) * getattr(model, n).core.handle.col_tiles
    assert led.counts["dac_conversions"] == expected


# --------------------------------------------------------------------------- the task
def test_defaults_follow_the_paper_scenario() -> None:
    task = SpeakerWorkload()
    for conf in task.configurations:
        d = task.settings(conf)
        if conf.startswith("eval"):  # the unlearning evaluation: every speaker learned, one forgotten, none added
            assert d.learn == ["all"] and d.forget == ["1"] and d.add == []
        else:
            assert d.learn == [str(c) for c in LEARN] and d.forget == ["1"] and d.add == ["5"]
        assert d.method == "relabel" and d.adapter.rank == 4 and d.adapter.alpha == 8.0
        assert d.augment_copies >= 0
    assert task.settings("quick").pretrain.steps < task.settings("default").pretrain.steps
    assert task.settings("quick").max_train < task.settings("default").max_train
    assert task.name == "speaker" and task.unit == "speaker"


def test_task_loads_procedural_set_and_splits_by_utterance(proc: SpeechSet) -> None:
    assert proc.kind == "procedural"
    task = SpeakerWorkload()
    x = task.inputs(proc)
    assert x.shape[1:] == (10, 140)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    labels = LEARN + [5]
    st = task.settings("default")
    sp = task.split(proc, labels, seed=0, settings=st)
    ids = {k: set(v.utt_ids.tolist()) for k, v in sp.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    for k, v in sp.items():
        assert len(v) > 0, k
        assert set(v.labels.tolist()) == set(labels), k
    # reproducible for a seed, different for another
    assert torch.equal(task.split(proc, labels, seed=0, settings=st)["test"].utt_ids, sp["test"].utt_ids)
    assert not torch.equal(task.split(proc, labels, seed=1, settings=st)["test"].utt_ids, sp["test"].utt_ids)


def test_augment_keeps_spikes_binary_and_labels(proc: SpeechSet) -> None:
    task = SpeakerWorkload()
    sub = proc.subset(list(range(20)))
    x0, y0 = task.augment(sub, torch.Generator().manual_seed(0), copies=0)
    assert torch.equal(x0, sub.spikes) and torch.equal(y0, sub.labels)
    x, y = task.augment(sub, torch.Generator().manual_seed(0), copies=2)
    assert x.shape == (60, 10, 140) and torch.equal(y, sub.labels.repeat(3))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x[:20], sub.spikes)
    assert not torch.equal(x[20:40], sub.spikes)
    assert x[20:].sum() < 2 * sub.spikes.sum()  # dropout removes spikes, never adds


def test_tiny_training_beats_chance(trained) -> None:
    model, sp = trained
    acc = accuracy(model, *_xy(sp, "test"))
    assert acc >= 0.6, f"test accuracy {acc:.2f} on 5 speakers (chance 0.2)"


# --------------------------------------------------------------------------- noise and repair
def test_noise_sweep_accuracy_falls_with_write_noise(trained, tmp_path) -> None:
    model, sp = trained
    sw = noise_sweep(model, _xy(sp, "test"), [0.0, 6.0, 20.0], draws=3, seed=0, calibration=_xy(sp, "train")[0])
    assert sw["levels_uS"] == [0.0, 6.0, 20.0]
    assert len(sw["acc"]) == 3 and all(len(r) == 3 for r in sw["acc"])
    assert sw["std"][0] == pytest.approx(0.0, abs=1e-12)  # no noise: every chip the same
    assert sw["std"][1] > 0
    # a third of the 60 µS window: far below the noiseless chips (6 µS may cost little on this tiny model)
    assert sw["mean"][2] < sw["mean"][0] - 0.1, sw["mean"]
    assert all(0.0 <= a <= 1.0 for r in sw["acc"] for a in r)
    png = plot_sweep(sw, tmp_path / "sweep.png", "test sweep")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_repair_adapter_wins_back_accuracy(trained) -> None:
    model, sp = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    noisy = load_preset("ideal").replace(relax_sigma_floor_uS=4.0)
    res = repair_experiment(model, lambda: SpeakerRSNN(5, hidden=64), noisy, _xy(sp, "train"), _xy(sp, "val"),
                            _xy(sp, "test"), TrainConfig(steps=60, lr=1e-2, batch_size=32, eval_every=10), seed=0)
    assert res["acc_after_repair"] >= res["acc_after_noise"]
    assert res["adapter_bits"] > 0
    lost = res["acc_before_noise"] - res["acc_after_noise"]
    if lost > 0:
        assert res["recovered_fraction"] == pytest.approx(
            (res["acc_after_repair"] - res["acc_after_noise"]) / lost)
    else:
        assert math.isnan(res["recovered_fraction"])
    for k, v in model.state_dict().items():  # the float model is left alone
        assert torch.equal(v, before[k]), k
