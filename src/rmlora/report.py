"""Plots (PNG) and ``report.md`` of a demo run, made from its summary alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATHS = (("lora", "adapter path (LoRA)"), ("full", "full update (baseline)"), ("retrain", "retrained (reference)"))
COLOURS = {"lora": "#1f77b4", "full": "#d62728", "retrain": "#7f7f7f", "deployed": "#2ca02c"}


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def plot_stages(s: dict, path: Path) -> None:
    """Accuracy on forget / retained-test / new data after each stage, per path."""
    metrics = [("forget_acc", "forget set (Df)"), ("test_acc", "retained classes (test)"),
               ("new_class_acc", "new classes (test)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True, gridspec_kw={"width_ratios": [7, 7, 3]})
    for ax, (m, title) in zip(axes, metrics):
        labels, vals, cols = [], [], []
        if m != "new_class_acc":
            labels.append("before")
            vals.append(s["pretrained"].get(m, float("nan")))
            cols.append(COLOURS["deployed"])
        for p, _ in PATHS:
            if m != "new_class_acc":
                labels.append(f"{p}\nforgot")
                vals.append(s[p]["after_forget"].get(m, float("nan")))
                cols.append(COLOURS[p])
            labels.append(f"{p}\nfinal")
            vals.append(s[p].get(m, float("nan")))
            cols.append(COLOURS[p])
        vals = [0 if (v is None or math.isnan(v)) else 100 * v for v in vals]
        bars = ax.bar(range(len(vals)), vals, color=cols, alpha=0.85)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 1.5, f"{v:.0f}", ha="center", fontsize=7)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 110)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k]) for k in ("deployed", "lora", "full", "retrain")]
    fig.legend(handles, ["deployed, before any update", "adapter path (LoRA)", "full update (baseline)",
                         "retrained (reference)"], loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{s['task']}: forget {', '.join(s['scenario']['forget'])}, then add "
                 f"{', '.join(s['scenario']['add'])} (mean of {len(s['seeds'])} seed(s))", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_class(s: dict, path: Path) -> None:
    """Final test accuracy per class and path (first seed)."""
    classes = list(s["lora"]["per_class_test_acc"])
    names = [_name_of(c, s) for c in classes]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) + 4), 3.2))
    w = 0.38
    for k, p in enumerate(("lora", "full")):
        vals = [100 * s[p]["per_class_test_acc"][c] for c in classes]
        ax.bar([i + (k - 0.5) * w for i in range(len(classes))], vals, w, label=dict(PATHS)[p], color=COLOURS[p])
    ax.set_xticks(range(len(classes)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("test accuracy per class after forgetting and learning (first seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _name_of(dataset_label: str, s: dict) -> str:
    # per_class keys are dataset labels; class_index maps names to model indices in learn+add order
    order = s["scenario"]["learn"] + s["scenario"]["add"]
    keys = list(s["lora"]["per_class_test_acc"])
    return order[keys.index(dataset_label)] if dataset_label in keys and len(order) == len(keys) else dataset_label


def plot_costs(s: dict, path: Path) -> None:
    """The three cost figures of both paths on a log scale, with their values."""
    figs = [("training_cost_J", "training cost (J)", "training_cost"),
            ("deployment_overhead_J", "deployment overhead (J)", "deployment_overhead"),
            ("inference_energy_J", "inference energy (J / sample)", "inference_energy_vs_digital")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (k, title, ratio_key) in zip(axes, figs):
        vals = [s["lora"]["costs"][k], s["full"]["costs"][k]]
        labels = ["LoRA", "full update"]
        cols = [COLOURS["lora"], COLOURS["full"]]
        if k == "inference_energy_J":
            vals.append(s["digital_inference_energy_J"])
            labels.append("all digital")
            cols.append("#9467bd")
        bars = ax.bar(labels, vals, color=cols)
        ax.set_yscale("log")
        lo = min(v for v in vals if v > 0)
        ax.set_ylim(lo / 10, max(vals) * 10)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v * 1.3, f"{v:.2g}", ha="center", fontsize=8)
        versus = "digital" if k == "inference_energy_J" else "full"
        ax.set_title(f"{title}\n{versus} / LoRA = {s['ratios'][ratio_key]:.2f}x", fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="major")
    fig.suptitle(f"costs on {s['preset']} with profile {s['profile']} (counted work x profile constants)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metrics_table(s: dict) -> str:
    """The markdown table of the final metrics (README and report)."""
    rows = ["| path | forget acc | retain acc | test acc | new-class acc | forget MIA AUC |",
            "|---|---|---|---|---|---|",
            f"| deployed (before) | {_fmt(s['pretrained']['forget_acc'])} | {_fmt(s['pretrained']['retain_acc'])} | "
            f"{_fmt(s['pretrained']['test_acc'])} | – | {_fmt(s['pretrained']['mia_auc'], False)} |"]
    for p, name in PATHS:
        b = s[p]
        rows.append(f"| {name} | {_fmt(b['forget_acc'])} ± {_fmt(b['std']['forget_acc'])} | "
                    f"{_fmt(b['retain_acc'])} | {_fmt(b['test_acc'])} ± {_fmt(b['std']['test_acc'])} | "
                    f"{_fmt(b['new_class_acc'])} ± {_fmt(b['std']['new_class_acc'])} | "
                    f"{_fmt(b['mia_auc'], False)} |")
    return "\n".join(rows)


def costs_table(s: dict) -> str:
    r, paper = s["ratios"], s["paper_ratios"]
    lo, fu = s["lora"]["costs"], s["full"]["costs"]
    return "\n".join([
        "| figure | LoRA path | full update | full / LoRA | paper (up to) |",
        "|---|---|---|---|---|",
        f"| training cost | {lo['training_cost_J']:.3e} J | {fu['training_cost_J']:.3e} J | "
        f"{r['training_cost']:.1f}x | {paper['training_cost']}x |",
        f"| deployment overhead | {lo['deployment_overhead_J']:.3e} J, {lo['deployment_time_s']:.2e} s | "
        f"{fu['deployment_overhead_J']:.3e} J, {fu['deployment_time_s']:.2e} s | "
        f"{r['deployment_overhead']:.1f}x | {paper['deployment_overhead']}x |",
        f"| inference energy / sample | {lo['inference_energy_J']:.3e} J | {fu['inference_energy_J']:.3e} J | "
        f"{r['inference_energy']:.2f}x | – |",
        f"| inference energy vs all-digital | {lo['inference_energy_J']:.3e} J | "
        f"{s['digital_inference_energy_J']:.3e} J (digital) | {r['inference_energy_vs_digital']:.1f}x | "
        f"{paper['inference_energy']}x |",
    ])


def breakdown_table(s: dict) -> str:
    """Where each path's training energy goes (first seed), in % of its total."""
    cats = ("analogue_mvm", "digital", "sram", "write_verify")
    rows = ["| training energy | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for p, name in PATHS[:2]:
        e = s[p]["cost_breakdown_seed0"]["training_J"]
        rows.append(f"| {name} | " + " | ".join(f"{100 * e[c] / e['total']:.1f}%" for c in cats) + " |")
    return "\n".join(rows)


def repair_section(s: dict) -> str:
    """Write error and its digital repair (tasks that run it), first seed."""
    if "repair" not in s:
        return ""
    r, st = s["repair"], s["repair"]["stress"]
    sw = s["repair"]["sweep"]
    levels = ", ".join(f"{lv:g} µS: {_fmt(m)} ± {_fmt(sd)}" for lv, m, sd in zip(sw["levels_uS"], sw["mean"], sw["std"]))

    def frac(v):
        return "nothing lost" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"
    return f"""## Repair of write error with a digital adapter

| chip | before noise | after write error | after repair adapter | recovered |
|---|---|---|---|---|
| `{r['preset']}` (write-verify) | {_fmt(r['acc_before_noise'])} | {_fmt(r['acc_after_noise'])} | {_fmt(r['acc_after_repair'])} | {frac(r['recovered_fraction'])} |
| Gaussian write noise σ = {st['sigma_uS']:g} µS | {_fmt(st['acc_before_noise'])} | {_fmt(st['acc_after_noise'])} | {_fmt(st['acc_after_repair'])} | {frac(st['recovered_fraction'])} |

The second row takes the first level of the sweep below that costs at least 5 points. Test accuracy
of the learned classes against programming noise ({sw['draws']} chips per level, mean ± std): {levels}.

![noise sweep](noise_sweep.png)

"""


def write_report(out: Path, s: dict) -> None:
    """Write the three PNGs and ``report.md`` into ``out``."""
    plot_stages(s, out / "accuracy_stages.png")
    plot_per_class(s, out / "accuracy_per_class.png")
    plot_costs(s, out / "costs.png")
    sc, dep = s["scenario"], s["deployment"]
    gap = s["avg_gap_to_retrain"]
    text = f"""# rmlora {s['task']} demo

**Scenario**: learn {', '.join(sc['learn'])}; deploy on `{s['preset']}`; forget {', '.join(sc['forget'])}
(method `{sc['method']}`); add {', '.join(sc['add'])}. Data: {s['dataset']['source']} (`{s['dataset']['kind']}`).
Seeds {s['seeds']} (mean ± std over seeds){' — quick run' if sc['quick'] else ''}.

## Results

{metrics_table(s)}

Forget accuracy is on the forgotten class(es)' training examples (Df); retain accuracy on the kept
classes' training examples (Dr); test accuracy on held-out examples of the kept classes; new-class
accuracy on held-out examples of the added class(es). Forget MIA AUC is a loss-threshold attack
separating Df from held-out examples of the same class(es): 0.5 means the model treats them alike,
as a model that never saw them does (with a handful of examples per class it moves in large steps).
Average gap to the retrained model after forgetting (forget, retain, test, MIA): LoRA
{100 * gap['lora']:.1f} points, full update {100 * gap['full']:.1f} points.

Float model before deployment: {_fmt(s['pretrained']['float_test_acc'])} test accuracy on the learned classes;
after deployment: {_fmt(s['pretrained']['learned_test_acc'])}.

![accuracy per stage](accuracy_stages.png)

![accuracy per class](accuracy_per_class.png)

## Costs

{costs_table(s)}

Training cost covers both updates (forget, then learn): forward and backward passes, SRAM writes of the
updated parameters and, for the full update, the write-verify of every cell that moved beyond tolerance
after each step ({s['full']['reprogrammed_cells_during_training']:.0f} cell programmings). Deployment
overhead is writing the adapters and digital rows into SRAM versus write-verifying a chip in the field
from the old model to the new one. The full-update path's inference runs on the same arrays without
adapters, so its ratio is below 1; the paper's inference figure compares against digital hardware, which
the last row reproduces. Every constant comes from the technology profile `{s['profile']}` (sources in
its JSON file); nothing is tuned toward the paper's figures.

{breakdown_table(s)}

![costs](costs.png)

{repair_section(s)}## Deployment of the pretrained model

{dep['cells']} cells on {dep['tiles']} tiles; {dep['mean_pulses_per_cell']:.2f} pulses per cell on average
(95th percentile {dep['p95_pulses_per_cell']:.0f}); {dep['failed_cells']} cells failed to converge;
final error {dep['error_mean_uS']:+.3f} ± {dep['error_std_uS']:.3f} µS; {dep['programming_energy_J']:.3e} J,
{dep['programming_time_s']:.3e} s.

## Files

`summary.json` (means, spreads, per-seed values), `per_seed.json`, `run.json` (configuration, seeds,
package versions), `deletion_ledger.jsonl` (hash-chained forget requests), `weights/` (safetensors:
pretrained float weights, each adapter as INT8 codes, digital rows, the full-update and retrained models,
the chip's cells).
"""
    (out / "report.md").write_text(text)
