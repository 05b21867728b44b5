"""Behaviour of digital LoRA adapters on analogue layers: training, stacking, files, SRAM."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from rmlora.adapters import (DigitalRows, SramBuffer, active_adapters, adapter_bits, adapter_parameters, adapters,
                             add_adapter, delete_adapter, load_adapter, save_adapter, set_active)
from rmlora.adapters.lora import lora_layers
from rmlora.adapters.quant import FakeQuant, int_codes
from rmlora.errors import RmloraError
from rmlora.hardware import SimulatedChip, analog_layers, deploy


def deployed(sizes=(16, 32, 8), *, read_noise: bool = False, seed: int = 0) -> nn.Module:
    """An MLP on an rram-180nm chip (8-bit converters); per-MVM read noise optional."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    deploy(model, SimulatedChip("rram-180nm", seed=seed, read_noise=read_noise),
           calibrate=torch.randn(512, sizes[0], generator=torch.Generator().manual_seed(seed)))
    return model


def randomise(model: nn.Module, name: str, seed: int) -> None:
    """Give adapter ``name`` non-zero A and B (peft starts B at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            for d in (layer.lora_A, layer.lora_B):
                if name in d:
                    w = d[name].parametrizations.weight.original
                    w.copy_(torch.randn(w.shape, generator=gen) * 0.3)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


X = torch.randn(6, 16, generator=torch.Generator().manual_seed(123))


def chip_of(model: nn.Module) -> SimulatedChip:
    return analog_layers(model)[0][1].core.chip


# ---------------------------------------------------------------------------
# training never touches the conductances
# ---------------------------------------------------------------------------

def test_training_an_adapter_never_changes_a_conductance():
    model = deployed(read_noise=True)
    chip = chip_of(model)
    state = {k: v.clone() for k, v in chip.state_dict().items()}
    weights = [m.weight.detach().clone() for _, m in analog_layers(model)]
    add_adapter(model, "a", r=2)
    params = adapter_parameters(model, "a")
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    target = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        opt.zero_grad()
        loss = (model(X) - target).square().mean()
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(start, params)), "the adapter did not train"
    after = chip.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(state[k], after[k]), k
    layers = analog_layers(model)  # names gain ".base_layer" under peft; the order stays
    assert len(layers) == len(weights)
    for (n, m), w in zip(layers, weights):
        assert torch.equal(m.weight, w), n
        assert m.weight.grad is None


def test_only_the_new_adapters_lora_parameters_are_trainable():
    model = deployed()
    add_adapter(model, "a", r=2)
    add_adapter(model, "b", r=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_A.b." in n or ".lora_B.b." in n for n in trainable), trainable
    assert {id(p) for p in adapter_parameters(model, "b")} == \
        {id(p) for p in model.parameters() if p.requires_grad}
    assert active_adapters(model) == ["a", "b"]


# ---------------------------------------------------------------------------
# stacking, deleting, switching off
# ---------------------------------------------------------------------------

def test_stacked_adapters_add_up():
    model = deployed(sizes=(16, 8))  # one layer: the adapter deltas are exactly additive
    base = run(model, X)
    add_adapter(model, "a", r=2)
    randomise(model, "a", 1)
    add_adapter(model, "b", r=3)
    randomise(model, "b", 2)
    both = run(model, X)
    set_active(model, ["a"])
    da = run(model, X) - base
    set_active(model, ["b"])
    db = run(model, X) - base
    assert float(da.abs().max()) > 1e-3 and float(db.abs().max()) > 1e-3
    assert torch.allclose(both, base + da + db, atol=1e-5)


def test_deleting_an_adapter_restores_the_previous_output_exactly():
    model = deployed()
    add_adapter(model, "a", r=2)
    randomise(model, "a", 1)
    y_a = run(model, X)
    add_adapter(model, "b", r=2)
    randomise(model, "b", 2)
    assert not torch.allclose(run(model, X), y_a)
    delete_adapter(model, "b")
    assert torch.equal(run(model, X), y_a)
    assert list(adapters(model)) == ["a"] and active_adapters(model) == ["a"]
    with pytest.raises(RmloraError):
        delete_adapter(model, "b")


def test_no_active_adapter_gives_the_base_output():
    model = deployed()
    base = run(model, X)
    add_adapter(model, "a", r=2)
    randomise(model, "a", 1)
    assert not torch.allclose(run(model, X), base)
    set_active(model, [])
    assert torch.equal(run(model, X), base)
    assert active_adapters(model) == []
    set_active(model, ["a"])
    assert not torch.allclose(run(model, X), base)
    with pytest.raises(RmloraError):
        set_active(model, ["nope"])


def test_adapters_on_convolution_layers():
    """An adapter on analogue Conv1d/Conv2d layers computes digitally; the model still runs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(18, 4))
    deploy(model, SimulatedChip("ideal"))
    x = torch.randn(2, 2, 8)
    base = run(model, x)
    add_adapter(model, "a", r=2)
    assert torch.allclose(run(model, x), base, atol=1e-6)  # B starts at zero
    assert len(analog_layers(model)) == 2  # the LoRA A/B convolutions are digital, not on the chip
    randomise(model, "a", 1)
    assert not torch.allclose(run(model, x), base)

    torch.manual_seed(0)
    model2 = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 36, 4))
    deploy(model2, SimulatedChip("ideal"))
    x2 = torch.randn(2, 2, 8, 8)
    base2 = run(model2, x2)
    add_adapter(model2, "a", r=2)
    assert torch.allclose(run(model2, x2), base2, atol=1e-6)


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    model = deployed()
    fresh = copy.deepcopy(model)  # the same chip cells, no adapter
    add_adapter(model, "a", r=3, alpha=6.0, bits=8)
    randomise(model, "a", 1)
    y = run(model, X)
    path = tmp_path / "a.safetensors"
    save_adapter(model, "a", path)

    tensors = load_file(str(path))
    codes = {k: v for k, v in tensors.items() if k.endswith(".codes")}
    assert len(codes) == 4  # A and B of two layers
    for v in codes.values():
        assert v.dtype == torch.int8
        assert int(v.abs().max()) <= 127
    with safe_open(str(path), "pt") as f:
        assert "rmlora_adapter" in (f.metadata() or {})

    spec = load_adapter(fresh, path)
    assert (spec.name, spec.r, spec.alpha, spec.bits) == ("a", 3, 6.0, 8)
    assert active_adapters(fresh) == ["a"]
    assert torch.allclose(run(fresh, X), y, rtol=0, atol=1e-6)


def test_save_refuses_to_overwrite(tmp_path):
    model = deployed()
    add_adapter(model, "a", r=2)
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(RmloraError, match="exists"):
        save_adapter(model, "a", path)
    assert path.read_bytes() == b"keep me"


def test_load_of_a_corrupt_file_raises(tmp_path):
    model = deployed()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RmloraError):
        load_adapter(model, path)
    assert adapters(model) == {}
    with pytest.raises(RmloraError):
        load_adapter(model, tmp_path / "missing.safetensors")


def test_load_into_a_mismatched_model_raises(tmp_path):
    model = deployed(sizes=(16, 32, 8))
    add_adapter(model, "a", r=2)
    path = tmp_path / "a.safetensors"
    save_adapter(model, "a", path)

    other = deployed(sizes=(16, 24, 8))  # same layer names, other shapes
    base = run(other, X)
    with pytest.raises(RmloraError):
        load_adapter(other, path)
    assert adapters(other) == {}
    assert torch.equal(run(other, X), base)

    three = deployed(sizes=(16, 8))  # layer "2" does not exist
    with pytest.raises(RmloraError):
        load_adapter(three, path)
    assert adapters(three) == {}


# ---------------------------------------------------------------------------
# SRAM capacity
# ---------------------------------------------------------------------------

def test_adapter_bits_count_codes_and_scales():
    model = deployed(sizes=(16, 32, 8))
    add_adapter(model, "a", r=2, bits=8)
    # A: 2x16 and 2x32, B: 32x2 and 8x2 -> 176 weights x 8 bits + 4 scales x 32 bits
    assert adapter_bits(model, "a") == 176 * 8 + 4 * 32


def _sram_refusal():
    model = deployed(sizes=(16, 32, 8))
    sram = SramBuffer(4096)
    add_adapter(model, "small", r=2, sram=sram)  # 1536 bits
    randomise(model, "small", 1)
    y = run(model, X)
    assert sram.used_bits == 1536
    with pytest.raises(RmloraError) as info:
        add_adapter(model, "big", r=8, sram=sram)  # 704 weights x 8 + 128 = 5760 bits
    return model, sram, y, str(info.value)


def test_sram_refuses_an_adapter_that_does_not_fit():
    model, sram, _, msg = _sram_refusal()
    assert "5760" in msg  # what the adapter needs
    assert "4096" in msg and str(4096 - 1536) in msg  # capacity and what is free
    assert "big" not in adapters(model)
    assert all("big" not in layer.lora_A for layer in lora_layers(model))
    assert sram.used_bits == 1536 and "big" not in sram.blocks


def test_sram_refusal_leaves_the_active_adapters_as_they_were():
    model, _, y, _ = _sram_refusal()
    assert active_adapters(model) == ["small"]
    assert torch.equal(run(model, X), y)


# ---------------------------------------------------------------------------
# fake quantisation
# ---------------------------------------------------------------------------

@settings(deadline=None, max_examples=25)
@given(bits=st.integers(2, 8), seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40))
def test_fake_quant_takes_at_most_2_pow_bits_minus_1_values(bits, seed, rows):
    w = torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))
    q = FakeQuant(bits)(w)
    assert q.unique().numel() <= 2 ** bits - 1
    codes, scale = int_codes(w, bits)
    assert torch.allclose(q, codes * scale)
    assert float((q - w).abs().max()) <= float(scale) / 2 * (1 + 1e-4)


def test_fake_quant_passes_gradients_straight_through():
    w = torch.randn(5, 7, requires_grad=True)
    (FakeQuant(4)(w) * torch.arange(35.0).view(5, 7)).sum().backward()
    assert torch.equal(w.grad, torch.arange(35.0).view(5, 7))
    with pytest.raises(ValueError):
        FakeQuant(1)


def test_adapter_weights_are_quantised_in_the_forward_pass():
    model = deployed()
    add_adapter(model, "a", r=4, bits=3)
    randomise(model, "a", 1)
    for layer in lora_layers(model):
        assert layer.lora_A["a"].weight.unique().numel() <= 2 ** 3 - 1
        assert layer.lora_B["a"].weight.unique().numel() <= 2 ** 3 - 1


def test_digital_rows_append_new_classes():
    model = deployed(sizes=(16, 8))
    base = run(model, X)
    head = DigitalRows(model, 16, 3)
    y = run(head, X)
    assert y.shape == (6, 11)
    assert torch.equal(y[:, :8], base)
    assert head.bits(8) == 3 * 16 * 8 + 3 * 32
