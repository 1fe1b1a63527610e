"""`countdrift compare BASELINE CURRENT`: what got worse, and by how much.

Results are matched by scenario, seed, backend and strategy. Correctness must not
get worse at all: in a simulated run, which is deterministic, any drift
figure that grew is a regression; in a real run, one that grew by more than
the tolerance. Throughput may fall by up to the tolerance (default 5%),
since wall-clock figures are noisy; simulated throughput is compared the
same way, so that a deliberate change to the model's costs is not a failure
by a hair. Latency changes are reported, never fatal.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sim.report import ReportError, find_results, load_results

DRIFT_FIELDS = ("users_inconsistent", "users_wrong_total", "convs_wrong", "abs_drift_sum", "max_abs_drift",
                "overcount", "undercount")


@dataclass
class Change:
    scenario: str
    seed: int
    backend: str
    strategy: str
    figure: str
    baseline: float
    current: float
    regression: bool

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
            for figure in DRIFT_FIELDS:
                before, after = run["drift"][figure], other["drift"][figure]
                if after != before:
                    allowed = 0 if backend == "sim" else max(1.0, tolerance * before)
                    changes.append(Change(scenario, seed, backend, strategy, f"drift.{figure}", before, after,
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


def as_text(changes: list[Change]) -> str:
    if not changes:
        return "no change: the current results match the baseline"
    lines = [f"{'':2}{'scenario':<24}{'strategy':<16}{'figure':<28}{'baseline':>12}{'current':>12}{'change':>9}"]
    for c in changes:
        mark = "!!" if c.regression else "  "
        lines.append(f"{mark}{c.scenario:<24}{c.strategy:<16}{c.figure:<28}{c.baseline:>12.6g}{c.current:>12.6g}"
                     f"{c.change:>9}")
    regressions = sum(c.regression for c in changes)
    lines.append(f"\n{regressions} regression(s) (marked !!), {len(changes) - regressions} other change(s)")
    return "\n".join(lines)


def as_markdown(changes: list[Change]) -> str:
    regressions = [c for c in changes if c.regression]
    head = "**countdrift compare: " + (f"{len(regressions)} regression(s)**" if regressions else "no regression**")
    if not changes:
        return head + "\n"
    lines = [head, "", "| | scenario | strategy | figure | baseline | current | change |", "|---|---|---|---|---|---|---|"]
    for c in changes:
        lines.append(f"| {'❌' if c.regression else ''} | {c.scenario} | {c.strategy} | {c.figure} | "
                     f"{c.baseline:.6g} | {c.current:.6g} | {c.change} |")
    return "\n".join(lines) + "\n"


def as_json(changes: list[Change]) -> str:
    return json.dumps({"regression": any(c.regression for c in changes),
                       "changes": [{**asdict(c), "change": c.change} for c in changes]}, indent=2) + "\n"
