"""Write the README's generated tables between their markers: the face run's tables
(``<!-- face-tables -->``) and every demo's cost ratios under each protocol (``<!-- cost-tables -->``).

    python scripts/readme_tables.py README.md docs/face-demo/summary.json [--docs docs]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from rmlora.costs.protocols import HEADLINE, PROTOCOLS
from rmlora.costs.report import PAPER, ratio_text
from rmlora.scenario import ScenarioResult
from rmlora.scenario.report import costs_table, metrics_table

DEMOS = ("face-demo", "speaker-demo", "style-demo")


def cost_tables(docs: Path) -> str:
    """Each demo's headline ratios under every protocol (mean over its seeds)."""
    rows = ["| run (seeds) | protocol | " + " | ".join(HEADLINE.values()) + " |", "|---|---|---|---|---|"]
    for name in DEMOS:
        seeds = json.loads((docs / name / "summary.json").read_text())["per_seed"]
        for proto in PROTOCOLS:
            vals = [ratio_text(statistics.fmean(s["costs"]["protocols"][proto]["ratios"][k] for s in seeds))
                    for k in HEADLINE]
            rows.append(f"| {name} ({len(seeds)}) | `{proto}` | " + " | ".join(vals) + " |")
    rows.append("| paper (up to) | – | " + " | ".join(f"{PAPER[k]}x" for k in HEADLINE) + " |")
    return "\n".join(rows)


def fill(text: str, marker: str, body: str, readme: str) -> str:
    new, n = re.subn(rf"<!-- {marker}:begin -->.*?<!-- {marker}:end -->",
                     lambda _: f"<!-- {marker}:begin -->\n{body}\n<!-- {marker}:end -->", text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme}: expected one <!-- {marker}:begin/end --> block, found {n}")
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readme")
    ap.add_argument("summary")
    ap.add_argument("--docs", default="docs")
    a = ap.parse_args()
    r = ScenarioResult.from_dict(json.loads(Path(a.summary).read_text()))
    text = Path(a.readme).read_text()
    text = fill(text, "face-tables", f"{metrics_table(r)}\n\n{costs_table(r)}", a.readme)
    text = fill(text, "cost-tables", cost_tables(Path(a.docs)), a.readme)
    Path(a.readme).write_text(text)


if __name__ == "__main__":
    main()
