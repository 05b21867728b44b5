"""Command-line interface: ``rmlora demo``, the device commands (``deploy``, ``forget``, ``add``,
``repair``, ``age``, ``undo``, ``status``), ``rmlora ledger verify``, ``rmlora workloads``,
``rmlora deploy-check``, ``rmlora presets``.

Every failure a user can cause ends in one ``error: ...`` line on stderr: an
:class:`RmloraError` or a usage error (unknown option, value out of range) exits 2, an
interruption (SIGINT) exits 130; a traceback means a bug."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import click
import torch
from torch import nn

from rmlora.errors import RmloraError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _kept(exc: BaseException) -> str:
    kept = getattr(exc, "rmlora_kept", None)
    return f" (the unfinished run is in {kept})" if kept else ""


class _Group(click.Group):
    """Turns RmloraError and usage errors into one ``error: ...`` line and exit status 2, an
    interruption into ``error: interrupted`` and exit status 130."""

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is None:
            from rmlora.runinfo import set_command

            set_command(["rmlora", *args])
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``rmlora``: the help text
                raise
            self._usage(exc)

    @staticmethod
    def _usage(exc: click.UsageError):
        where = f" (see '{exc.ctx.command_path} -h')" if exc.ctx is not None else ""
        click.echo(f"error: {_one_line(exc.format_message())}{where}", err=True)
        raise click.exceptions.Exit(2)

    def invoke(self, ctx: click.Context):
        from rmlora.runinfo import set_command

        try:
            return super().invoke(ctx)
        except RmloraError as exc:
            click.echo(f"error: {_one_line(exc)}{_kept(exc)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            click.echo(f"error: interrupted{_kept(exc)}", err=True)
            ctx.exit(130)
        except click.UsageError as exc:
            self._usage(exc)
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            ctx.exit(exc.exit_code)
        finally:
            if ctx.parent is None:
                set_command([])  # a later call from Python records its own command line


#: ``--seed``: seeds are 63-bit (numpy's SeedSequence and torch take them whole)
SEED = click.IntRange(0, 2 ** 63 - 1)


def _bits(default: int, what: str):
    from rmlora.config import ChipConfig

    lo, hi = ChipConfig.BITS_RANGE
    return click.option(f"--{what}-bits", type=click.IntRange(lo, hi), default=default, show_default=True,
                        help=f"{what.upper()} resolution in bits ({lo}-{hi})")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rmlora")
def main() -> None:
    """Unlearning and continual learning with digital LoRA adapters on simulated
    hybrid analogue-digital resistive-memory chips."""


def builtin_mlp(seed: int) -> nn.Module:
    """The 3-layer MLP of ``deploy-check`` (64 → 128 → 64 → 10), seeded."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p.shape[-1]) ** 0.5))
    return m


@main.command("deploy-check")
@click.option("--preset", default="rram-180nm", show_default=True, help="device preset name or JSON file")
@click.option("--profile", default="cmos-180nm", show_default=True, help="technology profile name or JSON file")
@click.option("--tile", type=click.IntRange(2), default=128, show_default=True, help="tile rows = columns")
@_bits(8, "dac")
@_bits(8, "adc")
@click.option("--range-mode", type=click.Choice(["calibrated", "per-vector"]), default="calibrated",
              show_default=True, help="how converter full scales are set")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def deploy_check(preset: str, profile: str, tile: int, dac_bits: int, adc_bits: int, range_mode: str, seed: int,
                 as_json: bool) -> None:
    """Deploy a built-in 3-layer MLP, calibrate its converters on 512 random inputs, and report
    programming and fidelity per layer on 256 others."""
    from rmlora.config import ChipConfig
    from rmlora.hardware import deploy, make_chip
    from rmlora.hardware.deploy import layer_inference, layer_table
    from rmlora.runinfo import seed_everything

    gen = seed_everything(seed)
    ref = builtin_mlp(seed)
    model = copy.deepcopy(ref)
    chip = make_chip(ChipConfig(preset=preset, profile=profile, tile=tile, dac_bits=dac_bits, adc_bits=adc_bits,
                                range_mode=range_mode), seed)
    report = deploy(model, chip, profile=profile, calibrate=torch.randn(512, 64, generator=gen))
    x = torch.randn(256, 64, generator=gen)
    report.inference = layer_inference(model, x, len(x), profile, adc_bits or 8)
    with torch.no_grad():
        y_ref, y = ref(x), model(x)
    out = report.summary()
    out["relative_output_error"] = float((y - y_ref).norm() / y_ref.norm())
    out["seed"] = seed
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"deployed a 3-layer MLP (64-128-64-10) on preset {out['preset']} "
               f"({out['tiles']} tiles of {tile}x{tile}), profile {out['profile']}")
    rows = [("cells", out["cells"]), ("mean pulses per cell", f"{out['mean_pulses_per_cell']:.2f}"),
            ("95th percentile pulses", f"{out['p95_pulses_per_cell']:.0f}"),
            ("SET / RESET pulses", f"{out['set_pulses']} / {out['reset_pulses']}"),
            ("verify reads", out["verify_reads"]), ("failed cells", out["failed_cells"]),
            ("error mean ± std (µS)", f"{out['error_mean_uS']:+.3f} ± {out['error_std_uS']:.3f}"),
            ("programming energy", f"{out['programming_energy_J']:.3e} J"),
            ("programming time", f"{out['programming_time_s']:.3e} s"),
            ("relative output error", f"{out['relative_output_error']:.4f}")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"  {k:<{width}}  {v}")
    click.echo("per layer (inference per input vector of the 256 test inputs):")
    click.echo(layer_table(out["layers"]))


def _idents(value: str | None) -> list[str] | None:
    """``"s1, s2"`` → ["s1", "s2"]; an empty value stays empty (and is refused by the config)."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _set(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def scenario_options(f):
    """The options every scenario command takes (demo, deploy)."""
    opts = [
        click.option("--config", "config_file", type=click.Path(), default=None,
                     help="scenario TOML file (the flags below override its values)"),
        click.option("--workload", "--task", "workload", default="face", show_default=True,
                     help="face: AT&T/Olivetti photos; speaker: FSDD recordings as spike trains; style: "
                          "class-conditional diffusion transformer on stylized images (rmlora workloads)"),
        click.option("--configuration", default=None,
                     help="the workload's configuration (default, quick; style: cpu, quick, gpu)"),
        click.option("--quick", is_flag=True, help="the quick configuration: short run for tests and a first look"),
        click.option("--requests", default=None,
                     help='request sequence, e.g. "forget:s3,add:s6,forget:s1,add:s7,undo:1" (+ joins classes; '
                          "the learn request is 0)"),
        click.option("--data-dir", type=click.Path(), default=None,
                     help="real data folder (default: $RMLORA_DATA_DIR, else built-in procedural data)"),
        click.option("--download", is_flag=True, help="download the real dataset if it is not found"),
        click.option("--learn", default=None, help="classes to learn first, by index or name, comma-separated"),
        click.option("--forget", default=None, help="learned classes to forget, comma-separated"),
        click.option("--add", "add_", default=None, help="new classes to learn afterwards, comma-separated"),
        click.option("--method", default=None, help="unlearning method: ga, ft, neggrad, neggrad+, relabel, scrub, l1, "
                                                    "salun or mask (style: noise)"),
        click.option("--methods", default=None,
                     help="unlearning methods compared side by side, each on both paths, comma-separated; field: "
                          "every method of the unlearning evaluation (ft, neggrad, neggrad+, relabel, scrub, l1, "
                          "salun, mask)"),
        click.option("--cache", type=click.Path(), default=None,
                     help="folder of pretrained models per seed: a later run with the same settings reuses them"),
        click.option("--preset", default="rram-180nm", show_default=True, help="device preset name or JSON file"),
        click.option("--profile", default="cmos-180nm", show_default=True,
                     help="technology profile name or JSON file"),
        click.option("--tile", type=click.IntRange(2), default=128, show_default=True, help="tile rows = columns"),
        _bits(8, "dac"),
        _bits(8, "adc"),
        click.option("--no-read-noise", is_flag=True, help="switch the per-read noise of the cells off"),
        click.option("--range-mode", type=click.Choice(["calibrated", "per-vector"]), default="calibrated",
                     show_default=True, help="converter full scales: calibrated at deployment and frozen, or "
                                             "each input vector scaled by its own max |x| (ADC ranges frozen)"),
        click.option("--bit-serial", is_flag=True, help="apply the DAC codes one bit plane at a time "
                                                        "(shift-and-add after the ADC)"),
        click.option("--rank", type=click.IntRange(1), default=None, help="adapter rank (default: the workload's)"),
        click.option("--alpha", type=float, default=None, help="adapter alpha (default: the workload's)"),
        click.option("--seed", type=SEED, default=0, show_default=True, help="first seed (0 to 2**63-1)"),
        click.option("--seeds", type=click.IntRange(1), default=None,
                     help="number of seeds to average (default: the workload's)"),
        click.option("--pretrained", type=click.Path(), default=None,
                     help="pretrained.safetensors of an earlier run"),
        click.option("--hardware-aware", is_flag=True,
                     help="pretrain with weight noise drawn from the preset's programming and read noise"),
        click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
                     help="torch CPU threads, capped to the free cores (the workloads' small matrices run "
                          "fastest on one)"),
        click.option("--no-progress", is_flag=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def scenario_config(ctx: click.Context, p: dict):
    """The :class:`ScenarioConfig` of a command's options: the TOML file, then the flags given."""
    from rmlora.config import AdapterConfig, ScenarioConfig, parse_requests
    from rmlora.scenario import get_workload

    cfile = p["config_file"]
    cfg = ScenarioConfig.from_toml(cfile) if cfile else ScenarioConfig()
    top: dict = {}
    for k in ("workload", "seed", "threads"):
        if _set(ctx, k) or not cfile:
            top[k] = p[k]
    if p["quick"] and p["configuration"] and p["configuration"] != "quick":
        raise RmloraError(f"--quick and --configuration {p['configuration']} exclude each other")
    if p["quick"] or p["configuration"]:
        top["configuration"] = "quick" if p["quick"] else p["configuration"]
    for name in ("data_dir", "method", "seeds", "pretrained", "cache"):
        if p[name] is not None:
            top[name] = p[name]
    if p["methods"] is not None:
        top["methods"] = _idents(p["methods"])
    if p["download"]:
        top["download"] = True
    if p["hardware_aware"]:
        top["hardware_aware"] = True
    if p["no_progress"]:
        top["progress"] = False
    if p["requests"] is not None:
        top["requests"] = parse_requests(p["requests"])
    for name, value in (("learn", p["learn"]), ("forget", p["forget"]), ("add", p["add_"])):
        if value is not None:
            top[name] = _idents(value)
    chip = {k: p[k] for k in ("preset", "profile", "tile", "dac_bits", "adc_bits", "range_mode")
            if _set(ctx, k) or not cfile}
    if p["bit_serial"]:
        chip["bit_serial"] = True
    if p["no_read_noise"]:
        chip["read_noise"] = False
    if "requests" in top or any(k in top for k in ("learn", "forget", "add")):
        cfg = cfg.replace(requests=None, learn=None, forget=None, add=None)  # the command line's scenario wins
    cfg = cfg.replace(**top, chip=cfg.chip.replace(**chip))
    if p["rank"] is not None or p["alpha"] is not None:
        w = get_workload(cfg.workload)
        base = cfg.adapter or w.settings(cfg.configuration or w.configurations[0]).adapter
        cfg = cfg.replace(adapter=AdapterConfig(**{**base.to_dict(),
                                                   **({"rank": p["rank"]} if p["rank"] is not None else {}),
                                                   **({"alpha": p["alpha"]} if p["alpha"] is not None else {})}))
    return cfg


@main.command("demo")
@scenario_options
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True)
@click.pass_context
def demo(ctx: click.Context, out: str, **p) -> None:
    """Learn, deploy, then a sequence of requests: adapter path vs full update vs retraining."""
    from rmlora.runinfo import recording_inputs
    from rmlora.scenario import run_scenario
    from rmlora.scenario.report import costs_table, metrics_table

    with recording_inputs():  # the run records the TOML file too
        r = run_scenario(scenario_config(ctx, p), out)
    click.echo(f"{r.workload} scenario on {r.dataset['source']}: {', '.join(r.requests)}")
    click.echo(metrics_table(r))
    click.echo("")
    click.echo(costs_table(r))
    click.echo(f"\nrun folder: {out} (read report.md first)")


# --------------------------------------------------------------------------- the device workflow
@main.command("deploy")
@scenario_options
@click.option("--out", type=click.Path(), required=True, help="device folder to create")
@click.pass_context
def deploy_device(ctx: click.Context, out: str, **p) -> None:
    """Pretrain a model, program it onto a chip and save the chip as a device folder."""
    from rmlora.runinfo import RunFolder, recording_inputs
    from rmlora.scenario.device import Device
    from rmlora.threads import configure_threads

    with recording_inputs():
        cfg = scenario_config(ctx, p)
        with RunFolder(out, marker="device.json", kind="device") as rf:  # a used or unwritable --out fails before any work
            configure_threads(cfg.threads)
            dev = Device.deploy_new(cfg)
            dev.write(rf.tmp)
    click.echo(dev.status(Path(out)))


def _device_command(folder: str, data_dir: str | None, request, progress: bool) -> None:
    from rmlora.scenario.device import Device
    from rmlora.threads import configure_threads

    configure_threads(1)
    dev = Device.load(folder, data_dir, progress=progress)
    rec = dev.apply(request)
    dev.save(folder)
    report = Path(folder) / "reports" / f"{rec['index']:02d}-{request.kind}.md"
    click.echo(f"request {rec['index']} ({rec['request']}) done; report: {report}")
    click.echo(dev.status(Path(folder)))


_dev_arg = click.argument("device", type=click.Path())
_data_opt = click.option("--data-dir", type=click.Path(), default=None,
                         help="the data folder (default: the one the device was deployed with)")
_prog_opt = click.option("--no-progress", is_flag=True)


@main.command("forget")
@_dev_arg
@click.option("--classes", required=True, help="learned classes to forget, comma-separated")
@_data_opt
@_prog_opt
def forget_cmd(device: str, classes: str, data_dir: str | None, no_progress: bool) -> None:
    """Forget classes on a saved device with a new adapter (the arrays stay as programmed)."""
    from rmlora.config import Request

    _device_command(device, data_dir, Request("forget", _idents(classes) or []), not no_progress)


@main.command("add")
@_dev_arg
@click.option("--classes", required=True, help="new classes to learn, comma-separated")
@_data_opt
@_prog_opt
def add_cmd(device: str, classes: str, data_dir: str | None, no_progress: bool) -> None:
    """Learn new classes on a saved device: a new adapter and digital output rows."""
    from rmlora.config import Request

    _device_command(device, data_dir, Request("add", _idents(classes) or []), not no_progress)


@main.command("repair")
@_dev_arg
@_data_opt
@_prog_opt
def repair_cmd(device: str, data_dir: str | None, no_progress: bool) -> None:
    """Train a digital adapter that wins back accuracy lost to device error."""
    from rmlora.config import Request

    _device_command(device, data_dir, Request("repair"), not no_progress)


@main.command("age")
@_dev_arg
@click.option("--duration", required=True, help="retention time: 3600, 90s, 10m, 12h, 1d, 2w, 1y")
@_data_opt
def age_cmd(device: str, duration: str, data_dir: str | None) -> None:
    """Let the device's cells drift for a while."""
    from rmlora.config import Request, parse_duration

    _device_command(device, data_dir, Request("age", seconds=parse_duration(duration)), False)


@main.command("undo")
@_dev_arg
@click.argument("request", type=int)
@_data_opt
def undo_cmd(device: str, request: int, data_dir: str | None) -> None:
    """Delete the adapter of an earlier request (numbered as `rmlora status` lists them)."""
    from rmlora.config import Request

    _device_command(device, data_dir, Request("undo", target=request), False)


@main.command("status")
@_dev_arg
@_data_opt
def status_cmd(device: str, data_dir: str | None) -> None:
    """Adapters, SRAM used and free, ledger verification, accuracy on held-out data."""
    from rmlora.scenario.device import Device

    click.echo(Device.load(device, data_dir).status(Path(device)))


@main.group("ledger")
def ledger_group() -> None:
    """Check a deletion ledger (deletion_ledger.jsonl of a run or device folder)."""


def _printable(v) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(v))


@ledger_group.command("verify")
@click.argument("path", type=click.Path())
@click.option("--key", type=click.Path(), default=None,
              help="the user's key file (default: $RMLORA_LEDGER_KEY, else the folder's own key)")
def ledger_verify(path: str, key: str | None) -> None:
    """Verify a deletion ledger (a file, or a run or device folder holding one): every entry's
    hash, every link, and the signed head (count and last hash). Prints the entries; exits 2
    on any defect."""
    from rmlora import records

    ledger = Path(path) / records.LEDGER if Path(path).is_dir() else Path(path)
    v = records.check(ledger, key)
    for e in v.entries:
        what = (f"restored {', '.join(map(_printable, e['restored']))}" if e.get("restored")
                else f"forgot {', '.join(map(_printable, e['forgotten']))}")
        where = "".join(f"  {k} {_printable(e[k])}" for k in ("seed", "device_request") if k in e)
        click.echo(f"{e['index']:>4}  {_printable(e['time'])}  {_printable(e.get('request', ''))}  {what}  "
                   f"adapter {_printable(e['adapter'])}{where}")
    click.echo(f"verified: {len(v.entries)} entr{'y' if len(v.entries) == 1 else 'ies'} in {ledger}; chain intact; "
               f"head signed with the {v.key} key {v.key_id}")
    if v.key == "folder":
        click.echo(f"note: the folder's own key ({records.key_path(ledger).name}) lies beside the ledger, so this "
                   f"rules out accidents and careless edits, not a rewrite by someone who can write to the folder; "
                   f"sign with your own key (${records.KEY_ENV}) for that")


@main.command("report")
@click.argument("run", type=click.Path())
def report_cmd(run: str) -> None:
    """Write a run folder's report.md and plots again from its summary.json (the stored figures,
    rendered by this version's report)."""
    from rmlora.scenario.report import rewrite_report

    click.echo(f"wrote {rewrite_report(run)}")


@main.command("workloads")
@click.argument("name", required=False)
def workloads(name: str | None) -> None:
    """List the workloads, or the settings of one (what [settings] in a TOML file may override)."""
    from rmlora.scenario.workload import get_workload, iter_settings_help, workload_names

    if name is None:
        for n in workload_names():
            w = get_workload(n)
            click.echo(f"{n}: {w.description} (configurations: {', '.join(w.configurations)})")
        return
    w = get_workload(name)
    click.echo(f"{w.name}: {w.description}")
    for field_name, text, default in iter_settings_help(w):
        if hasattr(default, "to_dict"):
            default = default.to_dict()
        click.echo(f"  {field_name} = {default!r}" + (f"  # {text}" if text else ""))


@main.command("presets")
def presets() -> None:
    """List the device presets and technology profiles."""
    from rmlora.costs.profile import PROFILE_DIR
    from rmlora.device.params import list_presets

    click.echo("device presets: " + ", ".join(list_presets()))
    click.echo("technology profiles: " + ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.json"))))


from rmlora.cli_costs import costs_cmd  # noqa: E402  (its own module: the cost projection)

main.add_command(costs_cmd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
