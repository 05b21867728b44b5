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
from rmlora.costs.report import cost_section
from rmlora.scenario.results import ScenarioResult, stats  # noqa: E402

PATH_NAMES = {"lora": "adapter path (LoRA)", "full": "full update (baseline)",
              "retrain": "retrained (reference, trained on the chip)", "retrain-float": "retrained in float (deployed)",
              "deployed": "deployed (before)"}
COLOURS = {"lora": "#1f77b4", "full": "#d62728", "retrain": "#7f7f7f", "retrain-float": "#bcbd22",
           "digital": "#9467bd"}


def lane_label(name: str) -> str:
    """A lane's name for people: ``lora`` → adapter path (LoRA), ``full:scrub`` → full update, scrub."""
    if name in PATH_NAMES:
        return PATH_NAMES[name]
    kind, _, method = name.partition(":")
    return f"{'adapter path' if kind == 'lora' else 'full update'}, {method}"


def _colour(name: str) -> str:
    return COLOURS.get(name.split(":")[0], "#333333")


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}%"


def _num(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _pm(st: dict[str, Any], pct: bool = True, ci: bool = False, fmt: str = ".3f") -> str:
    """``mean ± std`` (std only with two seeds or more), with ``ci`` the 95% bootstrap interval."""
    f = _pct if pct else (lambda v: _num(v, fmt))
    m, s = st["mean"], st["std"]
    out = f(m) if s is None or math.isnan(s) else f"{f(m)} ± {f(s)}"
    lo, hi = (st.get("ci95") or [None, None])
    if ci and s is not None and not math.isnan(s) and lo is not None:
        out += f" [{f(lo)}, {f(hi)}]"
    return out


def _x(v: float) -> str:
    """A ratio: 147.8x, 4.56x, 0.031x."""
    if v is None or math.isnan(v):
        return "–"
    return f"{v:.1f}x" if v >= 10 else (f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x")


def mean_of(r: ScenarioResult, path: str, metric: str, request: int = -1) -> float:
    return r.metric(path, metric, request)["mean"]


# --------------------------------------------------------------------------- tables
def metrics_table(r: ScenarioResult) -> str:
    """The last request's metrics per lane (mean ± std over seeds); the CLI and README show it.
    The membership attack appears as |AUC − 0.5| per seed (``mia_gap``), never as a signed mean."""
    lanes = r.lanes()
    names = list(r.per_seed[0].requests[-1].paths[lanes[0]].metrics)
    shown = [m for m in names if m in r.metric_names or m == "mia_gap"]
    head = [("\\|AUC − 0.5\\| (loss attack)" if m == "mia_gap" else m) for m in shown]
    rows = ["| path | " + " | ".join(head) + " |", "|---|" + "---|" * len(shown),
            "| deployed (before) | " + " | ".join(_pm(r.metric(lanes[0], m, 0), m != "mia_gap") for m in shown) + " |"]
    for p in lanes:
        rows.append(f"| {lane_label(p)} | " + " | ".join(_pm(r.metric(p, m), m != "mia_gap") for m in shown) + " |")
    return "\n".join(rows)


def requests_table(r: ScenarioResult) -> str:
    """Every request, every path: the workload's metrics after it (mean over seeds)."""
    ms = r.metric_names
    head = "| # | request | path | " + " | ".join(ms) + " | note |"
    rows = [head, "|---|---|---|" + "---|" * len(ms) + "---|"]
    for i, req in enumerate(r.per_seed[0].requests):
        for p in r.lanes():
            note = req.paths[p].note if i else ""
            rows.append(f"| {i} | `{req.request}` | {p} | "
                        + " | ".join(_pct(r.metric(p, m, i)["mean"]) for m in ms) + f" | {note} |")
    return "\n".join(rows)


def costs_table(r: ScenarioResult) -> str:
    """The three figures of both paths, their ratios and the paper's (mean over seeds)."""
    rat = {k: r.ratio(k)["mean"] for k in r.per_seed[0].ratios}
    lp, fp = r.pair()
    lo = {k: r.cost(lp, k)["mean"] for k in r.per_seed[0].paths[lp].costs}
    fu = {k: r.cost(fp, k)["mean"] for k in r.per_seed[0].paths[fp].costs}
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
    lp, fp = r.pair()
    for i, req in enumerate(r.per_seed[0].requests[1:], start=1):
        lo, fu = req.paths[lp], req.paths[fp]
        rows.append(f"| {i} | `{req.request}` | {lo.training_J:.3e} J | {lo.deployment_J:.3e} J | "
                    f"{fu.training_J:.3e} J | {fu.deployment_J:.3e} J |")
    return "\n".join(rows)


def continual_section(r: ScenarioResult) -> str:
    """The accuracy matrix R per path (first seed) and its summaries (mean over seeds)."""
    out = []
    for p in r.pair():
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
        out.append(f"**{lane_label(p)}** (R, first seed; {c0['metric']}):\n\n" + "\n".join(rows) +
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
    shown = [*r.pair(), "retrain"]
    for ax, m in zip(axes, ms):
        for k, p in enumerate(shown):  # nudged sideways so equal scores stay visible
            vals = [100 * r.metric(p, m, i)["mean"] for i in range(len(labels))]
            ax.plot([i + 0.06 * (k - 1) for i in range(len(labels))], vals, "o-", color=_colour(p),
                    label=lane_label(p), alpha=0.85)
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
    lp, fp = r.pair()
    for ax, (k, title, ratio_key) in zip(axes, figs):
        vals = [r.cost(lp, k)["mean"], r.cost(fp, k)["mean"]]
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


# --------------------------------------------------------------------------- the unlearning evaluation
#: (key of ScenarioResult.evaluation()'s rows, column title, format: "pct" or a format spec)
SCORE_COLUMNS = (("UA", "UA", "pct"), ("RA", "RA", "pct"), ("TA", "TA", "pct"),
                 ("mia_gap", "\\|AUC − 0.5\\| (loss)", ".3f"), ("mia_efficacy", "MIA-efficacy", "pct"),
                 ("lira_auc", "U-LiRA AUC", ".3f"), ("lira_tpr", "U-LiRA TPR", "pct"),
                 ("relearn_steps", "relearn steps", ".1f"), ("probe_acc", "linear probe", "pct"))
COST_COLUMNS = (("avg_gap", "Avg. Gap", "pct"), ("seconds", "run time (s)", ".1f"),
                ("training_cost_J", "training (J)", ".2e"), ("deployment_overhead_J", "deployment (J)", ".2e"),
                ("inference_energy_J", "inference (J/sample)", ".2e"))


def _cell(st: dict[str, Any] | None, fmt: str) -> str:
    if not st:
        return "–"
    return _pm(st, pct=fmt == "pct", ci=True, fmt="" if fmt == "pct" else fmt)


def _method_path(name: str, row: dict[str, Any]) -> tuple[str, str]:
    if row["kind"] in ("lora", "full"):
        return row["method"] or "–", lane_label(row["kind"])
    return {"deployed": ("none (the deployed model)", "–"), "retrain": ("retrain (reference)", "on the chip"),
            "retrain-float": ("retrain", "float, deployed")}.get(name, (name, "–"))


def evaluation_tables(r: ScenarioResult) -> str:
    """The field's table per method and path: the scores and attacks, then the Avg. Gap, run time
    and the three cost figures (mean ± std [95% bootstrap interval] over seeds)."""
    ev = r.evaluation()
    if not ev:
        return ""
    def measured(st: dict[str, Any] | None) -> bool:
        return bool(st) and st.get("mean") is not None and not math.isnan(st["mean"])

    out = []
    for table in (SCORE_COLUMNS, COST_COLUMNS):
        cols = [c for c in table if any(measured(row.get(c[0])) for row in ev["lanes"].values())]
        if not cols:  # a workload that measures none of them (the style workload has no attacks)
            continue
        rows = ["| method | path | " + " | ".join(t for _, t, _ in cols) + " |",
                "|---|---|" + "---|" * len(cols)]
        for name, row in ev["lanes"].items():
            if table is COST_COLUMNS and name == "deployed":
                continue
            m, p = _method_path(name, row)
            rows.append(f"| {m} | {p} | " + " | ".join(_cell(row.get(k), f) for k, _, f in cols) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def evaluation_section(r: ScenarioResult) -> str:
    """Markdown: the unlearning evaluation (what each column means, the attack's setting, the tables)."""
    ev = r.evaluation()
    if not ev:
        return ""
    a = ev["attack"]
    attack = (f"U-LiRA: {a['shadows']} shadow models of each kind per seed (the other seeds' models of the same "
              f"method, and their hardware-aware retrained models), {a['negatives_per_seed']} forgotten examples "
              f"per seed; TPR at FPR ≤ {a['fpr']:.0%} (with fewer than {round(1 / a['fpr'])} negatives per seed "
              "that is the TPR at FPR 0): 0.5 and an FPR-sized TPR mean the model cannot be told from a retrained one"
              if a["available"] else f"U-LiRA not computed: {a['why_not']}")
    n = len(r.per_seed)
    return f"""## Unlearning evaluation

Each row after the last request, mean ± sample std [95% bootstrap interval of the mean] over {n} seed(s).
UA = 1 − accuracy on the forgotten training examples, RA on the kept training examples, TA on the kept classes'
test examples. \\|AUC − 0.5\\| (loss): the loss-threshold attack, forgotten training examples against held-out
examples of the same classes, its distance from 0.5 taken per seed. MIA-efficacy (SalUn's SVC attack) only for
forgotten samples: for a forgotten class every path that suppresses it scores ~100%. {attack}. Relearn steps: a fresh LoRA adapter's steps
until the forgotten examples are recognised again (white-box, an output mask lifted; above the budget means not
within it). Linear probe: accuracy on the forgotten examples of a logistic regression on the penultimate
features, fitted on validation examples of every learned class. Avg. Gap: mean |UA, RA, TA (and MIA-efficacy
where defined) − the retrained model's| per seed, then averaged. Run time: wall seconds of the lane's requests on
this machine. Costs: the three figures (training, deployment, inference per sample); the references' float
training is priced as digital training, three passes per example seen. Columns a workload does not measure
are left out.

{evaluation_tables(r)}
"""


# --------------------------------------------------------------------------- the threat model
def threat_section(r: ScenarioResult) -> str:
    """Markdown: what an attacker learns from the chip after these requests, what the ledger proves,
    what a deployment must enforce (docs/threat-model.md in full), with this run's numbers."""
    last = r.per_seed[-1].requests[-1]
    if not last.forgotten and not any(q.kind == "forget" for q in r.per_seed[0].requests):
        return ""
    lines = ["## Threat model\n",
             "Adapter-based forgetting is **not** exact unlearning: the arrays still hold the pretrained weights, "
             "trained on the forgotten data. What that means here (the full argument: docs/threat-model.md):\n"]
    ev = r.evaluation()
    rows = ev.get("lanes", {}) if ev else {}
    off = [(n, row["adapters_off_forget_acc"]) for n, row in rows.items()
           if row.get("adapters_off_forget_acc") and not math.isnan(row["adapters_off_forget_acc"]["mean"])]
    if off:
        lines.append("* **Switching adapters off** (an attacker with access to the digital unit or the SRAM, or a "
                     "fault): accuracy on the forgotten training examples with every forget adapter (or output mask) "
                     "removed — " + "; ".join(f"{lane_label(n)} {_pm(st)}" for n, st in off) + ". Reading the "
                     "conductances gives the pretrained model itself.")
    if rows and ev["attack"]["available"]:
        best = sorted(((row["lira_auc"]["mean"], n) for n, row in rows.items() if "lira_auc" in row))
        lines.append("* **Querying the chip** (black box, the kept classes' scores): the likelihood-ratio attack "
                     "tells each path from the retrained model with AUC " + ", ".join(
                         f"{lane_label(n)} {v:.3f}" for v, n in best) + " (0.5: indistinguishable).")
    merges = [(n, row["merge_J"], row["merge_s"], row["deployment_overhead_J"]) for n, row in rows.items()
              if row.get("merge_J") and not math.isnan(row["merge_J"]["mean"])]
    if merges:
        lines.append("* **Merging the adapters into the arrays** at a maintenance window (afterwards nothing can be "
                     "switched off; the update is exactly as inexact as before): write-verify of the moved cells per "
                     "chip, mean over seeds, against writing the adapter into SRAM — "
                     + "; ".join(f"{lane_label(n)} {_num(j['mean'], '.2e')} J and {_num(t['mean'], '.2e')} s against "
                                 f"{_num(d['mean'], '.2e')} J" for n, j, t, d in merges) + ".")
    lines.append("* **The deletion ledger** (`deletion_ledger.jsonl`, hash-chained) proves which forget and undo "
                 "requests were recorded, in which order, with which adapter and the scores measured then; an edited "
                 "or removed entry breaks the chain. It does not prove that the adapter is active on the chip now, "
                 "that the data left the arrays, or that any copy of the training data was deleted.")
    lines.append("* **A deployment must enforce** adapters that cannot be disabled outside an audited maintenance "
                 "procedure (the forget adapter is part of the model, not an option), the ledger's head hash "
                 "stored off the chip, and a merge into the arrays (or a retrain) when the forgetting must survive "
                 "an attacker with access to the chip.\n")
    return "\n".join(lines) + "\n"


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
    lp, fp = r.pair()
    gaps = {p: stats([s.avg_gap.get(p, float("nan")) for s in r.per_seed]) for p in (lp, fp)}
    full_cells = stats([s.paths[fp].reprogrammed_cells for s in r.per_seed])["mean"]
    seeds = f"seeds {r.seeds} (mean ± sample std over seeds)" if len(r.seeds) > 1 else f"seed {r.seeds[0]}"
    methods = (f"methods {', '.join(f'`{m}`' for m in r.methods)} (each on both paths)" if len(r.methods) > 1
               else f"method `{r.method}`")
    text = f"""# rmlora {r.workload} scenario

**Workload**: {workload.description}. Data: {r.dataset['source']} (`{r.dataset['kind']}`). Configuration
`{r.configuration}`, {methods}, chip `{r.chip['preset']}` with profile `{r.chip['profile']}`; {seeds}.

**Requests**: {', '.join(f'`{i}: {q}`' for i, q in enumerate(r.requests))}. Every forget, add and repair is its
own adapter on the adapter path; `undo` deletes it. The full update trains the analogue weights themselves
(an undo has to train its way back). The retrained reference is trained from scratch on the kept data whenever
it changes (float), deployed on a fresh chip and then trained on the chip as the full update trains (its forget
budget, fine-tuning on the kept data); "retrained in float" is that model before the on-chip training.

## After the last request

{metrics_table(r)}

Average gap to the retrained model after the last request (mean |metric − retrain's| over
{', '.join(m for m in r.metric_names if 'new' not in m)} and MIA-efficacy where defined, computed per seed, then
averaged): {lane_label(lp)} {_pm(gaps[lp])}, {lane_label(fp)} {_pm(gaps[fp])}.

{evaluation_section(r)}
{threat_section(r)}
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

![costs](costs.png)

{cost_section([s.costs for s in r.per_seed if s.costs], out, r.chip['profile'],
              f"{r.workload} on {r.chip['preset']}") if s0.costs else ""}

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


def rewrite_report(folder: str | Path) -> Path:
    """Write ``report.md`` and its plots again from a run folder's ``summary.json``, after the
    report changed. Nothing is run: every score is the stored one; each seed's cost record is
    priced again from its stored ledgers (the counted work) with the run's profile, so that the
    cost tables are what this version makes of the same counts, and ``summary.json`` gets that
    record too. The new files are written beside the folder first and moved in only when all are
    done; other files (sample grids, the noise sweep) stay."""
    import json
    import os
    import shutil
    import tempfile

    from rmlora.costs import load_profile
    from rmlora.costs.protocols import PathLedgers
    from rmlora.costs.report import cost_record
    from rmlora.errors import RmloraError
    from rmlora.runinfo import write_json
    from rmlora.scenario.workload import get_workload

    folder = Path(folder)
    summary = folder / "summary.json"
    if not summary.is_file():
        raise RmloraError(f"{folder} is not a run folder (no summary.json)")
    try:
        r = ScenarioResult.from_dict(json.loads(summary.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RmloraError(f"{summary} is not a readable summary ({type(exc).__name__}: {exc})") from None
    for seed in r.per_seed:
        if seed.costs.get("ledgers"):
            pair = {k: PathLedgers.from_dict(v) for k, v in seed.costs["ledgers"].items()}
            prof = load_profile(seed.costs.get("profile", r.chip["profile"]))
            seed.costs = {**cost_record(pair, prof), "profile": prof.name, "ledgers": seed.costs["ledgers"]}
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=folder.parent))
    try:
        write_report(tmp, r, get_workload(r.workload))
        write_json(tmp / "summary.json", r.to_dict())
        for f in tmp.iterdir():
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "report.md"
