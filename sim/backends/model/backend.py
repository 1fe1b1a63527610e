"""The simulated backend: a SimPy model of Redis, deterministic per seed.

Each strategy's run is a fresh simulated server; the nemesis applies the
schedule in simulated time. Because the model can switch off each mechanism
by which a fault corrupts the counters, this backend also explains a run's
drift by cause (sim/causes.py), by replaying it with causes switched off.
"""
from __future__ import annotations

import argparse
import time
from typing import NamedTuple

from sim.backend import Backend, CostTarget, Deployment, Execution, Progress
from sim.backends.model.driver import SimDriver
from sim.backends.model.nemesis import SimNemesis
from sim.backends.model.target import make_server
from sim.causes import EVERY, attribute, relevant, steps
from sim.checker import Drift, check
from sim.client import CAUSES
from sim.faults import Fault
from sim.heap import begin_run, collect_finished_runs
from sim.nemesis import StallTarget, ack_log, promotes, rollback_horizon, tears_aof
from sim.scenario import Scenario, ServerConfig
from sim.story import Tracer
from sim.traffic import Trace
from sim.truth import truth_ranges
from strategies import make_strategy
from strategies.base import Strategy


def simulate(scenario: Scenario, trace: Trace, strategy: Strategy, schedule: list[Fault],
             causes: frozenset[str] = frozenset(CAUSES), timeline_points: int = 0,
             progress: Progress | None = None, drift_only: bool = False,
             tracer: Tracer | None = None) -> tuple[SimDriver, SimNemesis]:
    """One replay of the trace through one strategy, with the nemesis;
    ``drift_only``: only the counters and the history will be read (a replay
    of the attribution), so the clients log no acknowledged writes, which
    only the faults' records count; ``tracer``: follows its operations, and
    reads its user's counters as each completes."""
    # What earlier runs left in cycles (a finished driver, its store and
    # workload) goes before this run's structures are made, not beside
    # them: a replay's peak memory is then one run's, not two.
    begin_run()
    server = make_server(scenario.server)
    reach = rollback_horizon(scenario.server, scenario.sentinel, schedule)
    if reach:
        server.keep_history(reach)
    if tears_aof(scenario.server, schedule):
        server.keep_aof()
    acks, target = ack_log(scenario.server, scenario.sentinel, schedule), StallTarget()
    if scenario.server.topology == "cluster":   # a fault on one shard counts that shard's writes
        acks.locate = server.shards_of
    run = scenario.run
    driver = SimDriver(trace, strategy, scenario.clients, server, trace.seed, timeline_points, causes, progress,
                       None if drift_only else acks, target, run.load == "open", run.think_time_ms / 1000.0)
    nemesis = SimNemesis(driver, schedule, trace.seed, scenario.server, scenario.sentinel, acks, target)
    if tracer is not None:
        driver.follow(tracer)
    driver.run(tuple(nemesis.processes()))
    return driver, nemesis


class Replay(NamedTuple):
    """One replay of the attribution: the causes on in it, of the run's switchable ones."""

    switchable: tuple[str, ...]
    causes: frozenset[str]


class SimDeployment(Deployment):
    def __init__(self, scenario: Scenario, schedule: list[Fault]) -> None:
        self.scenario = scenario
        self.schedule = schedule

    def run(self, strategy: Strategy, trace: Trace, progress: Progress | None) -> Execution:
        execution = self._run(strategy, trace, progress)
        collect_finished_runs()   # the finished driver, its store and workload: gone before the run is judged
        return execution

    def _run(self, strategy: Strategy, trace: Trace, progress: Progress | None) -> Execution:
        started = time.perf_counter()
        driver, nemesis = simulate(self.scenario, trace, strategy, self.schedule,
                                   timeline_points=self.scenario.run.timeline_points, progress=progress)
        wall = time.perf_counter() - started
        span = driver.run_end
        figures = {}
        if not self.schedule and span > 0:   # as on real servers: how busy Redis (and the clients' process) was
            figures["server_cpu_share"] = round(driver.server.busy_s / span, 3)
            if driver.driver_busy:
                figures["driver_cpu_share"] = round(driver.driver_busy / span, 3)
                figures["driver_wakes"] = driver.driver_wakes   # as the real driver's loop thread counts them
        if self.scenario.server.topology == "cluster":
            figures.update(topology="cluster", shard_commands=driver.server.shard_commands())
        own = driver.strategy_figures()
        if own:
            figures["strategy_figures"] = own
        return Execution(
            history=driver.history, timeline=driver.timeline, faults=nemesis.records(),
            counters=driver.counters(), reconnects=driver.reconnects, script_loads=driver.script_loads,
            noscript=driver.noscript, operations_cut_by_client_crash=driver.loop.crashed_operations,
            wait_replies=driver.loop.wait_replies,
            workers=driver.worker_stats.as_dict(len(driver.workers), driver.loop.lost_in_buffer),
            figures={"redis_requests": driver.server.requests, "redis_commands": driver.server.commands,
                     "wall_seconds": round(wall, 3),
                     "wall_redis_commands_per_s": round(driver.server.commands / wall, 1) if wall else 0.0,
                     **figures})


class SimBackend(Backend):
    name = "sim"
    summary = "a SimPy model of Redis (a primary, or a Redis Cluster): no server needed, deterministic for a given seed"
    parallel_runs = True
    deterministic = True
    models_driver = True

    def deploy(self, scenario: Scenario, schedule: list[Fault]) -> Deployment:
        return SimDeployment(scenario, schedule)

    def explanation(self, scenario: Scenario, strategy_name: str, schedule: list[Fault],
                    execution: Execution) -> list[Replay]:
        """Drift by cause: the same trace and schedule replayed with each
        mechanism switched off in turn (sim/causes.py)."""
        outcomes = execution.history.outcomes()
        strategy = make_strategy(strategy_name, **scenario.strategy_options.get(strategy_name, {}))
        switchable = tuple(relevant(strategy, schedule, outcomes["fail"] + outcomes["unknown"],
                                    execution.history.ambiguous, promotes(scenario.sentinel, schedule)))
        return [Replay(switchable, causes) for causes in steps(list(switchable))]

    def replay(self, scenario: Scenario, trace: Trace, strategy_name: str, schedule: list[Fault],
               piece: Replay) -> tuple[Drift, float]:
        """The drift of one replay, and its wall seconds."""
        started = time.perf_counter()
        options = scenario.strategy_options.get(strategy_name, {})
        options = {**options, **make_strategy(strategy_name, **options).repairs_off(piece.causes)}
        driver, _ = simulate(scenario, trace, make_strategy(strategy_name, **options), schedule, piece.causes,
                             drift_only=True)
        drift = check(driver.pairs, truth_ranges(trace, driver.history, driver.pairs), driver.counters())
        del driver
        collect_finished_runs()
        return drift, time.perf_counter() - started

    def explain(self, drift: Drift, pieces: list[Replay], results: list[tuple[Drift, float]]) -> dict:
        switchable = list(pieces[0].switchable) if pieces else []
        return {"drift_by_cause": attribute(drift, switchable, [replayed for replayed, _ in results]),
                "wall_seconds_attribution": round(sum(seconds for _, seconds in results), 3)}

    def rerun(self, scenario: Scenario, trace: Trace, strategy_name: str, schedule: list[Fault],
              causes: frozenset[str] = EVERY, tracer: Tracer | None = None) -> Execution:
        """The run again, exactly (the same seed gives the same run), with
        ``causes`` on and the tracer's operations followed."""
        options = scenario.strategy_options.get(strategy_name, {})
        options = {**options, **make_strategy(strategy_name, **options).repairs_off(causes)}
        driver, nemesis = simulate(scenario, trace, make_strategy(strategy_name, **options), schedule, causes,
                                   tracer=tracer)
        execution = Execution(history=driver.history, timeline=[], faults=nemesis.records(),
                              counters=driver.counters())
        del driver, nemesis
        collect_finished_runs()
        return execution

    def cost_target(self, strategy: Strategy) -> CostTarget:
        from sim.backends.model.cost import SimCostTarget
        return SimCostTarget(strategy, make_server(ServerConfig()).service)

    def bench(self, args: argparse.Namespace) -> int:
        from sim.backends.model.bench import main
        return main(args)
