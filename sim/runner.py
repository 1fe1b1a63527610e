"""One `countdrift run`: one trace, replayed through each strategy in turn."""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable, Iterable, TextIO

from sim import __version__
from sim.backends.model.driver import SimDriver
from sim.metrics import performance
from sim.results import SCHEMA_VERSION
from sim.scenario import Scenario
from sim.traffic import DELIVER, Trace, generate
from strategies import make_strategy

ProgressFactory = Callable[[str, Trace], Callable[[float, int], None]]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stderr_progress(stream: TextIO = sys.stderr, every_s: float = 2.0) -> ProgressFactory:
    """Progress lines on long runs: strategy, simulated time, operations, ETA."""

    def factory(strategy: str, trace: Trace) -> Callable[[float, int], None]:
        started = time.perf_counter()
        last = [started]
        span, total = float(trace.t[-1]), len(trace.t)

        def report(at: float, done: int) -> None:
            now = time.perf_counter()
            if now - last[0] < every_s and at < span:
                return
            last[0] = now
            fraction = at / span if span else 1.0
            eta = (now - started) * (1 - fraction) / fraction if fraction else 0.0
            stream.write(f"  [{strategy}] sim {at:8.2f}/{span:.2f} s  ops {done}/{total} "
                         f"({100 * fraction:3.0f}%)  wall {now - started:6.1f} s  eta {eta:5.1f} s\n")
            stream.flush()

        return report

    return factory


def run_strategy(scenario: Scenario, trace: Trace, name: str,
                 progress: ProgressFactory | None = None) -> dict:
    strategy = make_strategy(name, **scenario.strategy_options.get(name, {}))
    driver = SimDriver(trace, strategy, scenario.clients, scenario.server.service_times(),
                       scenario.run.timeline_points, progress(name, trace) if progress else None)
    started = time.perf_counter()
    driver.run()
    wall_run = time.perf_counter() - started
    drift = driver.drift()
    history = driver.history
    return {
        "strategy": name,
        "options": {**strategy.options, "retries": scenario.clients.retries,
                    "backoff_ms": scenario.clients.backoff_ms, "timeout_ms": scenario.clients.timeout_ms},
        "messages": int((trace.kind == DELIVER).sum()),
        **performance(trace, history),
        "redis_requests": driver.server.requests,
        "redis_commands": driver.server.commands,
        "faults": [],
        "drift": drift.as_dict(),
        "outcomes": history.outcomes(),
        "retries": history.retries,
        "ambiguous": history.ambiguous,
        "errors": sum(history.errors.values()),
        "errors_by_kind": dict(sorted(history.errors.items())),
        "timeline": driver.timeline,
        "wall_seconds": round(wall_run, 3),
        "wall_redis_commands_per_s": round(driver.server.commands / wall_run, 1) if wall_run else 0.0,
    }


def run_scenario(scenario: Scenario, strategies: Iterable[str] | None = None, trace: Trace | None = None,
                 progress: ProgressFactory | None = None) -> dict:
    """Run the strategies (default: the scenario's) on a trace (default: the
    scenario's, generated with its seed)."""
    started = time.perf_counter()
    if trace is None:
        trace = generate(scenario.traffic, scenario.seed)
    runs = [run_strategy(scenario, trace, name, progress) for name in (strategies or scenario.strategies)]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "backend": "sim",
        "seed": trace.seed,
        "scenario": scenario.to_dict(),
        "trace": trace.summary(),
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "wall_peak_rss_mib": round(peak_rss_mib(), 1),
    }
