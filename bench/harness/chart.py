"""A PNG of one run: throughput per case (log scale) and p50/p99 latency per case, matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness.cases import OPS
from bench.harness.setups import SETUP_LABELS

COLOURS = {"hello": "#7f7f7f", "sqlite-local": "#1f77b4", "sqlite-vault": "#9467bd", "postgres": "#2ca02c",
           "openbao": "#ff7f0e", "openbao-raft": "#8c564b", "in-process": "#d62728"}


def _label(row: dict[str, Any]) -> str:
    return f"{OPS[row['op']][0]}\n{SETUP_LABELS.get(row['setup'], row['setup'])}"


def draw(summary: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary.values())
    timed = [r for r in rows if r.get("p50_ms") is not None]
    height = 1.0 + 0.55 * (len(rows) + len(timed))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, max(8.0, height)),
                                      gridspec_kw={"height_ratios": [len(rows), max(1, len(timed))]})
    fig.suptitle(title, fontsize=11)

    values = [r["items_per_sec"] if OPS[r["op"]][1] == "items" else r["requests_per_sec"] for r in rows]
    ys = range(len(rows))
    bars = top.barh(list(ys), values, color=[COLOURS.get(r["setup"], "#333333") for r in rows])
    top.set_yticks(list(ys), [_label(r) for r in rows], fontsize=8)
    top.invert_yaxis()
    top.set_xscale("log")
    top.set_xlabel("throughput: req/s, or items/s for batches and the raw limit (log scale)")
    for bar, value, row in zip(bars, values, rows, strict=True):
        unit = "items/s" if OPS[row["op"]][1] == "items" else "req/s"
        top.text(bar.get_width() * 1.05, bar.get_y() + bar.get_height() / 2, f"{value:,.0f} {unit}",
                 va="center", fontsize=8)
    top.set_xlim(right=max(values) * 5 if values else 10)
    top.grid(axis="x", which="both", alpha=0.3)

    ys2 = list(range(len(timed)))
    p50 = [r["p50_ms"] for r in timed]
    p99 = [r["p99_ms"] for r in timed]
    bottom.barh([y - 0.2 for y in ys2], p50, height=0.4, label="p50", color="#4c9be8")
    bottom.barh([y + 0.2 for y in ys2], p99, height=0.4, label="p99", color="#e8744c")
    bottom.set_yticks(ys2, [f"{_label(r)}, -c{r['connections']}" for r in timed], fontsize=8)
    bottom.invert_yaxis()
    bottom.set_xscale("log")
    bottom.set_xlabel("latency per request, ms (log scale; wrk, median of runs)")
    bottom.axvline(25, color="#444444", linestyle="--", linewidth=1)
    bottom.text(25, 1.005, " 25 ms: p99 target", fontsize=7, color="#444444", va="bottom",
                transform=bottom.get_xaxis_transform())
    for y, a, b in zip(ys2, p50, p99, strict=True):
        bottom.text(b * 1.05, y + 0.2, f"{b:,.1f}", va="center", fontsize=7)
        bottom.text(a * 1.05, y - 0.2, f"{a:,.1f}", va="center", fontsize=7)
    if p99:
        bottom.set_xlim(right=max(p99) * 4)
    bottom.legend(loc="lower right", fontsize=8)
    bottom.grid(axis="x", which="both", alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
