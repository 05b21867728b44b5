"""Write the face run's tables into README.md between its ``<!-- face-tables -->`` markers.

    python scripts/readme_tables.py README.md docs/face-demo/summary.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from rmlora.scenario import ScenarioResult
from rmlora.scenario.report import costs_table, metrics_table


def main(readme: str, summary: str) -> None:
    r = ScenarioResult.from_dict(json.loads(Path(summary).read_text()))
    block = f"<!-- face-tables:begin -->\n{metrics_table(r)}\n\n{costs_table(r)}\n<!-- face-tables:end -->"
    text = Path(readme).read_text()
    new, n = re.subn(r"<!-- face-tables:begin -->.*?<!-- face-tables:end -->", block, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme}: expected one <!-- face-tables:begin/end --> block, found {n}")
    Path(readme).write_text(new)


if __name__ == "__main__":
    main(*sys.argv[1:3])
