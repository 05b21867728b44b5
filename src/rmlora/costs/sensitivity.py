"""Which profile constants decide a conclusion: each ratio with each constant moved alone.

Every energy and time constant of the profile moves across its cited range
(``TechProfile.ranges``) or, where the source gives none, ×/÷ 2; structural
constants (counts, widths, capacities: :data:`rmlora.costs.profile.STRUCTURAL`)
stay. The counts are re-priced, nothing is re-run. The result is the table and
tornado plot of every report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rmlora.costs.profile import STRUCTURAL, TechProfile
from rmlora.costs.protocols import HEADLINE, PathLedgers, evaluate


def spans(profile: TechProfile) -> dict[str, tuple[float, float, str]]:
    """(low, high, where the span comes from) of every constant the analysis moves."""
    out = {}
    for f in dataclasses.fields(profile):
        if f.name in ("name", "ranges") or f.name in STRUCTURAL:
            continue
        v = getattr(profile, f.name)
        if f.name in profile.ranges:
            lo, hi = profile.ranges[f.name]
            out[f.name] = (lo, hi, "cited range")
        elif v > 0:
            out[f.name] = (v / 2, v * 2, "x/÷ 2")
    return out


def sweep(paths: dict[str, PathLedgers], profile: TechProfile, protocol: str = "measured") -> list[dict[str, Any]]:
    """One row per moved constant: its span and each headline ratio at the low and the high end,
    sorted by the widest relative swing of any ratio (the constants that decide first)."""
    base = evaluate(paths, profile, [protocol])[protocol]["ratios"]
    rows = []
    for name, (lo, hi, src) in spans(profile).items():
        r_lo = evaluate(paths, profile.replace(**{name: lo}), [protocol])[protocol]["ratios"]
        r_hi = evaluate(paths, profile.replace(**{name: hi}), [protocol])[protocol]["ratios"]
        row = {"constant": name, "value": getattr(profile, name), "low": lo, "high": hi, "span": src}
        swing = 0.0
        for k in HEADLINE:
            row[k] = {"base": base[k], "low": r_lo[k], "high": r_hi[k]}
            if base[k] > 0 and base[k] != float("inf"):
                swing = max(swing, abs(r_hi[k] - r_lo[k]) / base[k])
        row["swing"] = swing
        rows.append(row)
    rows.sort(key=lambda r: -r["swing"])
    return rows


def table(rows: list[dict[str, Any]], top: int = 10) -> str:
    """Markdown table of the ``top`` constants of :func:`sweep`."""
    head = "| constant | value | moved across | " + " | ".join(f"{v} ratio (low → high)" for v in HEADLINE.values()) + " |"
    lines = [head, "|" + "---|" * (3 + len(HEADLINE))]
    for r in rows[:top]:
        cells = [f"{r[k]['low']:.3g}x → {r[k]['high']:.3g}x" for k in HEADLINE]
        lines.append(f"| `{r['constant']}` | {r['value']:.3g} | {r['low']:.3g} – {r['high']:.3g} ({r['span']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, top: int = 8, title: str = "") -> None:
    """Tornado plot: for each headline ratio, the ``top`` constants' low and high ends around the
    base value (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    colours = {"low": "tab:blue", "high": "tab:orange"}
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(5.2 * len(HEADLINE), 0.45 * top + 1.8))
    for ax, (key, label) in zip(axes, HEADLINE.items()):
        rs = sorted(rows, key=lambda r: -abs(r[key]["high"] - r[key]["low"]) / max(r[key]["base"], 1e-300))[:top]
        base = rs[0][key]["base"] if rs else 1.0
        for i, r in enumerate(reversed(rs)):
            ends = sorted(("low", "high"), key=lambda e: -abs(r[key][e] - base))  # the longer bar first
            for e in ends:
                ax.barh(i, r[key][e] - base, left=base, color=colours[e], height=0.6)
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels([r["constant"] for r in reversed(rs)], fontsize=8)
        ax.axvline(base, color="k", lw=0.8)
        ax.set_xscale("log")
        fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(fmt)
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.set_title(f"{label}: {base:.3g}x", fontsize=10)
        ax.set_xlabel("full update / LoRA path" if key != "inference_energy_vs_digital" else "all-digital / LoRA path")
    axes[0].legend(handles=[Patch(color=colours["low"], label="constant at the low end of its span"),
                            Patch(color=colours["high"], label="constant at the high end")],
                   fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
