"""`countdrift explain`: the story of one drifting user of a stored run.

Every operation that touched the user, in time order, with its outcome
and what it showed; the faults around them; and the cause of the user's
drift. A run of a deterministic backend (the simulation) is run again,
exactly, with a tracer (sim/story.py): each request and its reply, and the
user's counters beside the truth after each step; then once more per
mechanism of drift attribution (sim/causes.py), so that the cause is this
user's own share, not the run's. A real run cannot be run again the same
way: its story comes from its stored history (times, outcomes, shown
values), and its cause is inferred from the faults that struck and the
user's outcomes, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sim import backends
from sim.backend import Execution
from sim.causes import ORDER, relevant, steps
from sim.checker import Counters
from sim.errors import UsageError
from sim.faults import SPECS
from sim.history import FAIL, OK, OUTCOME_NAMES, UNKNOWN, History
from sim.nemesis import promotes
from sim.report.stored_run import StoredRun
from sim.runner import schedule_for
from sim.scenario import Scenario
from sim.story import Row, Story, Tracer, touching
from sim.traffic import DELIVER, KIND_NAMES, Trace
from sim.truth import Memberships, truth_ranges
from strategies import make_strategy


@dataclass(frozen=True)
class Ending:
    """A user's counters at the end of a run, beside the truth."""

    total: int
    conversations_sum: int
    lo: int
    hi: int

    @property
    def drift(self) -> int:
        return self.total - self.hi if self.total > self.hi else self.total - self.lo if self.total < self.lo else 0


def ending(trace: Trace, history: History, counters: Counters, user: int) -> Ending:
    truth = truth_ranges(trace, history, Memberships(trace))
    own = counters.entry_user == user
    return Ending(int(counters.total[user]), int(counters.entry_value[own].sum()),
                  int(truth.user_lo[user]), int(truth.user_hi[user]))


def pick_strategy(stored: StoredRun, strategy: str | None) -> str:
    names = [run["strategy"] for run in stored.results["runs"]]
    if strategy is not None:
        if strategy not in names:
            raise UsageError(f"--strategy {strategy}: not in this run; it ran {', '.join(names)}")
        return strategy
    worst = max(stored.results["runs"], key=lambda run: (run["drift"]["abs_drift_sum"],
                                                         run["drift"]["users_inconsistent"]))
    return worst["strategy"]


def explain(stored: StoredRun, strategy: str | None = None, user: int | None = None) -> Story:
    """The story of ``user`` (default: the one whose total drifted most) under ``strategy``
    (default: the one that drifted most)."""
    name = pick_strategy(stored, strategy)
    record, trace = stored.record(name), stored.trace
    if user is not None and not 0 <= user < trace.users:
        raise UsageError(f"--user {user}: not a user of this run; its users are 0 to {trace.users - 1}")
    drifted = record.get("drifted_users") or []
    document = stored.results
    if document.get("deterministic") and backends.get(document["backend"]).deterministic:
        return _replayed(stored, name, user, drifted)
    if user is None:
        if not drifted:
            raise UsageError(f"{stored.folder}: {name}'s total drifted for no user in this run "
                             f"(inconsistent users: {record['drift']['users_inconsistent']}); nothing to explain")
        user = drifted[0]["user"]
    found = next((entry for entry in drifted if entry["user"] == user), None)
    if found is None:
        raise UsageError(f"--user {user}: not among the {len(drifted)} users whose total drifted in this real run "
                         f"(their counters are all it kept); pick one of them, or a simulated run")
    end = Ending(found["total"], found["conversations_sum"], found["truth_lo"], found["truth_hi"])
    rows = _rows(trace, stored.histories[name], user)
    strategy_holds = make_strategy(name, **document["scenario"]["strategy_options"].get(name, {}))
    cause = inferred_cause(rows, record["faults"], end.drift, strategy_holds.holds_lock, strategy_holds.buffers)
    return Story(name, user, document["scenario"]["name"], document["seed"], document["backend"], end.total,
                 end.conversations_sum, (end.lo, end.hi), end.drift, record["faults"], rows, cause, {},
                 replayed=False,
                 notes=["a real run cannot be run again the same way: its requests and replies, and its counters "
                        "between steps, were not kept; the cause is inferred from the faults that struck and the "
                        "user's outcomes"])


def _rows(trace: Trace, history: History, user: int, ops: np.ndarray | None = None) -> list[Row]:
    ops = touching(trace, user) if ops is None else ops
    order = ops[np.lexsort((ops, history.invoke[ops]))]
    rows = []
    for op in order.tolist():
        value = history.value[op]
        rows.append(Row(op, KIND_NAMES[trace.kind[op]], int(trace.conv[op]), int(trace.user[op]),
                        float(history.invoke[op]), float(history.complete[op]),
                        OUTCOME_NAMES.get(int(history.outcome[op]), "not run"),
                        None if value != value else int(value)))
    return rows


def _replayed(stored: StoredRun, name: str, user: int | None, drifted: list[dict]) -> Story:
    document, trace = stored.results, stored.trace
    scenario = Scenario.from_dict(document["scenario"])
    schedule = schedule_for(scenario, trace)
    backend = backends.get(document["backend"])
    notes = []
    if user is None:
        if drifted:
            user = drifted[0]["user"]
        else:   # the totals are right, the sums are not: the most inconsistent user
            counters = backend.rerun(scenario, trace, name, schedule).counters
            sums = np.bincount(counters.entry_user, weights=counters.entry_value, minlength=trace.users)
            gap = np.abs(counters.total - sums.astype(np.int64))
            if not gap.any():
                raise UsageError(f"{stored.folder}: {name} left no user drifted or inconsistent in this run; "
                                 f"nothing to explain")
            user = int(np.argmax(gap))
    ops = touching(trace, user)
    if len(ops) < len(trace.t):
        others = len(trace.t) - len(ops)
        notes.append(f"{others:,} other operation{'s' if others != 1 else ''} of the run touched other users only")
    tracer = Tracer(user, ops)
    execution = backend.rerun(scenario, trace, name, schedule, tracer=tracer)
    history = execution.history
    stored_history = stored.histories[name]
    if not np.array_equal(stored_history.outcome, history.outcome):
        notes.append("this run again differs from the stored one (another version of countdrift wrote it?): "
                     "the story is of the run again")
    end = ending(trace, history, execution.counters, user)
    rows = _rows(trace, history, user, ops)
    pairs = Memberships(trace)
    for row in rows:
        step = tracer.steps.get(row.op)
        if step is None:
            continue
        row.client, row.exchanges = step.client, step.exchanges
        if step.counters is not None:
            counts, total = step.counters
            row.counters = (int(total), int(sum(counts.values())))
            row.conv_count = counts.get(row.conv) if row.conv >= 0 else None
        truth = truth_ranges(trace, history, pairs, at=row.completed)
        row.truth = (int(truth.user_lo[user]), int(truth.user_hi[user]))
    # The user's drift, or, where the total is right but not the sum of the counts, that gap.
    gap = end.drift == 0

    def measure(again: Execution) -> int:
        found = ending(trace, again.history, again.counters, user)
        return found.total - found.conversations_sum if gap else found.drift

    value = end.total - end.conversations_sum if gap else end.drift
    shares = user_shares(backend, scenario, trace, name, schedule, history, value, measure)
    cause = main_cause(shares) or "none"
    return Story(name, user, scenario.name, trace.seed, document["backend"], end.total, end.conversations_sum,
                 (end.lo, end.hi), end.drift, execution.faults, rows, cause, shares, replayed=True, notes=notes)


def user_shares(backend, scenario: Scenario, trace: Trace, name: str, schedule: list, history: History,
                value: int, measure: Callable[[Execution], int]) -> dict[str, int]:
    """A user's ``measure`` of a run (``value`` in the run itself) split by
    cause, as sim/causes.py splits a run's drift: the run again with none of
    the mechanisms on, then one more at a time; the non-zero shares."""
    strategy = make_strategy(name, **scenario.strategy_options.get(name, {}))
    outcomes = history.outcomes()
    switchable = relevant(strategy, schedule, outcomes["fail"] + outcomes["unknown"], history.ambiguous,
                          promotes(scenario.sentinel, schedule))
    values = [measure(backend.rerun(scenario, trace, name, schedule, causes=causes))
              for causes in steps(switchable)] + [value]
    shares = {cause: 0 for cause in ORDER}
    previous = 0
    for cause, now in zip(["cut_in_half", *switchable], values):
        shares[cause] = now - previous
        previous = now
    return {cause: share for cause, share in shares.items() if share}


def main_cause(shares: dict[str, int]) -> str | None:
    """The mechanism with the largest share (None: no share)."""
    return max(shares, key=lambda cause: abs(shares[cause])) if shares else None


def inferred_cause(rows: list[Row], faults: list[dict], drift: int, holds_lock: bool, buffers: bool) -> str:
    """The mechanism most likely behind a real run's drift for one user,
    from what was kept: the faults that struck, and the outcomes of the
    user's operations around them."""
    struck = [fault for fault in faults if fault["effects"].get("struck_at") is not None]
    deliveries = [row for row in rows if row.kind == KIND_NAMES[DELIVER]]
    if drift > 0 and any(row.outcome == OUTCOME_NAMES[UNKNOWN] for row in deliveries):
        return "retry_applied_twice"
    candidates: dict[str, int] = {}
    for fault in struck:
        spec = SPECS[fault["kind"]]
        cause = ("lost_unfsynced" if spec.rolls_back == "unfsynced" else
                 "lost_on_failover" if spec.promotes else
                 "lost_in_split_brain" if spec.strands_clients else
                 "two_lock_holders" if spec.pauses_clients and holds_lock else
                 "lost_in_buffer" if spec.crashes_processes and buffers else None)
        if cause is None:
            continue
        start = fault["effects"]["struck_at"]
        end = fault["effects"].get("ended_at") or start + fault["duration"]
        near = sum(1 for row in deliveries if row.outcome == OUTCOME_NAMES[OK] and start - 1.0 <= row.completed <= end)
        candidates[cause] = candidates.get(cause, 0) + near + 1
    if candidates:
        return max(candidates, key=candidates.get)
    if drift < 0 and any(row.outcome == OUTCOME_NAMES[FAIL] for row in deliveries):
        return "gave_up"
    return "cut_in_half"
