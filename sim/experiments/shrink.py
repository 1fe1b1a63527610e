"""`countdrift shrink`: the smallest trace and fault schedule that still show
one strategy's anomaly, on the simulation.

The simulation is deterministic per seed, so a candidate (a trace, a
schedule, a clients count) either shows the anomaly or not, every time it
runs; shrinking is then a search, as Hypothesis shrinks a failing input
and as DEMi shrank fault-injected runs:

1. keep only the operations that touch one drifting user (the deliveries
   to their conversations, their reads and badges), when that still shows it;
2. remove operations, then faults, by delta debugging (Zeller's ddmin),
   each candidate one simulated run;
3. keep only the members a conversation's kept operations involve;
   shorten each fault and lower its numeric parameters; fewer clients;
   start the trace at its first operation.

What is kept is always the smallest candidate that showed the anomaly, so
an interrupted shrink still has a reproduction.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sim.backend import Backend, Execution
from sim.causes import EVERY
from sim.checker import check
from sim.experiments.explain import main_cause, user_shares
from sim.faults import SPECS, Fault
from sim.scenario import Scenario
from sim.seen import judge_values
from sim.story import touching
from sim.traffic import DELIVER, Trace, TraceError
from sim.truth import Memberships, truth_ranges

ANOMALIES = ("inconsistent", "over", "under", "wrong_badge")


def sizes(drift: dict[str, int], badges_wrong: int) -> dict[str, int]:
    """Each anomaly's size, from a run's drift (Drift.as_dict, or a record's
    ``drift``) and its wrong badges."""
    return {"inconsistent": drift["users_inconsistent"], "over": drift["overcount"] + drift["total_over"],
            "under": drift["undercount"] + drift["total_under"], "wrong_badge": badges_wrong}


def anomalies(trace: Trace, execution: Execution, only: str | None = None) -> dict:
    """Each anomaly's size in one run, and each user's share of it
    (``users``); with ``only``, what the others need is not computed (what
    users were shown is judged for wrong_badge alone)."""
    pairs = Memberships(trace)
    truth = truth_ranges(trace, execution.history, pairs)
    drift = check(pairs, truth, execution.counters)
    badges = only in (None, "wrong_badge")
    judged = judge_values(trace, execution.history, pairs) if badges else None
    wrong = judged.badge & (judged.error != 0) if badges else None
    counters = execution.counters
    sums = np.bincount(counters.entry_user, weights=counters.entry_value, minlength=trace.users).astype(np.int64)
    total = counters.total
    off = np.where(total > truth.user_hi, total - truth.user_hi, np.where(total < truth.user_lo,
                                                                          total - truth.user_lo, 0))
    users = {"inconsistent": np.abs(total - sums), "over": np.maximum(off, 0), "under": np.maximum(-off, 0)}
    if badges:
        users["wrong_badge"] = np.bincount(trace.user[judged.op[wrong]], minlength=trace.users)
    return {**sizes(drift.as_dict(), int(wrong.sum()) if badges else 0), "users": users}


def subtrace(trace: Trace, ops: np.ndarray, members: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Trace:
    """The trace of only ``ops`` (indexes, ascending), its users and
    conversations numbered anew in order; ``members``: which of a kept
    conversation's members to keep (default: all; never fewer than 2)."""
    ops = np.asarray(ops, np.int64)
    convs = np.unique(trace.conv[ops][trace.conv[ops] >= 0])
    offsets, all_members = trace.conv_offsets, trace.conv_members
    kept_members = []
    for conv in convs.tolist():
        everyone = all_members[offsets[conv]:offsets[conv + 1]]
        chosen = everyone if members is None else members(conv, everyone)
        kept_members.append(chosen if len(chosen) >= 2 else everyone)
    users = np.unique(np.concatenate([trace.user[ops].astype(np.int64), *[m.astype(np.int64) for m in kept_members]]))
    new_user = {int(user): index for index, user in enumerate(users.tolist())}
    new_conv = {int(conv): index for index, conv in enumerate(convs.tolist())}
    sizes = [len(m) for m in kept_members]
    kind = trace.kind[ops]
    deliver = kind == DELIVER
    message = np.full(len(ops), -1, np.int32)
    message[deliver] = np.arange(int(deliver.sum()), dtype=np.int32)
    shrunk = Trace(
        config=dataclasses.replace(trace.config, users=max(len(users), 2), messages=int(deliver.sum())),
        seed=trace.seed,
        conv_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        conv_members=np.array([new_user[int(u)] for m in kept_members for u in m.tolist()], np.int32),
        t=trace.t[ops].astype(np.float64), kind=kind.astype(np.int8),
        user=np.array([new_user[int(u)] for u in trace.user[ops].tolist()], np.int32),
        conv=np.array([new_conv[int(c)] if c >= 0 else -1 for c in trace.conv[ops].tolist()], np.int32),
        message=message)
    shrunk.check("a shrunk trace")
    return shrunk


@dataclass
class Candidate:
    """What one simulated run is given: a trace and a schedule, and the clients."""

    trace: Trace
    schedule: list[Fault]
    clients: int

    @property
    def size(self) -> tuple[int, int]:
        return len(self.trace.t), len(self.schedule)


def scenario_of(scenario: Scenario, strategy: str, candidate: Candidate) -> Scenario:
    """The scenario that runs ``candidate``: its traffic, faults and clients, the strategy alone."""
    return dataclasses.replace(scenario, faults=tuple(candidate.schedule), fault_rates=(),
                               clients=dataclasses.replace(scenario.clients, count=candidate.clients),
                               traffic=candidate.trace.config, strategies=(strategy,))


class Shrinker:
    """Searches for the smallest candidate that shows ``anomaly``; ``best``
    is always the smallest one seen showing it."""

    def __init__(self, backend: Backend, scenario: Scenario, strategy: str, anomaly: str, cause: str | None = None,
                 progress: Callable[["Shrinker"], None] | None = None) -> None:
        self.backend, self.scenario, self.strategy, self.anomaly = backend, scenario, strategy, anomaly
        self.cause = cause
        self.needs_faults = False   # the anomaly came from the faults: a candidate must keep one that makes it
        self.progress = progress
        self.runs = 0
        self.best: Candidate | None = None

    def scenario_for(self, candidate: Candidate) -> Scenario:
        return scenario_of(self.scenario, self.strategy, candidate)

    def size(self, candidate: Candidate, causes: frozenset[str] = EVERY, faults: bool = True) -> int:
        """The anomaly's size in the candidate's run, with ``causes`` on
        (and without its faults, unless ``faults``)."""
        self.runs += 1
        if not faults:
            candidate = Candidate(candidate.trace, [], candidate.clients)
        execution = self.backend.rerun(self.scenario_for(candidate), candidate.trace, self.strategy,
                                       candidate.schedule, causes)
        return anomalies(candidate.trace, execution, self.anomaly)[self.anomaly]

    def shows(self, candidate: Candidate) -> bool:
        """Whether the candidate shows the anomaly, by the same cause (with
        ``cause`` off there is less of it; for cut_in_half: some stays with
        every mechanism off; with ``needs_faults``, there is less of it
        without the faults); the smallest that does is kept."""
        size = self.size(candidate)
        found = size > 0
        if found and self.needs_faults:
            found = size > self.size(candidate, faults=False)
        if found and self.cause == "cut_in_half":
            found = self.size(candidate, frozenset()) > 0
        elif found and self.cause is not None:
            found = size > self.size(candidate, EVERY - {self.cause})
        if found and (self.best is None or candidate.size <= self.best.size):
            self.best = candidate
        if self.progress:
            self.progress(self)
        return found

    def shrink(self, trace: Trace, schedule: list[Fault], user: int, confirmed: bool = False) -> Candidate:
        """Shrink from the whole trace toward ``user``'s operations;
        ``confirmed``: the whole is known to show the anomaly."""
        start = Candidate(trace, schedule, self.scenario.clients.count)
        if not confirmed and not self.shows(start):
            return start
        focused = touching(trace, user)
        current = start
        if len(focused) and len(focused) < len(trace.t):
            current = self._built(lambda: Candidate(subtrace(trace, focused), schedule, current.clients)) or current
        # The world first (fewer faults, clients, shorter faults: cheap on a
        # long trace and they free the operations), then a window of time,
        # then operation by operation; again, as each step frees the others.
        for _ in range(2):
            current = self._faults(current)
            current = self._clients(current)
            current = self._fault_parameters(current)
            current = self._window(current)
            current = self._turns(current)
            current = self._operations(current)
        current = self._members(current)
        return self._shifted(current)

    def _window(self, current: Candidate) -> Candidate:
        """The shortest run of consecutive operations that shows it: the
        earliest end, then the latest start (each a binary search, checked)."""
        trace = current.trace
        n = len(trace.t)

        def make(start: int, end: int) -> Callable[[], Candidate]:
            return lambda: Candidate(subtrace(trace, np.arange(start, end)), current.schedule, current.clients)

        end = _first(1, n, lambda end: self._try(make(0, end)))
        # The start a whole turn of the clients at a time, so that every
        # operation kept stays with its client (they take them in turn).
        turn = current.clients
        start = turn * _last(0, (end - 1) // turn, lambda turns: self._try(make(turns * turn, end)))
        return (self._built(make(start, end)) if (start, end) != (0, n) else None) or current

    def _turns(self, current: Candidate) -> Candidate:
        """Whole turns of the clients removed (the clients take operations in
        turn: removing one deals every later one to another client, removing
        a turn deals none elsewhere)."""
        base, turn = current.trace, current.clients
        n = len(base.t)
        if turn < 2 or n <= turn:
            return current
        turns = [list(range(start, min(start + turn, n))) for start in range(0, n, turn)]

        def make(kept: list[int]) -> Candidate | None:
            ops = [op for index in kept for op in turns[index]]
            return Candidate(subtrace(base, np.array(ops)), current.schedule, current.clients) if ops else None

        kept = ddmin(list(range(len(turns))), lambda indexes: self._try(lambda: make(indexes)))
        return make(kept) if len(kept) < len(turns) else current

    def _operations(self, current: Candidate) -> Candidate:
        base = current.trace

        def make(kept: list[int]) -> Candidate | None:
            return Candidate(subtrace(base, np.array(kept)), current.schedule, current.clients) if kept else None

        kept = ddmin(list(range(len(base.t))), lambda ops: self._try(lambda: make(ops)))
        return make(kept) if kept != list(range(len(base.t))) else current

    def _faults(self, current: Candidate) -> Candidate:
        if not current.schedule:
            return current
        kept = ddmin(list(range(len(current.schedule))), lambda faults: self._try(
            lambda: Candidate(current.trace, [current.schedule[i] for i in faults], current.clients)),
            allow_empty=True)
        return Candidate(current.trace, [current.schedule[i] for i in kept], current.clients)

    def _members(self, current: Candidate) -> Candidate:
        trace = current.trace
        involved = np.unique(trace.user)

        def members(conv: int, everyone: np.ndarray) -> np.ndarray:
            return everyone[np.isin(everyone, involved)]

        candidate = Candidate(subtrace(trace, np.arange(len(trace.t)), members), current.schedule, current.clients)
        return candidate if candidate.trace.conv_members.size < trace.conv_members.size and self.shows(candidate) \
            else current

    def _fault_parameters(self, current: Candidate) -> Candidate:
        for index in range(len(current.schedule)):
            for name in ["duration", *[param.name for param in SPECS[current.schedule[index].kind].params]]:
                for _ in range(6):
                    fault = current.schedule[index]
                    lowered = _lowered(fault, name)
                    if lowered is None:
                        break
                    schedule = [*current.schedule[:index], lowered, *current.schedule[index + 1:]]
                    candidate = Candidate(current.trace, schedule, current.clients)
                    if not self.shows(candidate):
                        break
                    current = candidate
        return current

    def _clients(self, current: Candidate) -> Candidate:
        while current.clients > 1:
            candidate = Candidate(current.trace, current.schedule, current.clients // 2)
            if not self.shows(candidate):
                break
            current = candidate
        return current

    def _shifted(self, current: Candidate) -> Candidate:
        """The trace started at its first operation, the faults moved with it."""
        shift = float(current.trace.t[0])
        if shift <= 0:
            return current
        trace = dataclasses.replace(current.trace, t=current.trace.t - shift)
        schedule = [dataclasses.replace(fault, at=max(round(fault.at - shift, 6), 0.0)) for fault in current.schedule]
        candidate = Candidate(trace, schedule, current.clients)
        return candidate if self.shows(candidate) else current

    def _try(self, make: Callable[[], Candidate | None]) -> bool:
        return self._built(make) is not None

    def _built(self, make: Callable[[], Candidate | None]) -> Candidate | None:
        """The candidate ``make`` builds if it shows the anomaly (one it
        cannot build, a trace without a conversation, does not)."""
        try:
            candidate = make()
        except TraceError:
            return None
        return candidate if candidate is not None and self.shows(candidate) else None


def _first(low: int, high: int, shows: Callable[[int], bool]) -> int:
    """The least value in [low, high] for which ``shows`` holds, taking it
    to hold at ``high`` and to go on holding above the least (bisection)."""
    while low < high:
        middle = (low + high) // 2
        if shows(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _last(low: int, high: int, shows: Callable[[int], bool]) -> int:
    """The greatest value in [low, high] for which ``shows`` holds, taking
    it to hold at ``low`` and below the greatest (bisection)."""
    while low < high:
        middle = (low + high + 1) // 2
        if shows(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _lowered(fault: Fault, name: str) -> Fault | None:
    """The fault with ``name`` (its duration or a numeric parameter) halved
    toward its lower bound; None when it cannot go lower."""
    if name == "duration":
        value = fault.duration / 2
        return dataclasses.replace(fault, duration=round(value, 6)) if value >= 0.001 else None
    param = SPECS[fault.kind].param(name)
    if param.type not in (int, float):
        return None
    value = fault.param(name)
    low = max(param.low, 0)
    if value is None or value <= low:
        return None
    lowered = low + (value - low) / 2
    lowered = int(lowered) if param.type is int else round(lowered, 6)
    if lowered == value:
        return None
    return dataclasses.replace(fault, params={**fault.params, name: lowered})


def ddmin(items: list[int], test: Callable[[list[int]], bool], allow_empty: bool = False) -> list[int]:
    """The smallest subset of ``items`` found that still passes ``test``
    (delta debugging, Zeller and Hildebrandt 2002): drop chunks, then their
    complements, at a finer granularity each time nothing can go. ``test``
    of ``items`` itself is taken to pass."""
    if allow_empty and items and test([]):
        return []
    granularity = 2
    while len(items) >= 2:
        chunk = math.ceil(len(items) / granularity)
        subsets = [items[start:start + chunk] for start in range(0, len(items), chunk)]
        reduced = False
        for subset in subsets:
            if test(subset):
                items, granularity, reduced = subset, 2, True
                break
        if not reduced and len(subsets) > 2:
            for index in range(len(subsets)):
                complement = [item for other, subset in enumerate(subsets) if other != index for item in subset]
                if test(complement):
                    items, granularity, reduced = complement, max(granularity - 1, 2), True
                    break
        if not reduced:
            if granularity >= len(items):
                break
            granularity = min(len(items), granularity * 2)
    if len(items) == 1 and allow_empty and test([]):
        return []
    return items


@dataclass
class Shrunk:
    anomaly: str
    cause: str | None            # the mechanism kept (None: any)
    user: int                    # the user the shrink began from (of the whole trace)
    whole: Candidate
    best: Candidate
    runs: int
    interrupted: bool


class NoAnomaly(Exception):
    """The run does not show the anomaly asked for (or any): nothing to shrink."""


def find_anomaly(trace: Trace, execution: Execution, strategy: str, scenario: Scenario,
                 anomaly: str | None) -> tuple[str, np.ndarray]:
    """The anomaly to shrink (``anomaly``, or the first of ANOMALIES the run
    shows) and each user's share of it; NoAnomaly when there is none."""
    found = anomalies(trace, execution)
    shown = [name for name in ANOMALIES if found[name] > 0]
    if anomaly is None:
        if not shown:
            raise NoAnomaly(f"{strategy} shows no anomaly on {scenario.name} with seed {trace.seed} (no user "
                            f"inconsistent, over or under the truth, no wrong badge): nothing to shrink")
        anomaly = shown[0]
    elif anomaly not in shown:
        raise NoAnomaly(f"{strategy} shows no {anomaly} anomaly on {scenario.name} with seed {trace.seed}"
                        f"{' (it shows ' + ', '.join(shown) + ')' if shown else ' (nor any other)'}: nothing to shrink")
    return anomaly, found["users"][anomaly]


def shrink(backend: Backend, scenario: Scenario, trace: Trace, strategy: str, schedule: list[Fault],
           anomaly: str | None = None, progress: Callable[[Shrinker], None] | None = None) -> Shrunk:
    """Shrink ``strategy``'s anomaly on the trace and schedule, keeping the
    mechanism behind the worst user's share of it (drift attribution, per
    user: sim/experiments/explain.py); Ctrl-C stops the search and keeps the
    smallest reproduction found so far."""
    execution = backend.rerun(scenario, trace, strategy, schedule)
    anomaly, per_user = find_anomaly(trace, execution, strategy, scenario, anomaly)
    user = int(np.argmax(per_user))
    needs_faults = False
    if schedule:   # an anomaly the faults made (naive cut in half by a power loss): its worst victim, and a fault kept
        calm = backend.rerun(dataclasses.replace(scenario, faults=(), fault_rates=()), trace, strategy, [])
        made = per_user - anomalies(trace, calm, anomaly)["users"][anomaly]
        if made.max() > 0:
            user, needs_faults = int(np.argmax(made)), True
    value = int(per_user[user])
    shares = user_shares(backend, scenario, trace, strategy, schedule, execution.history, value,
                         lambda again: int(anomalies(trace, again, anomaly)["users"][anomaly][user]))
    cause = main_cause({cause: share for cause, share in shares.items() if share > 0})
    shrinker = Shrinker(backend, scenario, strategy, anomaly, cause, progress)
    shrinker.needs_faults = needs_faults
    whole = Candidate(trace, list(schedule), scenario.clients.count)
    shrinker.best = whole
    interrupted = False
    try:
        shrinker.shrink(trace, list(schedule), user, confirmed=True)
    except KeyboardInterrupt:
        interrupted = True
    return Shrunk(anomaly, cause, user, whole, shrinker.best, shrinker.runs, interrupted)


def shown_in(record: dict, anomaly: str) -> bool:
    """Whether a run's record (results.json) shows ``anomaly``: how
    `--confirm-real` judges a real run of the shrunk scenario."""
    return sizes(record["drift"], (record.get("seen") or {}).get("badges_wrong", 0))[anomaly] > 0
