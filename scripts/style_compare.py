"""The ConvNeXt-block DiT against the attention DiT: one table from two style runs' summaries,
written into docs/style.md between its markers (scripts/refresh_docs.sh runs it).

    python scripts/style_compare.py docs/style-demo/summary.json docs/style-attention/summary.json docs/style.md
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from rmlora.scenario.results import ScenarioResult, stats

BEGIN, END = "<!-- style-compare:begin -->", "<!-- style-compare:end -->"


def _pm(st: dict, pct: bool = True) -> str:
    f = (lambda v: "–" if v != v else f"{100 * v:.1f}%") if pct else (lambda v: "–" if v != v else f"{v:.3g}")
    return f(st["mean"]) if st["std"] != st["std"] else f"{f(st['mean'])} ± {f(st['std'])}"


def _x(v: float) -> str:
    return "–" if v is None or math.isnan(v) else (f"{v:.1f}x" if v >= 10 else f"{v:.2f}x")


def column(r: ScenarioResult) -> dict[str, str]:
    s0 = r.per_seed[0]
    share = stats([s.paths["lora"].breakdown["inference_activation_J_per_sample"]
                   / s.paths["lora"].breakdown["inference_J_per_sample"]["total"] for s in r.per_seed])
    return {
        "block": r.settings["block"],
        "seeds": str(len(r.seeds)),
        "weights in the arrays": f"{s0.deployment['cells']:,} cells on {s0.deployment['tiles']} tiles",
        "forgotten style recognised (LoRA)": _pm(r.metric("lora", "forget_style_rate")),
        "worst subject (LoRA)": _pm(r.metric("lora", "forget_style_rate_worst_subject")),
        "kept classes recognised (LoRA)": _pm(r.metric("lora", "kept_class_rate")),
        "new classes recognised (LoRA)": _pm(r.metric("lora", "new_class_rate")),
        "KID kept (LoRA)": _pm(r.metric("lora", "kid_kept"), pct=False),
        "training cost, LoRA (J)": f"{r.cost('lora', 'training_cost_J')['mean']:.3e}",
        "training cost full / LoRA": _x(r.ratio("training_cost")["mean"]),
        "deployment overhead full / LoRA": _x(r.ratio("deployment_overhead")["mean"]),
        "inference energy / sample, LoRA (J)": f"{r.cost('lora', 'inference_energy_J')['mean']:.3e}",
        "inference energy all-digital / LoRA": _x(r.ratio("inference_energy_vs_digital")["mean"]),
        "share of inference energy without fixed weights": _pm(share),
        "wall time, all seeds": f"{sum(s.timing_s.get('total', 0) for s in r.per_seed) / 60:.1f} min",
    }


def table(runs: list[ScenarioResult]) -> str:
    cols = [column(r) for r in runs]
    head = "| | " + " | ".join(f"{c['block']} DiT" for c in cols) + " |"
    rows = [head, "|---|" + "---|" * len(cols)]
    for k in cols[0]:
        if k != "block":
            rows.append(f"| {k} | " + " | ".join(c[k] for c in cols) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [ScenarioResult.from_dict(json.loads(Path(p).read_text())) for p in argv[:2]]
    doc = Path(argv[2])
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        print(f"error: {doc} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    block = f"{BEGIN}\n{table(runs)}\n{END}"
    doc.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
