"""The readable table `countdrift run` prints, one row per strategy."""
from __future__ import annotations

# (title, field path in a run, width, number format)
COLUMNS = (
    ("strategy", "strategy", 14, ""),
    ("ops/s", "throughput_ops_per_s", 10, ".0f"),
    ("p50 ms", "latency_ms.p50", 8, ".3f"),
    ("p99 ms", "latency_ms.p99", 8, ".3f"),
    ("max ms", "latency_ms.max", 9, ".2f"),
    ("inconsistent", "drift.users_inconsistent", 12, ""),
    ("wrong total", "drift.users_wrong_total", 11, ""),
    ("convs wrong", "drift.convs_wrong", 11, ""),
    ("|drift|", "drift.abs_drift_sum", 8, ""),
    ("hidden", "drift.hidden_max", 6, ""),
    ("over", "drift.overcount", 6, ""),
    ("under", "drift.undercount", 6, ""),
    ("retries", "retries", 7, ""),
    ("unknown", "ambiguous", 7, ""),
    ("errors", "errors", 6, ""),
    ("wrong badge/1k", "seen.wrong_badges_per_1000", 14, ".1f"),
    ("wrong open", "seen.opens_wrong", 10, ""),
)


def field_of(run: dict, path: str):
    value = run
    for part in path.split("."):
        value = value[part]
    return value


def has_field(run: dict, path: str) -> bool:
    """Whether a run has the figure (results written before it was added do not)."""
    try:
        field_of(run, path)
    except (KeyError, TypeError):
        return False
    return True


# What each throughput_basis means, in words (results.json records the basis).
BASIS = {
    "offered": "the offered rate, served (an open loop: below saturation every strategy serves what the trace asks)",
    "redis_alone": "what Redis alone sustains (a closed loop on the model, each client as if on a machine of its own)",
    "driver_modelled": "what the real driver's one process sustains, modelled on the calibrated machine (closed loop)",
    "measured": "measured on real servers through the real driver (closed loop)",
}


def basis_of(results: dict) -> str | None:
    """The results' throughput basis in words (None: written before results said it)."""
    return BASIS.get(results.get("throughput_basis", ""))


def format_table(results: dict) -> str:
    header = "  ".join(title.ljust(width) if i == 0 else title.rjust(width)
                       for i, (title, _, width, _) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for run in results["runs"]:
        cells = []
        for i, (_, path, width, number) in enumerate(COLUMNS):
            text = format(field_of(run, path), number) if has_field(run, path) else "-"
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append("  ".join(cells))
    basis = basis_of(results)
    if basis:
        lines.append(f"ops/s: {basis}")
    return "\n".join(lines)


def format_faults(results: dict) -> str:
    """The schedule that was applied (the same for every strategy), one line a fault."""
    faults = results["runs"][0]["faults"] if results["runs"] else []
    lines = []
    for fault in faults:
        params = ", ".join(f"{key}={value}" for key, value in fault["params"].items())
        lines.append(f"  {fault['at']:8.3f} s  {fault['kind']:<22} for {fault['duration']:.3f} s"
                     + (f"  ({params})" if params else ""))
    for run in results["runs"]:
        for fault in run["faults"]:
            effects = fault["effects"]
            if not effects["applied"] or effects["reason"]:
                what = "did not strike" if not effects["applied"] else "was cut short"
                lines.append(f"  {run['strategy']}: {fault['kind']} at {fault['at']:.3f} s {what}: {effects['reason']}")
    return "\n".join(["faults:", *lines]) if lines else ""


def format_causes(results: dict) -> str:
    """|drift| by cause, strategy by strategy (only the causes that contributed)."""
    lines = []
    for run in results["runs"]:
        if "drift_by_cause" not in run:
            continue  # only the simulation can replay a run with a cause switched off
        shares = run["drift_by_cause"]["abs_drift_sum"]
        parts = [f"{cause} {value:+d}" for cause, value in shares.items() if value]
        lines.append(f"  {run['strategy']:<15} {run['drift']['abs_drift_sum']:>6} = " + (", ".join(parts) or "0"))
    return "\n".join(["|drift| by cause:", *lines]) if lines else ""


# A sweep's table: (title, figure in sweep.json); each cell the mean and its 95% interval.
SWEEP_COLUMNS = (
    ("ops/s", "throughput_ops_per_s"),
    ("p99 ms", "latency_ms.p99"),
    ("inconsistent", "drift.users_inconsistent"),
    ("wrong total", "drift.users_wrong_total"),
    ("|drift|", "drift.abs_drift_sum"),
    ("retries", "retries"),
    ("unknown", "ambiguous"),
    ("errors", "errors"),
    ("wrong badge/1k", "seen.wrong_badges_per_1000"),
)


def short(value: float) -> str:
    """About three significant digits, no exponent above 0.0001: 1938, 46.3, 1.25, 0.0042, 12."""
    if value == round(value) or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.2g}"


def mean_and_ci(statistics: dict) -> str:
    """``mean [low, high]``; the mean alone when the interval is one point or unknown (one seed)."""
    mean, interval = short(statistics["mean"]), statistics["ci95"]
    if interval is None or short(interval[0]) == short(interval[1]) == mean:
        return mean
    return f"{mean} [{short(interval[0])}, {short(interval[1])}]"


def sweep_rows(sweep: dict, scenario: str) -> list[list[str]]:
    """Per strategy of one scenario: its name, seeds run, then each column's mean and interval."""
    return [[strategy, str(figures[SWEEP_COLUMNS[0][1]]["n"]),
             *(mean_and_ci(figures[figure]) if figure in figures else "-" for _, figure in SWEEP_COLUMNS)]
            for strategy, figures in sweep["aggregates"][scenario].items()]


def sweep_heading(sweep: dict, scenario: str) -> str:
    seeds = sweep["scenarios"][scenario]["seeds"]
    if len(seeds) == 1:
        return f"{scenario} ({sweep['backend']}): 1 seed ({seeds[0]})"
    span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[0] + len(seeds))) else \
        ", ".join(map(str, seeds))
    return (f"{scenario} ({sweep['backend']}): {len(seeds)} seeds ({span}), "
            f"each figure the mean [95% bootstrap interval] over the seeds")


def format_sweep_table(sweep: dict, scenario: str) -> str:
    """One scenario of a sweep: a row per strategy, each figure's mean and 95% interval."""
    titles = ["strategy", "seeds", *(title for title, _ in SWEEP_COLUMNS)]
    rows = sweep_rows(sweep, scenario)
    widths = [max(len(row[i]) for row in [titles, *rows]) for i in range(len(titles))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths)))

    header = line(titles)
    return "\n".join([sweep_heading(sweep, scenario), header, "-" * len(header), *(line(row) for row in rows)])


def format_topology(results: dict) -> str:
    """On a cluster: its size, and each strategy's commands per shard ("" on one server)."""
    server = results["scenario"]["server"]
    if server.get("topology", "single") != "cluster":
        return ""
    lines = [f"Redis Cluster: {server['cluster_primaries']} primaries x {server['cluster_replicas_per_primary']} "
             f"replica(s); commands per shard's primary:"]
    for run in results["runs"]:
        shards = run.get("shard_commands") or {}
        total = sum(shards.values()) or 1
        lines.append(f"  {run['strategy']:<16} " + "  ".join(
            f"{name} {count} ({100 * count / total:.0f}%)" for name, count in shards.items()))
    if any(run.get("shard_drift") for run in results["runs"]):
        lines.append("users with a wrong total / |drift|, by the shard of their keys:")
        for run in results["runs"]:
            lines.append(f"  {run['strategy']:<16} " + "  ".join(
                f"{name} {figures['users_wrong_total']}/{figures['abs_drift_sum']}"
                for name, figures in (run.get("shard_drift") or {}).items()))
    return "\n".join(lines)
