"""``rmlora costs``: the three cost figures of a paper-size model under every protocol, projected
from one counted step of each phase (no training, no programming)."""

from __future__ import annotations

import dataclasses
import json

import click

from rmlora.costs.protocols import HEADLINE, PROTOCOLS
from rmlora.costs.report import ratio_text as _x


@click.command("costs")
@click.option("--model", "model_name", default=None, help="a named paper model (--list shows them)")
@click.option("--list", "list_models", is_flag=True, help="list the named models and exit")
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(list(PROTOCOLS)),
              help="protocol(s) to show (default: all)")
@click.option("--profile", default="cmos-180nm", show_default=True, help="technology profile name or JSON file")
@click.option("--strict", is_flag=True, help="refuse a profile constant outside its cited range")
@click.option("--preset", default="rram-180nm", show_default=True, help="device preset name or JSON file")
@click.option("--steps", type=int, default=None, help="optimiser steps per request (default: the model's)")
@click.option("--full-steps", type=int, default=None, help="the full update's steps (default: the model's)")
@click.option("--batch", type=int, default=None, help="samples per step (default: the model's)")
@click.option("--requests", type=int, default=None, help="forget/add requests (default: 1)")
@click.option("--moved-per-step", type=float, default=None,
              help="share of trained cells the mixed-precision full update reprograms per step (default 0.01)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def costs_cmd(model_name: str | None, list_models: bool, protocols: tuple[str, ...], profile: str, strict: bool,
              preset: str, steps: int | None, full_steps: int | None, batch: int | None, requests: int | None,
              moved_per_step: float | None, as_json: bool) -> None:
    """Project training cost, deployment overhead and inference energy of a named paper-size
    model (the LoRA path against the full update and the all-digital reference) under every
    cost protocol, from one counted step of each phase (docs/costs.md)."""
    from rmlora.costs import load_profile
    from rmlora.costs.project import project
    from rmlora.errors import RmloraError
    from rmlora.tasks.paper import PAPER_MODELS, paper_model

    if list_models:
        for m in PAPER_MODELS.values():
            click.echo(f"{m.name:18s} {m.description}")
        return
    if model_name is None:
        raise RmloraError("give --model NAME (rmlora costs --list shows the names)")
    pm = paper_model(model_name)
    prof = load_profile(profile, strict=strict)
    changes = {k: v for k, v in (("steps", steps), ("full_steps", full_steps), ("batch", batch),
                                  ("requests", requests), ("moved_per_step", moved_per_step)) if v is not None}
    sched = dataclasses.replace(pm.schedule, **changes)
    net, example = pm.build(min(sched.batch, pm.count_batch or sched.batch))
    proj = project(net, example, adapter=pm.adapter, schedule=sched, preset=preset, profile=prof,
                   exclude=pm.exclude, loss_fn=pm.loss, protocols=list(protocols) or None)
    if as_json:
        d = proj.to_dict()
        d.pop("ledgers")
        click.echo(json.dumps({"model": pm.name, "description": pm.description, "source": pm.source,
                               "notes": pm.notes, **d}))
        return
    a = proj.assumptions
    click.echo(f"{pm.name}: {pm.description}")
    click.echo(f"  {a['parameters']:,} parameters, {a['cells']:,} cells on {a['layers_on_chip']} layers; LoRA rank "
               f"{a['rank']} on {len(a['lora_targets'])} layers = {a['lora_parameters']:,} parameters")
    click.echo(f"  schedule: {sched.steps} steps (full update {sched.full_steps or sched.steps}) x batch {sched.batch}"
               f" x {sched.requests} request(s); profile {prof.name}, preset {a['preset']}")
    head = " | ".join(f"{label}" for label in HEADLINE.values())
    click.echo(f"  {'protocol':22s} | {head} | training time | deployment time")
    for name, f in proj.figures.items():
        r = f["ratios"]
        click.echo(f"  {name:22s} | " + " | ".join(f"{_x(r[k]):>{len(v)}s}" for k, v in HEADLINE.items())
                   + f" | {_x(r['training_time']):>13s} | {_x(r['deployment_time']):>15s}")
    click.echo(f"  source: {pm.source}")
    for n in pm.notes:
        click.echo(f"  note: {n}")
