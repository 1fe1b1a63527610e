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
)


def field_of(run: dict, path: str):
    value = run
    for part in path.split("."):
        value = value[part]
    return value


def format_table(results: dict) -> str:
    header = "  ".join(title.ljust(width) if i == 0 else title.rjust(width)
                       for i, (title, _, width, _) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for run in results["runs"]:
        cells = []
        for i, (_, path, width, number) in enumerate(COLUMNS):
            text = format(field_of(run, path), number)
            cells.append(text.ljust(width) if i == 0 else text.rjust(width))
        lines.append("  ".join(cells))
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
