"""`countdrift check-strategy`: the conformance checks every built-in
strategy passes, for a strategy of one's own.

- **options**: its defaults construct it and lie within their bounds; a
  number out of its bounds, a value of the wrong type and an unknown
  option are each refused (StrategyOptionError);
- **exact without faults**: over ``seeds`` seeds of a small chat (1:1 and
  groups up to 40 members, reads, badge fetches, logins) on the
  simulation, no drift at all and no wrong badge or opened count (a
  strategy whose total catches up after the fact, ``total_lags``: exact
  once its background work is done; its badges in between are not held);
- **the checker reads its counters**: in those runs, no value that is not
  an integer and no key the checker does not know (stray);
- **one Cluster slot per user**: every command, script and transaction its
  operations send touches one slot, the keys it shares between users
  (``shared_keys``) aside, unless it says otherwise (``cross_slot``);
- **the same on redis-server**: a sequence of its operations (deliveries to
  a group and to one user, a retried delivery, reads, badges, a login, its
  background passes) gives the same replies and leaves the same keyspace on
  the simulation and on a redis-server the harness starts.

One verdict line per check; any failure: exit 1.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sim import backends
from sim.backend import BackendRefused
from sim.backends import REAL, SIMULATION
from sim.client import in_strategy
from sim.cluster import key_slot, request_keys
from sim.commands import Pipeline, Script, Transaction, run_now
from sim.differential import Both, Mismatch
from sim.errors import StrategyError
from sim.runner import run_scenario
from sim.scenario import parse
from strategies import STRATEGIES
from strategies.base import Strategy, StrategyOptionError

CHECK_TRAFFIC = """
name = "check"
seed = {seed}

[traffic]
users = 200
messages = 1500
message_rate = 1000.0
groups = 10
max_group_size = 40
include_max_group = true
read_probability = 0.9
read_delay_mean_s = 0.1
badge_probability = 0.3
logins_per_s = 50.0

[clients]
count = 8

[run]
timeline_points = 5
"""
# Conversations of the differential sequence: 0-6 unused, 7 a group of three, 8 of four, 9 of two.
MEMBERS = [[] for _ in range(7)] + [[0, 1, 2], [0, 1, 2, 3], [0, 2]]
USERS = 4


@dataclass(frozen=True)
class Verdict:
    check: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.check}: {self.detail}"


def check_options(name: str) -> Verdict:
    cls = STRATEGIES[name]
    check = "options"
    try:
        strategy = cls()
    except StrategyOptionError as error:
        return Verdict(check, False, f"its defaults are refused: {error}")
    accepted = []
    for option, default in strategy.options.items():
        if type(default) is bool:
            tries = [("a string", "yes")]
        elif type(default) is str:
            tries = [("a number", 1), ("a value not among its choices", default + "-unknown")]
        else:
            low, high = cls.bounds.get(option, (0, 1e9))
            number = type(default)
            tries = [("a string", "1"), ("above its bounds", number(high) + 1), ("below its bounds", number(low) - 1)]
        for what, value in tries:
            try:
                cls(**{option: value})
            except StrategyOptionError:
                continue
            accepted.append(f"'{option}' = {value!r} ({what}) was accepted")
    try:
        cls(no_such_option=1)
        accepted.append("an unknown option was accepted")
    except StrategyOptionError:
        pass
    if accepted:
        return Verdict(check, False, "; ".join(accepted[:3]))
    return Verdict(check, True, f"{len(strategy.options)} options, each refused out of bounds and of the wrong type")


def check_runs(name: str, seeds: int, folder: Path) -> list[Verdict]:
    """Exact without faults, and the checker reading its counters, over ``seeds`` simulated runs."""
    lags = STRATEGIES[name].total_lags
    drifted, wrong_shown, unreadable = [], [], []
    badges = 0
    for seed in range(1, seeds + 1):
        scenario = parse(folder / "check.toml", CHECK_TRAFFIC.format(seed=seed))
        run = run_scenario(scenario, [name], explain=False)["runs"][0]
        drift = {key: value for key, value in run["drift"].items()
                 if key not in ("users", "hidden_max", "bad_values", "stray_keys") and value}
        if drift:
            drifted.append(f"seed {seed}: {', '.join(f'{key} {value}' for key, value in drift.items())}")
        seen = run["seen"]
        badges += seen["badges"]
        if not lags and (seen["badges_wrong"] or seen["opens_wrong"]):
            wrong_shown.append(f"seed {seed}: {seen['badges_wrong']} wrong badges, {seen['opens_wrong']} "
                               f"wrong opened counts")
        if run["drift"]["bad_values"] or run["drift"]["stray_keys"]:
            unreadable.append(f"seed {seed}: {run['drift']['bad_values']} values not integers, "
                              f"{run['drift']['stray_keys']} stray keys")
    exact = "exact without faults"
    judged = "no drift" if lags else "no drift, no wrong badge or opened count"
    verdicts = [Verdict(exact, False, "; ".join((drifted + wrong_shown)[:3]))
                if drifted or wrong_shown else
                Verdict(exact, True, f"{judged} over {seeds} seeds ({badges:,} badges judged)"
                                     + (" (its total lags: badges in between not held)" if lags else ""))]
    verdicts.append(Verdict("the checker reads its counters", not unreadable,
                            "; ".join(unreadable[:3]) if unreadable else
                            f"every user's counters read back as integers, no stray key, over {seeds} seeds"))
    return verdicts


def sequence(strategy: Strategy) -> list[tuple[str, Callable]]:
    """The differential sequence: (what, a maker of the operation) for
    each step, given the strategy as two application processes (each
    step's maker takes the processes' views) and its background passes."""
    views = [strategy.in_process(process, 2) for process in range(2)]
    jobs = [job for view in {id(view): view for view in views}.values() for job in (*view.jobs(),
                                                                                      *view.shared_jobs())]
    passes = [(f"a pass of {job.name}", lambda job=job: job.step()) for job in jobs]
    return [
        ("a delivery to a group", lambda: views[0].deliver(1, 7, 0, [1, 2])),
        ("a delivery to one user", lambda: views[1].deliver(2, 7, 0, [1])),
        ("a delivery to a group", lambda: views[0].deliver(3, 8, 0, [1, 2, 3])),
        ("a badge fetch", lambda: views[1].fetch_badge(1)),
        *passes,
        ("a read", lambda: views[0].open_conversation(1, 7)),
        ("a retried delivery", lambda: views[1].deliver(3, 8, 0, [1, 2, 3])),
        ("a read of nothing", lambda: views[0].open_conversation(2, 9)),
        ("a login", lambda: views[1].login(2)),
        *passes,
        ("a read", lambda: views[1].open_conversation(3, 8)),
        ("a badge fetch", lambda: views[0].fetch_badge(3)),
        *passes, *passes,
        ("the checker's read", lambda: strategy.counters(1)),
        ("the checker's read", lambda: strategy.counters(3)),
    ]


def prepared(name: str) -> Strategy:
    strategy = STRATEGIES[name]()
    strategy.prepare(MEMBERS, USERS)
    return strategy


def check_slots(name: str) -> Verdict:
    """Every command, script and transaction the sequence sends touches one slot (shared keys aside)."""
    check = "one Cluster slot per user"
    strategy = prepared(name)
    if strategy.cross_slot:
        return Verdict(check, True, "not held: the strategy says its keys span slots (cross_slot)")
    shared = set(strategy.shared_keys)
    crossing: list[str] = []
    with backends.get(SIMULATION).cost_target(strategy) as server:

        def execute(request):
            for part in _atomic_parts(request):
                keys = [key for key in request_keys(part) if key not in shared]
                if len({key_slot(key) for key in keys}) > 1 and len(crossing) < 3:
                    crossing.append(f"{_describe(part)} touches {', '.join(map(str, keys[:4]))}")
            return server.execute(request)

        for _, make in sequence(strategy):
            run_now(make(), execute)
    if crossing:
        return Verdict(check, False, "; ".join(crossing) + " (keys of one user need one hash tag, as "
                                     "strategies.keys gives them: {u42})")
    return Verdict(check, True, "every command, script and transaction touches one slot")


def check_differential(name: str) -> Verdict:
    """The sequence on the simulation and on a redis-server of the harness's own."""
    check = "the same on redis-server"
    strategies = [prepared(name), prepared(name)]   # one each: a process's memory is its side's
    try:
        real = backends.get(REAL).cost_target(strategies[1])
    except BackendRefused as refused:
        return Verdict(check, False, f"{refused} (scripts/setup installs it; or pass --sim-only)")
    with backends.get(SIMULATION).cost_target(strategies[0]) as sim, real:
        real.reset()   # an empty keyspace, the strategy's code loaded
        both = Both(sim.execute, real.execute)
        steps = [sequence(strategy) for strategy in strategies]
        for index, ((what, make), (_, other)) in enumerate(zip(*steps)):
            try:
                both.run(make, other)
            except Mismatch as mismatch:
                return Verdict(check, False, f"step {index + 1} ({what}): {mismatch}")
        try:
            both.assert_same_state()
        except Mismatch as mismatch:
            return Verdict(check, False, f"after {len(steps[0])} steps: {mismatch}")
    return Verdict(check, True, f"{len(steps[0])} steps: the same replies and the same keys")


def check_strategy(name: str, seeds: int = 20, sim_only: bool = False,
                   progress: Callable[[Verdict], None] = lambda verdict: None) -> list[Verdict]:
    verdicts = []

    def record(verdict: Verdict) -> None:
        verdicts.append(verdict)
        progress(verdict)

    cls = STRATEGIES[name]
    record(_guarded("options", cls, lambda: check_options(name)))
    with tempfile.TemporaryDirectory(prefix="countdrift-check-") as folder:
        runs = _guarded("exact without faults", cls, lambda: check_runs(name, seeds, Path(folder)))
        for verdict in runs if isinstance(runs, list) else [runs]:
            record(verdict)
    record(_guarded("one Cluster slot per user", cls, lambda: check_slots(name)))
    if not sim_only:
        record(_guarded("the same on redis-server", cls, lambda: check_differential(name)))
    return verdicts


def _guarded(check: str, cls: type[Strategy], run: Callable):
    """A check's verdict(s); a bug of the strategy's (its code raised, or
    the run ended on it) fails the check, naming the place."""
    try:
        return run()
    except (StrategyError, StrategyOptionError) as error:
        return Verdict(check, False, str(error))
    except Exception as bug:   # noqa: BLE001 - the strategy's own code: name where, or let ours through
        place = in_strategy(bug, cls)
        if place is None:
            raise
        return Verdict(check, False, f"raised {type(bug).__name__}: {str(bug)[:200]} at {place}")


def _atomic_parts(request) -> list:
    """What must sit in one slot: each command and script, each transaction whole."""
    if type(request) is Pipeline:
        return [part for item in request.commands for part in _atomic_parts(item)]
    return [request]


def _describe(request) -> str:
    if type(request) is Script:
        return f"script {request.script.place()}"
    if type(request) is Transaction:
        return "a transaction"
    return f"{request[0]}"
