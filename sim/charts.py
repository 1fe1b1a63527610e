"""Charts for design reviews, from results.json documents.

One style for all: titled, labelled axes with units, and each strategy in the
same colour in every chart (its place in DESIGN.md's list picks it).
"""
from __future__ import annotations

from pathlib import Path

from functools import wraps

import matplotlib
import matplotlib.patches
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from sim.faults import FAULT_KINDS
from strategies import STRATEGIES

COLOURS = dict(zip(STRATEGIES, matplotlib.colormaps["tab10"].colors))
FAULT_COLOURS = dict(zip(FAULT_KINDS, matplotlib.colormaps["Set3"].colors))
STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 9, "axes.titlesize": 11}


def styled(chart):
    """Draw the chart in the house style (without touching global settings)."""
    @wraps(chart)
    def draw(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return chart(*args, **kwargs)
    return draw


def colour(strategy: str):
    return COLOURS.get(strategy, "grey")


def title_of(document: dict) -> str:
    return f"{document['scenario']['name']} ({document['backend']}, seed {document['seed']})"


def save(figure, folder: Path, name: str) -> list[Path]:
    """Write PNG and SVG; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    for path in paths:
        figure.savefig(path, bbox_inches="tight")
    return paths


@styled
def tradeoff(document: dict, capacity: dict | None = None) -> Figure:
    """Throughput (each strategy's capacity, when a capacity.json of the same
    scenario and backend is given) and p99 latency against drift: the
    trade-off a review asks for."""
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    capacities = {name: result["capacity_ops_per_s"] for name, result in (capacity or {}).get("strategies", {}).items()}
    for run in document["runs"]:
        drift = run["drift"]["abs_drift_sum"]
        places = [(right, run["latency_ms"]["p99"])]
        if not capacity or run["strategy"] in capacities:
            places.append((left, capacities.get(run["strategy"], run["throughput_ops_per_s"])))
        for axis, x in places:
            axis.scatter(x, drift, s=70, color=colour(run["strategy"]), label=run["strategy"], zorder=3,
                         edgecolor="black", linewidth=0.4)
    if capacity:
        left.set(xlabel=f"capacity (operations/s with p99 <= {capacity['slo_p99_ms']:g} ms, closed loop, no faults)",
                 title="capacity vs drift")
    else:
        throughputs = [run["throughput_ops_per_s"] for run in document["runs"]]
        if throughputs and max(throughputs) - min(throughputs) < 0.01 * max(throughputs):
            # Open-loop traffic below saturation: every strategy served the offered rate.
            middle = sum(throughputs) / len(throughputs)
            left.set_xlim(middle * 0.95, middle * 1.05)
        left.set(xlabel="throughput (operations/s; the offered rate below saturation: see countdrift capacity)",
                 title="throughput vs drift")
    left.ticklabel_format(axis="x", useOffset=False, style="plain")
    left.set(ylabel="|drift| (sum over users of |total - truth|)")
    right.set(xlabel="p99 latency (ms)", title="p99 latency vs drift")
    right.set_xscale("log")
    right.legend(fontsize=7, loc="best")
    figure.suptitle(f"Trade-off: {title_of(document)}")
    return figure


@styled
def matrix(documents: list[dict], field: str) -> Figure:
    """Strategy x scenario heatmap of |drift| (field="drift") or throughput."""
    columns = [document["scenario"]["name"] for document in documents]
    rows = [name for name in STRATEGIES if any(run["strategy"] == name for d in documents for run in d["runs"])]
    values = np.full((len(rows), len(columns)), np.nan)
    for j, document in enumerate(documents):
        for run in document["runs"]:
            value = run["drift"]["abs_drift_sum"] if field == "drift" else run["throughput_ops_per_s"]
            values[rows.index(run["strategy"]), j] = value
    figure = Figure(figsize=(1.1 * len(columns) + 3, 0.45 * len(rows) + 2))
    axis = figure.subplots()
    cmap = "Reds" if field == "drift" else "Blues"
    finite = values[np.isfinite(values)]
    norm = PowerNorm(0.4, vmin=0, vmax=max(1.0, finite.max() if finite.size else 1.0))
    image = axis.imshow(values, cmap=cmap, norm=norm, aspect="auto")
    axis.set_xticks(range(len(columns)), [c.replace("faults_", "") for c in columns], rotation=35, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.grid(False)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if np.isfinite(values[i, j]):
                text = f"{values[i, j]:.0f}"
                dark = norm(values[i, j]) > 0.6
                axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    label = "|drift| at the end of the run" if field == "drift" else "throughput (operations/s)"
    figure.colorbar(image, ax=axis, label=label)
    axis.set_title(f"{'Drift' if field == 'drift' else 'Throughput'}: strategy x scenario")
    return figure


_CLASS_SHORT = {"none": "none", "inconsistent": "incons.", "total over": "over", "total under": "under",
                "conversations wrong": "convs"}


@styled
def fidelity(document: dict) -> Figure:
    """Backend against backend, cell by cell: each one's drift class and
    |drift|; green where they agree, red where they do not."""
    left, right = document["backends"]
    columns = sorted({(cell["scenario"], cell["seed"]) for cell in document["cells"]})
    rows = [name for name in STRATEGIES if any(cell["strategy"] == name for cell in document["cells"])]
    figure = Figure(figsize=(1.5 * len(columns) + 2.5, 0.7 * len(rows) + 2))
    axis = figure.subplots()
    for cell in document["cells"]:
        x, y = columns.index((cell["scenario"], cell["seed"])), rows.index(cell["strategy"])
        agree = cell["disagreement"] is None
        axis.add_patch(matplotlib.patches.Rectangle((x - 0.5, y - 0.5), 1, 1, color="#b7e4b7" if agree else "#f4a6a6"))
        text = (f"{_CLASS_SHORT[cell[left]['class']]} / {_CLASS_SHORT[cell[right]['class']]}\n"
                f"{cell[left]['figures']['|drift|']} / {cell[right]['figures']['|drift|']}")
        axis.text(x, y, text, ha="center", va="center", fontsize=7)
    axis.set_xlim(-0.5, len(columns) - 0.5)
    axis.set_ylim(len(rows) - 0.5, -0.5)
    axis.set_xticks(range(len(columns)), [f"{name.replace('faults_', '')} s{seed}" for name, seed in columns],
                    rotation=35, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.grid(False)
    agreeing = sum(cell["disagreement"] is None for cell in document["cells"])
    axis.set_title(f"Fidelity, {left} / {right}: drift class and |drift| per cell "
                   f"({agreeing} of {len(document['cells'])} agree)")
    return figure


@styled
def timeline(document: dict) -> Figure:
    """Drift and throughput over time, each fault shaded where it struck."""
    figure = Figure(figsize=(10, 6))
    top, bottom = figure.subplots(2, 1, sharex=True)
    for run in document["runs"]:
        points = run["timeline"]
        if not points:
            continue
        t = [point["t"] for point in points]
        top.plot(t, [point["abs_drift_sum"] for point in points], color=colour(run["strategy"]),
                 label=run["strategy"], linewidth=1.4)
        bottom.plot(t, [point.get("ops_per_s", 0) for point in points], color=colour(run["strategy"]),
                    linewidth=1.2)
    faults = document["runs"][0]["faults"] if document["runs"] else []
    seen = set()
    for fault in faults:
        start = fault["effects"]["struck_at"]
        if start is None:
            continue   # it never struck (the record says why)
        for axis in (top, bottom):
            axis.axvspan(start, start + max(fault["duration"], 0.02), color=FAULT_COLOURS.get(fault["kind"]),
                         alpha=0.5, label=fault["kind"] if axis is top and fault["kind"] not in seen else None)
        seen.add(fault["kind"])
    top.set(ylabel="|drift|", title=f"Drift and throughput over time: {title_of(document)}")
    bottom.set(xlabel="time (s)", ylabel="throughput (operations/s)")
    top.legend(fontsize=7, ncol=2, loc="upper left")
    return figure


@styled
def latency(document: dict) -> Figure:
    """p50, p99 and p99.9 latency per strategy (log scale)."""
    runs = document["runs"]
    figure = Figure(figsize=(max(6, 1.0 * len(runs) + 2), 4))
    axis = figure.subplots()
    width = 0.26
    x = np.arange(len(runs))
    for offset, (key, label, alpha) in enumerate((("p50", "p50", 0.45), ("p99", "p99", 0.75),
                                                  ("p999", "p99.9", 1.0))):
        axis.bar(x + (offset - 1) * width, [max(run["latency_ms"][key], 1e-3) for run in runs], width,
                 color=[colour(run["strategy"]) for run in runs], alpha=alpha, label=label, edgecolor="black",
                 linewidth=0.3)
    axis.set_xticks(x, [run["strategy"] for run in runs], rotation=30, ha="right")
    axis.set_yscale("log")
    axis.set(ylabel="latency (ms, from the intended start)", title=f"Latency percentiles: {title_of(document)}")
    axis.legend(title="bar shade", fontsize=8)
    return figure
