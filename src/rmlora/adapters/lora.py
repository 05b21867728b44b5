"""LoRA adapters (peft) on the analogue layers, held as INT-n weights in SRAM.

An adapter adds s·B(Ax) to an analogue layer's output, computed by the
digital unit: A (r x in) and B (out x r) are quantised to ``bits`` with one
scale per tensor, and trained quantisation-aware (straight-through).
Several named adapters may be stacked (all active ones add up); deleting one
removes its contribution exactly. Adapter training never touches the
conductances: the analogue weights are buffers of the chip, not parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from rmlora.adapters.quant import FakeQuant, int_codes
from rmlora.adapters.sram import SramBuffer
from rmlora.errors import RmloraError
from rmlora.hardware.layers import AnalogLayer


@dataclass(frozen=True)
class AdapterSpec:
    """What defines an adapter: rank, alpha (scale s = alpha/r), bits, target layers."""

    name: str
    r: int
    alpha: float
    bits: int
    targets: tuple[str, ...]


def analog_targets(model: nn.Module) -> list[str]:
    """Names of the analogue layers, as peft addresses them (wrappers looked through)."""
    out = []
    for n, m in model.named_modules():
        if isinstance(m, AnalogLayer):
            out.append(n[: -len(".base_layer")] if n.endswith(".base_layer") else n)
    return out


def logical_name(name: str) -> str:
    """A layer's name with the ``.base`` of digital-row wrappers (:class:`DigitalRows`) taken
    off: ``head.base.base`` → ``head``; adapter target patterns match these names."""
    while name.endswith(".base"):
        name = name[: -len(".base")]
    return name


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """``targets`` as the analogue layers of ``model`` are named now: a name saved before new
    output rows wrapped its layer (``head``) finds it again (``head.base``)."""
    by_logical: dict[str, str] = {}
    for t in analog_targets(model):
        by_logical.setdefault(logical_name(t), t)
    known = set(analog_targets(model))
    return [t if t in known else by_logical.get(logical_name(t), t) for t in targets]


def _digital_twin(m: nn.Module) -> nn.Module:
    """A plain torch layer with the weights of an (unprogrammed) analogue one."""
    base = next(c for c in type(m).__mro__ if c in (nn.Linear, nn.Conv1d, nn.Conv2d))
    m.__class__ = base  # the analogue subclasses add no state before deployment
    return m


def _registry(model: nn.Module) -> dict[str, AdapterSpec]:
    if not hasattr(model, "_rmlora_adapters"):
        model._rmlora_adapters = {}
    return model._rmlora_adapters


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def adapters(model: nn.Module) -> dict[str, AdapterSpec]:
    """The adapters of ``model`` by name, in the order they were added."""
    return dict(_registry(model))


def adapter_bits(model: nn.Module, name: str) -> int:
    """SRAM bits of adapter ``name``: its INT codes plus one 32-bit scale per tensor."""
    spec = _registry(model)[name]
    total = 0
    for layer in lora_layers(model):
        for d in (layer.lora_A, layer.lora_B):
            if name in d:
                total += d[name].weight.numel() * spec.bits + 32
    return total


def add_adapter(model: nn.Module, name: str, *, r: int = 4, alpha: float = 8.0, bits: int = 8,
                targets: list[str] | None = None, sram: SramBuffer | None = None) -> AdapterSpec:
    """Add a LoRA adapter ``name`` on ``targets`` (default: every analogue layer).

    The new adapter becomes trainable (every other parameter is frozen) and is
    activated on top of the adapters already active. With ``sram`` the adapter
    must fit, or it is removed again and :class:`RmloraError` names the sizes.
    """
    reg = _registry(model)
    if name in reg:
        raise RmloraError(f"adapter {name!r} already exists")
    if r < 1:
        raise RmloraError(f"adapter rank must be >= 1, got {r}")
    known = analog_targets(model)
    targets = list(targets) if targets is not None else known
    missing = [t for t in targets if t not in known]
    if missing or not targets:
        raise RmloraError(f"adapter targets {missing or targets} are not analogue layers; known: {known}")
    active_before = active_adapters(model)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                     init_lora_weights=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inject_adapter_in_model(cfg, model, adapter_name=name)
    for layer in lora_layers(model):
        for d in (layer.lora_A, layer.lora_B):
            if name in d and isinstance(d[name], AnalogLayer):
                d[name] = _digital_twin(d[name])  # peft copies the base class: A and B are digital
            if name in d and not parametrize.is_parametrized(d[name], "weight"):
                parametrize.register_parametrization(d[name], "weight", FakeQuant(bits))
    spec = AdapterSpec(name, r, float(alpha), bits, tuple(targets))
    reg[name] = spec
    if sram is not None:
        try:
            sram.allocate(name, adapter_bits(model, name))
        except RmloraError:
            delete_adapter(model, name)
            set_active(model, active_before)
            raise
    set_active(model, active_before + [name], trainable=name)
    return spec


def active_adapters(model: nn.Module) -> list[str]:
    for layer in lora_layers(model):
        return [a for a in layer.active_adapters if a in _registry(model)]
    return []


def set_active(model: nn.Module, names: list[str], trainable: str | None = None) -> None:
    """Activate exactly ``names`` (their outputs add up); only ``trainable`` gets gradients."""
    reg = _registry(model)
    unknown = [n for n in names if n not in reg]
    if unknown:
        raise RmloraError(f"unknown adapter(s) {unknown}; known: {list(reg)}")
    for layer in lora_layers(model):
        here = [n for n in names if n in layer.lora_A]
        layer.set_adapter(here)
        layer._active_adapter = here  # an empty list switches every adapter off
    for p in model.parameters():
        p.requires_grad_(False)
    if trainable is not None:
        if trainable not in names:
            raise RmloraError(f"trainable adapter {trainable!r} must be active")
        for layer in lora_layers(model):
            for d in (layer.lora_A, layer.lora_B):
                if trainable in d:
                    for p in d[trainable].parameters():
                        p.requires_grad_(True)


def delete_adapter(model: nn.Module, name: str, sram: SramBuffer | None = None) -> None:
    """Remove adapter ``name``: its contribution disappears exactly."""
    reg = _registry(model)
    if name not in reg:
        raise RmloraError(f"unknown adapter {name!r}; known: {list(reg)}")
    keep = [a for a in active_adapters(model) if a != name]
    for layer in lora_layers(model):
        if name in layer.lora_A:
            layer.delete_adapter(name)
    del reg[name]
    if sram is not None:
        sram.release(name)
    set_active(model, keep)


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    out = []
    for layer in lora_layers(model):
        for d in (layer.lora_A, layer.lora_B):
            if name in d:
                out.extend(d[name].parameters())
    return out


def _tensors(model: nn.Module, name: str, logical: bool = False) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s A and B modules by ``<layer>.lora_A``/``.lora_B`` (``logical``: layer
    names as :func:`logical_name` gives them, as files store them)."""
    out = {}
    for mod_name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and name in layer.lora_A:
            key = logical_name(mod_name) if logical else mod_name
            for part, d in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                out[f"{key}.{part}"] = d[name]
    return out


def save_adapter(model: nn.Module, name: str, path: str | Path) -> None:
    """Write adapter ``name`` as safetensors: the INT codes (int8/int16) and scales the SRAM
    holds, with its spec in the metadata. Never overwrites an existing file."""
    path = Path(path)
    if path.exists():
        raise RmloraError(f"{path} already exists; not overwritten")
    spec = _registry(model)[name]
    tensors = {}
    dtype = torch.int8 if spec.bits <= 8 else torch.int16
    for key, mod in _tensors(model, name, logical=True).items():
        codes, scale = int_codes(mod.parametrizations.weight.original.detach(), spec.bits)
        tensors[f"{key}.codes"] = codes.to(dtype).contiguous()
        tensors[f"{key}.scale"] = scale.reshape(1).float()
    meta = {"rmlora_adapter": json.dumps({**asdict(spec), "targets": [logical_name(t) for t in spec.targets]})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _spec_from(meta: dict[str, str], where: Path) -> AdapterSpec:
    """The :class:`AdapterSpec` stored in a file's metadata, every field checked."""
    try:
        d = json.loads(meta["rmlora_adapter"])
    except (KeyError, ValueError, RecursionError):
        raise RmloraError(f"{where}: not an rmlora adapter file (no adapter description)") from None
    fields = {"name": str, "r": int, "alpha": float, "bits": int, "targets": list}
    if not isinstance(d, dict) or set(d) != set(fields):
        raise RmloraError(f"{where}: the adapter description must hold exactly {', '.join(fields)}")
    for k, t in fields.items():
        v = d[k]
        ok = (isinstance(v, (int, float)) and math.isfinite(v) if t is float else isinstance(v, t))
        if isinstance(v, bool) or not ok:
            raise RmloraError(f"{where}: adapter {k} must be a finite {t.__name__}, got {v!r}")
    if d["r"] < 1 or d["alpha"] <= 0 or not 2 <= d["bits"] <= 16:
        raise RmloraError(f"{where}: adapter rank must be >= 1, alpha > 0 and bits in 2..16, got "
                          f"r={d['r']}, alpha={d['alpha']}, bits={d['bits']}")
    if not d["targets"] or any(not isinstance(t, str) for t in d["targets"]):
        raise RmloraError(f"{where}: adapter targets must be a non-empty list of layer names")
    return AdapterSpec(d["name"], d["r"], float(d["alpha"]), d["bits"], tuple(d["targets"]))


def _check_tensors(tensors: dict[str, torch.Tensor], spec: AdapterSpec, where: Path) -> None:
    """Every target's A and B as integer codes within ±(2**(bits-1) - 1) and one finite, positive
    scale each; nothing else."""
    want = {f"{t}.{part}.{kind}" for t in spec.targets for part in ("lora_A", "lora_B")
            for kind in ("codes", "scale")}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or extra:
        raise RmloraError(f"{where}: " + (f"tensor {missing[0]} is missing" if missing else
                                          f"unexpected tensor {extra[0]}"))
    top = 2 ** (spec.bits - 1) - 1
    for key, v in tensors.items():
        if key.endswith(".codes"):
            if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
                raise RmloraError(f"{where}: {key} must hold integer codes, got {v.dtype}")
            if v.numel() and int(v.to(torch.int64).abs().max()) > top:
                raise RmloraError(f"{where}: {key} holds codes beyond ±{top} ({spec.bits} bits)")
        elif v.numel() != 1 or not v.is_floating_point() or not bool(torch.isfinite(v).all()) or float(v) <= 0:
            raise RmloraError(f"{where}: {key} must be one finite scale > 0")


def load_adapter(model: nn.Module, path: str | Path, name: str | None = None,
                 sram: SramBuffer | None = None) -> AdapterSpec:
    """Add the adapter stored at ``path`` (see :func:`save_adapter`) and activate it.

    The file is checked whole first (description, every tensor present, integer codes
    in range, finite scales); a file that fails any check, or does not fit the model or
    the SRAM, leaves nothing registered or allocated."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RmloraError(f"adapter file {path} does not exist" if not path.exists() else
                          f"adapter file {path} is not a file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, ValueError, TypeError, OSError, RuntimeError) as exc:
        raise RmloraError(f"{path}: not an rmlora adapter file ({exc.__class__.__name__})") from None
    spec = _spec_from(meta, path)
    _check_tensors(tensors, spec, path)
    targets = resolve_targets(model, list(spec.targets))
    spec = AdapterSpec(name or spec.name, spec.r, spec.alpha, spec.bits, tuple(targets))
    add_adapter(model, spec.name, r=spec.r, alpha=spec.alpha, bits=spec.bits, targets=targets, sram=sram)
    try:
        mods = _tensors(model, spec.name, logical=True)
        if set(f"{k}.codes" for k in mods) != {k for k in tensors if k.endswith(".codes")}:
            raise RmloraError(f"{path}: adapter does not match this model's layers")
        with torch.no_grad():
            for key, mod in mods.items():
                w = tensors[f"{key}.codes"].float() * tensors[f"{key}.scale"].float()
                orig = mod.parametrizations.weight.original
                if orig.shape != w.shape:
                    raise RmloraError(f"{path}: {key} has shape {tuple(w.shape)}, the model needs "
                                      f"{tuple(orig.shape)}")
                orig.copy_(w.reshape(orig.shape))
    except BaseException:  # nothing half-loaded stays registered or allocated
        delete_adapter(model, spec.name, sram)
        raise
    return spec
