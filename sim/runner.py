"""One `countdrift run`: one trace, replayed through each strategy in turn,
on one backend."""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import queue
import resource
import signal
import sys
import time
from typing import Any, Callable, Iterable, TextIO

import numpy as np
from tqdm import tqdm

from sim import __version__, backends, seen
from sim.backend import Backend, BackendRefused, Execution, Progress
from sim.checker import Drift, check, drift_by_shard
from sim.client import in_strategy
from sim.cluster import SlotMap, user_shards
from sim.errors import StrategyError
from sim.faults import Fault, draw_schedule
from sim.history import History
from sim.record import run_record
from sim.report.results import SCHEMA_VERSION
from sim.scenario import Scenario, ScenarioError
from sim.seen import judge_values
from sim.traffic import Trace, generate
from sim.truth import Memberships, truth_ranges
from strategies import make_strategy
from strategies.base import Strategy

ProgressFactory = Callable[[str, Trace], Progress]


def peak_rss_mib() -> float:
    """The largest resident set of this process and of the worker processes
    of a parallel run (`--jobs`)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024.0


def return_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim;
    elsewhere nothing). A forked worker starts with its parent's resident
    pages: generating review's trace left about 110 MiB free but resident
    here, and every worker carried it (lua_idempotent's review_faults
    pieces peaked at 1,054 MiB forked, 932 MiB in a fresh process)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def stderr_progress(stream: TextIO = sys.stderr) -> ProgressFactory:
    """A progress bar per strategy on long runs: time replayed, operations
    done, ETA (tqdm)."""

    def factory(strategy: str, trace: Trace) -> Progress:
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


MAX_DRAWN_FAULTS = 10_000


def schedule_for(scenario: Scenario, trace: Trace) -> list[Fault]:
    """The scenario's explicit faults plus those drawn from its rates."""
    span = float(trace.t[-1]) if len(trace.t) else 0.0
    expected = sum(rate.per_minute for rate in scenario.fault_rates) * span / 60.0
    if expected > MAX_DRAWN_FAULTS:
        raise ScenarioError(f"{scenario.path}: key 'fault_rates' would draw about {expected:,.0f} faults over the "
                            f"trace's {span:,.0f} s; at most {MAX_DRAWN_FAULTS:,}: lower per_minute")
    drawn = draw_schedule(list(scenario.fault_rates), span, trace.seed)
    return sorted([*scenario.faults, *drawn], key=lambda fault: (fault.at, fault.kind))


def final_slots(primaries: int, faults: list[dict]) -> SlotMap:
    """The slot map as the run left it: the even split, with the slots of
    every slot migration that ended given to its target."""
    slots = SlotMap.even(primaries)
    for fault in faults:
        effects = fault["effects"]
        if fault["kind"] == "slot_migration" and effects["ended_at"] is not None and effects["slots"]:
            for slot in effects["slots"].split(","):
                slots.give(int(slot), effects["to_shard"])
    return slots


def run_strategy(backend: Backend, scenario: Scenario, trace: Trace, name: str, schedule: list[Fault],
                 progress: ProgressFactory | None = None, explain: bool = True) -> tuple[dict, History]:
    """Deploy, run, read back, stop; then the run's record (with what only
    the backend can add, such as the simulation's drift by cause, unless
    ``explain`` is off) and its history, as stored."""
    record, drift, pieces, history = _run(backend, scenario, trace, name, schedule, progress, explain)
    if explain:
        results = [backend.replay(scenario, trace, name, schedule, piece) for piece in pieces]
        record.update(backend.explain(drift, pieces, results))
    return record, history


def _run(backend: Backend, scenario: Scenario, trace: Trace, name: str, schedule: list[Fault],
         progress: ProgressFactory | None, explain: bool) -> tuple[dict, Drift, list, History]:
    """The run's record and drift, the pieces of work that explaining it
    takes (none unless ``explain``), and its history as stored."""
    strategy = make_strategy(name, **scenario.strategy_options.get(name, {}))
    try:
        with backend.deploy(scenario, schedule) as deployment:
            execution = deployment.run(strategy, trace, progress(name, trace) if progress else None)
    except Exception as bug:   # out of the strategy's code beyond an operation (its counters, its jobs)?
        place = in_strategy(bug, type(strategy))
        if place is None or isinstance(bug, StrategyError):
            raise
        raise StrategyError(f"strategy {name} raised {type(bug).__name__}: {str(bug)[:200]} at {place}") from bug
    record, drift, stored = judge(scenario, trace, strategy, execution)
    record["throughput_basis"] = scenario.throughput_basis(backend.deterministic)
    return record, drift, backend.explanation(scenario, name, schedule, execution) if explain else [], stored


def judge(scenario: Scenario, trace: Trace, strategy: Strategy, execution: Execution) -> tuple[dict, Drift, History]:
    """The run's record and drift, and its history as stored (what users
    were shown is judged on it, so that `countdrift judge` finds the same).
    (A function of its own so that the truth and its indexes are freed
    before the simulation's replays explain it.)"""
    pairs = Memberships(trace)
    history = execution.history
    truth = truth_ranges(trace, history, pairs)
    drift = check(pairs, truth, execution.counters)
    record = run_record(scenario, trace, strategy, execution, drift)
    stored = history.rounded(trace.t)
    shown = judge_values(trace, stored, pairs)
    record["seen"] = seen.figures(trace, stored, shown, record["faults"])
    record["drifted_users"] = seen.drifted_users(trace, truth, execution.counters, shown)
    if scenario.server.topology == "cluster":   # which shards' users drifted (a fault strikes one)
        shards = user_shards(trace.users, final_slots(scenario.server.cluster_primaries, execution.faults))
        record["shard_drift"] = drift_by_shard(truth, execution.counters, shards)
    if not np.isnan(history.applied_at).all():
        # The same run's drift judged only from what the clients saw, as on
        # a real server (countdrift fidelity compares it, and judges users'
        # values that way itself: seen.client_view).
        client_view = truth_ranges(trace, history, pairs, exact=False)
        record["drift_client_view"] = check(pairs, client_view, execution.counters).as_dict()
    return record, drift, stored


# What the worker processes of a parallel run inherit (forked): the run's
# backend, scenario, trace and schedule, so that only a strategy's name (and
# a piece of its explanation) goes to a worker and only its results come back.
_inherited: tuple | None = None


def _quiet_worker() -> None:
    """A worker leaves interrupts to the parent (which stops the pool) and
    ends at the pool's SIGTERM without the command's interrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_inherited(name: str, explain: bool) -> tuple[dict, Drift, list, History]:
    target, scenario, trace, schedule = _inherited
    return _run(target, scenario, trace, name, schedule, None, explain)


def _replay_inherited(name: str, piece: Any) -> Any:
    target, scenario, trace, schedule = _inherited
    return target.replay(scenario, trace, name, schedule, piece)


def run_strategies(target: Backend, scenario: Scenario, trace: Trace, names: list[str], schedule: list[Fault],
                   progress: ProgressFactory | None = None, explain: bool = True,
                   jobs: int = 1) -> list[tuple[dict, History]]:
    """Each strategy's record and history, in the order named; with ``jobs`` > 1 (a
    backend whose runs share nothing) that many processes at once, each
    forked for one task: a strategy's run, or, once it is done, one piece
    of its explanation (a replay of the attribution), so that the last
    strategies' replays are shared out too (a single strategy's as well).
    No progress bars then. A run's record is the same either way: a run
    starts from nothing that another one left."""
    global _inherited
    if jobs <= 1 or (len(names) <= 1 and not (target.parallel_runs and explain)):   # nothing to share out
        return [run_strategy(target, scenario, trace, name, schedule, progress, explain) for name in names]
    if not target.parallel_runs:
        raise BackendRefused(f"the {target.name} backend runs one strategy at a time")
    _inherited = (target, scenario, trace, schedule)
    return_free_memory()
    try:
        # A fresh process per task: none inherits another's freed memory.
        with multiprocessing.get_context("fork").Pool(jobs, _quiet_worker, maxtasksperchild=1) as pool:
            done: queue.SimpleQueue = queue.SimpleQueue()
            for index, name in enumerate(names):
                pool.apply_async(_run_inherited, (name, explain), callback=lambda ran, i=index: done.put((i, ran)),
                                 error_callback=lambda error: done.put((-1, error)))
            runs: list = [None] * len(names)
            replays: list = [None] * len(names)
            for _ in names:
                index, ran = done.get()
                if index < 0:
                    raise ran
                runs[index] = ran
                replays[index] = [pool.apply_async(_replay_inherited, (names[index], piece)) for piece in ran[2]]
            records = []
            for (record, drift, pieces, history), pending in zip(runs, replays):
                if explain:
                    record.update(target.explain(drift, pieces, [result.get() for result in pending]))
                records.append((record, history))
            pool.close()
            pool.join()
            return records
    finally:
        _inherited = None


def run_scenario(scenario: Scenario, strategies: Iterable[str] | None = None, trace: Trace | None = None,
                 progress: ProgressFactory | None = None, backend: str = backends.DEFAULT, explain: bool = True,
                 jobs: int = 1, histories: dict[str, History] | None = None) -> dict:
    """Run the strategies (default: the scenario's) on a trace (default: the
    scenario's, generated with its seed), on the named backend, ``jobs`` at
    once (see run_strategies); each one's history, as stored, into
    ``histories`` when given."""
    started = time.perf_counter()
    target = backends.get(backend)
    refusal = target.refuse(scenario)
    if refusal:
        raise BackendRefused(f"{scenario.path}: the {backend} backend cannot run this scenario: {refusal}")
    if trace is None:
        trace = generate(scenario.traffic, scenario.seed)
    schedule = schedule_for(scenario, trace)
    ran = run_strategies(target, scenario, trace, list(strategies or scenario.strategies), schedule, progress,
                         explain, jobs)
    if histories is not None:
        histories.update((record["strategy"], history) for record, history in ran)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "backend": backend,
        "deterministic": target.deterministic,
        "throughput_basis": scenario.throughput_basis(target.deterministic),
        "seed": trace.seed,
        "scenario": scenario.to_dict(),
        "trace": trace.summary(),
        "runs": [record for record, _ in ran],
        "wall_seconds": round(time.perf_counter() - started, 3),
        "wall_peak_rss_mib": round(peak_rss_mib(), 1),
    }
