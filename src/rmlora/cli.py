"""Command-line interface: ``rmlora deploy-check``, ``rmlora demo``, ``rmlora presets``."""

from __future__ import annotations

import copy
import json
import sys

import click
import torch
from torch import nn

from rmlora.errors import RmloraError


class _Group(click.Group):
    """Turns RmloraError into one ``error: ...`` line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RmloraError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


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
@click.option("--tile", default=128, show_default=True, help="tile rows = columns")
@click.option("--dac-bits", default=8, show_default=True)
@click.option("--adc-bits", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def deploy_check(preset: str, profile: str, tile: int, dac_bits: int, adc_bits: int, seed: int, as_json: bool) -> None:
    """Deploy a built-in 3-layer MLP and report programming and fidelity."""
    from rmlora.hardware import SimulatedChip, deploy
    from rmlora.runinfo import seed_everything

    if tile < 2:
        raise RmloraError(f"--tile must be >= 2, got {tile}")
    gen = seed_everything(seed)
    ref = builtin_mlp(seed)
    model = copy.deepcopy(ref)
    chip = SimulatedChip(preset, tile=(tile, tile), dac_bits=dac_bits, adc_bits=adc_bits, seed=seed)
    report = deploy(model, chip, profile=profile)
    x = torch.randn(256, 64, generator=gen)
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


def _idents(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items


@main.command("demo")
@click.option("--task", type=click.Choice(["face", "speaker", "style"]), default="face", show_default=True,
              help="face: AT&T/Olivetti photos; speaker: FSDD recordings as spike trains; "
                   "style: class-conditional diffusion transformer on stylized images")
@click.option("--data-dir", type=click.Path(), default=None,
              help="real data folder (default: $RMLORA_DATA_DIR, else built-in procedural data)")
@click.option("--download", is_flag=True, help="download the real dataset if it is not found")
@click.option("--learn", default=None, help="classes to learn first, by index or name, comma-separated")
@click.option("--forget", default=None, help="learned classes to forget, comma-separated")
@click.option("--add", "add_", default=None, help="new classes to learn afterwards, comma-separated")
@click.option("--method", default=None, help="unlearning method: ga, relabel or scrub (default: the task's)")
@click.option("--preset", default="rram-180nm", show_default=True)
@click.option("--profile", default="cmos-180nm", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--seeds", type=int, default=None, help="number of seeds to average (default: the task's)")
@click.option("--pretrained", type=click.Path(), default=None, help="pretrained.safetensors of an earlier run")
@click.option("--quick", is_flag=True, help="short run for tests and a first look")
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True)
@click.option("--threads", default=1, show_default=True,
              help="torch CPU threads (the workloads' small matrices run fastest on one)")
@click.option("--no-progress", is_flag=True)
def demo(task, data_dir, download, learn, forget, add_, method, preset, profile, seed, seeds, pretrained, quick,
         out, threads, no_progress) -> None:
    """Learn, deploy, forget, add: adapter path vs full update vs retraining."""
    from rmlora.pipeline import DemoConfig, run_demo
    from rmlora.report import costs_table, metrics_table

    if seeds is not None and seeds < 1:
        raise RmloraError("--seeds must be >= 1")
    cfg = DemoConfig(task=task, out=out, data_dir=data_dir, download=download, learn=_idents(learn),
                     forget=_idents(forget), add=_idents(add_), method=method, preset=preset, profile=profile,
                     seed=seed, seeds=seeds, quick=quick, pretrained=pretrained, progress=not no_progress,
                     threads=threads)
    if cfg.forget == []:
        raise RmloraError("the forget set is empty: name at least one learned class")
    if task == "style":
        from rmlora.style_pipeline import run_style_demo, style_tables
        s = run_style_demo(cfg)
        click.echo(f"style demo on {s['dataset']['source']}")
        click.echo(style_tables(s))
        click.echo(f"\nrun folder: {out} (read report.md first)")
        return
    s = run_demo(cfg)
    click.echo(f"{s['task']} demo on {s['dataset']['source']}")
    click.echo(metrics_table(s))
    click.echo("")
    click.echo(costs_table(s))
    click.echo(f"\nrun folder: {out} (read report.md first)")


@main.command("presets")
def presets() -> None:
    """List the device presets and technology profiles."""
    from rmlora.costs.profile import PROFILE_DIR
    from rmlora.device.params import list_presets

    click.echo("device presets: " + ", ".join(list_presets()))
    click.echo("technology profiles: " + ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.json"))))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
