"""The one scenario runner: learn → deploy → a sequence of requests → report, on every workload.

The paths ("lanes") living through the same requests:

* ``lora`` — the design: the arrays stay as programmed, every forget, add or
  repair is its own LoRA adapter (plus digital rows for new classes) in SRAM;
  ``undo`` deletes that adapter;
* ``full`` — the baseline: the analogue weights themselves are fine-tuned and
  write-verified; an ``undo`` has to train its way back (relearn an
  un-forgotten class, erase an un-added one);
* ``retrain`` — the reference, whenever the kept classes change: a model trained
  from scratch on the kept data (float), deployed on a fresh chip, then trained on
  the chip as the full update trains (its forget budget, fine-tuning on the kept
  data) — hardware-aware, so that its gap to the update paths is not a
  training-mode effect; ``retrain-float`` is the same model before the on-chip
  training.

With several unlearning methods (``ScenarioConfig.methods``) every method gets
its own ``lora:<method>`` and ``full:<method>`` lane. After the last request the
runner measures what an attacker could (the workload's ``audit``: attack
statistics, linear probe, relearning time), the forgotten data with the forget
adapters switched off, and the cost of merging the adapters into the arrays.

:func:`plan_scenario` checks everything (workload, classes, requests, data,
preset, profile, checkpoint, SRAM) before anything is written;
:func:`run_scenario` runs the seeds and writes the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from rmlora import records
from rmlora.adapters import active_adapters, save_adapter, set_active
from rmlora.config import AdapterConfig, Request, ScenarioConfig, TrainConfig
from rmlora.costs import Ledger, cost_figures, load_profile, ratios
from rmlora.costs.protocols import PathLedgers
from rmlora.costs.report import cost_record
from rmlora.costs.profile import TechProfile
from rmlora.errors import RmloraError
from rmlora.hardware import analog_layers, deploy, make_chip
from rmlora.hardware.deploy import layer_inference
from rmlora.methods.hwa import noise_injection
from rmlora.scenario.retention import retention
from rmlora.methods import fit, is_training_free, resolve_methods
from rmlora.methods.paths import AdapterPath, FullPath, RefPath, adapter_targets
from rmlora.metrics import accuracy_matrix_summary, avg_gap
from rmlora.data.base import plural
from rmlora.runinfo import (RunFolder, Streams, environment, inputs_record, note_input, recording_inputs,
                             utc_now, versions, write_json)
from rmlora.scenario.results import PathResult, PathStep, RequestResult, ScenarioResult, SeedResult
from rmlora.scenario.workload import ClassState, Workload, WorkloadSettings, get_workload

# --------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """A checked scenario: everything resolved, nothing run."""

    config: ScenarioConfig
    workload: Workload
    configuration: str
    settings: WorkloadSettings
    adapter: AdapterConfig
    method: str
    profile: TechProfile
    ds: Any
    requests: list[Request]
    labels: list[list[int]]  # dataset labels of each request's classes
    states: list[ClassState]  # the scenario's classes after each request
    order: list[int]  # every class of the scenario, in the order it enters
    seeds: list[int]
    chip: Any  # the ChipConfig used (on the workload's torch device)
    sram_bits: list[int] = field(default_factory=list)  # SRAM in use after each request (adapter path)
    methods: list[str] = field(default_factory=list)  # the unlearning methods compared (default: [method])

    def lanes(self) -> list[str]:
        """The update lanes: ``lora``/``full`` for one method, ``lora:<m>``/``full:<m>`` for several."""
        return [lane_name(k, m, self.methods) for m in self.methods for k in ("lora", "full")]

    def names(self, labels: list[int]) -> list[str]:
        return [self.ds.names[c] for c in labels]


REFERENCES = ("retrain", "retrain-float")


def lane_name(kind: str, method: str, methods: list[str]) -> str:
    """A lane's key: the path kind alone when one method runs, else ``<kind>:<method>``."""
    return kind if len(methods) <= 1 else f"{kind}:{method}"


def apply_request(state: ClassState, req: Request, labels: list[int], requests: list[Request],
                  all_labels: list[list[int]], undone: set[int], unit: str, index: int) -> ClassState:
    """The classes after request ``req`` (number ``index``); one clear error for an impossible one."""
    s = state.copy()
    if req.kind == "learn":
        if index != 0:
            raise RmloraError(f"request {index} ({req}): learn can only be the first request")
        return ClassState(list(labels), list(labels), [], [])
    if index == 0:
        raise RmloraError(f"the first request must be learn (got {req})")
    if req.kind == "forget" and req.fraction is not None:
        s.samples = s.samples + [index]
    elif req.kind == "forget":
        bad = [c for c, lab in zip(req.classes, labels) if lab not in s.kept]
        if bad:
            raise RmloraError(f"request {index} ({req}): {', '.join(bad)} is not a learned {unit}; forget must "
                              "name learned classes")
        if set(labels) >= set(s.kept):
            raise RmloraError(f"request {index} ({req}): cannot forget every learned {unit}: nothing would be "
                              "left to recognise")
        s.kept = [c for c in s.kept if c not in labels]
        s.added = [c for c in s.added if c not in labels]
        s.forgotten += labels
    elif req.kind == "add":
        bad = [c for c, lab in zip(req.classes, labels) if lab in s.kept]
        if bad:
            raise RmloraError(f"request {index} ({req}): {', '.join(bad)} is already learned; add must name "
                              f"{plural(unit)[2:]} not learned yet")
        gone = [c for c, lab in zip(req.classes, labels) if lab in s.forgotten]
        if gone:
            raise RmloraError(f"request {index} ({req}): {', '.join(gone)} was forgotten; undo that request "
                              "instead of adding it again")
        s.kept += labels
        s.added += labels
    elif req.kind == "undo":
        k = req.target
        if k >= index:
            raise RmloraError(f"request {index} ({req}): there is no earlier request {k} to undo")
        if k in undone:
            raise RmloraError(f"request {index} ({req}): request {k} ({requests[k]}) was already undone")
        target = requests[k]
        if target.kind not in ("forget", "add", "repair"):
            raise RmloraError(f"request {index} ({req}): request {k} ({target}) cannot be undone; only forget, "
                              "add and repair requests can")
        lab = all_labels[k]
        if target.kind == "forget" and target.fraction is not None:
            s.samples = [j for j in s.samples if j != k]
        elif target.kind == "forget":
            s.forgotten = [c for c in s.forgotten if c not in lab]
            s.kept += lab
        elif target.kind == "add":
            still = [c for c in lab if c in s.kept]
            if set(still) >= set(s.kept):
                raise RmloraError(f"request {index} ({req}): undoing {target} would leave no {unit} learned")
            s.kept = [c for c in s.kept if c not in lab]
            s.added = [c for c in s.added if c not in lab]
            s.forgotten += still
    return s


def request_tag(i: int, req: Request, names: list[str]) -> str:
    """The name of request ``i``'s adapter and files: ``1-forget-s3`` (dots, which torch module
    names cannot hold, become underscores)."""
    extra = names or ([f"{100 * req.fraction:g}pct"] if req.fraction is not None else [])
    return (f"{i}-{req.kind}" + (f"-{'-'.join(extra)}" if extra else "")).replace(".", "_")


def _resolve(ds: Any, items: list[str], where: str) -> list[int]:
    """Labels of ``items``; a data set with ``expand`` lets one item name several classes (the
    style workload's ``style:NAME``); ``all`` names every class (``learn:all``)."""
    if [str(i).strip().lower() for i in items] == ["all"] and "all" not in ds.names:
        return list(range(len(ds.names)))
    out = []
    for it in items:
        try:
            out += ds.expand(it) if hasattr(ds, "expand") else [ds.resolve(it)]
        except RmloraError as exc:
            raise RmloraError(f"{where}: {exc}") from None
    if len(set(out)) != len(out):
        raise RmloraError(f"{where} names the same class twice")
    return out


def default_requests(w: Workload, ds: Any, st: WorkloadSettings, cfg: ScenarioConfig) -> list[Request]:
    """learn / forget / add of the workload's default scenario, with the config's classes."""
    learn, forget, add = w.default_classes(ds, st)
    if cfg.learn is not None:  # forget the 2nd and 3rd (style) or the default's position among the learned
        learn_given = cfg.learn
        if cfg.forget is None:
            pos = [list(map(str, learn)).index(str(f)) for f in forget if str(f) in list(map(str, learn))]
            forget = [learn_given[i] for i in pos if i < len(learn_given)] or learn_given[1:2]
        if cfg.add is None:
            taken = set(_resolve(ds, learn_given, "--learn"))
            add = [a for a in add if not taken & set(_resolve(ds, [a], "--add"))]
        learn = learn_given
    forget = cfg.forget if cfg.forget is not None else forget
    add = cfg.add if cfg.add is not None else add
    reqs = [Request("learn", [str(c) for c in learn])]
    if forget:
        reqs.append(Request("forget", [str(c) for c in forget]))
    if add:
        reqs.append(Request("add", [str(c) for c in add]))
    return reqs


def _budgets(st: WorkloadSettings, cfg: ScenarioConfig) -> WorkloadSettings:
    changes = {k: getattr(cfg.budgets, k) for k in ("pretrain", "forget_lora", "forget_full", "learn_lora",
                                                     "learn_full") if getattr(cfg.budgets, k) is not None}
    return st.replace(**changes) if changes else st


def plan_scenario(cfg: ScenarioConfig, *, all_classes: bool = False) -> Plan:
    """Resolve and check ``cfg``; raises :class:`RmloraError` (one line) for anything wrong.

    ``all_classes``: the scenario's classes are every class of the data set (the learned ones
    first), as a device that may be asked to learn any of them later needs."""
    w = get_workload(cfg.workload)
    configuration = cfg.configuration or w.configurations[0]
    if configuration not in w.configurations:
        raise RmloraError(f"unknown configuration {configuration!r} of the {w.name} workload; known: "
                          f"{', '.join(w.configurations)}")
    st = w.settings(configuration)
    if cfg.settings:
        st = st.with_overrides(cfg.settings)
    st = _budgets(st, cfg)
    adapter = cfg.adapter or st.adapter
    method = cfg.method or st.method
    known = w.methods
    if method not in known:
        raise RmloraError(f"unknown method {method!r} for the {w.name} workload; known: {', '.join(known)}")
    try:
        methods = resolve_methods(cfg.methods, known) if cfg.methods else [method]
    except RmloraError as exc:
        raise RmloraError(f"{exc} (the {w.name} workload)") from None
    share = next((r for r in cfg.requests or [] if r.fraction is not None), None)
    if share is not None and not getattr(w, "sample_forgetting", False):
        raise RmloraError(f"{share}: the {w.name} workload forgets {plural(w.unit)[2:]}, not random samples")
    profile = load_profile(cfg.chip.profile)
    chip_cfg = cfg.chip.replace(device=st.device) if hasattr(st, "device") else cfg.chip
    make_chip(chip_cfg, 0)  # validates the preset and the backend before anything is written
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise RmloraError(f"checkpoint {cfg.pretrained} does not exist")
    ds = w.load(cfg.data_dir, cfg.seed, cfg.download)
    requests = list(cfg.requests) if cfg.requests is not None else default_requests(w, ds, st, cfg)
    origin = {}  # where a request's classes came from, when not from the user's request list
    if cfg.requests is None:
        origin = {i: f"--{r.kind}" if getattr(cfg, r.kind) is not None else f"the {w.name} workload's default "
                  f"{r.kind} classes" for i, r in enumerate(requests)}
    if requests[0].kind != "learn":
        requests = default_requests(w, ds, st, cfg)[:1] + requests
        origin = {0: "--learn" if cfg.learn is not None else f"the {w.name} workload's default learn classes",
                  **{i + 1: o for i, o in origin.items()}}
    labels, states, undone = [], [], set()
    state = ClassState()
    for i, r in enumerate(requests):
        where = f"{origin[i]} ({r})" if i in origin else f"request {i} ({r})"
        try:
            lab = _resolve(ds, r.classes, where) if r.classes else []
        except RmloraError as exc:
            if i in origin and not origin[i].startswith("--"):
                raise RmloraError(f"{exc}; name the classes with --learn, --forget and --add, or --requests") from None
            raise
        if lab:  # from here on the request names its classes as the data set does
            r = requests[i] = r.replace(classes=[ds.names[c] for c in lab])
        labels.append(lab)
        state = apply_request(state, r, lab, requests, labels, undone, w.unit, i)
        if len(state.kept) < 2:  # one output class: every accuracy is 100% by construction
            raise RmloraError(f"request {i} ({r}) leaves {plural(w.unit, len(state.kept))} learned "
                              f"({', '.join(ds.names[c] for c in state.kept)}); a scenario must keep at least two, "
                              "or every score is 100% by construction")
        if r.kind == "undo":
            undone.add(r.target)
        states.append(state)
    samples = [i for i, r in enumerate(requests) if r.fraction is not None]
    if samples and cfg.methods and "field" in cfg.methods and "mask" not in cfg.methods:
        methods = [m for m in methods if not is_training_free(m)]  # masking is defined for classes only
    if samples and any(is_training_free(m) for m in methods):
        raise RmloraError(f"request {samples[0]} ({requests[samples[0]]}): output masking removes classes; a "
                          "random-sample forget request has none to mask (leave mask out of --methods)")
    order = []
    for lab in labels + ([list(range(len(ds.names)))] if all_classes else []):
        order += [c for c in lab if c not in order]
    seeds = [cfg.seed + k for k in range(cfg.seeds or st.seeds)]
    if seeds[-1] >= 2 ** 63:
        raise RmloraError(f"seeds {seeds[0]}..{seeds[-1]} pass 2**63-1; choose a smaller --seed")
    plan = Plan(cfg, w, configuration, st, adapter, method, profile, ds, requests, labels, states, order, seeds,
                chip_cfg, methods=methods)
    data = w.prepare(ds, order, st, cfg.seed, torch.Generator())  # refuses classes with too few examples now
    fixed = getattr(st, "split_seed", None) is not None
    for seed in (plan.seeds[:1] if fixed or not samples else plan.seeds):  # every split's random forget sets
        draw_samples(plan, data if seed == cfg.seed else w.prepare(ds, order, st, seed, torch.Generator()))
    check_shadows(plan)
    plan.sram_bits = plan_sram(plan)
    if cfg.pretrained:
        load_weights(w.build_model(len(w.initial_columns(states[0], order)), st), cfg.pretrained)
    return plan


def draw_samples(plan: Plan, data: Any) -> None:
    """Draw every random-sample forget set of ``plan`` on one seed's ``data`` (one clear error for
    a draw that leaves a class with no training example)."""
    for i, r in enumerate(plan.requests):
        if r.fraction is not None:
            before = plan.states[i - 1]
            try:
                data.draw_samples(i, r.fraction, before.kept, before.samples, plan.workload.unit)
            except RmloraError as exc:
                raise RmloraError(f"request {i} ({r}): {exc}") from None


def check_shadows(plan: Plan) -> None:
    """Refuse a likelihood-ratio attack asked for more shadow models than the run provides
    (they are the other seeds' models: a fixed split and seeds − 1 of them at most)."""
    audit = getattr(plan.settings, "audit", None)
    asked = getattr(audit, "shadows", None)
    if asked is None:
        return
    n = len(plan.seeds)
    if getattr(plan.settings, "split_seed", None) is None:
        raise RmloraError(f"the likelihood-ratio attack was asked for {asked} shadow models, but every seed splits "
                          "the data anew; set settings.split_seed so that the other seeds' models can be shadows")
    if not 2 <= asked <= n - 1:
        raise RmloraError(f"the likelihood-ratio attack was asked for {asked} shadow models of each kind, but "
                          f"{n} seed(s) leave {n - 1} other seed(s) to take them from; ask for 2..{max(2, n - 1)} "
                          f"or run at least {max(3, asked + 1)} seeds")


def plan_sram(plan: Plan) -> list[int]:
    """SRAM bits in use after each request on the adapter path, found by adding the adapters and
    rows to a probe of the model (the same :class:`AdapterPath` and SRAM accounting the run uses);
    refuses the first request that would not fit."""
    w, st = plan.workload, plan.settings
    model = w.build_model(len(w.initial_columns(plan.states[0], plan.order)), st)
    chip = make_chip(plan.chip.replace(read_noise=False), 0, preset="ideal")
    deploy(model, chip, exclude=w.deploy_exclude(st), profile=plan.profile)
    probe = AdapterPath(model, chip, plan.profile, plan.adapter)
    if probe.targets() == []:
        raise RmloraError(f"adapter target_modules {plan.adapter.target_modules} match no analogue layer of the "
                          f"{w.name} model")
    columns = w.initial_columns(plan.states[0], plan.order)
    used, exts = [0], {}
    for i, r in enumerate(plan.requests[1:], start=1):
        name = f"request{i}"
        try:
            if r.kind == "add":
                exts[i] = w.extend(model, "lora", plan.labels[i], columns, chip, name, plan.adapter.bits)
                columns = exts[i].columns
                exts[i].finish()
            if r.kind in ("forget", "add", "repair"):
                probe.begin(name)
            if i in exts and exts[i].digital_bits:
                probe.sram.allocate(f"{name}-rows", exts[i].digital_bits)
            if r.kind == "undo":
                probe.undo(f"request{r.target}")
                probe.sram.release(f"request{r.target}-rows")
        except RmloraError as exc:
            raise RmloraError(f"SRAM: request {i} ({r}): {exc}; nothing was run") from None
        used.append(probe.sram.used_bits)
    return used


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load float weights saved by a run (``pretrained.safetensors``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise RmloraError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    note_input(path, "checkpoint")
    try:
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise RmloraError(f"checkpoint {path} is corrupt or not safetensors ({exc.__class__.__name__})") from None
    own = model.state_dict()
    bad = sorted(set(own) ^ set(sd)) or [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise RmloraError(f"checkpoint {path} does not match the {type(model).__name__} model "
                          f"(first mismatch: {bad[0]})")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RmloraError(f"checkpoint {path}: {bad[0]} holds NaN or infinite values")
    model.load_state_dict(sd)
    for p in model.parameters():
        p.requires_grad_(False)


# --------------------------------------------------------------------------- one seed
@dataclass
class SeedContext:
    """What a workload's :meth:`extras` may use (first seed's run folder, the float model, ...)."""

    seed: int
    data: Any
    state: ClassState
    settings: WorkloadSettings
    adapter: AdapterConfig
    chip_config: Any
    out: Path | None
    build_float: Any
    hardware_aware: bool = False  # whether build_float's model was pretrained with hardware-aware noise
    pretrain_float: Any = None  # (hardware_aware: bool) -> a freshly pretrained float model on the initial classes


@dataclass
class _Lane:
    """One path's live state: its object, columns, ledgers and what each request left."""

    path: Any
    columns: list
    train: Ledger
    deploy: Ledger
    undo: dict[int, tuple[str | None, Any]] = field(default_factory=dict)  # request -> (adapter, extension)
    method: str | None = None  # the unlearning method (None: the plan's); references: None
    masked: dict[int, tuple[list, list]] = field(default_factory=dict)  # request -> (columns before, masked labels)
    seconds: float = 0.0  # wall time of its requests (s)
    float_examples: int = 0  # references: examples seen by their float training (the estimated digital cost)

    def unmasked(self) -> list:
        """The columns with every output mask lifted (what an attacker who flips the switch sees)."""
        cols = list(self.columns)
        for before, labels in self.masked.values():
            for j, c in enumerate(before[:len(cols)]):
                if cols[j] is None and c in labels:
                    cols[j] = c
        return cols


class _SeedRun:
    def __init__(self, plan: Plan, seed: int, out: Path | None) -> None:
        self.plan, self.seed, self.out = plan, seed, out
        self.w, self.st = plan.workload, plan.settings
        self.streams = Streams(seed)
        self.progress = plan.config.progress
        self.timing: dict[str, float] = {}
        self.refs: dict = {}
        self.ref_float: dict = {}
        self.ref_key = None

    # -- helpers ------------------------------------------------------------------
    def build(self, n_columns: int, stream: str) -> nn.Module:
        with self.streams.global_rng(stream):
            return self.w.build_model(n_columns, self.st)

    def pretrain(self, model: nn.Module, classes: list[int], columns: list, stream: str, desc: str,
                 hardware_aware: bool | None = None, samples: list[int] = ()) -> dict:
        """Float training from scratch (the workload's), with the preset's weight noise when the
        scenario is hardware-aware (``hardware_aware`` overrides the scenario's choice), without
        the random samples forgotten by the requests ``samples``."""
        hwa = self.plan.config.hardware_aware if hardware_aware is None else hardware_aware
        extra = {"samples": list(samples)} if samples else {}
        with (noise_injection(model, self.plan.chip.preset, self.streams.generator(f"hwa:{stream}")) if hwa
              else contextlib.nullcontext()):
            pre = self.w.pretrain(model, self.data, classes, columns, self.st, self.streams.seed(stream),
                                  self.progress, desc + (" with hardware-aware noise" if hwa else ""), **extra)
        return {**pre, "hardware_aware": hwa}

    #: settings that act only after pretraining: a pretrained model cached under other values is the same
    CACHE_IGNORES = ("forget", "add", "method", "forget_lora", "forget_full", "learn_lora", "learn_full", "rows_lr",
                     "rehearsal_per_class", "forget_weight", "seeds", "retention_chips", "ga_cap", "unlearn",
                     "method_lr", "audit", "repair", "sweep_levels", "sweep_draws")

    def cached_pretrain(self, model: nn.Module, classes: list[int], columns: list) -> dict:
        """:meth:`pretrain` through the scenario's cache folder (``ScenarioConfig.cache``): the key
        covers the workload, data, classes, seed, every setting that acts on pretraining, the
        hardware-aware flag and the package versions."""
        plan = self.plan
        if not plan.config.cache:
            return self.pretrain(model, classes, columns, "train:pretrain", "pretrain (float)")
        settings = {k: v for k, v in self.st.to_dict().items() if k not in self.CACHE_IGNORES}
        body = {"workload": self.w.name, "data": [plan.ds.kind, plan.ds.source, plan.ds.names], "classes": classes,
                "columns": columns, "seed": self.seed, "settings": settings, "hardware_aware":
                plan.config.hardware_aware, "preset": plan.chip.preset if plan.config.hardware_aware else None,
                "versions": {k: v for k, v in versions().items() if k in ("rmlora", "torch", "numpy")}}
        key = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]
        path = Path(plan.config.cache) / f"pretrained-{self.w.name}-{key}.safetensors"
        if path.exists():
            load_weights(model, path)
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("rmlora_pretrain", "{}"))
            return {**meta, "cache": str(path), "cached": True}
        pre = self.pretrain(model, classes, columns, "train:pretrain", "pretrain (float)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"rmlora_pretrain": json.dumps({k: v for k, v in pre.items()
                                                           if isinstance(v, (int, float, str, bool))})})
        tmp.replace(path)
        return {**pre, "cache": str(path), "cached": False}

    def chip(self, stream: str):
        return make_chip(self.plan.chip, self.streams.seed(stream))

    def ledger(self) -> Ledger:
        """An empty ledger for this chip: its ADC resolution and the PE array's register capacity
        (adapter weights that fit stay in registers; the profile's ``pe_register_bits``)."""
        return Ledger(adc_bits=self.plan.chip.adc_bits or 8, register_bits=self.plan.profile.pe_register_bits)

    def stage(self, lane: _Lane, label: str, kind: str, tcfg: TrainConfig, *, forget: list[int], new: list[int],
              state: ClassState, ext=None, adapter: str | None = None, samples: list[int] = ()
              ) -> tuple[Ledger, Ledger, dict]:
        """Train one update on one path, count it, deploy it."""
        path, model = lane.path, lane.path.model
        train = self.ledger()
        row_ids = {id(p) for p in (ext.params if ext else [])}
        with self.streams.global_rng(f"init:{label}:{path.name}"):  # peft draws the adapter's A from it
            main = [p for p in path.begin(adapter) if id(p) not in row_ids]
        groups: list = [{"params": main}] if main else []
        if ext and ext.params:
            for p in ext.params:
                p.requires_grad_(True)
            groups.append({"params": ext.params, "lr": self.st.rows_lr})
        extra = {"samples": list(samples)} if getattr(self.w, "sample_forgetting", False) else {}
        obj = self.w.objective(kind, model, self.data, forget=forget, new=new, state=state, columns=lane.columns,
                               settings=self.st, method=lane.method or self.plan.method,
                               gen=self.streams.generator(f"batches:{label}:{path.name}"),
                               seed=self.streams.seed(f"validation:{label}") % 2 ** 31, budget=tcfg, **extra)
        try:
            hist = fit(model, groups, obj.loss, tcfg, score_fn=obj.score, after_step=lambda: path.after_step(train),
                       ledger=train, desc=f"{path.name}: {label}", progress=self.progress, counter=self.w.counting)
        finally:
            obj.finish()
        if ext is not None:
            ext.finish()
            for p in ext.params:
                p.requires_grad_(False)
        bits = ext.digital_bits if ext else 0
        if bits and isinstance(path, AdapterPath):
            path.sram.allocate(f"{label}-rows", bits)
        dep = path.deploy(adapter, bits)
        lane.train.merge(train)
        lane.deploy.merge(dep)
        return train, dep, hist

    def step(self, train: Ledger | None, dep: Ledger | None, metrics, hist: dict | None, t0: float,
             adapter: str | None = None, note: str = "") -> PathStep:
        prof = self.plan.profile
        return PathStep(metrics.metrics, metrics.per_class,
                        training_J=train.energy(prof)["total"] if train else 0.0,
                        deployment_J=dep.energy(prof)["total"] if dep else 0.0,
                        deployment_s=dep.time(prof)["total"] if dep else 0.0,
                        best_step=hist.get("best_step") if hist else None, seconds=round(time.perf_counter() - t0, 3),
                        adapter=adapter, note=note)

    def evaluate(self, model: nn.Module, columns: list, state: ClassState, key: str, title: str):
        return self.w.evaluate(model, self.data, state, columns, key=key, title=title)

    # -- the retrained references ------------------------------------------------------
    def reference(self, state: ClassState, index: int) -> dict[str, tuple[nn.Module, list]]:
        """The references for the kept data of ``state`` (one pair per distinct kept data): the
        float-trained model deployed on a fresh chip (``retrain-float``) and the same model trained
        further on the chip as the full update trains (``retrain``)."""
        known = [c for c in self.plan.order if c in state.kept or c in state.forgotten]
        columns = self.w.initial_columns(ClassState(known, known), self.plan.order)
        key = (tuple(sorted(state.kept)), tuple(state.samples), tuple(columns))
        if key not in self.refs:
            n = len(self.refs)
            t0 = time.perf_counter()
            model = self.build(len(columns), f"model:retrain:{n}")
            self.pretrain(model, state.kept, columns, f"train:retrain:{n}",
                          f"retrain on {len(state.kept)} kept classes (reference)", samples=state.samples)
            self.ref_float[key] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            chip = self.chip(f"chip:retrain:{n}")
            rep = deploy(model, chip, exclude=self.w.deploy_exclude(self.st), profile=self.plan.profile,
                         calibrate=self.w.calibration(self.data, state.kept, columns, self.st))
            t_float = time.perf_counter() - t0
            hw = copy.deepcopy(model)
            hw_chip = next(m.core.chip for _, m in analog_layers(hw))
            t1 = time.perf_counter()
            # trained on its own chip as the full update trains (every step write-verified, charged to training)
            tmp = _Lane(FullPath(hw, hw_chip, copy.deepcopy(hw_chip), self.plan.profile), list(columns),
                        self.ledger(), self.ledger())
            self.stage(tmp, f"retrain:{n}", "learn", self.st.forget_budget("full", "ft"), forget=[], new=[],
                       state=state)
            t_hw = time.perf_counter() - t1
            for name, path in (("retrain-float", RefPath("retrain-float", model, chip)), ("retrain", tmp.path)):
                ref = self.ref_lanes[name]
                ref.path, ref.columns = path, list(columns)
                if name == "retrain":
                    ref.train.merge(tmp.train)
                # deployment: the retrained model programmed onto a chip, every cell (a fresh chip's programming)
                ref.deploy.merge(_programming(rep))
                ref.float_examples += self.st.pretrain.steps * self.st.pretrain.batch_size
                ref.seconds += t_float + (t_hw if name == "retrain" else 0.0)
            self.refs[key] = {"retrain": (hw, columns), "retrain-float": (model, columns)}
        self.ref_key = key
        return self.refs[key]

    # -- the run ---------------------------------------------------------------------
    def run(self) -> SeedResult:
        plan, w, st = self.plan, self.w, self.st
        t_start = time.perf_counter()
        self.data = w.prepare(plan.ds, plan.order, st, self.seed, self.streams.generator("data"))
        if any(r.fraction is not None for r in plan.requests):
            draw_samples(plan, self.data)
        if self.out is not None and hasattr(self.data, "grid_dir"):
            self.data.grid_dir = self.out
        t0 = time.perf_counter()
        w.setup(self.data, self.streams.seed("setup") % 2 ** 31, self.progress)
        self.timing["setup"] = round(time.perf_counter() - t0, 2)
        state = plan.states[0]
        cols = w.initial_columns(state, plan.order)
        model = self.build(len(cols), "model:pretrain")
        t0 = time.perf_counter()
        if plan.config.pretrained:
            load_weights(model, plan.config.pretrained)
            pre = {"loaded_from": str(plan.config.pretrained)}
        else:
            pre = self.cached_pretrain(model, state.kept, cols)
        self.timing["pretrain"] = round(time.perf_counter() - t0, 2)
        float_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        final = plan.states[-1]
        pre_eval = self.evaluate(model, cols, ClassState(state.initial, state.kept, [c for c in final.forgotten
                                                                                  if c in state.kept], [],
                                                         final.samples), "pretrained_float", "pretrained (float)")
        pre = {**{k: v for k, v in pre.items() if isinstance(v, (int, float, str))},
               "float_metrics": pre_eval.metrics}
        chip = self.chip("chip:main")
        feed = w.calibration(self.data, state.kept, cols, st)
        dep = deploy(model, chip, exclude=w.deploy_exclude(st), profile=plan.profile, calibrate=feed)
        dep.inference = layer_inference(model, feed, feed.examples, plan.profile, plan.chip.adc_bits or 8)
        lanes: dict[str, _Lane] = {}
        for m in plan.methods:
            for kind in ("lora", "full"):
                mdl = copy.deepcopy(model)
                mchip = next(x.core.chip for _, x in analog_layers(mdl))
                path = (AdapterPath(mdl, mchip, plan.profile, plan.adapter) if kind == "lora"
                        else FullPath(mdl, mchip, copy.deepcopy(chip), plan.profile))
                lanes[lane_name(kind, m, plan.methods)] = _Lane(path, list(cols), self.ledger(), self.ledger(),
                                                                method=m)
        self.ref_lanes = {name: _Lane(None, [], self.ledger(), self.ledger()) for name in REFERENCES}
        self.refs, self.ref_float, self.ref_key = {}, {}, None
        t0 = time.perf_counter()
        # before any request, "forgotten" names the classes the scenario forgets later (a preview)
        preview = ClassState(state.initial, state.kept, [c for c in final.forgotten if c in state.kept], [],
                             final.samples)
        ev = self.evaluate(model, cols, preview, "deployed", f"pretrained, deployed on {plan.chip.preset}")
        steps = {p: self.step(None, None, ev, None, t0) for p in list(lanes) + list(REFERENCES)}
        results = [self._request_result(0, steps)]
        for i, req in enumerate(plan.requests[1:], start=1):
            before, state = state, plan.states[i]
            labels = plan.labels[i]
            tag = request_tag(i, req, plan.names(labels))
            steps = {}
            for name, lane in lanes.items():
                t0 = time.perf_counter()
                steps[name] = self._apply(req, i, tag, lane, before, state, labels)
                lane.seconds += time.perf_counter() - t0
                self.timing[f"{tag}:{name}"] = round(time.perf_counter() - t0, 2)
            if req.kind == "age":
                for pair in self.refs.values():
                    for m, _ in pair.values():
                        _age(m, req.seconds)
            t0 = time.perf_counter()
            refs = self.reference(state, i)
            for name, (ref, ref_cols) in refs.items():
                steps[name] = self.step(None, None, self.evaluate(ref, ref_cols, state, f"{tag}_{name}",
                                                                  f"after {req}: {name} (reference)"), None, t0)
            results.append(self._request_result(i, steps))
        t0 = time.perf_counter()
        audits = self._audit(model, cols, lanes)
        self.timing["audit"] = round(time.perf_counter() - t0, 2)
        return self._finish(results, lanes, dep, pre, model, float_state, state, t_start, audits)

    def _request_result(self, i: int, steps: dict[str, PathStep]) -> RequestResult:
        plan, s = self.plan, self.plan.states[i]
        r = plan.requests[i]
        return RequestResult(i, str(r), r.kind, plan.names(plan.labels[i]), plan.names(s.kept),
                             plan.names(s.forgotten), plan.names(s.added), steps)

    def _apply(self, req: Request, i: int, tag: str, lane: _Lane, before: ClassState, state: ClassState,
               labels: list[int]) -> PathStep:
        """Request ``req`` on one path; its step record."""
        path, st = lane.path, self.st
        lora = path.name == "lora"
        method = lane.method or self.plan.method
        t0 = time.perf_counter()
        adapter = tag if lora else None
        title = f"after {req} ({path.name})"
        samples = [i] if req.fraction is not None else []
        if req.kind == "forget" and is_training_free(method):
            lane.masked[i] = (list(lane.columns), list(labels))
            lane.columns = [None if c in labels else c for c in lane.columns]
            ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
            return self.step(None, None, ev, None, t0, note=f"output masked: {', '.join(self.plan.names(labels))}")
        if req.kind == "forget":
            tr, dp, h = self.stage(lane, tag, "forget", st.forget_budget(path.name, method), forget=labels, new=[],
                                   state=before, adapter=adapter, samples=samples)
            lane.undo[i] = (adapter, None)
        elif req.kind in ("add", "repair"):
            ext = None
            if req.kind == "add":
                with self.streams.global_rng(f"rows:{tag}:{path.name}"):
                    ext = self.w.extend(path.model, path.name, labels, lane.columns, path.chip, tag,
                                        self.plan.adapter.bits)
                lane.columns = ext.columns
            budget = st.learn_lora if lora else st.learn_full
            tr, dp, h = self.stage(lane, tag, "learn", budget, forget=[], new=labels, state=before,
                                   ext=ext, adapter=adapter)
            lane.undo[i] = (adapter, ext)
        elif req.kind == "age":
            _age(path.model, req.seconds)
            if not lora:
                path.field_chip.age(req.seconds)
            return self.step(None, None, self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title),
                             None, t0, note=f"every cell drifted for {req.seconds:g} s")
        else:  # undo
            target = self.plan.requests[req.target]
            t_labels = self.plan.labels[req.target]
            if req.target in lane.masked:  # an output mask is lifted
                before, masked = lane.masked.pop(req.target)
                lane.columns = [before[j] if c is None and j < len(before) and before[j] in masked else c
                                for j, c in enumerate(lane.columns)]
                ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
                return self.step(None, None, ev, None, t0, note="output mask lifted")
            if lora:
                name, ext = lane.undo.pop(req.target)
                path.undo(name)
                if ext is not None and ext.undo is not None:
                    lane.columns = ext.undo(lane.columns)
                    path.sram.release(f"{name}-rows")
                ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
                return self.step(None, None, ev, None, t0, note=f"deleted adapter {name}")
            if target.kind == "repair":
                ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
                return self.step(None, None, ev, None, t0, note="a repair of the weights themselves is kept")
            if target.kind == "forget":  # the full update relearns what it erased
                tr, dp, h = self.stage(lane, tag, "learn", st.learn_full, forget=[], new=t_labels, state=before)
                what = ", ".join(self.plan.names(t_labels)) or f"the samples of request {req.target}"
                note = f"relearned {what} by training"
            else:  # an added class is erased by training
                tr, dp, h = self.stage(lane, tag, "forget", st.forget_budget("full", method), forget=t_labels,
                                       new=[], state=before)
                note = f"erased {', '.join(self.plan.names(t_labels))} by training"
            ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
            return self.step(tr, dp, ev, h, t0, note=note)
        if lora and self.out is not None and adapter:
            (self.out / "weights").mkdir(exist_ok=True)
            suffix = f"-{method}" if len(self.plan.methods) > 1 else ""  # one file per method's adapter
            save_adapter(path.model, adapter, self.out / "weights" / f"adapter-{adapter}{suffix}.safetensors")
        ev = self.evaluate(path.model, lane.columns, state, f"{tag}_{path.name}", title)
        return self.step(tr, dp, ev, h, t0, adapter=adapter)

    # -- what an attacker could learn after the last request ----------------------------
    def _audit(self, model: nn.Module, cols: list, lanes: dict[str, _Lane]) -> dict[str, dict]:
        """Per lane (and ``deployed``: the model before any request): the workload's audit (attack
        statistics, linear probe, relearning time), the scores with every forget adapter or output
        mask switched off, and the cost of merging the adapters into the arrays."""
        plan, w = self.plan, self.w
        final = plan.states[-1]
        out: dict[str, dict] = {}
        if not hasattr(w, "audit") or not (final.forgotten or final.samples):
            return out
        a = plan.adapter
        everyone = {"deployed": (model, cols, None), **{n: (ln.path.model, ln.unmasked(), ln)
                                                        for n, ln in {**lanes, **self.ref_lanes}.items()
                                                        if ln.path is not None}}
        for name, (mdl, columns, lane) in everyone.items():
            rec = w.audit(mdl, self.data, final, columns, self.st, self.streams.generator(f"audit:{name}"),
                          a.rank, a.alpha, targets=adapter_targets(mdl, a.target_modules))
            if lane is not None and lane.masked:
                rec["adapters_off"] = self.evaluate(mdl, lane.unmasked(), final, f"{name}_mask_off",
                                                    "output mask lifted").metrics
            elif lane is not None and isinstance(lane.path, AdapterPath):
                forget_adapters = [ad for k, (ad, _) in lane.undo.items()
                                   if ad and plan.requests[k].kind == "forget"]
                if forget_adapters:
                    on = active_adapters(mdl)
                    set_active(mdl, [ad for ad in on if ad not in forget_adapters])  # switched off ...
                    rec["adapters_off"] = self.evaluate(mdl, lane.columns, final, f"{name}_adapters_off",
                                                        "forget adapters switched off").metrics
                    set_active(mdl, on)  # ... and on again
            if lane is not None and isinstance(lane.path, AdapterPath):
                rep = lane.path.merge_report()
                if rep is not None:
                    rec["merge"] = {"energy_J": rep.energy_J, "time_s": rep.time_s,
                                    "programmed_cells": rep.programmed_cells, "cells": rep.cells}
            out[name] = rec
        return out

    def _finish(self, results: list[RequestResult], lanes: dict[str, _Lane], dep, pre: dict, model: nn.Module,
                float_state: dict, state: ClassState, t_start: float, audits: dict[str, dict]) -> SeedResult:
        plan, w, prof = self.plan, self.w, self.plan.profile
        first = {kind: lane_name(kind, plan.methods[0], plan.methods) for kind in ("lora", "full")}
        first_full, first_lora = lanes[first["full"]], lanes[first["lora"]]
        figs, paths, ledgers = {}, {}, {}
        everyone = {**lanes, **{k: v for k, v in self.ref_lanes.items() if v.path is not None}}
        for name, lane in everyone.items():
            inf = self.ledger()
            n = w.inference(lane.path.model, self.data, state, lane.columns, inf)
            ledgers[name] = PathLedgers(lane.train, lane.deploy, inf, n)
        # the all-digital reference: the full update's network on a digital unit of the same node
        ref = ledgers[first["full"]]
        digital_J = ref.inference.as_reference().energy(prof)["total"] / max(1, ref.samples)
        digital_s = ref.inference.as_reference().time(prof)["total"] / max(1, ref.samples)
        pair = {"lora": ledgers[first["lora"]], "full": ref}
        costs = {**cost_record(pair, prof), "profile": prof.name,
                 "ledgers": {k: v.to_dict() for k, v in pair.items()}}
        for name, lane in everyone.items():
            inf, n = ledgers[name].inference, ledgers[name].samples
            figs[name] = cost_figures(lane.train, lane.deploy, inf, n, prof)
            # a reference's float training ran off the chip: priced as digital training (3 passes per example)
            figs[name].training_cost_J += 3 * digital_J * lane.float_examples
            figs[name].training_time_s += 3 * digital_s * lane.float_examples
            e_inf = inf.energy(prof)
            breakdown = {"training_J": lane.train.energy(prof), "deployment_J": lane.deploy.energy(prof),
                         "inference_J_per_sample": {k: v / max(1, n) for k, v in e_inf.items()},
                         "inference_activation_J_per_sample": inf.counts["activation_macs"] * prof.mac_J / max(1, n),
                         "training_counts": dict(lane.train.counts), "inference_counts": dict(inf.counts),
                         "float_training_J_estimate": 3 * digital_J * lane.float_examples}
            kind = name.split(":")[0] if name not in REFERENCES else name
            paths[name] = PathResult(figs[name].to_dict(), breakdown, lane.path.reprogrammed_cells,
                                     continual(results, name, w), forgotten_max(results, name, w.forget_metric),
                                     method=lane.method or "", kind=kind, seconds=round(lane.seconds, 3),
                                     audit=audits.get(name, {}))
        rat = ratios(figs[lane_name("full", plan.methods[0], plan.methods)],
                     figs[lane_name("lora", plan.methods[0], plan.methods)])
        rat["inference_energy_vs_digital"] = digital_J / figs[lane_name("lora", plan.methods[0],
                                                                        plan.methods)].inference_energy_J
        gaps = {p: avg_gap_to(results[-1].paths[p].metrics, results[-1].paths["retrain"].metrics, w)
                for p in everyone if p != "retrain"}
        s0 = plan.states[0]
        cols0 = w.initial_columns(s0, plan.order)

        def pretrain_float(hwa: bool) -> nn.Module:
            m = self.build(len(cols0), "model:pretrain")
            self.pretrain(m, s0.kept, cols0, "train:pretrain", "pretrain for the noise sweep", hardware_aware=hwa)
            return m
        ctx = SeedContext(self.seed, self.data, s0, self.st, plan.adapter, plan.chip, self.out,
                          lambda: self._float_copy(float_state), plan.config.hardware_aware, pretrain_float)
        t0 = time.perf_counter()
        extras = w.extras(ctx)
        self.timing["extras"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        ret = retention(self, float_state, cols0, s0)
        self.timing["retention"] = round(time.perf_counter() - t0, 2)
        if self.out is not None:
            self._save(float_state, first_lora, first_full)
        self.timing["total"] = round(time.perf_counter() - t_start, 2)
        return SeedResult(self.seed, [plan.ds.names[c] for c in plan.order], pre, dep.summary(), results, paths, rat,
                          digital_J, gaps, extras, dict(self.timing), ret, deployed_audit=audits.get("deployed", {}),
                          costs=costs)

    def _float_copy(self, float_state: dict) -> nn.Module:
        m = self.build(len(self.w.initial_columns(self.plan.states[0], self.plan.order)), "model:pretrain")
        m.load_state_dict(float_state)
        return m

    def _save(self, float_state: dict, lora: _Lane, full: _Lane) -> None:
        wdir = self.out / "weights"
        wdir.mkdir(parents=True, exist_ok=True)

        def save(sd: dict, name: str) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(wdir / name))
        save(float_state, "pretrained.safetensors")
        save({k: v for k, v in lora.path.model.state_dict().items() if "lora_" not in k},
             "lora-path-digital.safetensors")
        save({k: v for k, v in full.path.model.state_dict().items() if "lora_" not in k}, "full-update.safetensors")
        if self.ref_key in self.ref_float:
            save(self.ref_float[self.ref_key], "retrain.safetensors")
        save(lora.path.chip.state_dict(), "chip-cells.safetensors")


def _programming(rep: Any) -> Ledger:
    """The write-verify work of a programming report as a ledger."""
    led = Ledger()
    led.add("set_pulses", rep.set_pulses)
    led.add("reset_pulses", rep.reset_pulses)
    led.add("verify_reads", rep.verify_reads)
    return led


def avg_gap_to(metrics: dict[str, float], reference: dict[str, float], w: Workload) -> float:
    """The Avg. Gap of one seed: mean |metric − reference's| over the workload's request metrics
    (new classes left out) and MIA-efficacy where both define it (SalUn's four: UA, RA, TA, MIA)."""
    keys = [m for m, _ in w.request_metrics if m not in ("new_class_acc", "new_style_rate")] + ["mia_efficacy"]
    keys = [k for k in keys if _finite(metrics.get(k)) and _finite(reference.get(k))]
    return avg_gap(metrics, reference, keys) if keys else float("nan")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def _age(model: nn.Module, seconds: float) -> None:
    """Let the chips under ``model`` drift for ``seconds`` (each chip once), then re-read its cells."""
    layers = [m for _, m in analog_layers(model)]
    for chip in {id(m.core.chip): m.core.chip for m in layers}.values():
        chip.age(seconds)
    for m in layers:
        m.core.refresh()


def continual(results: list[RequestResult], path: str, w: Workload) -> dict[str, Any]:
    """The accuracy matrix R[t][i] and its summaries (GEM's average accuracy and backward
    transfer, Chaudhry et al.'s forgetting; :func:`rmlora.metrics.accuracy_matrix_summary`).

    Tasks are the learn request and each add request, each with the classes it brought
    that are still kept at the end; row t is measured right before task t+1 arrives (after
    the forget, repair and age requests that follow task t), the last row at the end.
    R[t][i] is the mean per-class score (test accuracy; style: recognition rate) of task i.
    """
    metric = next(iter(results[-1].paths[path].per_class))  # test_acc or style_rate
    kept = set(results[-1].kept)
    task_rows = [k for k, r in enumerate(results) if r.kind in ("learn", "add")]
    tasks = [[c for c in results[k].classes if c in kept] for k in task_rows]
    keep = [t for t, cls in enumerate(tasks) if cls]
    tasks = [tasks[t] for t in keep]
    task_rows = [task_rows[t] for t in keep]
    if not tasks:
        return {}
    ends = [task_rows[t + 1] - 1 for t in range(len(task_rows) - 1)] + [len(results) - 1]
    T = len(tasks)
    R = [[float("nan")] * T for _ in range(T)]
    for t, row in enumerate(ends):
        pc = results[row].paths[path].per_class.get(metric, {})
        for i in range(t + 1):
            vals = [pc[c] for c in tasks[i] if c in pc]
            R[t][i] = float(sum(vals) / len(vals)) if vals else float("nan")
    try:
        summary = accuracy_matrix_summary(R)
    except RmloraError:
        summary = {}
    return {"R": R, "tasks": ["+".join(c) for c in tasks], "rows_after": [results[e].request for e in ends],
            "metric": metric, **summary}


def forgotten_max(results: list[RequestResult], path: str, metric: str) -> float:
    """The highest ``metric`` on the forgotten classes after any request that follows a forget."""
    vals = [r.paths[path].metrics.get(metric) for r in results if r.forgotten]
    vals = [v for v in vals if _finite(v)]
    return max(vals) if vals else float("nan")


# --------------------------------------------------------------------------- the scenario
def pretrained_seed(plan: Plan, seed: int) -> tuple[Any, nn.Module, list]:
    """One seed's prepared data (``run.data``) and float model pretrained on the learn request's
    classes with the same random streams as :func:`run_scenario`, and its output columns: for
    analyses outside a scenario (``benchmarks/``)."""
    run = _SeedRun(plan, seed, None)
    state = plan.states[0]
    run.data = plan.workload.prepare(plan.ds, plan.order, run.st, seed, run.streams.generator("data"))
    cols = plan.workload.initial_columns(state, plan.order)
    model = run.build(len(cols), "model:pretrain")
    run.pretrain(model, state.kept, cols, "train:pretrain", "pretrain (float)")
    return run, model, cols


def run_scenario(cfg: ScenarioConfig, out: str | Path | None = None) -> ScenarioResult:
    """Run ``cfg`` over its seeds; with ``out``, write the run folder (``summary.json``,
    ``report.md``, plots, ``run.json``, ``deletion_ledger.jsonl`` with its signed head,
    ``data_files.sha256``, ``weights/``).

    ``out`` must be new or empty (:class:`rmlora.runinfo.RunFolder`): the run is written
    to a temporary sibling renamed into place when complete; a failed or interrupted
    run leaves ``out`` untouched (its partial files, if any, in ``<out>.failed``)."""
    from rmlora.threads import configure_threads

    folder = RunFolder(out) if out is not None else None  # refuses a used --out before anything runs
    with recording_inputs() as seen, (folder or contextlib.nullcontext()):
        out_dir = folder.tmp if folder is not None else None
        plan = plan_scenario(cfg)
        env = environment(configure_threads(cfg.threads), cfg.threads)
        run = {"config": cfg.to_dict(), "configuration": plan.configuration, "settings": plan.settings.to_dict(),
               "seeds": plan.seeds, "dataset": {"kind": plan.ds.kind, "source": plan.ds.source},
               "requests": [str(r) for r in plan.requests]}
        if out_dir is not None:
            write_json(out_dir / "run.json", {**run, **env, "status": "running"})
        per_seed = []
        for k, s in enumerate(tqdm(plan.seeds, desc="seeds", disable=not cfg.progress or len(plan.seeds) == 1)):
            per_seed.append(_SeedRun(plan, s, out_dir if k == 0 else None).run())
        env.update(finished=utc_now(), inputs=inputs_record(seen, out_dir))
        result = ScenarioResult(plan.workload.name, plan.configuration,
                                {"kind": plan.ds.kind, "source": plan.ds.source}, [str(r) for r in plan.requests],
                                plan.method, plan.seeds, cfg.to_dict(), plan.settings.to_dict(), plan.adapter.to_dict(),
                                cfg.chip.to_dict(), env, per_seed, [m for m, _ in plan.workload.request_metrics],
                                list(plan.methods))
        if out_dir is not None:
            from rmlora.scenario.report import write_report

            first = lane_name("lora", plan.methods[0], plan.methods)
            for r in per_seed:
                for i, q in enumerate(r.requests):
                    ledger_append(out_dir / records.LEDGER, plan, i, q.paths[first].metrics,
                                  {"seed": r.seed, "preset": cfg.chip.preset, "method": plan.methods[0]})
            write_report(out_dir, result, plan.workload)
            write_json(out_dir / "summary.json", result.to_dict())
            write_json(out_dir / "run.json", {**run, **env, "status": "finished"})
    return result


def ledger_append(path: Path, plan: Plan, i: int, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    """One deletion-ledger entry for request ``i`` when it forgets classes or undoes a forget
    (then ``restored`` names them); other requests write nothing."""
    req = plan.requests[i]
    restored = req.kind == "undo" and plan.requests[req.target].kind == "forget"
    if req.kind != "forget" and not restored:
        return
    k = req.target if restored else i
    cls = plan.names(plan.labels[k])
    share = plan.requests[k].fraction
    records.append(path, classes=[] if restored else cls, adapter=request_tag(k, plan.requests[k], cls),
                   metrics=dict(metrics), extra={"workload": plan.workload.name, "request": str(req), **extra,
                                                 **({"restored": cls} if restored else {}),
                                                 **({"fraction": share} if share is not None else {})})
