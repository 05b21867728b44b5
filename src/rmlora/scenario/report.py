"""``report.md`` and its plots (PNG) of a scenario run, made from the typed result alone;
each workload adds its own section (:meth:`Workload.report_section`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rmlora.hardware.deploy import layer_table
from rmlora.costs.ledger import KINDS
from rmlora.scenario.results import ScenarioResult, stats  # noqa: E402

PATH_NAMES = {"lora": "adapter path (LoRA)", "full": "full update (baseline)", "retrain": "retrained (reference)"}
COLOURS = {"lora": "#1f77b4", "full": "#d62728", "retrain": "#7f7f7f", "digital": "#9467bd"}


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}%"


def _pm(st: dict[str, Any], pct: bool = True) -> str:
    """``mean ± std`` (std only with two seeds or more)."""
    f = _pct if pct else (lambda v: "–" if v is None or math.isnan(v) else f"{v:.3f}")
    m, s = st["mean"], st["std"]
    return f(m) if s is None or math.isnan(s) else f"{f(m)} ± {f(s)}"


def _x(v: float) -> str:
    """A ratio: 147.8x, 4.56x, 0.031x."""
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.1f}x" if v >= 10 else (f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x")


def mean_of(r: ScenarioResult, path: str, metric: str, request: int = -1) -> float:
    return r.metric(path, metric, request)["mean"]


# --------------------------------------------------------------------------- tables
def metrics_table(r: ScenarioResult) -> str:
    """The last request's metrics per path (mean ± std over seeds); the CLI and README show it."""
    names = list(r.per_seed[0].requests[-1].paths["lora"].metrics)
    shown = [m for m in names if m in r.metric_names or m == "mia_auc"]
    rows = ["| path | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown),
            "| deployed (before) | " + " | ".join(_pm(r.metric("lora", m, 0), m != "mia_auc") for m in shown) + " |"]
    for p, label in PATH_NAMES.items():
        rows.append(f"| {label} | " + " | ".join(_pm(r.metric(p, m), m != "mia_auc") for m in shown) + " |")
    return "\n".join(rows)


def requests_table(r: ScenarioResult) -> str:
    """Every request, every path: the workload's metrics after it (mean over seeds)."""
    ms = r.metric_names
    head = "| # | request | path | " + " | ".join(ms) + " | note |"
    rows = [head, "|---|---|---|" + "---|" * len(ms) + "---|"]
    for i, req in enumerate(r.per_seed[0].requests):
        for p in ("lora", "full", "retrain"):
            note = req.paths[p].note if i else ""
            rows.append(f"| {i} | `{req.request}` | {p} | "
                        + " | ".join(_pct(r.metric(p, m, i)["mean"]) for m in ms) + f" | {note} |")
    return "\n".join(rows)


def costs_table(r: ScenarioResult) -> str:
    """The three figures of both paths, their ratios and the paper's (mean over seeds)."""
    rat = {k: r.ratio(k)["mean"] for k in r.per_seed[0].ratios}
    lo = {k: r.cost("lora", k)["mean"] for k in r.per_seed[0].paths["lora"].costs}
    fu = {k: r.cost("full", k)["mean"] for k in r.per_seed[0].paths["full"].costs}
    dig = stats([s.digital_inference_energy_J for s in r.per_seed])["mean"]
    paper = r.paper_ratios
    return "\n".join([
        "| figure | LoRA path | full update | full / LoRA | paper (up to) |", "|---|---|---|---|---|",
        f"| training cost | {lo['training_cost_J']:.3e} J | {fu['training_cost_J']:.3e} J | "
        f"{_x(rat['training_cost'])} | {paper['training_cost']}x |",
        f"| deployment overhead | {lo['deployment_overhead_J']:.3e} J, {lo['deployment_time_s']:.2e} s | "
        f"{fu['deployment_overhead_J']:.3e} J, {fu['deployment_time_s']:.2e} s | {_x(rat['deployment_overhead'])} | "
        f"{paper['deployment_overhead']}x |",
        f"| inference energy / sample | {lo['inference_energy_J']:.3e} J | {fu['inference_energy_J']:.3e} J | "
        f"{_x(rat['inference_energy'])} | – |",
        f"| inference energy vs all-digital | {lo['inference_energy_J']:.3e} J | {dig:.3e} J (digital) | "
        f"{_x(rat['inference_energy_vs_digital'])} | {paper['inference_energy']}x |"])


def request_costs_table(r: ScenarioResult) -> str:
    """Training and deployment energy of each request on both paths (first seed)."""
    rows = ["| # | request | LoRA training | LoRA deployment | full training | full deployment |",
            "|---|---|---|---|---|---|"]
    for i, req in enumerate(r.per_seed[0].requests[1:], start=1):
        lo, fu = req.paths["lora"], req.paths["full"]
        rows.append(f"| {i} | `{req.request}` | {lo.training_J:.3e} J | {lo.deployment_J:.3e} J | "
                    f"{fu.training_J:.3e} J | {fu.deployment_J:.3e} J |")
    return "\n".join(rows)


def breakdown_table(r: ScenarioResult) -> str:
    """Where each path's training energy goes (first seed), in % of its total."""
    cats = KINDS
    rows = ["| training energy | " + " | ".join(c.replace("_", " ") for c in cats) + " |",
            "|---|" + "---|" * len(cats)]
    for p in ("lora", "full"):
        e = r.per_seed[0].paths[p].breakdown["training_J"]
        tot = e["total"] or float("nan")
        rows.append(f"| {PATH_NAMES[p]} | " + " | ".join(f"{100 * e.get(c, 0.0) / tot:.1f}%" for c in cats) + " |")
    return "\n".join(rows)


def continual_section(r: ScenarioResult) -> str:
    """The accuracy matrix R per path (first seed) and its summaries (mean over seeds)."""
    out = []
    for p in ("lora", "full"):
        c0 = r.per_seed[0].paths[p].continual
        if not c0:
            continue
        agg = {k: stats([s.paths[p].continual.get(k, float("nan")) for s in r.per_seed])
               for k in ("average_accuracy", "backward_transfer", "forgetting")}
        fm = stats([s.paths[p].forgotten_max for s in r.per_seed])
        head = "| after \\ task | " + " | ".join(c0["tasks"]) + " |"
        rows = [head, "|---|" + "---|" * len(c0["tasks"])]
        for t, row in enumerate(c0["R"]):
            rows.append(f"| `{c0['rows_after'][t]}` | " + " | ".join(_pct(v) for v in row) + " |")
        out.append(f"**{PATH_NAMES[p]}** (R, first seed; {c0['metric']}):\n\n" + "\n".join(rows) +
                   f"\n\naverage accuracy {_pm(agg['average_accuracy'])}, backward transfer "
                   f"{_pm(agg['backward_transfer'])}, forgetting {_pm(agg['forgetting'])}; the forgotten classes' "
                   f"highest score after any request: {_pm(fm)}.\n")
    return "\n".join(out)


def repair_section(rep: dict[str, Any] | None) -> str:
    """Write error and its digital repair (the speaker workload runs it), first seed."""
    if not rep:
        return ""
    st, sw = rep["stress"], rep["sweep"]
    def levels_of(s: dict) -> str:
        return ", ".join(f"{lv:g} µS: {_pct(m)} ± {_pct(sd)}" for lv, m, sd in zip(s["levels_uS"], s["mean"], s["std"]))
    levels = levels_of(sw)
    hw = rep.get("sweep_hardware_aware")
    if hw:
        levels = (f"plain float pretraining {levels}; hardware-aware pretraining (weight noise of the run's preset, "
                  f"rmlora.methods.hwa) {levels_of(hw)}. The run's own model was pretrained "
                  f"{'with' if rep.get('hardware_aware_run') else 'without'} it")

    def frac(v):
        return "nothing lost" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"
    return f"""## Repair of write error with a digital adapter

| chip | before noise | after write error | after repair adapter | recovered |
|---|---|---|---|---|
| `{rep['preset']}` (write-verify) | {_pct(rep['acc_before_noise'])} | {_pct(rep['acc_after_noise'])} | {_pct(rep['acc_after_repair'])} | {frac(rep['recovered_fraction'])} |
| Gaussian write noise σ = {st['sigma_uS']:g} µS | {_pct(st['acc_before_noise'])} | {_pct(st['acc_after_noise'])} | {_pct(st['acc_after_repair'])} | {frac(st['recovered_fraction'])} |

The second row takes the first level of the sweep below that costs at least 5 points. Test accuracy
of the learned classes against programming noise ({sw['draws']} chips per level, mean ± std): {levels}.

![noise sweep](noise_sweep.png)

"""


# --------------------------------------------------------------------------- plots
def plot_requests(r: ScenarioResult, path: Path) -> None:
    """Each metric after each request, per path (mean over seeds)."""
    ms = r.metric_names
    labels = [q.request for q in r.per_seed[0].requests]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms) + 1, 3.6), sharey=True)
    for ax, m in zip(axes, ms):
        for k, p in enumerate(("lora", "full", "retrain")):  # nudged sideways so equal scores stay visible
            vals = [100 * r.metric(p, m, i)["mean"] for i in range(len(labels))]
            ax.plot([i + 0.06 * (k - 1) for i in range(len(labels))], vals, "o-", color=COLOURS[p],
                    label=PATH_NAMES[p], alpha=0.85)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(m, fontsize=10)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{r.workload}: scores after each request (mean of {len(r.seeds)} seed(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _retention_pools(r: ScenarioResult) -> tuple[dict, dict[str, list[float]], dict[str, list[float]]]:
    """The first seed's retention record and every chip's scores pooled over seeds."""
    recs = [s.retention for s in r.per_seed if s.retention]
    plain: dict[str, list[float]] = {}
    repaired: dict[str, list[float]] = {}
    for rec in recs:
        for t, v in rec["plain"].items():
            plain.setdefault(t, []).extend(v)
        for t, v in rec["repaired"].items():
            repaired.setdefault(t, []).extend(v)
    return (recs[0] if recs else {}), plain, repaired


def plot_retention(r: ScenarioResult, path: Path) -> bool:
    """Score against time after programming, without and with the repair adapter (mean ± std over chips)."""
    rec, plain, repaired = _retention_pools(r)
    if not rec:
        return False
    times = rec["times_s"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for vals, label, colour in ((plain, "as programmed", COLOURS["full"]),
                                (repaired, f"with a repair adapter trained at {rec['repair_at']}", COLOURS["lora"])):
        ts = [t for t in times if t in vals]
        m = [stats(vals[t])["mean"] for t in ts]
        sd = [stats(vals[t])["std"] for t in ts]
        shift = 1.0 if vals is plain else 1.25  # side by side, so the error bars stay readable
        ax.errorbar([times[t] * shift for t in ts], m, yerr=[0 if math.isnan(v) else v for v in sd], marker="o",
                    capsize=3, label=label, color=colour)
    ax.set_xscale("log")
    ax.set_xticks(list(times.values()), list(times), fontsize=8, rotation=30)
    ax.set_xlabel("time after programming")
    ax.set_ylabel(rec["metric"].replace("_", " "))
    ax.set_title(f"Retention on {r.chip['preset']} ({len(next(iter(plain.values())))} chips)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def retention_section(r: ScenarioResult) -> str:
    """Markdown: the retention table (mean ± sample std over every chip of every seed) and plot."""
    rec, plain, repaired = _retention_pools(r)
    if not rec:
        return ""
    from rmlora.device import load_preset

    try:
        p = load_preset(r.chip["preset"])
        drift = (f"drift −{p.drift_mean_uS_per_ln_t} µS·ln(t/{p.drift_t0_s:g} s) with spread "
                 f"{p.drift_sigma_uS_per_ln_t} µS·ln(t/{p.drift_t0_s:g} s)")
    except Exception:  # a preset file that moved since the run
        drift = "the preset's drift model"
    n = len(next(iter(plain.values())))
    lines = ["## Retention\n",
             f"The pretrained model deployed on {n} fresh chips ({rec['chips']} per seed), its cells aged from the "
             f"programmed state with {drift} (each time drawn afresh, as aihwkit's inference noise models do), "
             f"scored by {rec['metric'].replace('_', ' ')}; then a digital repair adapter trained on each chip at "
             f"{rec['repair_at']} and the chip scored again at every later time. Mean ± sample std over chips.\n",
             "| time after programming | as programmed | with the repair adapter |", "|---|---|---|"]
    pct = rec["metric"].endswith("acc")
    for t in rec["times_s"]:
        rep = _pm(stats(repaired[t]), pct) if t in repaired else "–"
        lines.append(f"| {t} | {_pm(stats(plain[t]), pct)} | {rep} |")
    lines.append("\n![retention](retention.png)\n")
    return "\n".join(lines) + "\n"


def plot_costs(r: ScenarioResult, path: Path) -> None:
    """The three cost figures of both paths on a log scale, with their values."""
    figs = [("training_cost_J", "training cost (J)", "training_cost"),
            ("deployment_overhead_J", "deployment overhead (J)", "deployment_overhead"),
            ("inference_energy_J", "inference energy (J / sample)", "inference_energy_vs_digital")]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, (k, title, ratio_key) in zip(axes, figs):
        vals = [r.cost("lora", k)["mean"], r.cost("full", k)["mean"]]
        labels, cols = ["LoRA", "full update"], [COLOURS["lora"], COLOURS["full"]]
        if k == "inference_energy_J":
            vals.append(stats([s.digital_inference_energy_J for s in r.per_seed])["mean"])
            labels.append("all digital")
            cols.append(COLOURS["digital"])
        bars = ax.bar(labels, vals, color=cols)
        ax.set_yscale("log")
        pos = [v for v in vals if v > 0]
        ax.set_ylim(min(pos) / 10, max(pos) * 10)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v * 1.3, f"{v:.2g}", ha="center", fontsize=8)
        versus = "digital" if k == "inference_energy_J" else "full"
        ax.set_title(f"{title}\n{versus} / LoRA = {_x(r.ratio(ratio_key)['mean'])}", fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="major")
    fig.suptitle(f"costs on {r.chip['preset']} with profile {r.chip['profile']} (counted work x profile constants)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the report
def write_report(out: Path, r: ScenarioResult, workload: Any) -> None:
    """Write ``report.md`` and its PNGs into ``out``."""
    plot_requests(r, out / "accuracy_requests.png")
    plot_costs(r, out / "costs.png")
    plot_retention(r, out / "retention.png")
    s0 = r.per_seed[0]
    dep = s0.deployment
    chip = r.chip
    calib = dep.get("calibration_examples", "?")
    gaps = {p: stats([s.avg_gap.get(p, float("nan")) for s in r.per_seed]) for p in ("lora", "full")}
    full_cells = stats([s.paths["full"].reprogrammed_cells for s in r.per_seed])["mean"]
    seeds = f"seeds {r.seeds} (mean ± sample std over seeds)" if len(r.seeds) > 1 else f"seed {r.seeds[0]}"
    text = f"""# rmlora {r.workload} scenario

**Workload**: {workload.description}. Data: {r.dataset['source']} (`{r.dataset['kind']}`). Configuration
`{r.configuration}`, method `{r.method}`, chip `{r.chip['preset']}` with profile `{r.chip['profile']}`; {seeds}.

**Requests**: {', '.join(f'`{i}: {q}`' for i, q in enumerate(r.requests))}. Every forget, add and repair is its
own adapter on the adapter path; `undo` deletes it. The full update trains the analogue weights themselves
(an undo has to train its way back); the retrained reference is trained from scratch on the kept classes
whenever they change and deployed on a fresh chip.

## After the last request

{metrics_table(r)}

Average gap to the retrained model after the last request (mean |metric − retrain's| over
{', '.join(m for m in r.metric_names if 'new' not in m)}, computed per seed): LoRA {_pm(gaps['lora'])},
full update {_pm(gaps['full'])}.

## After every request

{requests_table(r)}

![scores after each request](accuracy_requests.png)

## Continual learning

Tasks are the learn request and each add request (their classes still kept at the end); row t is measured
right before task t+1 arrives, the last row at the end. Average accuracy and backward transfer as in GEM
(Lopez-Paz & Ranzato 2017), forgetting as in Chaudhry et al. 2018.

{continual_section(r)}
## Costs

{costs_table(r)}

Training cost covers every request: forward and backward passes, SRAM writes of the updated parameters and,
for the full update, the write-verify of every cell that moved beyond tolerance after each step
({full_cells:.0f} cell programmings). Deployment overhead is writing each adapter and its digital rows into
SRAM versus write-verifying a chip in the field from the previous model to the new one. The full update's
inference runs on the same arrays without adapters, so its ratio is below 1; the paper's inference figure
compares against digital hardware, which the last row reproduces. Every constant comes from the technology
profile `{r.chip['profile']}` (sources in its JSON file); nothing is tuned toward the paper's figures.

{request_costs_table(r)}

{breakdown_table(r)}

![costs](costs.png)

{workload.report_section(r, out)}{retention_section(r)}## Deployment of the pretrained model

{dep['cells']} cells on {dep['tiles']} tiles; {dep['mean_pulses_per_cell']:.2f} pulses per cell on average
(95th percentile {dep['p95_pulses_per_cell']:.0f}); {dep['failed_cells']} cells failed to converge;
final error {dep['error_mean_uS']:+.3f} ± {dep['error_std_uS']:.3f} µS; {dep['programming_energy_J']:.3e} J,
{dep['programming_time_s']:.3e} s. Converter ranges calibrated on {calib} training examples and frozen
(chip.range_mode = {chip.get('range_mode', 'calibrated')}, percentile {chip.get('calibration_percentile', 99.9)});
per layer (first seed; inference per example of the calibration set, with the share of DAC inputs and ADC codes
beyond the frozen ranges):

{layer_table(dep.get('layers', []))}

## Files

`summary.json` (schema {r.schema_version}, documented in docs/summary-schema.md: every seed's requests and
paths, and the aggregates), `run.json` (configuration, settings, seeds, package versions, CPU, threads),
`deletion_ledger.jsonl` (hash-chained forget and undo requests), `weights/` (safetensors: pretrained float
weights, each adapter as INT codes, the adapter path's digital parts, the full-update and retrained models,
the chip's cells). Wall time of the first seed: {s0.timing_s.get('total', float('nan')):.0f} s.
"""
    (out / "report.md").write_text(text)
