"""Charts for design reviews, from results.json documents.

One style for all: titled, labelled axes with units, and each strategy in the
same colour in every chart (its place in DESIGN.md's list picks it).
"""
from __future__ import annotations

from functools import wraps
from pathlib import Path

import matplotlib
import matplotlib.patches
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from sim.faults import SPECS
from strategies import STRATEGIES

COLOURS = dict(zip(STRATEGIES, matplotlib.colormaps["tab10"].colors))
STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 9, "axes.titlesize": 11}


def styled(chart):
    """Draw the chart in the house style (without touching global settings)."""
    @wraps(chart)
    def draw(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return chart(*args, **kwargs)
    return draw


# A throughput's basis (results.json's throughput_basis) as an axis says it.
AXIS_BASIS = {"offered": "the offered rate, open loop", "redis_alone": "Redis alone, closed loop",
              "driver_modelled": "the real driver modelled, closed loop", "measured": "real servers, closed loop"}
UNSAID = "the offered rate below saturation; see countdrift capacity"


def strategy_rows(present: set[str]) -> list[str]:
    """The strategies in DESIGN.md's order, then any this version does not know, by name."""
    return [name for name in STRATEGIES if name in present] + sorted(present - set(STRATEGIES))


def colour(strategy: str):
    return COLOURS.get(strategy, "grey")


def title_of(document: dict) -> str:
    return f"{document['scenario']['name']} ({document['backend']}, seed {document['seed']})"


def save(figure, folder: Path, name: str) -> list[Path]:
    """Write PNG and SVG; returns both paths."""
    from sim.report.output import write_file

    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    for path in paths:
        write_file(path, lambda out, path=path: figure.savefig(out, format=path.suffix[1:], bbox_inches="tight"),
                   binary=True)
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
        left.set(xlabel=f"throughput (operations/s: {AXIS_BASIS.get(document.get('throughput_basis'), UNSAID)})",
                 title="throughput vs drift")
    _label_tradeoff(figure, f"Trade-off: {title_of(document)}")
    return figure


def _label_tradeoff(figure: Figure, title: str) -> None:
    """What both trade-off charts share: the drift axis, the p99 latency side, the legend."""
    left, right = figure.axes[:2]
    left.ticklabel_format(axis="x", useOffset=False, style="plain")
    left.set(ylabel="|drift| (sum over users of |total - truth|)")
    right.set(xlabel="p99 latency (ms)", title="p99 latency vs drift")
    right.set_xscale("log")
    right.legend(fontsize=7, loc="best")
    figure.suptitle(title)


@styled
def matrix(documents: list[dict], field: str) -> Figure:
    """Strategy x scenario heatmap of |drift| (field="drift") or throughput."""
    cells = {(run["strategy"], j): run["drift"]["abs_drift_sum"] if field == "drift" else run["throughput_ops_per_s"]
             for j, document in enumerate(documents) for run in document["runs"]}
    return _heatmap({key: (value, f"{value:.0f}") for key, value in cells.items()}, column_names(documents),
                    field, "")


def column_names(documents: list[dict]) -> list[str]:
    """A name for each document that tells it from the others: its
    scenario's, and its backend and seed where those differ between two of
    the same scenario, and its place in the list where even they do not."""
    names = [document["scenario"]["name"] for document in documents]
    if len(set(names)) < len(names):
        names = [f"{name} ({document['backend']}, s{document['seed']})" for name, document in zip(names, documents)]
    return distinct(names)


def distinct(names: list[str], separator: str = " #") -> list[str]:
    """The names, each that occurs more than once numbered (name #1, name #2...)."""
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        numbered.append(name if names.count(name) == 1 else f"{name}{separator}{seen[name]}")
    return numbered


@styled
def sweep_matrix(sweeps: list[dict], field: str) -> Figure:
    """Strategy x scenario heatmap of sweeps: each cell the mean over the
    seeds and its 95% interval."""
    figure_name = "drift.abs_drift_sum" if field == "drift" else "throughput_ops_per_s"
    columns = [(sweep, scenario) for sweep in sweeps for scenario in sweep["aggregates"]]
    cells = {}
    for j, (sweep, scenario) in enumerate(columns):
        for strategy, figures in sweep["aggregates"][scenario].items():
            statistics = figures[figure_name]
            low, high = statistics["ci95"] or [statistics["mean"]] * 2
            cells[(strategy, j)] = (statistics["mean"], f"{statistics['mean']:.0f}\n[{low:.0f}, {high:.0f}]")
    return _heatmap(cells, [scenario for _, scenario in columns], field, " (mean over seeds [95% interval])")


def _heatmap(cells: dict[tuple[str, int], tuple[float, str]], columns: list[str], field: str,
             subtitle: str) -> Figure:
    """(strategy, column) -> (value, text), drawn as a heatmap; ``columns`` names the columns."""
    rows = strategy_rows({strategy for strategy, _ in cells})
    values = np.full((len(rows), len(columns)), np.nan)
    texts = {}
    for (strategy, j), (value, text) in cells.items():
        values[rows.index(strategy), j] = value
        texts[(rows.index(strategy), j)] = text
    lines = max((text.count("\n") + 1 for text in texts.values()), default=1)
    figure = Figure(figsize=(1.1 * len(columns) + 3, (0.3 + 0.15 * lines) * len(rows) + 2))
    axis = figure.subplots()
    cmap = "Reds" if field == "drift" else "Blues"
    finite = values[np.isfinite(values)]
    norm = PowerNorm(0.4, vmin=0, vmax=max(1.0, finite.max() if finite.size else 1.0))
    image = axis.imshow(values, cmap=cmap, norm=norm, aspect="auto")
    axis.set_xticks(range(len(columns)), [c.replace("faults_", "") for c in columns], rotation=35, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.grid(False)
    for (i, j), text in texts.items():
        dark = norm(values[i, j]) > 0.6
        axis.text(j, i, text, ha="center", va="center", fontsize=8 if lines == 1 else 7,
                  color="white" if dark else "black")
    label = "|drift| at the end of the run" if field == "drift" else "throughput (operations/s)"
    figure.colorbar(image, ax=axis, label=label)
    axis.set_title(f"{'Drift' if field == 'drift' else 'Throughput'}: strategy x scenario{subtitle}")
    return figure


def _errors(statistics: dict) -> tuple[float, list[list[float]]]:
    """The mean and its interval as matplotlib's asymmetric error bar."""
    mean = statistics["mean"]
    low, high = statistics["ci95"] or (mean, mean)
    return mean, [[mean - low], [high - mean]]


@styled
def sweep_tradeoff(sweep: dict, scenario: str) -> Figure:
    """The trade-off chart of one scenario of a sweep: each strategy at its
    mean over the seeds, with the 95% intervals of both figures as bars."""
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    for strategy, figures in sweep["aggregates"][scenario].items():
        drift, drift_bar = _errors(figures["drift.abs_drift_sum"])
        for axis, name in ((left, "throughput_ops_per_s"), (right, "latency_ms.p99")):
            x, x_bar = _errors(figures[name])
            axis.errorbar(x, drift, xerr=x_bar, yerr=drift_bar, fmt="o", markersize=8, capsize=3,
                          color=colour(strategy), markeredgecolor="black", markeredgewidth=0.4, label=strategy,
                          zorder=3)
    seeds = len(sweep["scenarios"][scenario]["seeds"])
    basis = sweep["scenarios"].get(scenario, {}).get("throughput_basis")
    left.set(xlabel=f"throughput (operations/s: {AXIS_BASIS.get(basis, UNSAID)})", title="throughput vs drift")
    _label_tradeoff(figure, f"Trade-off: {scenario} ({sweep['backend']}, {seeds} seeds: means with 95% intervals)")
    return figure


@styled
def sweep_spread(sweep: dict, scenario: str) -> Figure:
    """|drift| of every seed, strategy by strategy, beside the mean and its 95% interval."""
    strategies = sweep["aggregates"][scenario]
    figure = Figure(figsize=(max(6, 0.9 * len(strategies) + 2), 4))
    axis = figure.subplots()
    for x, (strategy, figures) in enumerate(strategies.items()):
        statistics = figures["drift.abs_drift_sum"]
        jitter = np.linspace(-0.15, 0.15, len(statistics["values"])) if len(statistics["values"]) > 1 else [0.0]
        axis.scatter(x + np.asarray(jitter), statistics["values"], s=12, color=colour(strategy), alpha=0.6, zorder=2)
        mean, bar = _errors(statistics)
        axis.errorbar(x + 0.3, mean, yerr=bar, fmt="D", color="black", markersize=5, capsize=4, zorder=3)
    axis.set_xticks(range(len(strategies)), list(strategies), rotation=30, ha="right")
    axis.set(ylabel="|drift| at the end of the run",
             title=f"|drift| seed by seed: {scenario} ({sweep['backend']}); diamond: mean, bar: 95% interval")
    return figure


_CLASS_SHORT = {"none": "none", "inconsistent": "incons.", "total over": "over", "total under": "under",
                "conversations wrong": "convs"}


@styled
def fidelity(document: dict) -> Figure:
    """Backend against backend, cell by cell: each one's drift class and
    |drift|; green where they agree, red where they do not."""
    left, right = document["backends"]
    columns = sorted({(cell["scenario"], cell["seed"]) for cell in document["cells"]})
    rows = strategy_rows({cell["strategy"] for cell in document["cells"]})
    figure = Figure(figsize=(1.5 * len(columns) + 2.5, 0.7 * len(rows) + 2))
    axis = figure.subplots()
    for cell in document["cells"]:
        x, y = columns.index((cell["scenario"], cell["seed"])), rows.index(cell["strategy"])
        agree = cell["disagreement"] is None
        axis.add_patch(matplotlib.patches.Rectangle((x - 0.5, y - 0.5), 1, 1, color="#b7e4b7" if agree else "#f4a6a6"))
        text = (f"{_CLASS_SHORT.get(cell[left]['class'], '?')} / {_CLASS_SHORT.get(cell[right]['class'], '?')}\n"
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
    _shade_faults([top, bottom], document["runs"][0]["faults"] if document["runs"] else [])
    top.set(ylabel="|drift|", title=f"Drift and throughput over time: {title_of(document)}")
    bottom.set(xlabel="time (s)", ylabel="throughput (operations/s)")
    top.legend(fontsize=7, ncol=2, loc="upper left")
    return figure


def _shade_faults(axes: list, faults: list[dict]) -> None:
    """Each fault shaded where it struck, labelled once (on the first axis)."""
    labelled = set()
    for fault in faults:
        start = fault["effects"]["struck_at"]
        if start is None:
            continue   # it never struck (the record says why)
        for axis in axes:
            band = SPECS[fault["kind"]].colour if fault["kind"] in SPECS else "#cccccc"
            axis.axvspan(start, start + max(fault["duration"], 0.02), color=band, alpha=0.5,
                         label=fault["kind"] if axis is axes[0] and fault["kind"] not in labelled else None)
        labelled.add(fault["kind"])


def judged_runs(document: dict) -> list[dict]:
    """The runs whose shown values were judged (results written before that have none)."""
    return [run for run in document["runs"] if run.get("seen", {}).get("badges")]


@styled
def seen_tradeoff(document: dict, capacity: dict | None = None) -> Figure:
    """Wrong badges per 1,000 pushes against throughput (each strategy's
    capacity, when a capacity.json is given): the trade-off users feel."""
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    capacities = {name: result["capacity_ops_per_s"] for name, result in (capacity or {}).get("strategies", {}).items()}
    for run in judged_runs(document):
        if capacity and run["strategy"] not in capacities:
            continue
        x = capacities.get(run["strategy"], run["throughput_ops_per_s"])
        axis.scatter(x, run["seen"]["wrong_badges_per_1000"], s=70, color=colour(run["strategy"]),
                     label=run["strategy"], zorder=3, edgecolor="black", linewidth=0.4)
    axis.ticklabel_format(axis="x", useOffset=False, style="plain")
    basis = (f"capacity (operations/s with p99 <= {capacity['slo_p99_ms']:g} ms, closed loop, no faults)" if capacity
             else f"throughput (operations/s: {AXIS_BASIS.get(document.get('throughput_basis'), UNSAID)})")
    axis.set(xlabel=basis, ylabel="wrong badges per 1,000 pushes",
             title=f"What users see vs capacity: {title_of(document)}")
    axis.legend(fontsize=7, loc="best")
    return figure


@styled
def seen_timeline(document: dict) -> Figure:
    """Wrong badges per 1,000 pushes over time, each fault shaded where it struck."""
    figure = Figure(figsize=(10, 3.5))
    axis = figure.subplots()
    for run in judged_runs(document):
        bins = run["seen"].get("timeline", [])
        t = [point["t"] for point in bins]
        rate = [1000.0 * point["wrong"] / point["badges"] if point["badges"] else 0.0 for point in bins]
        axis.step(t, rate, where="pre", color=colour(run["strategy"]), label=run["strategy"], linewidth=1.3)
    _shade_faults([axis], document["runs"][0]["faults"] if document["runs"] else [])
    axis.set(xlabel="time (s)", ylabel="wrong badges per 1,000 pushes",
             title=f"Wrong badges over time: {title_of(document)}")
    axis.legend(fontsize=7, ncol=2, loc="upper left")
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
