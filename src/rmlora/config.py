"""Configuration as data: training budgets, the chip, the adapters, the scenario.

Every configuration is a dataclass whose fields carry their help
(``field(metadata={"help": ...})``), is validated in ``__post_init__``, and
round-trips through plain dicts (``to_dict`` / ``from_dict``): that is what
``run.json`` records and what a TOML file (``rmlora demo --config FILE.toml``)
holds. ``from_dict`` refuses an unknown key or a value of the wrong type with
one :class:`~rmlora.errors.RmloraError` naming the key.

A scenario is an ordered list of :class:`Request` s::

    learn:s1+s2+s3+s4+s5, forget:s3, add:s6, repair, age:1d, undo:1

(``+`` joins the classes of one request; requests are numbered from 0, the
``learn`` request being 0).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from rmlora.errors import RmloraError, closest


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing the configs use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def plain(v: Any) -> Any:
    """``v`` as plain JSON-able data: dataclasses with ``to_dict`` through it, sequences as lists,
    dicts item by item, paths as strings."""
    if dataclasses.is_dataclass(v) and hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


class ConfigBase:
    """``to_dict``/``from_dict`` with strict keys and types, for the dataclass configs."""

    #: the name used in error messages ("chip", "adapter", ...)
    section: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str | None = None):
        """Build from a plain dict; unknown keys and wrongly typed values are refused."""
        where = where or cls.section
        if d is not None and not isinstance(d, dict):
            raise RmloraError(f"{where}: expected a table of keys, got {type(d).__name__}")
        d = dict(d or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise RmloraError(f"{where}: unknown key {unknown[0]!r}{closest(unknown[0], fields)}; known: "
                              f"{', '.join(fields)}")
        kw = {}
        for name, value in d.items():
            tp = hints[name]
            sub = _config_class(tp)
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, f"{where}.{name}")
            elif sub is not None and isinstance(value, list):
                value = [sub.from_dict(v, f"{where}.{name}[{i}]") if isinstance(v, dict)
                         else sub.parse(v) if isinstance(v, str) and hasattr(sub, "parse") else v
                         for i, v in enumerate(value)]
            if not _type_ok(value, tp) and not (sub is not None and isinstance(value, sub)):
                raise RmloraError(f"{where}.{name}: expected {_type_name(tp)}, got {value!r}")
            kw[name] = value
        try:
            return cls(**kw)
        except TypeError as exc:  # a required field missing
            raise RmloraError(f"{where}: {exc}") from None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name → help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _config_class(tp: Any) -> type | None:
    """The ConfigBase subclass inside an annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        return tp
    for a in typing.get_args(tp):
        c = _config_class(a)
        if c is not None:
            return c
    return None


def _positive_int(where: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise RmloraError(f"{where} must be an integer >= {minimum}, got {v!r}")


def _finite(where: str, v: Any, minimum: float | None = None, strict: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RmloraError(f"{where} must be a finite number, got {v!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise RmloraError(f"{where} must be {'>' if strict else '>='} {minimum}, got {v!r}")


# --------------------------------------------------------------------------- training
@dataclass
class TrainConfig(ConfigBase):
    """Steps, Adam learning rate, batch size, how often to validate (one training stage)."""

    section: ClassVar[str] = "train"
    steps: int = _help("optimiser steps", 300)
    lr: float = _help("Adam learning rate", 3e-3)
    batch_size: int = _help("examples per step", 32)
    eval_every: int = _help("validate every this many steps (the best validation state is kept)", 25)
    weight_decay: float = _help("Adam weight decay", 0.0)

    def __post_init__(self) -> None:
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_every", self.eval_every, 0)
        _finite("lr", self.lr, 0.0, strict=True)
        _finite("weight_decay", self.weight_decay, 0.0)

    @classmethod
    def scaled(cls, steps: int, lr: float, *, scale: float = 1.0, **kw) -> TrainConfig:
        """``steps`` times ``scale`` (a workload's quick run), never fewer than 10."""
        return cls(steps=max(10, int(steps * scale)), lr=lr, **kw)


@dataclass
class Budgets(ConfigBase):
    """Training budget of each kind of stage; None keeps the workload's default."""

    section: ClassVar[str] = "budgets"
    pretrain: TrainConfig | None = _help("float pretraining and the retrained reference", None)
    forget_lora: TrainConfig | None = _help("a forget request on the adapter path", None)
    forget_full: TrainConfig | None = _help("a forget request on the full update", None)
    learn_lora: TrainConfig | None = _help("an add or repair request on the adapter path", None)
    learn_full: TrainConfig | None = _help("an add or repair request on the full update", None)


# --------------------------------------------------------------------------- chip
@dataclass
class ChipConfig(ConfigBase):
    """The chip every path runs on (built by :func:`rmlora.hardware.make_chip`)."""

    section: ClassVar[str] = "chip"
    #: converter range modes the simulator implements
    RANGE_MODES: ClassVar[tuple[str, ...]] = ("calibrated", "per-vector")
    BACKENDS: ClassVar[tuple[str, ...]] = ("simulator",)
    #: converter resolutions accepted (bits): 24 is beyond any SAR ADC of a CIM macro but keeps the
    #: converter codes exact in float32 (2**24), the compiled kernels' precision
    BITS_RANGE: ClassVar[tuple[int, int]] = (1, 24)

    preset: str = _help("device preset name (rmlora presets) or JSON file", "rram-180nm")
    profile: str = _help("technology profile name or JSON file (energy and time constants)", "cmos-180nm")
    tile: int = _help("tile rows = columns (cells)", 128)
    dac_bits: int | None = _help("DAC resolution (bits); None: ideal inputs", 8)
    adc_bits: int | None = _help("ADC resolution (bits); None: ideal outputs", 8)
    range_mode: str = _help("how converter full scales are set: calibrated (frozen per layer and tile at "
                            "deployment on training inputs) or per-vector (each input vector scaled by its own "
                            "max |x| before the DAC, ADC ranges frozen)", "calibrated")
    calibration_percentile: float = _help("percentile of |input| and |tile current| over the calibration "
                                          "inputs that sets the DAC and ADC full scales (99.9: checked on "
                                          "validation data by benchmarks/calibration_percentile.py; 99 clips "
                                          "too much, 99.9-100 tie)", 99.9)
    bit_serial: bool = _help("bit-serial inputs: the DAC codes applied one two's-complement bit plane at a "
                             "time, shift-and-add after the ADC (dac_bits planes per input vector)", False)
    read_noise: bool = _help("fresh read noise in every MVM, drawn for each input vector", True)
    seed: int | None = _help("seed of the chip's cells and read noise; None: derived from the run's seed", None)
    backend: str = _help("chip backend: simulator", "simulator")
    device: str = _help("torch device of the simulated arrays (cpu, cuda)", "cpu")

    def __post_init__(self) -> None:
        _positive_int("chip.tile", self.tile, 2)
        lo, hi = self.BITS_RANGE
        for name in ("dac_bits", "adc_bits"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
                raise RmloraError(f"chip.{name} must be an integer in {lo}..{hi} or None, got {v!r}")
        if self.range_mode not in self.RANGE_MODES:
            raise RmloraError(f"chip.range_mode must be one of {', '.join(self.RANGE_MODES)}, got {self.range_mode!r}")
        _finite("chip.calibration_percentile", self.calibration_percentile, 50.0, strict=True)
        if self.bit_serial and self.dac_bits is None:
            raise RmloraError("chip.bit_serial needs an integer chip.dac_bits (the bit planes per input)")
        if self.calibration_percentile > 100:
            raise RmloraError(f"chip.calibration_percentile must lie in (50, 100], got {self.calibration_percentile}")
        if self.backend not in self.BACKENDS:
            raise RmloraError(f"chip.backend must be one of {', '.join(self.BACKENDS)}, got {self.backend!r}")
        if self.seed is not None and not 0 <= self.seed < 2 ** 63:
            raise RmloraError(f"chip.seed must be in 0..2**63-1, got {self.seed}")


# --------------------------------------------------------------------------- adapters
@dataclass
class AdapterConfig(ConfigBase):
    """A LoRA adapter as peft's ``LoraConfig`` describes it, plus its SRAM precision."""

    section: ClassVar[str] = "adapter"
    rank: int = _help("LoRA rank r", 4)
    alpha: float = _help("LoRA alpha (scale s = alpha / r)", 8.0)
    target_modules: list[str] | None = _help("glob patterns of the analogue layers that get adapters; None: all",
                                             None)
    bits: int = _help("INT precision of the adapter weights in SRAM (bits)", 8)

    def __post_init__(self) -> None:
        _positive_int("adapter.rank", self.rank)
        _finite("adapter.alpha", self.alpha, 0.0, strict=True)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise RmloraError(f"adapter.bits must be an integer in 2..16, got {self.bits!r}")
        if self.target_modules is not None:
            if not self.target_modules or any(not isinstance(t, str) or not t.strip() for t in self.target_modules):
                raise RmloraError("adapter.target_modules must be a non-empty list of layer name patterns")

    def lora_config(self, targets: list[str]):
        """peft's ``LoraConfig`` for the resolved layer names ``targets``."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=targets, lora_dropout=0.0, bias="none")


# --------------------------------------------------------------------------- requests
REQUEST_KINDS = ("learn", "forget", "add", "repair", "age", "undo")
_DURATION = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31557600.0}


def parse_duration(text: str) -> float:
    """Seconds of ``"3600"``, ``"90s"``, ``"10m"``, ``"12h"``, ``"1d"``, ``"2w"``, ``"1y"``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([smhdwy]?)\s*", str(text), re.I)
    if not m:
        raise RmloraError(f"age: {text!r} is not a duration (e.g. 3600, 90s, 10m, 12h, 1d, 2w, 1y)")
    v = float(m.group(1)) * _DURATION.get(m.group(2).lower() or "s", 1.0)
    if not math.isfinite(v) or v <= 0:
        raise RmloraError(f"age: the duration must be > 0 s, got {text!r}")
    return v


@dataclass
class Request(ConfigBase):
    """One step of a scenario: ``learn``/``forget``/``add`` CLASSES, ``forget`` FRACTION (a random
    sample of the training examples, e.g. ``forget:10%``), ``repair``, ``age`` DURATION (s),
    ``undo`` REQUEST (its index). ``learn:all`` learns every class of the data set."""

    section: ClassVar[str] = "requests"
    kind: str = _help("learn, forget, add, repair, age or undo")
    classes: list[str] = _help("classes (names or indices) of learn, forget and add", default_factory=list)
    seconds: float | None = _help("age: retention time (s)", None)
    target: int | None = _help("undo: index of the request to undo (the learn request is 0)", None)
    fraction: float | None = _help("forget: share of the kept classes' training examples forgotten, drawn at "
                                   "random across classes (in (0, 1)); None: forget whole classes", None)

    def __post_init__(self) -> None:
        if self.kind not in REQUEST_KINDS:
            raise RmloraError(f"unknown request kind {self.kind!r}; known: {', '.join(REQUEST_KINDS)}")
        self.classes = [str(c).strip() for c in self.classes]
        if self.fraction is not None:
            if self.kind != "forget":
                raise RmloraError(f"{self.kind} takes no fraction; only forget:10% forgets a random sample")
            _finite("forget fraction", self.fraction)
            if not 0 < self.fraction < 1:
                raise RmloraError(f"a forget fraction must lie in (0, 1) (e.g. forget:10%), got {self.fraction:g}")
            if self.classes:
                raise RmloraError("forget takes classes or a fraction, not both")
        elif self.kind in ("learn", "forget", "add"):
            if not self.classes or any(not c for c in self.classes):
                raise RmloraError(f"{self.kind}: name at least one class (e.g. {self.kind}:s3)")
            if len(set(self.classes)) != len(self.classes):
                raise RmloraError(f"{self.kind}: names the same class twice")
        elif self.classes:
            raise RmloraError(f"{self.kind} takes no classes")
        if self.kind == "age":
            if self.seconds is None:
                raise RmloraError("age needs a duration (e.g. age:1d)")
            _finite("age seconds", self.seconds, 0.0, strict=True)
        elif self.seconds is not None:
            raise RmloraError(f"{self.kind} takes no duration")
        if self.kind == "undo":
            if self.target is None or isinstance(self.target, bool) or self.target < 1:
                raise RmloraError("undo needs the index of an earlier request >= 1 (e.g. undo:1)")
        elif self.target is not None:
            raise RmloraError(f"{self.kind} takes no request index")

    @classmethod
    def parse(cls, text: str) -> Request:
        """One request from its text form (``forget:s3+s4``, ``age:1d``, ``undo:2``, ``repair``)."""
        kind, _, arg = str(text).strip().partition(":")
        kind, arg = kind.strip().lower(), arg.strip()
        if kind not in REQUEST_KINDS:
            raise RmloraError(f"unknown request kind {kind!r} in {text!r}; known: {', '.join(REQUEST_KINDS)}")
        share = re.fullmatch(r"([-+]?[0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*%|([-+]?[0-9]*\.[0-9]+(?:e[-+]?\d+)?)", arg, re.I)
        if kind == "forget" and share:  # forget:10% or forget:0.1 (a class is never named by a decimal)
            return cls(kind, fraction=float(share.group(1)) / 100 if share.group(1) else float(share.group(2)))
        if kind in ("learn", "forget", "add"):
            return cls(kind, [c for c in arg.split("+")] if arg else [])
        if kind == "age":
            return cls(kind, seconds=parse_duration(arg) if arg else None)
        if kind == "undo":
            if not re.fullmatch(r"\d+", arg):
                raise RmloraError(f"undo needs the index of an earlier request (e.g. undo:1), got {text!r}")
            return cls(kind, target=int(arg))
        if arg:
            raise RmloraError(f"{kind} takes no argument, got {text!r}")
        return cls(kind)

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"forget:{100 * self.fraction:g}%"
        if self.kind in ("learn", "forget", "add"):
            return f"{self.kind}:{'+'.join(self.classes)}"
        if self.kind == "age":
            return f"age:{self.seconds:g}s"
        if self.kind == "undo":
            return f"undo:{self.target}"
        return self.kind


def parse_requests(text: str) -> list[Request]:
    """Requests from ``"forget:s3,add:s6,undo:1"`` (comma-separated)."""
    items = [t for t in (s.strip() for s in str(text).split(",")) if t]
    if not items:
        raise RmloraError("--requests is empty: give e.g. forget:s3,add:s6")
    return [Request.parse(t) for t in items]


# --------------------------------------------------------------------------- scenario
@dataclass
class ScenarioConfig(ConfigBase):
    """Everything a scenario run takes (``rmlora demo`` and :func:`rmlora.run_scenario`).

    ``requests`` holds the whole sequence; when it is None the workload's default
    scenario is used, with ``learn``/``forget``/``add`` (if given) replacing its
    classes. ``settings`` overrides fields of the workload's own settings
    (see ``rmlora workloads``); ``adapter`` and ``budgets`` override its adapter and
    training budgets.
    """

    section: ClassVar[str] = "scenario"
    workload: str = _help("face, speaker or style", "face")
    configuration: str | None = _help("the workload's configuration (quick, default; style: quick, cpu, gpu); "
                                      "None: the workload's default", None)
    data_dir: str | None = _help("real data folder (default: $RMLORA_DATA_DIR, else procedural data)", None)
    download: bool = _help("download the real data set when it is not found", False)
    requests: list[Request] | None = _help("the request sequence; None: the workload's default", None)
    learn: list[str] | None = _help("classes of the default scenario's learn request", None)
    forget: list[str] | None = _help("classes of the default scenario's forget request", None)
    add: list[str] | None = _help("classes of the default scenario's add request", None)
    method: str | None = _help("unlearning method (rmlora.methods.METHODS); None: the workload's", None)
    methods: list[str] | None = _help("unlearning methods compared side by side, each on the adapter path and the "
                                      "full update (\"field\": every method of the evaluation, "
                                      "rmlora.methods.FIELD_METHODS); None: only `method`", None)
    seed: int = _help("first seed; seeds seed, seed+1, ... are run", 0)
    seeds: int | None = _help("number of seeds; None: the workload's default", None)
    pretrained: str | None = _help("float weights (pretrained.safetensors of an earlier run) to start from", None)
    hardware_aware: bool = _help("hardware-aware pretraining: float pretraining (and the retrained reference) with "
                                 "weight noise drawn from the chip preset's programming and read noise "
                                 "(rmlora.methods.hwa)", False)
    threads: int = _help("torch CPU threads (capped to the free cores)", 1)
    cache: str | None = _help("folder of pretrained float models, one per seed and setting: a run with the same "
                              "workload settings, data and seed reads its model there instead of training it "
                              "(bit-identical); None: no cache", None)
    progress: bool = _help("progress bars", True)
    chip: ChipConfig = _help("the chip", default_factory=ChipConfig)
    adapter: AdapterConfig | None = _help("adapter shape; None: the workload's default", None)
    budgets: Budgets = _help("training budgets per stage kind", default_factory=Budgets)
    settings: dict[str, Any] = _help("overrides of the workload's settings (field: value)", default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise RmloraError(f"seed must be an integer in 0..2**63-1, got {self.seed!r}")
        if self.seeds is not None:
            _positive_int("seeds", self.seeds)
        _positive_int("threads", self.threads)
        for name in ("learn", "forget", "add"):
            v = getattr(self, name)
            if v is not None:
                v = [str(c).strip() for c in v]
                if not v or any(not c for c in v):
                    raise RmloraError(f"--{name} is empty: name at least one class")
                setattr(self, name, v)
        if self.methods is not None:
            self.methods = [str(m).strip() for m in self.methods]
            if not self.methods or any(not m for m in self.methods):
                raise RmloraError("--methods is empty: name at least one method (or field)")
            if len(set(self.methods)) != len(self.methods):
                raise RmloraError("--methods names the same method twice")
        if self.requests is not None:
            if not self.requests:
                raise RmloraError("requests is empty: give at least one request")
            self.requests = [Request.parse(r) if isinstance(r, str) else r for r in self.requests]
            if any(x is not None for x in (self.learn, self.forget, self.add)):
                raise RmloraError("give either requests or --learn/--forget/--add, not both")

    @classmethod
    def from_toml(cls, path: str | Path) -> ScenarioConfig:
        """Read a scenario from a TOML file: top-level keys, ``[chip]``, ``[adapter]``,
        ``[budgets.pretrain]``…, ``[settings]``, ``[[requests]]`` tables (or
        ``requests = "forget:s3,add:s6"``)."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        from rmlora.runinfo import note_input

        path = Path(path)
        if not path.is_file():
            raise RmloraError(f"config file {path} does not exist" if not path.exists()
                              else f"config file {path} is not a file")
        note_input(path, "config")
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RmloraError(f"{path}: not valid TOML ({exc})") from None
        if isinstance(doc.get("requests"), str):
            doc["requests"] = [str(r) for r in parse_requests(doc["requests"])]
        return cls.from_dict(doc, str(path))


__all__ = ["REQUEST_KINDS", "AdapterConfig", "Budgets", "ChipConfig", "ConfigBase", "Request", "ScenarioConfig",
           "TrainConfig", "parse_duration", "parse_requests"]
