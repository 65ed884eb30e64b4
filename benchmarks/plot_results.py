"""Draw every provider's scale curves into one PNG beside RESULTS.md and link it from there.

    .venv/bin/python benchmarks/plot_results.py

Reads ``benchmarks/curves/*.json`` (each benchmark's curves, written with its part of
RESULTS.md by ``_common.write_results``), draws one panel per kind of curve (history depth,
profile size, tenant size, chain depth, ...) with one line per provider (median ops/s over
the interleaved rounds, bars from min to max), writes ``benchmarks/scale_curves.png`` and
replaces the "## Scale curves" section of RESULTS.md. Without matplotlib (the ``bench``
extra) it says so, and the section lists the curves' sources without a picture.
``scripts/bench.sh`` runs it after the benchmarks. Not a benchmark itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, split_curve

HERE = Path(__file__).resolve().parent
PNG = HERE / "scale_curves.png"
SECTION = "## Scale curves"


def load(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"skipped {path.name}: {exc}")
    return found


def panels(
    sources: list[dict[str, Any]],
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """kind -> provider -> points (x, median, low, high), sorted by x."""
    kinds: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    for source in sources:
        for name, points in source["curves"].items():
            kind, provider = split_curve(name, source["bench"])
            line = kinds.setdefault(kind, {}).setdefault(provider, [])
            line.extend((float(x), float(m), float(lo), float(hi)) for x, m, lo, hi in points)
    for lines in kinds.values():
        for provider in lines:
            lines[provider].sort()
    return kinds


def draw(kinds: dict[str, dict[str, list[tuple[float, float, float, float]]]], path: Path) -> str:
    """Write the PNG; returns "" or the reason nothing was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (install the `bench` extra): no PNG was drawn"
    if not kinds:
        return "no benchmark has written scale curves yet"
    columns = min(3, len(kinds))
    rows = (len(kinds) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    for axis, (kind, lines) in zip(axes.flat, sorted(kinds.items()), strict=False):
        for provider, points in sorted(lines.items()):
            xs = [p[0] for p in points]
            medians = [p[1] for p in points]
            axis.errorbar(
                xs,
                medians,
                yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                marker="o",
                capsize=3,
                label=provider,
            )
        if max((p[0] for line in lines.values() for p in line), default=0) >= 100:
            axis.set_xscale("symlog", linthresh=1)
        axis.set_yscale("log")
        axis.set_title(kind, fontsize=9)
        axis.set_ylabel("ops/s (median; bars: min-max)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(kinds) :]:
        axis.set_visible(False)
    figure.suptitle("ccvault scale curves: flat is good (each provider's own rounds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return ""


def section(sources: list[dict[str, Any]], reason: str) -> str:
    lines = [SECTION, ""]
    if reason:
        lines.append(f"No plot: {reason}.")
    else:
        lines.append(f"![scale curves of every provider]({PNG.name})")
        lines.append("")
        lines.append(
            f"[`{PNG.name}`]({PNG.name}): one panel per kind of curve, one line per provider "
            "(log scales; the Mongo line is the in-process **emulation**, not a server)."
        )
    lines.append("")
    lines.append("Curves from:")
    lines.append("")
    lines += [f"- `benchmarks/{s['bench']}` — {s['date']}, {s['load']}" for s in sources]
    return "\n".join(lines) + "\n"


def write_section(text_block: str, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + text_block
    else:
        end = text.find("\n## ", start + len(SECTION) + 2)
        tail = "" if end < 0 else text[end:]
        text = text[: start + 1] + text_block + tail
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    sources = load(HERE / "curves")
    kinds = panels(sources)
    reason = draw(kinds, PNG)
    if reason:
        print(reason)
    else:
        print(f"plot written to {PNG} ({len(kinds)} panels from {len(sources)} benchmarks)")
    write_section(section(sources, reason))
    return 0


if __name__ == "__main__":
    sys.exit(main())
