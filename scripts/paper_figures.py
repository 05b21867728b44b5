"""Write docs/paper-figures.md: our three ratios at our workloads' size (the scenario runs) and at the
paper's size (projections of the paper's architectures), under every protocol, next to the paper's
"up to" figures, with what produces each order of magnitude.

    python scripts/paper_figures.py docs/paper-figures.md [--docs docs]

Reads docs/{face,speaker,style}-demo/summary.json (written by scripts/refresh_docs.sh before this)
and projects face-mixer, speaker-lif and dit-b2-convnext with ``rmlora.costs.project``, using the
share of trained cells our own full-update runs reprogrammed per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from rmlora.costs import load_profile
from rmlora.costs.project import project
from rmlora.costs.protocols import HEADLINE, PROTOCOLS, PathLedgers
from rmlora.costs.report import PAPER
from rmlora.costs.report import ratio_text as _x
from rmlora.tasks.paper import paper_model

TASKS = [("face", "face-demo", "face-mixer"), ("speaker", "speaker-demo", "speaker-lif"),
         ("image", "style-demo", "dit-b2-convnext")]


def ours(summary: dict) -> tuple[dict, float | None]:
    """Mean ratios per protocol over seeds, and the share of trained cells reprogrammed per step."""
    seeds = summary["per_seed"]
    out = {p: {k: statistics.fmean(s["costs"]["protocols"][p]["ratios"][k] for s in seeds) for k in HEADLINE}
           for p in PROTOCOLS}
    shares = []
    for s in seeds:
        c = PathLedgers.from_dict(s["costs"]["ledgers"]["full"]).train.counts
        if c["trained_cells"]:
            shares.append(c["programmed_cells"] / c["trained_cells"])
    return out, (statistics.fmean(shares) if shares else None)


def closest(rows: list[tuple[str, str, dict]]) -> dict[str, tuple[str, str, float, float]]:
    """For each headline figure, the (scale, protocol) whose ratio is nearest the paper's (in log)."""
    best = {}
    for k in HEADLINE:
        cands = [(scale, proto, r[k]) for scale, proto, r in rows if 0 < r[k] < float("inf")]
        scale, proto, v = min(cands, key=lambda c: abs(math.log(c[2] / PAPER[k])))
        best[k] = (scale, proto, v, PAPER[k] / v)
    return best


def shares(pl: PathLedgers, prof, phase: str) -> dict[str, float]:
    led = {"training": pl.train, "deployment": pl.deploy, "inference": pl.inference}[phase]
    e = led.energy(prof)
    tot = e.pop("total") or 1.0
    return {k: v / tot for k, v in e.items() if v > 0}


def account(name: str, proj, prof) -> list[str]:
    """Generated sentences: what dominates each path's training, deployment and inference."""
    lines = []
    for phase in ("training", "deployment", "inference"):
        parts = []
        for path in ("full", "lora"):
            sh = sorted(shares(proj.paths[path], prof, phase).items(), key=lambda kv: -kv[1])[:2]
            parts.append(f"{'full update' if path == 'full' else 'LoRA path'}: "
                         + ", ".join(f"{k.replace('_', ' ')} {100 * v:.0f}%" for k, v in sh))
        lines.append(f"* {phase} ({name}, `measured`): " + "; ".join(parts) + ".")
    a = proj.assumptions
    lines.append(f"* size: {a['parameters']:,} parameters on {a['cells']:,} cells; the adapter has "
                 f"{a['lora_parameters']:,} parameters ({a['parameters'] / max(1, a['lora_parameters']):.0f}x fewer).")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--docs", default="docs")
    args = ap.parse_args()
    prof = load_profile()
    sections, rows_all = [], []
    for task, run, model in TASKS:
        summary = json.loads((Path(args.docs) / run / "summary.json").read_text())
        our, share = ours(summary)
        pm = paper_model(model)
        sched = pm.schedule if share is None else dataclasses.replace(pm.schedule, moved_per_step=share)
        net, example = pm.build(min(sched.batch, pm.count_batch or sched.batch))
        proj = project(net, example, adapter=pm.adapter, schedule=sched, profile=prof, exclude=pm.exclude,
                       loss_fn=pm.loss)
        equal = dataclasses.replace(sched, full_steps=None)
        proj_eq = proj if sched.full_steps is None else project(net, example, adapter=pm.adapter, schedule=equal,
                                                                profile=prof, exclude=pm.exclude, loss_fn=pm.loss)
        n = len(summary["per_seed"])
        rows = [(f"ours ({run}, {n} seed{'s' if n > 1 else ''})", p, our[p]) for p in PROTOCOLS]
        rows += [(f"paper size ({model})", p, {k: proj.figures[p]["ratios"][k] for k in HEADLINE}) for p in PROTOCOLS]
        if proj_eq is not proj:
            rows += [("paper size, equal steps", p, {k: proj_eq.figures[p]["ratios"][k] for k in HEADLINE})
                     for p in PROTOCOLS]
        rows_all += [(f"{task}: {s}", p, r) for s, p, r in rows]
        table = ["| scale | protocol | " + " | ".join(HEADLINE.values()) + " |", "|---|---|---|---|---|"]
        table += [f"| {s} | `{p}` | " + " | ".join(_x(r[k]) for k in HEADLINE) + " |" for s, p, r in rows]
        table.append("| paper (up to, task not stated) | – | " + " | ".join(f"{PAPER[k]}x" for k in HEADLINE) + " |")
        s = sched
        sections.append("\n".join([
            f"## {task}", "",
            f"Paper size: {pm.description}; LoRA rank {pm.adapter.rank}, alpha {pm.adapter.alpha} on "
            f"{', '.join(pm.adapter.target_modules or ['every layer'])}; {s.steps} steps"
            + (f" (full update {s.full_steps})" if s.full_steps else "") + f" of batch {s.batch}; "
            f"{100 * s.moved_per_step:.2f}% of trained cells reprogrammed per step"
            + (" (measured in our run)" if share is not None else " (default)") + ".",
            f"Source: {pm.source}.", "", "\n".join(table), "",
            *account(model, proj, prof), ""]))
    best = closest(rows_all)
    lines = [
        "# Our cost ratios next to the paper's",
        "",
        "Written by `scripts/paper_figures.py` (run by `scripts/refresh_docs.sh`) from the scenario runs in "
        "docs/*-demo and from projections of the paper's architectures at the paper's sizes "
        "(`rmlora costs --model NAME`); profile `cmos-180nm`, preset `rram-180nm`. The paper (arXiv "
        "2601.10037) gives only \"up to\" ratios in its abstract and no formulas; the protocols are our "
        "readings (docs/costs.md). Nothing here is tuned toward the paper's figures.",
        "",
        "## Closest to each paper figure",
        "",
        "| paper figure | paper | closest of ours | protocol | ours | paper / ours |",
        "|---|---|---|---|---|---|",
        *[f"| {HEADLINE[k]} | {PAPER[k]}x | {b[0]} | `{b[1]}` | {_x(b[2])} | {b[3]:.2g} |" for k, b in best.items()],
        "",
        *sections,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
