"""One `countdrift run`: one trace, replayed through each strategy in turn."""
from __future__ import annotations

import resource
import sys
import time

from tqdm import tqdm
from typing import Callable, Iterable, TextIO

from sim import __version__
from sim.backends.model.driver import SimDriver
from sim.client import CAUSES
from sim.backends.model.nemesis import Nemesis
from sim.backends.model.persistence import ReplicationLag
from sim.backends.model.server import Server
from sim.causes import attribute, relevant
from sim.checker import Drift
from sim.faults import Fault, draw_schedule
from sim.metrics import performance
from sim.results import SCHEMA_VERSION
from sim.scenario import Scenario
from sim.traffic import DELIVER, Trace, generate
from strategies import make_strategy
from strategies.base import Strategy

ProgressFactory = Callable[[str, Trace], Callable[[float, int], None]]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stderr_progress(stream: TextIO = sys.stderr) -> ProgressFactory:
    """A progress bar per strategy on long runs: time replayed, operations
    done, ETA (tqdm)."""

    def factory(strategy: str, trace: Trace) -> Callable[[float, int], None]:
        span = float(trace.t[-1]) if len(trace.t) else 0.0
        bar = tqdm(total=round(span, 2), desc=f"{strategy:<15}", unit="s", file=stream, leave=False,
                   mininterval=0.5, bar_format="{desc} {percentage:3.0f}%|{bar:20}| t {n:.1f}/{total:.1f} s "
                                               "[{elapsed}<{remaining}{postfix}]")

        def report(at: float, done: int) -> None:
            bar.set_postfix_str(f"{done}/{len(trace.t)} ops", refresh=False)
            bar.update(round(min(at, span), 2) - bar.n)
            if at >= span:
                bar.close()

        return report

    return factory


def schedule_for(scenario: Scenario, trace: Trace) -> list[Fault]:
    """The scenario's explicit faults plus those drawn from its rates."""
    span = float(trace.t[-1]) if len(trace.t) else 0.0
    drawn = draw_schedule(list(scenario.fault_rates), span, trace.seed)
    return sorted([*scenario.faults, *drawn], key=lambda fault: (fault.at, fault.kind))


def _history_needed(scenario: Scenario, schedule: list[Fault]) -> float:
    """How far back a fault of this schedule may roll the keyspace (0: never)."""
    kinds = {fault.kind for fault in schedule}
    server = scenario.server
    reach = 0.0
    if kinds & {"power_loss", "mid_script_power_loss"} or ("server_crash" in kinds and not server.appendonly):
        reach = server.persistence().horizon_s()
    if "failover" in kinds or (server.auto_failover and "server_crash" in kinds):
        lags = [fault.param("lag_ms") for fault in schedule if fault.kind == "failover"]
        reach = max(reach, 20 * server.replication_lag_ms / 1000.0, *(lag / 1000.0 for lag in lags))
    return reach


def simulate(scenario: Scenario, trace: Trace, strategy: Strategy, schedule: list[Fault],
             causes: frozenset[str] = frozenset(CAUSES), timeline_points: int = 0,
             progress: Callable[[float, int], None] | None = None) -> tuple[SimDriver, Nemesis]:
    """One replay of the trace through one strategy, with the nemesis."""
    config = scenario.server
    lag = ReplicationLag(config.replication_lag_ms, trace.seed) if config.replicas else None
    server = Server(config.service_times(), config.persistence(), lag)
    reach = _history_needed(scenario, schedule)
    if reach:
        server.keep_history(reach)
    driver = SimDriver(trace, strategy, scenario.clients, server, trace.seed, timeline_points, causes, progress)
    nemesis = Nemesis(driver, schedule, trace.seed, lag,
                      config.failover_detection_s if config.auto_failover else None)
    driver.run(nemesis.processes())
    return driver, nemesis


def recovery(timeline: list[dict], faults: list[dict]) -> list[dict]:
    """For each fault, until the next one starts: the drift just before it,
    the peak after it, and how long after the fault ended the drift came back
    down to where it was (None: not before the next fault or the run's end)."""
    out = []
    starts = [fault["at"] for fault in faults]
    for index, fault in enumerate(faults):
        start, end = fault["at"], fault["at"] + fault["duration"]
        following = [t for t in starts[index + 1:] if t > start]
        until = min(following) if following else float("inf")
        before = [point["abs_drift_sum"] for point in timeline if point["t"] <= start]
        baseline = before[-1] if before else 0
        window = [point for point in timeline if start < point["t"] <= until]
        peak = max((point["abs_drift_sum"] for point in window), default=baseline)
        recovered = None
        if peak > baseline:
            for point in window:
                if point["t"] >= end and point["abs_drift_sum"] <= baseline:
                    recovered = round(point["t"] - end, 6)
                    break
        else:
            recovered = 0.0
        out.append({"kind": fault["kind"], "at": start, "drift_before": baseline,
                    "peak_drift": peak, "recovered_after_s": recovered})
    return out


def run_record(scenario: Scenario, trace: Trace, strategy: Strategy, driver, faults: list[dict],
               drift: Drift) -> dict:
    """The part of a run's results that every backend reports alike."""
    history = driver.history
    faults = sorted(faults, key=lambda fault: (fault["at"], fault["kind"]))
    return {
        "strategy": strategy.name,
        "options": {**strategy.options, "retries": scenario.clients.retries,
                    "backoff_ms": scenario.clients.backoff_ms, "timeout_ms": scenario.clients.timeout_ms,
                    "appendfsync": scenario.server.appendfsync if scenario.server.appendonly else "off"},
        "messages": int((trace.kind == DELIVER).sum()),
        **performance(trace, history),
        "faults": faults,
        "drift": drift.as_dict(),
        "recovery": recovery(driver.timeline, faults),
        "outcomes": history.outcomes(),
        "retries": history.retries,
        "ambiguous": history.ambiguous,
        "errors": sum(history.errors.values()),
        "errors_by_kind": dict(sorted(history.errors.items())),
        "reconnects": driver.reconnects,
        "script_loads": driver.script_loads,
        "noscript": driver.noscript,
        "operations_cut_by_client_crash": driver.loop.crashed_operations,
        "timeline": driver.timeline,
    }


def run_strategy(scenario: Scenario, trace: Trace, name: str, schedule: list[Fault],
                 progress: ProgressFactory | None = None) -> dict:
    options = scenario.strategy_options.get(name, {})
    strategy = make_strategy(name, **options)
    started = time.perf_counter()
    driver, nemesis = simulate(scenario, trace, strategy, schedule, timeline_points=scenario.run.timeline_points,
                               progress=progress(name, trace) if progress else None)
    wall_run = time.perf_counter() - started
    drift = driver.drift()
    history = driver.history

    def replay(causes: frozenset[str], repair: bool) -> Drift:
        if name == "lua_repair" and not repair:
            variant = make_strategy(name, **{**options, "repair_max_conversations": -1})
        else:
            variant = make_strategy(name, **options)
        return simulate(scenario, trace, variant, schedule, causes)[0].drift()

    outcomes = history.outcomes()
    switchable = relevant(name, schedule, outcomes["fail"] + outcomes["unknown"], history.ambiguous,
                          scenario.server.auto_failover)
    record = run_record(scenario, trace, strategy, driver, nemesis.applied, drift)
    record.update({
        "redis_requests": driver.server.requests,
        "redis_commands": driver.server.commands,
        "drift_by_cause": attribute(drift, switchable, replay),
        "wall_seconds": round(wall_run, 3),
        "wall_seconds_attribution": round(time.perf_counter() - started - wall_run, 3),
        "wall_redis_commands_per_s": round(driver.server.commands / wall_run, 1) if wall_run else 0.0,
    })
    return record


def run_scenario(scenario: Scenario, strategies: Iterable[str] | None = None, trace: Trace | None = None,
                 progress: ProgressFactory | None = None, backend: str = "sim") -> dict:
    """Run the strategies (default: the scenario's) on a trace (default: the
    scenario's, generated with its seed)."""
    started = time.perf_counter()
    if trace is None:
        trace = generate(scenario.traffic, scenario.seed)
    schedule = schedule_for(scenario, trace)
    if backend == "redis":
        from sim.backends.real.run import run_strategy_on_redis as run_one
    else:
        run_one = run_strategy
    runs = [run_one(scenario, trace, name, schedule, progress) for name in (strategies or scenario.strategies)]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "backend": backend,
        "seed": trace.seed,
        "scenario": scenario.to_dict(),
        "trace": trace.summary(),
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "wall_peak_rss_mib": round(peak_rss_mib(), 1),
    }
