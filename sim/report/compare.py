"""`countdrift compare BASELINE CURRENT`: what got worse, and by how much.

Results are matched by scenario, seed, backend and strategy. Correctness must not
get worse at all: in a simulated run, which is deterministic, any drift
figure that grew is a regression (on a cluster, each shard's too), and so
is more wrong values shown to users (``seen``: wrong, phantom and missed
badges, wrong opened counts); in a real run, one that grew by more than
the tolerance. Throughput may fall by up to the tolerance (default 5%),
since wall-clock figures are noisy; simulated throughput is compared the
same way, so that a deliberate change to the model's costs is not a failure
by a hair. Latency changes are reported, never fatal.

Two sweeps are matched by scenario, backend and strategy, and compared
figure by figure over their seeds. A simulated figure is exact for a seed,
so it is compared seed by seed under the same rules as a run (a drift that
grew in any seed is a regression). A wall-clock figure (``wall_*``, and
every figure of a real run) is noisy: a change is a regression only when it
is significant (Mann-Whitney U below ``alpha``, as asv decides, or disjoint
intervals when there are too few seeds for the test) and beyond the
tolerance; the rest is reported as within noise.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sim.report.results import deterministic
from sim.report.stats import differs
from sim.report.summary import ReportError, find_results, load_results
from sim.report.sweep_results import FIGURES, find_sweeps

DRIFT_FIELDS = ("users_inconsistent", "users_wrong_total", "convs_wrong", "abs_drift_sum", "max_abs_drift",
                "overcount", "undercount")
SHARD_DRIFT_FIELDS = ("users_wrong_total", "abs_drift_sum")   # a cluster run's, per shard
# What users were shown (sim/seen.py): more wrong ones is a regression, as drift is.
SEEN_FIELDS = ("badges_wrong", "phantom_badges", "missed_badges", "opens_wrong")


@dataclass
class Change:
    scenario: str
    seed: int | None       # None: over the seeds of two sweeps
    backend: str
    strategy: str
    figure: str
    baseline: float
    current: float
    regression: bool
    detail: str = ""       # for sweeps: in how many seeds, or how significant

    @property
    def change(self) -> str:
        if self.baseline:
            return f"{(self.current - self.baseline) / self.baseline:+.1%}"
        return "new" if self.current else "0"


def _index(paths: list[str]) -> dict[tuple[str, int, str], dict]:
    """The results under ``paths`` by (scenario, seed, backend); two of one key is an error."""
    documents: dict[tuple[str, int, str], dict] = {}
    where: dict[tuple[str, int, str], object] = {}
    for path in find_results(paths):
        document = load_results(path)
        key = (document["scenario"]["name"], document["seed"], document["backend"])
        if key in documents:
            raise ReportError(f"{path} and {where[key]} both hold {key[0]} at seed {key[1]} on {key[2]}: "
                              f"compare one run against one run")
        documents[key], where[key] = document, path
    return documents


def compare(baseline_paths: list[str], current_paths: list[str], tolerance: float = 0.05) -> list[Change]:
    baseline, current = _index(baseline_paths), _index(current_paths)
    changes: list[Change] = []
    for key, base in sorted(baseline.items()):
        scenario, seed, backend = key
        now = current.get(key)
        if now is None:
            changes.append(Change(scenario, seed, backend, "*", "missing from the current results", 1, 0, True))
            continue
        now_runs = {run["strategy"]: run for run in now["runs"]}
        for run in base["runs"]:
            strategy = run["strategy"]
            other = now_runs.get(strategy)
            if other is None:
                changes.append(Change(scenario, seed, backend, strategy, "missing from the current results", 1, 0,
                                      True))
                continue
            figures = [(f"drift.{figure}", run["drift"][figure], other["drift"][figure]) for figure in DRIFT_FIELDS]
            # On a cluster, each shard's too: drift that moved to another shard's users is a change.
            for shard, drift in run.get("shard_drift", {}).items():
                now_drift = other.get("shard_drift", {}).get(shard, {})
                figures += [(f"shard_drift.{shard}.{figure}", drift[figure], now_drift.get(figure, 0))
                            for figure in SHARD_DRIFT_FIELDS]
            if "seen" in run and "seen" in other:   # (results written before it was judged have none)
                figures += [(f"seen.{figure}", run["seen"][figure], other["seen"][figure]) for figure in SEEN_FIELDS]
            for figure, before, after in figures:
                if after != before:
                    allowed = 0 if deterministic(base) else max(1.0, tolerance * before)
                    changes.append(Change(scenario, seed, backend, strategy, figure, before, after,
                                          after - before > allowed))
            before, after = run["throughput_ops_per_s"], other["throughput_ops_per_s"]
            if after != before:
                changes.append(Change(scenario, seed, backend, strategy, "throughput_ops_per_s", before, after,
                                      after < before * (1 - tolerance)))
            before, after = run["latency_ms"]["p99"], other["latency_ms"]["p99"]
            if after != before:
                changes.append(Change(scenario, seed, backend, strategy, "latency_ms.p99", before, after, False))
    for scenario, seed, backend in sorted(set(current) - set(baseline)):
        changes.append(Change(scenario, seed, backend, "*", "only in the current results", 0, 1, False))
    return changes


# Figures two sweeps are compared on: (figure, +1 if a rise is worse else -1, whether worse is a regression).
SWEEP_FIGURES = (*((f"drift.{name}", 1, True) for name in DRIFT_FIELDS),
                 *((f"seen.{name}", 1, True) for name in SEEN_FIELDS if f"seen.{name}" in FIGURES),
                 ("throughput_ops_per_s", -1, True),
                 ("latency_ms.p99", 1, False), ("wall_seconds", 1, False))


def _allowed(figure: str, before: float, exact: bool, tolerance: float) -> float:
    """How much worse a figure may get before it counts as worse (``exact``: a deterministic one)."""
    if figure.startswith(("drift.", "seen.")):
        return 0.0 if exact else max(1.0, tolerance * abs(before))
    return tolerance * abs(before)


def _sweep_index(paths: list[str]) -> dict[tuple[str, str], tuple[dict, bool]]:
    """(scenario, backend) -> (strategy -> figure -> statistics, whether
    deterministic); two of one key is an error."""
    index: dict[tuple[str, str], dict] = {}
    where: dict[tuple[str, str], object] = {}
    for folder, sweep in find_sweeps(paths):
        for scenario, strategies in sweep["aggregates"].items():
            key = (scenario, sweep["backend"])
            if key in index:
                raise ReportError(f"{folder} and {where[key]} both hold a sweep of {scenario} on {key[1]}: "
                                  f"compare one sweep against one sweep")
            index[key], where[key] = (strategies, deterministic(sweep)), folder
    if not index:
        raise ReportError(f"no sweep.json with runs under {', '.join(paths)}")
    return index


def _seed_by_seed(change: Change, before: dict, after: dict, direction: int, tolerance: float,
                  fatal: bool, exact: bool) -> Change | None:
    """An exact figure, over the seeds both sweeps ran: worse in any seed is worse."""
    base, now = dict(zip(before["seeds"], before["values"])), dict(zip(after["seeds"], after["values"]))
    common = [seed for seed in base if seed in now]
    changed = [seed for seed in common if now[seed] != base[seed]]
    if not changed:
        return None
    worse = [seed for seed in changed
             if (now[seed] - base[seed]) * direction > _allowed(change.figure, base[seed], exact, tolerance)]
    change.baseline = sum(base[seed] for seed in common) / len(common)
    change.current = sum(now[seed] for seed in common) / len(common)
    change.regression = fatal and bool(worse)
    change.detail = f"changed in {len(changed)} of {len(common)} seeds, worse in {len(worse)}"
    if worse:
        seed = max(worse, key=lambda seed: (now[seed] - base[seed]) * direction)
        change.detail += f" (most: seed {seed}, {base[seed]:.6g} -> {now[seed]:.6g})"
    return change


def _over_noise(change: Change, before: dict, after: dict, direction: int, tolerance: float, alpha: float,
                fatal: bool, exact: bool) -> Change | None:
    """A noisy figure: worse only when significantly so and beyond the tolerance."""
    if after["values"] == before["values"]:
        return None
    significant, how = differs(before["values"], after["values"], alpha)
    beyond = (after["mean"] - before["mean"]) * direction > _allowed(change.figure, before["mean"], exact, tolerance)
    change.baseline, change.current = before["mean"], after["mean"]
    change.regression = fatal and significant and beyond
    change.detail = f"{'significant' if significant else 'within noise'}: {how}"
    return change


def compare_sweeps(baseline_paths: list[str], current_paths: list[str], tolerance: float = 0.05,
                   alpha: float = 0.01) -> list[Change]:
    baseline, current = _sweep_index(baseline_paths), _sweep_index(current_paths)
    exacts = {key: exact for key, (_, exact) in baseline.items()}
    baseline = {key: strategies for key, (strategies, _) in baseline.items()}
    current = {key: strategies for key, (strategies, _) in current.items()}
    changes: list[Change] = []
    for (scenario, backend), strategies in sorted(baseline.items()):
        now = current.get((scenario, backend), {})
        for strategy, figures in strategies.items():
            if strategy not in now:
                changes.append(Change(scenario, None, backend, strategy, "missing from the current sweep", 1, 0, True))
                continue
            for figure, direction, fatal in SWEEP_FIGURES:
                if figure not in figures or figure not in now[strategy]:
                    continue   # a sweep written before the figure was added
                before, after = figures[figure], now[strategy][figure]
                change = Change(scenario, None, backend, strategy, figure, 0, 0, False)
                common = set(before["seeds"]) & set(after["seeds"])
                same_every_run = exacts[(scenario, backend)]
                exact = same_every_run and not figure.startswith("wall_") and common
                found = (_seed_by_seed(change, before, after, direction, tolerance, fatal, same_every_run) if exact
                         else _over_noise(change, before, after, direction, tolerance, alpha, fatal, same_every_run))
                if found:
                    changes.append(found)
    for scenario, backend in sorted(set(current) - set(baseline)):
        changes.append(Change(scenario, None, backend, "*", "only in the current sweeps", 0, 1, False))
    return changes


def as_text(changes: list[Change]) -> str:
    if not changes:
        return "no change: the current results match the baseline"
    lines = [f"{'':2}{'scenario':<24}{'strategy':<16}{'figure':<28}{'baseline':>12}{'current':>12}{'change':>9}"]
    for c in changes:
        mark = "!!" if c.regression else "  "
        lines.append(f"{mark}{c.scenario:<24}{c.strategy:<16}{c.figure:<28}{c.baseline:>12.6g}{c.current:>12.6g}"
                     f"{c.change:>9}" + (f"  {c.detail}" if c.detail else ""))
    regressions = sum(c.regression for c in changes)
    lines.append(f"\n{regressions} regression(s) (marked !!), {len(changes) - regressions} other change(s)")
    return "\n".join(lines)


def as_markdown(changes: list[Change]) -> str:
    regressions = [c for c in changes if c.regression]
    head = "**countdrift compare: " + (f"{len(regressions)} regression(s)**" if regressions else "no regression**")
    if not changes:
        return head + "\n"
    detail = any(c.detail for c in changes)
    lines = [head, "", "| | scenario | strategy | figure | baseline | current | change |" + " detail |" * detail,
             "|---|---|---|---|---|---|---|" + "---|" * detail]
    for c in changes:
        lines.append(f"| {'❌' if c.regression else ''} | {c.scenario} | {c.strategy} | {c.figure} | "
                     f"{c.baseline:.6g} | {c.current:.6g} | {c.change} |" + f" {c.detail} |" * detail)
    return "\n".join(lines) + "\n"


def as_json(changes: list[Change]) -> str:
    return json.dumps({"tool": "countdrift compare", "regression": any(c.regression for c in changes),
                       "changes": [{**asdict(c), "change": c.change} for c in changes]}, indent=2) + "\n"


def written_by_compare(path: Path) -> bool:
    """Whether a file is a verdict `countdrift compare` wrote (--json or --markdown)."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return False
    return head.startswith((b"**countdrift compare:", b'{\n  "tool": "countdrift compare"', b'{\n  "regression": '))
