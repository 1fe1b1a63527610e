"""The report's pages for sweeps: per scenario, the table of means with
their 95% intervals, charts with the intervals, and in plain sentences
which differences between strategies are significant and which are within
noise.

Every strategy of a sweep ran the same seeds, and a seed fixes the trace
and the fault schedule, so two strategies are compared seed by seed: the
Wilcoxon signed-rank test on the per-seed differences (a paired test: the
spread between seeds, often larger than the difference, does not drown
it), with the 95% bootstrap interval of the mean difference.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

from sim.report import charts
from sim.report.stats import ALPHA, paired
from sim.report.table import SWEEP_COLUMNS, short, sweep_heading, sweep_rows

# The figures whose differences the report spells out: (figure, name in a sentence, unit).
COMPARED = (
    ("drift.abs_drift_sum", "|drift|", ""),
    ("drift.users_inconsistent", "count of inconsistent users", ""),
    ("latency_ms.p99", "p99 latency", " ms"),
    ("throughput_ops_per_s", "throughput", " ops/s"),
)


def _names(strategies: list[str]) -> str:
    return strategies[0] if len(strategies) == 1 else f"{', '.join(strategies[:-1])} and {strategies[-1]}"


NEGLIGIBLE = 0.01      # a significant difference under 1% of the value is named as negligible


def _relative(difference: float, base: float, name: str) -> str:
    """How big a difference is next to what it is added to: "+27%" or "39 times naive's"."""
    if difference >= base:
        ratio = (base + difference) / base
        return f"{ratio:,.0f} times {name}'s" if ratio >= 10 else f"{ratio:.2g} times {name}'s"
    return f"+{100 * difference / base:.2g}%"


def _aligned(first: dict, second: dict) -> tuple[list[float], list[float]]:
    """Two strategies' values over the seeds both ran, in one order."""
    other = dict(zip(second["seeds"], second["values"]))
    pairs = [(value, other[seed]) for seed, value in zip(first["seeds"], first["values"]) if seed in other]
    return [a for a, _ in pairs], [b for _, b in pairs]


def differences(sweep: dict, scenario: str, figure: str, label: str, unit: str) -> list[str]:
    """Markdown lines: which strategies are identical seed by seed, which
    pairs differ significantly (by how much), which only negligibly, and
    which are within noise."""
    strategies = sweep["aggregates"][scenario]
    groups: dict[tuple, list[str]] = {}
    for strategy, figures in strategies.items():
        groups.setdefault(tuple(zip(figures[figure]["seeds"], figures[figure]["values"])), []).append(strategy)
    lines = [f"- {_names(group)}: identical in every seed." for group in groups.values() if len(group) > 1]
    negligible, noise = [], []
    for first, second in combinations([group[0] for group in groups.values()], 2):
        a, b = _aligned(strategies[first][figure], strategies[second][figure])
        if not a:
            continue
        result = paired(a, b)
        if result.significant:
            (high, low), sign, base = ((first, second), 1, b) if result.mean > 0 else ((second, first), -1, a)
            lower, upper = sorted(sign * bound for bound in result.ci95)
            mean_low = sum(base) / len(base)
            if mean_low > 0 and sign * result.mean < NEGLIGIBLE * mean_low:
                negligible.append(f"{high} over {low} ({_relative(sign * result.mean, mean_low, low)})")
                continue
            relative = f"{_relative(sign * result.mean, mean_low, low)}; " if mean_low > 0 else ""
            lines.append(f"- {high}'s {label} is higher than {low}'s, by {short(sign * result.mean)}{unit} on average "
                         f"({relative}95% interval {short(lower)} to {short(upper)}; Wilcoxon p = {result.p:.2g} "
                         f"over {result.n} seeds).")
        else:
            why = f"p = {result.p:.2g}" if result.can_be_significant else \
                f"only {result.differing} of {result.n} seeds differ: too few for p < {ALPHA:g}"
            low, high = result.ci95
            noise.append(f"{first} and {second} ({first} - {second} = {short(result.mean)} on average, "
                         f"95% interval {short(low)} to {short(high)}, {why})")
    if negligible:
        lines.append(f"- Significant but under {NEGLIGIBLE:.0%} of the value: {'; '.join(negligible)}.")
    if noise:
        lines.append(f"- Within noise: {'; '.join(noise)}.")
    return [f"**{label}**", "", *lines, ""]


def _markdown_table(sweep: dict, scenario: str) -> list[str]:
    titles = ["strategy", "seeds", *(title.replace("|drift|", "abs drift") for title, _ in SWEEP_COLUMNS)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    return lines + ["| " + " | ".join(row) + " |" for row in sweep_rows(sweep, scenario)]


def sweep_sections(sweep: dict, folder: Path, index: int, drawn: list[tuple[str, Path]]) -> list[str]:
    """The Markdown of one sweep, its charts saved in ``folder`` and added to ``drawn``."""
    runs = sweep["runs"]
    lines = []
    for scenario in sweep["aggregates"]:
        entry = sweep["scenarios"][scenario]
        lines += [f"## Sweep: {scenario} ({sweep['backend']}, {len(entry['seeds'])} seeds)", "",
                  f"- scenario: `{scenario}` from `{entry['path']}` (sha256 `{entry['sha256'][:12]}`)"
                  + (f": {entry['description']}" if entry["description"] else ""),
                  f"- {sweep_heading(sweep, scenario)}; {runs['done']} of {runs['planned']} runs of the sweep done",
                  f"- reproduce: `countdrift sweep {entry['path']} --strategies {','.join(entry['strategies'])} "
                  f"--seed-range {entry['seeds'][0]}:{entry['seeds'][-1]} --backend {sweep['backend']}`", ""]
        lines += _markdown_table(sweep, scenario)
        lines += ["", f"Differences between strategies, seed by seed (significant: Wilcoxon signed-rank p < {ALPHA:g}; "
                      f"with many pairs, a few near {ALPHA:g} can pass by chance; the interval is the mean "
                      f"difference's, the test is on ranks, and near the edge the two can disagree):", ""]
        for figure, label, unit in COMPARED:
            lines += differences(sweep, scenario, figure, label, unit)
        slug = f"{index}-{scenario}-{sweep['backend']}"
        for name, chart, caption in (("tradeoff", charts.sweep_tradeoff, "Throughput and p99 latency vs drift"),
                                     ("spread", charts.sweep_spread, "|drift| seed by seed")):
            drawn.append((f"{caption}: {scenario} ({sweep['backend']}, sweep)",
                          charts.save(chart(sweep, scenario), folder, f"sweep-{name}-{slug}")[0]))
    for field, caption in (("drift", "Drift"), ("throughput", "Throughput")):
        drawn.append((f"{caption} by strategy and scenario, sweep {index} (mean and 95% interval)",
                      charts.save(charts.sweep_matrix([sweep], field), folder, f"sweep-matrix-{field}-{index}")[0]))
    return lines
