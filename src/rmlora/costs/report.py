"""The cost sections every report shows: protocols side by side, where the energy and time go per
layer and kind of work, and which profile constants decide the ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmlora.costs.ledger import KINDS
from rmlora.costs.profile import TechProfile
from rmlora.costs.protocols import HEADLINE, PROTOCOLS, PathLedgers, evaluate, protocol_ledgers
from rmlora.costs.sensitivity import plot as plot_tornado
from rmlora.costs.sensitivity import sweep
from rmlora.costs.sensitivity import table as sensitivity_table

#: the paper's "up to" ratios (arXiv 2601.10037, abstract), by headline key
PAPER = {"training_energy": 147.76, "deployment_energy": 387.95, "inference_energy_vs_digital": 48.44}


def cost_record(paths: dict[str, PathLedgers], profile: TechProfile) -> dict[str, Any]:
    """What a run keeps of its costs: every protocol's figures and ratios, the per-layer
    breakdown and the sensitivity rows (plain data for summary.json)."""
    return {"protocols": evaluate(paths, profile), "layers": layer_breakdown(paths, profile),
            "sensitivity": sweep(paths, profile)}


def layer_breakdown(paths: dict[str, PathLedgers], profile: TechProfile) -> dict[str, Any]:
    """Energy (J) and time (s) per layer and kind of work of each path's training, deployment and
    one inference (measured protocol; leakage is not attributed to layers)."""
    out: dict[str, Any] = {}
    for path, pl in paths.items():
        n = max(1, pl.samples)
        phases = {"training": pl.train, "deployment": pl.deploy, "inference": pl.inference}
        out[path] = {}
        for phase, led in phases.items():
            e, t = led.energy_by_layer(profile), led.time_by_layer(profile)
            if phase == "inference":
                e = {k: {c: v / n for c, v in d.items()} for k, d in e.items()}
                t = {k: {c: v / n for c, v in d.items()} for k, d in t.items()}
            out[path][phase] = {"energy_J": e, "time_s": t}
    return out


def ratio_text(v: float) -> str:
    """A ratio as the tables print it: 3 significant digits and an x, ∞ when the divisor is 0."""
    return "∞" if v == float("inf") else f"{v:.3g}x"


_x = ratio_text


def protocols_table(per_seed: list[dict[str, Any]]) -> str:
    """Markdown: each protocol's ratios (mean over seeds, and the spread when there are several)."""
    import statistics

    def cell(proto: str, key: str) -> str:
        vals = [s[proto]["ratios"][key] for s in per_seed]
        m = statistics.fmean(vals)
        return _x(m) + (f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 and m != float("inf") else "")

    keys = list(HEADLINE) + ["training_time", "deployment_time"]
    head = "| protocol | " + " | ".join(HEADLINE.values()) + " | training time | deployment time |"
    rows = [head, "|---|" + "---|" * len(keys)]
    for proto in PROTOCOLS:
        rows.append(f"| `{proto}` | " + " | ".join(cell(proto, k) for k in keys) + " |")
    rows.append("| paper (up to) | " + " | ".join(f"{PAPER[k]}x" for k in HEADLINE) + " | – | – |")
    return "\n".join(rows)


def figures_table(rec: dict[str, Any]) -> str:
    """Markdown: absolute figures of both paths under each protocol (one seed)."""
    rows = ["| protocol | path | training J | training s | deployment J | deployment s | inference J/sample |",
            "|---|---|---|---|---|---|---|"]
    for proto, f in rec.items():
        for path in ("lora", "full"):
            c = f[path]
            rows.append(f"| `{proto}` | {path} | {c['training_cost_J']:.3e} | {c['training_time_s']:.3e} | "
                        f"{c['deployment_overhead_J']:.3e} | {c['deployment_time_s']:.3e} | "
                        f"{c['inference_energy_J']:.3e} |")
        rows.append(f"| `{proto}` | all-digital | – | – | – | – | {f['digital_inference_J']:.3e} |")
    return "\n".join(rows)


def breakdown_table(layers: dict[str, Any], phase: str, quantity: str = "energy_J") -> str:
    """Markdown: per layer and kind of work, both paths, one phase (J or s)."""
    kinds = [k for k in KINDS if k != "leakage"]
    used = [k for k in kinds if any(d.get(k, 0) for p in layers.values() for d in p[phase][quantity].values())]
    unit = "J" if quantity == "energy_J" else "s"
    rows = ["| path | layer | " + " | ".join(k.replace("_", " ") for k in used) + f" | total ({unit}) |",
            "|---|---|" + "---|" * (len(used) + 1)]
    for path, p in layers.items():
        for layer, d in p[phase][quantity].items():
            if d.get("total", 0) > 0:
                rows.append(f"| {path} | {layer} | " + " | ".join(f"{d.get(k, 0):.2e}" for k in used)
                            + f" | {d['total']:.3e} |")
    return "\n".join(rows)


def cost_section(per_seed: list[dict[str, Any]], out: Path | None, profile_name: str, title: str = "") -> str:
    """The report section for the cost records of every seed (:func:`cost_record`); writes the
    tornado plot of the first seed to ``out/sensitivity.png``."""
    first = per_seed[0]
    parts = [
        "## Cost protocols",
        f"Profile `{profile_name}`; formulas in docs/costs.md. Ratios are full update / LoRA path "
        "(inference: all-digital / LoRA path), mean over seeds:",
        protocols_table([s["protocols"] for s in per_seed]),
        "`measured`: the run as simulated. `reprogram-every-step`: update costs only, every trained cell "
        "write-verified after every step (our reading of the paper's protocol). `offchip-finetune`: the full "
        "update trained on a digital unit off-chip, deployed by one reprogramming.",
        "Absolute figures (first seed):",
        figures_table(first["protocols"]),
        "## Where the energy goes, per layer (first seed, measured protocol)",
        "Training:", breakdown_table(first["layers"], "training"),
        "Deployment:", breakdown_table(first["layers"], "deployment"),
        "One inference:", breakdown_table(first["layers"], "inference"),
        "Training latency per layer (s):", breakdown_table(first["layers"], "training", "time_s"),
        "## Which constants decide (first seed, measured protocol)",
        "Each energy and time constant moved alone across its cited range (or x/÷ 2 where the source gives "
        "none); the ten with the widest swing of any headline ratio:",
        sensitivity_table(first["sensitivity"]),
    ]
    if out is not None:
        plot_tornado(first["sensitivity"], Path(out) / "sensitivity.png", title=title)
        parts.append("![sensitivity of the ratios](sensitivity.png)")
    return "\n\n".join(parts)


__all__ = ["PAPER", "breakdown_table", "cost_record", "cost_section", "figures_table", "layer_breakdown",
           "protocol_ledgers", "protocols_table"]
