"""A device that lives between commands: the edge engineer's workflow.

``rmlora deploy --workload face --out DEV`` pretrains a model, programs it onto a
chip and saves the chip in the field as a folder; ``rmlora forget DEV``,
``add``, ``repair``, ``age``, ``undo`` and ``status`` each load it, act on it with
the adapter path (the design: the arrays are never rewritten), append to its
hash-chained deletion ledger, write their own report under ``DEV/reports/`` and
save it again. The folder holds::

    device.json              schema version, configuration, requests so far, sha256 of every file,
                             the environment and inputs of the last command (rmlora.runinfo)
    data_files.sha256        the data files read, one sha256 each
    pretrained.safetensors   the float weights the arrays were programmed from
    chip.safetensors         every cell (conductance, d2d gain, stuck code, target) and the read-noise stream
    digital.safetensors      the digital state (new output rows, embedding rows, biases)
    adapters/*.safetensors   each adapter as INT codes and scales
    deletion_ledger.jsonl    forget and undo requests, hash-chained (rmlora.records); its signed
                             head deletion_ledger.head.json and the folder's own key
                             deletion_ledger.key (absent when $RMLORA_LEDGER_KEY's key signs it)
    reports/NN-kind.md       one report per command

A command works on a copy and swaps it in only when everything is written, so an
interrupted command (SIGINT, crash) leaves the device as it was; ``deploy`` writes a
new folder through a temporary sibling (:class:`rmlora.runinfo.RunFolder`). Loading
checks every file against its checksum, verifies the ledger and refuses another
schema version, all before any training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rmlora import records
from rmlora.adapters import load_adapter, save_adapter
from rmlora.config import Request, ScenarioConfig
from rmlora.errors import RmloraError
from rmlora.hardware import analog_layers, deploy
from rmlora.runinfo import (environment, file_sha256, inputs_record, recording_inputs, swap_in,
                            temp_sibling, utc_now, write_json)
from rmlora.scenario.runner import (Plan, _Lane, _SeedRun, ledger_append, load_weights, plan_scenario,
                                   request_tag)
from rmlora.scenario.workload import ClassState

#: layout version of a device folder (3: signed ledger head and key, environment and inputs record)
DEVICE_SCHEMA = 3
GENERATOR_KEY = "__read_noise_generator__"


class Device:
    """A deployed chip with its adapters, loaded from (and saved to) a device folder."""

    def __init__(self, plan: Plan, run: _SeedRun, lane: _Lane, state: ClassState, history: list[dict[str, Any]],
                 undone: set[int]) -> None:
        self.plan, self.run, self.lane, self.state = plan, run, lane, state
        self.history, self.undone = history, undone
        self.inputs_seen: dict[str, set[Path]] = {}  # files read to build it (run.json's inputs)

    # -- building ---------------------------------------------------------------------
    @classmethod
    def _prepare(cls, cfg: ScenarioConfig) -> tuple[Plan, _SeedRun]:
        plan = plan_scenario(cfg.replace(seeds=1), all_classes=True)
        run = _SeedRun(plan, plan.seeds[0], None)
        run.progress = cfg.progress
        run.data = plan.workload.prepare(plan.ds, plan.order, plan.settings, run.seed, run.streams.generator("data"))
        plan.workload.setup(run.data, run.streams.seed("setup") % 2 ** 31, run.progress)
        return plan, run

    @classmethod
    def _bare(cls, plan: Plan, run: _SeedRun, float_state: dict | None) -> tuple[_Lane, Any]:
        """The pretrained model deployed on the device's chip (cells as programmed at deployment)."""
        from rmlora.methods.paths import AdapterPath

        w, st = plan.workload, plan.settings
        cols = w.initial_columns(plan.states[0], plan.order)
        model = run.build(len(cols), "model:pretrain")
        pre: dict[str, Any] = {}
        if float_state is not None:
            model.load_state_dict(float_state)
            for p in model.parameters():
                p.requires_grad_(False)
        elif plan.config.pretrained:
            load_weights(model, plan.config.pretrained)
        else:
            pre = run.pretrain(model, plan.states[0].kept, cols, "train:pretrain", "pretrain (float)")
        chip = run.chip("chip:main")
        rep = deploy(model, chip, exclude=w.deploy_exclude(st), profile=plan.profile,
                     calibrate=w.calibration(run.data, plan.states[0].kept, cols, st))
        lane = _Lane(AdapterPath(model, chip, plan.profile, plan.adapter), list(cols), run.ledger(), run.ledger())
        return lane, (rep, pre)

    @classmethod
    def deploy_new(cls, cfg: ScenarioConfig) -> Device:
        """Pretrain (or load ``cfg.pretrained``) and program a new device: the learn request."""
        with recording_inputs() as seen:
            first = plan_scenario(cfg.replace(seeds=1), all_classes=True).requests[0]  # the learn request alone
            plan, run = cls._prepare(cfg.replace(requests=[first], learn=None, forget=None, add=None))
            lane, (rep, pre) = cls._bare(plan, run, None)
        dev = cls(plan, run, lane, plan.states[0], [], set())
        dev.inputs_seen = seen
        dev.float_state = {k: v.detach().cpu().clone() for k, v in lane.path.model.state_dict().items()}
        dev._record(0, plan.requests[0], {"programming": rep.summary(), "pretrain": pre})
        return dev

    @classmethod
    def load(cls, folder: str | Path, data_dir: str | None = None, progress: bool = False) -> Device:
        """Load a device folder (checksums and schema checked); ``data_dir`` replaces the
        recorded data folder (it must hold the same classes)."""
        folder = Path(folder)
        meta_path = folder / "device.json"
        if not meta_path.is_file():
            raise RmloraError(f"{folder} is not a device folder (no device.json); create one with rmlora deploy")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise RmloraError(f"{meta_path} is corrupt (not JSON)") from None
        if not isinstance(meta, dict):
            raise RmloraError(f"{meta_path} is corrupt (not a JSON object)")
        if meta.get("schema_version") != DEVICE_SCHEMA:
            raise RmloraError(f"{folder}: device schema version {meta.get('schema_version')!r} is not the supported "
                              f"{DEVICE_SCHEMA}")
        need = {"files": dict, "config": dict, "classes": list, "columns": list, "history": list, "undone": list}
        if any(not isinstance(meta.get(k), t) for k, t in need.items()):
            raise RmloraError(f"{meta_path} is corrupt (it needs {', '.join(need)})")
        for name, digest in meta["files"].items():
            p = folder / name
            if not p.is_file():
                raise RmloraError(f"{folder}: {name} is missing")
            if file_sha256(p) != digest:
                raise RmloraError(f"{folder}: {name} fails its checksum (altered or corrupt)")
        if (folder / records.LEDGER).exists() or records.head_path(folder / records.LEDGER).exists():
            records.verify(folder / records.LEDGER)
        cfg = ScenarioConfig.from_dict(meta["config"], f"{meta_path}")
        if data_dir is not None:
            cfg = cfg.replace(data_dir=data_dir)
        cfg = cfg.replace(progress=progress)
        with recording_inputs() as seen:
            plan, run = cls._prepare(cfg)
        names = [plan.ds.names[c] for c in plan.order]
        if names != meta["classes"]:
            raise RmloraError(f"the data set at {plan.ds.source} does not hold the device's classes {meta['classes']}")
        float_state = load_file(str(folder / "pretrained.safetensors"))
        lane, _ = cls._bare(plan, run, float_state)
        chip_sd = load_file(str(folder / "chip.safetensors"))
        gen_state = chip_sd.pop(GENERATOR_KEY)
        chip = lane.path.chip
        chip.load_state_dict(chip_sd)
        chip.generator.set_state(gen_state)
        for _, m in analog_layers(lane.path.model):
            m.core.refresh()
        dev = cls(plan, run, lane, ClassState(), meta["history"], set(meta["undone"]))
        dev.float_state = float_state
        dev.inputs_seen = seen
        dev._replay(folder)
        if [plan.ds.names[c] if c is not None else None for c in lane.columns] != meta["columns"]:
            raise RmloraError(f"{folder}: the replayed requests do not give the recorded output columns")
        return dev

    def _replay(self, folder: Path) -> None:
        """Rebuild the adapters and rows of every request so far, then the digital state."""
        plan, run, lane, w = self.plan, self.run, self.lane, self.plan.workload
        state = plan.states[0]
        for i, req in enumerate(plan.requests[1:], start=1):
            tag = self.tag(i)
            if req.kind in ("forget", "repair", "add"):
                ext = None
                if req.kind == "add":
                    with run.streams.global_rng(f"rows:{tag}:lora"):
                        ext = w.extend(lane.path.model, "lora", plan.labels[i], lane.columns, lane.path.chip, tag,
                                       plan.adapter.bits)
                    ext.finish()
                    lane.columns = ext.columns
                load_adapter(lane.path.model, folder / "adapters" / f"adapter-{tag}.safetensors", tag, lane.path.sram)
                if ext is not None and ext.digital_bits:  # in the order the runner allocates them
                    lane.path.sram.allocate(f"{tag}-rows", ext.digital_bits)
                lane.undo[i] = (tag, ext)
            elif req.kind == "undo":
                name, ext = lane.undo.pop(req.target)
                lane.path.undo(name)
                if ext is not None and ext.undo is not None:
                    lane.columns = ext.undo(lane.columns)
                    lane.path.sram.release(f"{name}-rows")
            state = plan.states[i]
        digital = load_file(str(folder / "digital.safetensors"))
        missing = [k for k in digital if k not in lane.path.model.state_dict()]
        if missing:
            raise RmloraError(f"{folder}: digital.safetensors does not match the replayed model ({missing[0]})")
        lane.path.model.load_state_dict(digital, strict=False)
        for p in lane.path.model.parameters():
            p.requires_grad_(False)
        self.state = state

    # -- acting -------------------------------------------------------------------------
    def tag(self, i: int) -> str:
        return request_tag(i, self.plan.requests[i], self.plan.names(self.plan.labels[i]))

    def apply(self, req: Request) -> dict[str, Any]:
        """Carry out one request on the device; returns its record (metrics, SRAM, costs)."""
        plan = self.plan
        requests = plan.requests + [req]
        cfg = plan.config.replace(requests=requests, learn=None, forget=None, add=None)
        new_plan = plan_scenario(cfg.replace(seeds=1), all_classes=True)  # checks the request (and SRAM)
        i = len(requests) - 1
        self.run.plan = new_plan
        self.plan = new_plan
        self.run.refs, self.run.ref_float, self.run.ref_key = {}, {}, None
        before, after = new_plan.states[i - 1], new_plan.states[i]
        step = self.run._apply(new_plan.requests[i], i, self.tag(i), self.lane, before, after, new_plan.labels[i])
        self.state = after
        if new_plan.requests[i].kind == "undo":
            self.undone.add(new_plan.requests[i].target)
        return self._record(i, new_plan.requests[i], {"step": step.to_dict()})

    def _record(self, i: int, req: Request, extra: dict[str, Any]) -> dict[str, Any]:
        ev = self.evaluate()
        sram = self.lane.path.sram
        rec = {"index": i, "request": str(req), "time": utc_now(),
               "metrics": ev.metrics, "sram_used_bits": sram.used_bits, "sram_free_bits": sram.free_bits,
               "adapters": list(sram.blocks), **extra}
        self.history.append(rec)
        return rec

    def evaluate(self):
        """The workload's scores of the device now, on the held-out split."""
        return self.plan.workload.evaluate(self.lane.path.model, self.run.data, self.state, self.lane.columns)

    # -- saving ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the device back to its ``folder`` through a temporary copy swapped in at the end
        (a new device folder is made by the CLI's run folder and :meth:`write`)."""
        folder = Path(folder)
        if not (folder / "device.json").is_file():
            raise RmloraError(f"{folder} is not a device folder (no device.json)")
        tmp = temp_sibling(folder.resolve())
        try:
            for name in (records.LEDGER, records.head_path(records.LEDGER).name, records.key_path(records.LEDGER).name,
                         "reports", "adapters"):
                src = folder / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.is_file():
                    shutil.copy2(src, tmp / name)
            self._write(tmp)
            swap_in(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def write(self, out: Path) -> None:
        """Write every file of the device into the empty folder ``out`` (no temporary copy:
        for a folder that is itself temporary, such as :attr:`RunFolder.tmp`)."""
        if any(Path(out).iterdir()):
            raise RmloraError(f"{out} is not empty")
        self._write(Path(out))

    def _write(self, out: Path) -> None:
        lane, plan = self.lane, self.plan
        model, chip = lane.path.model, lane.path.chip
        (out / "adapters").mkdir(exist_ok=True)
        (out / "reports").mkdir(exist_ok=True)
        last = self.history[-1]
        i, req = last["index"], plan.requests[last["index"]]
        if req.kind in ("forget", "add", "repair"):
            save_adapter(model, self.tag(i), out / "adapters" / f"adapter-{self.tag(i)}.safetensors")
        ledger_append(out / records.LEDGER, plan, i, last["metrics"], {"device_request": i})
        save_file({k: v.contiguous() for k, v in self.float_state.items()}, str(out / "pretrained.safetensors"))
        sd = {k: v.detach().cpu().contiguous() for k, v in chip.state_dict().items()}
        sd[GENERATOR_KEY] = chip.generator.get_state()
        save_file(sd, str(out / "chip.safetensors"))
        analog_weights = {f"{n}.weight" for n, _ in analog_layers(model)}
        digital = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                   if "lora_" not in k and k not in analog_weights}
        save_file(digital, str(out / "digital.safetensors"))
        (out / "reports" / f"{i:02d}-{req.kind}.md").write_text(self.report(last))
        env = {**environment(torch.get_num_threads()), "inputs": inputs_record(self.inputs_seen, out)}
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "device.json")
        meta = {"schema_version": DEVICE_SCHEMA, "workload": plan.workload.name,
                "config": plan.config.replace(requests=list(plan.requests), learn=None, forget=None, add=None,
                                              seeds=1).to_dict(),
                "classes": [plan.ds.names[c] for c in plan.order],
                "columns": [plan.ds.names[c] if c is not None else None for c in lane.columns],
                "kept": plan.names(self.state.kept), "forgotten": plan.names(self.state.forgotten),
                "undone": sorted(self.undone), "history": self.history,
                "environment": env,
                "files": {f: file_sha256(out / f) for f in files}}
        write_json(out / "device.json", meta)

    def report(self, rec: dict[str, Any]) -> str:
        """The markdown report of one command."""
        from rmlora.scenario.report import _pct

        plan, sram = self.plan, self.lane.path.sram
        ms = "\n".join(f"| {k} | {_pct(v) if 'auc' not in k else f'{v:.3f}'} |" for k, v in rec["metrics"].items()
                       if isinstance(v, (int, float)))
        blocks = "\n".join(f"| {n} | {b} |" for n, b in sram.blocks.items()) or "| (none) | 0 |"
        step = rec.get("step", {})
        return f"""# rmlora device: request {rec['index']} `{rec['request']}`

Workload {plan.workload.name}, data {plan.ds.source}; {rec['time']}. Kept: {', '.join(plan.names(self.state.kept))};
forgotten: {', '.join(plan.names(self.state.forgotten)) or 'none'}.
{('Training ' + f"{step.get('training_J', 0):.3e} J, deployment {step.get('deployment_J', 0):.3e} J. " + step.get('note', '')) if step else ''}

| metric (held-out data) | value |
|---|---|
{ms}

SRAM: {sram.used_bits} bits used, {sram.free_bits} free of {sram.capacity_bits}.

| SRAM block | bits |
|---|---|
{blocks}
"""

    def status(self, folder: Path) -> str:
        """Adapters, SRAM, ledger verification and held-out accuracy, as text."""
        ledger = folder / records.LEDGER
        if ledger.exists():
            v = records.check(ledger)
            n = len(v.entries)
            led = (f"deletion ledger: {n} entr{'y' if n == 1 else 'ies'}, hash chain verified, head signed with the "
                   f"{v.key} key {v.key_id}")
        else:
            led = "deletion ledger: empty"
        sram = self.lane.path.sram
        ev = self.evaluate()
        lines = [f"device {folder}: workload {self.plan.workload.name}, {len(self.plan.requests)} requests",
                 f"kept: {', '.join(self.plan.names(self.state.kept))}",
                 f"forgotten: {', '.join(self.plan.names(self.state.forgotten)) or 'none'}",
                 f"adapters and rows in SRAM: {', '.join(sram.blocks) or 'none'}",
                 f"SRAM: {sram.used_bits} bits used, {sram.free_bits} free of {sram.capacity_bits}", led]
        for k, v in ev.metrics.items():
            if v == v:
                lines.append(f"  {k}: {v:.3f}")
        for h in self.history:
            lines.append(f"  request {h['index']}: {h['request']} at {h['time']}"
                         + (" (undone)" if h["index"] in self.undone else ""))
        return "\n".join(lines)


def load_device(folder: str | Path, data_dir: str | None = None) -> Device:
    """Load a device folder written by ``rmlora deploy`` (see :class:`Device`)."""
    return Device.load(folder, data_dir)


__all__ = ["DEVICE_SCHEMA", "Device", "load_device"]
