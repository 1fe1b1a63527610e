"""A sweep's folder and its sweep.json, which report and compare read.

The folder holds one results.json per (scenario, seed, strategy), each the
document `countdrift run --seed SEED --strategies STRATEGY` writes, at
``<scenario>/s<seed>/<strategy>/results.json``; sweep.json aggregates them,
per (scenario, strategy, figure): n, mean, median, min, max, the mean's 95%
bootstrap interval, and the values seed by seed (compare matches seeds).
Wall-clock figures keep their ``wall_`` prefix here too, so that two sweeps
of the simulation compare equal once they are stripped.
"""
from __future__ import annotations

import json
from pathlib import Path

from sim import __version__
from sim.errors import ReportError
from sim.report.results import InvalidResults, read_document, validate
from sim.report.stats import BOOTSTRAP_SEED, CONFIDENCE, RESAMPLES, describe
from sim.report.table import field_of, has_field

SWEEP_SCHEMA = 1
SWEEP_FILE = "sweep.json"

# Every figure aggregated: a path in a run, or wall_seconds (the run's document).
FIGURES = (
    "drift.users_inconsistent", "drift.users_wrong_total", "drift.convs_wrong", "drift.abs_drift_sum",
    "drift.max_abs_drift", "drift.hidden_max", "drift.overcount", "drift.undercount",
    "throughput_ops_per_s", "latency_ms.p50", "latency_ms.p99", "latency_ms.p999", "latency_ms.max",
    "retries", "ambiguous", "errors", "wall_seconds",
    "seen.badges_wrong", "seen.wrong_badges_per_1000", "seen.phantom_badges", "seen.missed_badges",
    "seen.badge_error_max", "seen.opens_wrong",
)


def run_file(folder: Path, scenario: str, seed: int, strategy: str) -> Path:
    """Where one run of a sweep keeps its results.json."""
    return folder / scenario / f"s{seed}" / strategy / "results.json"


def figure_of(document: dict, figure: str) -> float:
    """A figure of a one-strategy results document."""
    return document[figure] if figure.startswith("wall_") else field_of(document["runs"][0], figure)


def aggregate(folder: Path, plan: dict[str, dict]) -> dict:
    """scenario -> strategy -> figure -> statistics, over the planned runs
    the folder holds. ``plan``: scenario -> {"seeds": [...], "strategies": [...]}."""
    aggregates: dict[str, dict] = {}
    for scenario, planned in plan.items():
        for strategy in planned["strategies"]:
            found = [(seed, path) for seed in planned["seeds"]
                     if (path := run_file(folder, scenario, seed, strategy)).exists()]
            if not found:
                continue
            documents = [json.loads(path.read_text()) for _, path in found]
            figures = {}
            for figure in FIGURES:
                if not all(figure.startswith("wall_") or has_field(document["runs"][0], figure)
                           for document in documents):
                    continue   # a run written before the figure was added
                values = [figure_of(document, figure) for document in documents]
                figures[figure] = {**describe(values), "seeds": [seed for seed, _ in found], "values": values}
            aggregates.setdefault(scenario, {})[strategy] = figures
    return aggregates


def sweep_document(folder: Path, scenarios: dict[str, dict], plan: dict[str, dict], backend: str,
                   failed: list[dict], wall_seconds: float, deterministic: bool = False) -> dict:
    """sweep.json: the plan, what ran, and the aggregates. ``scenarios``:
    name -> the scenario's to_dict(); ``plan`` as for ``aggregate``;
    ``deterministic``: whether the backend's figures repeat exactly."""
    aggregates = aggregate(folder, plan)
    done = sum(figures[FIGURES[0]]["n"] for by_strategy in aggregates.values() for figures in by_strategy.values())
    planned = sum(len(entry["seeds"]) * len(entry["strategies"]) for entry in plan.values())
    return {
        "sweep_schema": SWEEP_SCHEMA,
        "tool_version": __version__,
        "backend": backend,
        "deterministic": deterministic,
        "scenarios": {name: {"path": scenario["path"], "sha256": scenario["sha256"],
                             "description": scenario["description"],
                             "throughput_basis": scenario.get("throughput_basis"), **plan[name]}
                      for name, scenario in scenarios.items()},
        "runs": {"planned": planned, "done": done, "failed": failed},
        "complete": done == planned,
        "statistics": {"ci": f"{CONFIDENCE:.0%} percentile bootstrap of the mean",
                       "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED},
        "aggregates": aggregates,
        "wall_seconds": round(wall_seconds, 3),
    }


def load_sweep(path: Path) -> dict:
    """A sweep.json, checked for the fields report and compare read."""
    try:
        document = read_document(path, SWEEP_FILE)
    except InvalidResults as error:
        raise ReportError(str(error)) from None
    if not isinstance(document, dict) or document.get("sweep_schema") != SWEEP_SCHEMA:
        raise ReportError(f"{path}: not a countdrift {SWEEP_FILE} (sweep_schema {SWEEP_SCHEMA} expected)")
    try:
        validate(document, "sweep")
    except InvalidResults as error:
        raise ReportError(f"{path}: not a valid {SWEEP_FILE}: {error}") from None
    return document


def check_runs(folder: Path, sweep: dict) -> None:
    """Every run sweep.json aggregates that its folder holds is valid and
    says what sweep.json took from it: a run file edited or replaced since
    is refused, not compared or drawn from a stale aggregate (a sweep.json
    copied alone stands for its runs)."""
    for scenario, strategies in sweep["aggregates"].items():
        for strategy, figures in strategies.items():
            statistics = figures[FIGURES[0]]
            for index, seed in enumerate(statistics["seeds"]):
                path = run_file(folder, scenario, seed, strategy)
                if not path.exists():
                    continue
                try:
                    document = read_document(path, "results.json")
                    validate(document)
                except InvalidResults as error:
                    where = "" if str(error).startswith(str(path)) else f"{path}: "
                    raise ReportError(f"{where}{error} (a run of the sweep in {folder})") from None
                for figure, aggregated in figures.items():
                    if index < len(aggregated["values"]) and figure_of(document, figure) != aggregated["values"][index]:
                        raise ReportError(f"{path}: {figure} is {figure_of(document, figure)!r}, and "
                                          f"{folder / SWEEP_FILE} took {aggregated['values'][index]!r} from it: the "
                                          f"run was changed since the sweep; sweep again into another --out")


def find_sweeps(paths: list[str]) -> list[tuple[Path, dict]]:
    """(folder, sweep.json) for each sweep named, or found under the folders
    named, each run it aggregates checked against it."""
    found = []
    for name in paths:
        path = Path(name)
        files = sorted(path.rglob(SWEEP_FILE)) if path.is_dir() else [path] * (path.name == SWEEP_FILE)
        for file in files:
            sweep = load_sweep(file)
            check_runs(file.parent, sweep)
            found.append((file.parent, sweep))
    return found
