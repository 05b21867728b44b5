"""Write docs/evaluation.md from the evaluation runs and the validation search (scripts/refresh_docs.sh).

    python scripts/evaluation_doc.py docs > docs/evaluation.md

Reads ``docs/eval-<protocol>/summary.json`` for every protocol of :data:`PROTOCOLS` that was run and
``docs/tuning_<workload>.json``; every number in the page comes from them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rmlora.scenario import ScenarioResult
from rmlora.scenario.report import _num, _pm, evaluation_tables, lane_label
from rmlora.scenario.tuning import choose

#: folder under docs/ → (title, the command that made it: refresh_docs.sh runs exactly these)
PROTOCOLS = {
    "eval-face-class": ("Face, class-wise: all 40 AT&T identities learned, s3 forgotten",
                        "rmlora demo --workload face --configuration eval --methods field"),
    "eval-face-samples": ("Face, random samples: 10% of the training photos forgotten, across the 40 identities",
                          "rmlora demo --workload face --configuration eval --methods field --requests forget:10%"),
    "eval-face-sequence": ("Face, a sequence of forget requests: s3, then s17 (3 seeds: 2 shadow models per kind)",
                           "rmlora demo --workload face --configuration eval --methods field "
                           "--requests forget:s3,forget:s17 --seeds 3"),
    "eval-speaker-class": ("Speaker, class-wise: all six FSDD speakers learned, jackson forgotten",
                           "rmlora demo --workload speaker --configuration eval --methods field"),
    "eval-speaker-samples": ("Speaker, random samples: 10% of the training utterances forgotten",
                             "rmlora demo --workload speaker --configuration eval --methods field "
                             "--requests forget:10%"),
}
#: the attack columns by which a method can be told from the retrained model
ATTACKS = (("lira_auc", "U-LiRA AUC", 0.5), ("relearn_steps", "relearning steps", None),
           ("probe_acc", "linear-probe accuracy", None), ("mia_gap", "loss-attack |AUC − 0.5|", None))


def _disjoint(a: dict, b: dict) -> bool:
    """Whether two bootstrap intervals do not overlap."""
    (lo1, hi1), (lo2, hi2) = a["ci95"], b["ci95"]
    return hi1 < lo2 or hi2 < lo1


def separation(r: ScenarioResult, lane: str) -> list[str]:
    """The attacks by which ``lane`` is told from the retrained model (95% intervals that exclude 0.5
    for U-LiRA, and that do not overlap the retrained model's for the other checks)."""
    rows = r.evaluation()["lanes"]
    ref, mine = rows["retrain"], rows[lane]
    out = []
    for key, name, chance in ATTACKS:
        st = mine.get(key)
        if not st or st["mean"] is None or math.isnan(st["mean"]):
            continue
        lo, hi = st["ci95"]
        if chance is not None and (lo > chance or hi < chance):
            out.append(f"{name} {_num(st['mean'])} [{_num(lo)}, {_num(hi)}]")
        elif chance is None and key in ref and _disjoint(st, ref[key]):
            out.append(f"{name} {_num(st['mean'], '.2f')} against the retrained model's {_num(ref[key]['mean'], '.2f')}")
    return out


def closest(r: ScenarioResult) -> str:
    """Which trained method on the adapter path is closest to retraining (Avg. Gap), by how much, at what cost."""
    rows = r.evaluation()["lanes"]
    lora = {n: row for n, row in rows.items() if row.get("kind") == "lora" and row["method"] != "mask"}
    if not lora:
        return ""
    best = min(lora, key=lambda n: lora[n]["avg_gap"]["mean"])
    b = lora[best]
    ref = rows["retrain"]
    gap = b["avg_gap"]
    ratio_t = ref["seconds"]["mean"] / b["seconds"]["mean"] if b["seconds"]["mean"] else float("nan")
    ratio_j = (ref["training_cost_J"]["mean"] / b["training_cost_J"]["mean"]
               if b["training_cost_J"]["mean"] else float("nan"))
    lira = b.get("lira_auc")
    full = rows.get(best.replace("lora", "full"), {})
    text = f"closest to retraining on the adapter path: **{b['method']}**, Avg. Gap {_pm(gap, ci=True)}"
    if full:
        text += f" (its full update: {_pm(full['avg_gap'], ci=True)})"
    if lira:
        text += f"; U-LiRA AUC {_pm(lira, pct=False, ci=True)}"
    text += (f"; it trains in {_num(b['seconds']['mean'], '.1f')} s and {_num(b['training_cost_J']['mean'], '.2e')} J "
             f"where the hardware-aware retrain takes {_num(ref['seconds']['mean'], '.1f')} s and "
             f"{_num(ref['training_cost_J']['mean'], '.2e')} J ({ratio_t:.1f}x the time, {ratio_j:.1f}x the energy), "
             f"and deploys in {_num(b['deployment_overhead_J']['mean'], '.2e')} J against "
             f"{_num(ref['deployment_overhead_J']['mean'], '.2e')} J")
    return text


def protocol_section(name: str, r: ScenarioResult) -> str:
    title, cmd = PROTOCOLS[name]
    ev = r.evaluation()
    a = ev["attack"]
    lines = [f"### {title}\n", f"`{cmd} --data-dir ../shared/data` ({len(r.seeds)} seeds, split seed "
             f"{r.settings.get('split_seed')}; report: [{name}/report.md]({name}/report.md)). Requests: "
             + ", ".join(f"`{q}`" for q in r.requests) + ".", ""]
    if a["available"]:
        lines.append(f"U-LiRA with {a['shadows']} shadow models of each kind per seed and {a['negatives_per_seed']} "
                     f"forgotten examples per seed (TPR at FPR ≤ {a['fpr']:.0%}"
                     + (", that is at FPR 0 with so few negatives" if a["negatives_per_seed"] < 1 / a["fpr"] else "")
                     + ").\n")
    lines.append(evaluation_tables(r))
    lines.append("")
    masks = [n for n, row in ev["lanes"].items() if row.get("method") == "mask" and row.get("kind") == "lora"]
    for n in masks:
        sep = separation(r, n)
        lines.append(f"* Output masking ({lane_label(n)}) against the retrained model: "
                     + ("separated by " + "; ".join(sep) if sep else "**not separated by any attack** at these "
                        "seeds") + ".")
    c = closest(r)
    if c:
        lines.append(f"* {c[0].upper()}{c[1:]}.")
    return "\n".join(lines) + "\n"


def _mean(v: list[float]) -> float:
    return float(np.mean(v))


def tuning_section(t: dict[str, Any]) -> str:
    """The validation search of one workload: every grid point's mean score and the choice."""
    w = t["workload"]
    out = [f"### {w}\n", f"`python benchmarks/tune_unlearning.py --workload {w} --data-dir ../shared/data` "
           f"(seeds {t['first_seed']}..{t['first_seed'] + t['seeds'] - 1}, configuration `{t['configuration']}`; "
           f"{t['cpu'].get('model', '?')}, {t['cpu'].get('cores', '?')} cores).\n"]
    if "pretrain" in t:
        p = t["pretrain"]
        out.append("Pretraining (steps @ learning rate: mean validation score): "
                   + ", ".join(f"{k}: {_mean(v):.4f}" for k, v in p["scores"].items())
                   + f"; chosen **{choose(p['scores'])}**.\n")
    if "forget" in t:
        f = t["forget"]
        b = f["class"]["budget"]
        out.append(f"Forget learning rate per method and path: {b['lora']['steps']} steps of {b['lora']['batch_size']} "
                   f"forgotten + {b['lora']['batch_size']} kept examples on both paths; the grid is the path's base "
                   f"rate ({b['lora']['lr']:g} adapter path, {b['full']['lr']:g} full update) times 1/3, 1, 3; the "
                   "score is the stage's validation score (the checkpoint-selection score), summed over the "
                   "class-wise and the random-sample protocol; ties within "
                   "0.001 go to the smaller rate.\n")
        out.append("| method | path | " + " | ".join(f"lr {k}: class / samples" for k in range(1, 4))
                   + " | chosen lr |")
        out.append("|---|---|---|---|---|---|")
        edge = []
        for m, paths in f["class"]["scores"].items():
            for kind in ("lora", "full"):
                cls, smp = paths[kind], f["samples"]["scores"][m][kind]
                total = {lr: [x + y for x, y in zip(cls[lr], smp[lr])] for lr in cls}
                cells = [f"{float(lr):.3g}: {_mean(cls[lr]):.3f} / {_mean(smp[lr]):.3f}" for lr in cls]
                best = choose(total)
                if best in (list(cls)[0], list(cls)[-1]):
                    edge.append(f"{m} ({lane_label(kind)})")
                out.append(f"| {m} | {lane_label(kind)} | " + " | ".join(cells) + f" | **{float(best):.3g}** |")
        out.append("")
        if edge:
            out.append(f"Choices at an edge of the three-point grid, where a rate beyond it might score higher: "
                       f"{', '.join(edge)}. Both paths had the same grid and budget.\n")
    if "default" in t:
        d = t["default"]
        mean = {v: [x + y for x, y in zip(s["lora"], s["full"])] for v, s in d["scores"].items()}
        out.append(f"Default demo's `{d['setting']}` (request `{d['request']}`, the default scenario's method, both "
                   "paths summed): " + ", ".join(f"{v}: {_mean(s):.3f}" for v, s in mean.items())
                   + f"; chosen **{choose(mean)}**.\n")
    return "\n".join(out)


def main(docs: str) -> str:
    root = Path(docs)
    runs = {n: ScenarioResult.from_dict(json.loads((root / n / "summary.json").read_text()))
            for n in PROTOCOLS if (root / n / "summary.json").is_file()}
    tunings = [json.loads((root / f"tuning_{w}.json").read_text()) for w in ("face", "speaker")
               if (root / f"tuning_{w}.json").is_file()]
    env = next(iter(runs.values())).environment if runs else {}
    wall = {n: sum(s.timing_s.get("total", 0.0) for s in r.per_seed) for n, r in runs.items()}
    parts = [f"""# Unlearning evaluation

Generated by `scripts/refresh_docs.sh` (`scripts/evaluation_doc.py`) from the runs below; nothing in this
page is typed in. What the evaluation does, and what it cannot show, is in
[threat-model.md](threat-model.md); the columns are explained in every report's *Unlearning evaluation*
section.

* **Methods**, each on the adapter path (a LoRA adapter in SRAM) and on the full update (the analogue
  weights fine-tuned and write-verified): fine-tuning on the kept data (`ft`), gradient ascent (`neggrad`),
  NegGrad+ (`neggrad+`), random relabelling (`relabel`), SCRUB with its published max/min schedule
  (`scrub`), ℓ1-sparse unlearning (`l1`; on the adapter path the penalty acts on the effective weights
  W + s·BA), SalUn (`salun`; on the adapter path the saliency mask is taken over the adapter's parameters)
  and output masking (`mask`: no training, the floor every method must beat; class-wise only).
* **References**: retraining from scratch on the kept data, hardware-aware (float, deployed, then trained
  on the chip as the full update trains: the row every gap is measured against) and float-trained only.
* **Attacks**: U-LiRA (per-example likelihood ratio, shadow models = the other seeds' models on one fixed
  split), the loss-threshold attack as \\|AUC − 0.5\\| per seed, MIA-efficacy for forgotten samples only,
  relearning time and a linear probe (white box).
* **Statistics**: every cell is mean ± sample std (ddof = 1) [95% bootstrap interval of the mean] over the
  seeds; the Avg. Gap (UA, RA, TA and MIA-efficacy where defined, against the hardware-aware retrain) is
  computed per seed, then averaged.
* **Machine**: {env.get('cpu', {}).get('model', '?')}, {env.get('cpu', {}).get('cores', '?')} cores, one torch
  thread per run; torch {env.get('versions', {}).get('torch', '?')}.

## Results
"""]
    for n, r in runs.items():
        parts.append(protocol_section(n, r))
    parts.append("## How the defaults were chosen\n\nOn validation data only, never on test data or an attack "
                 "(`src/rmlora/scenario/tuning.py`); the evaluation configuration's constants cite this search "
                 "(`EVAL_PRETRAIN`, `EVAL_LR` in `src/rmlora/tasks/face.py` and `speaker.py`). The methods' own "
                 "constants are their published defaults (`rmlora.methods.UnlearnConfig`: each cites its source); "
                 "step budgets are compute budgets, the same for every method and both paths, inside which the "
                 "checkpoint is picked on validation data.\n")
    for t in tunings:
        parts.append(tuning_section(t))
    parts.append("## Compute\n\nWall time of each run on the machine above (sum over its seeds): "
                 + ", ".join(f"{n} {v / 60:.1f} min" for n, v in wall.items()) + ".\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1] if len(sys.argv) > 1 else "docs"))
