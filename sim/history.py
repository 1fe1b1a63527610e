"""What happened to each operation of the trace, as Jepsen records it.

Each operation is invoked once (its first request leaves the client) and
completes once (its last reply arrives or the client gives up), with one
outcome: ok, fail (the server said no: it did not apply, or not all of it)
or unknown (a reply was lost: it may or may not have applied).

An operation that shows the user something records it (``value``): the
badge a push carried (a badge fetch's total), the count an opened
conversation showed before it was cleared; sim/seen.py judges them.

Where a backend knows more, the history keeps it for the truth
(sim/truth.py): when the server applied an operation's writes
(``applied_at``: the simulation knows it for every request, acknowledged or
not), whether an operation spread its writes over several requests
(``spread``: it has no single moment of effect), and whether a request of it
timed out (``timed_out``): where the backend does not know when requests
ran (``commits_known`` false: real servers), such a request may still run
after its operation completed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

NOT_RUN, OK, FAIL, UNKNOWN = 0, 1, 2, 3
NONE = np.iinfo(np.int64).min   # a moment or a value that is not there, in the columns
OUTCOME_NAMES = {OK: "ok", FAIL: "fail", UNKNOWN: "unknown"}


class History:
    def __init__(self, operations: int) -> None:
        self.invoke = np.full(operations, np.nan)
        self.complete = np.full(operations, np.nan)
        self.outcome = np.zeros(operations, np.int8)
        self.applied_at = np.full(operations, np.nan)   # the server applied its first write request
        self.spread = np.zeros(operations, bool)        # an attempt sent more than one write request
        self.timed_out = np.zeros(operations, bool)     # a request of it timed out
        self.value = np.full(operations, np.nan)        # what it showed the user (NaN: nothing)
        self.commits_known = False                      # applied_at is known for every write that ran
        self.retries = 0       # re-runs after an unknown outcome, WATCH aborts, lock waits
        self.ambiguous = 0     # attempts whose reply was lost
        self.errors: Counter[str] = Counter()

    def invoked(self, op: int, at: float) -> None:
        self.invoke[op] = at

    def completed(self, op: int, at: float, outcome: int) -> None:
        self.complete[op] = at
        self.outcome[op] = outcome

    def applied(self, op: int, at: float) -> None:
        """The server applied one of the operation's write requests at ``at``
        (NaN: it applied nothing, an EXEC that WATCH aborted)."""
        current = self.applied_at[op]
        if at == at and not current <= at:   # a moment, and none yet or a later one
            self.applied_at[op] = at

    def shown(self, op: int, value: int) -> None:
        """The operation showed the user ``value`` (the last attempt's, if it was run again)."""
        self.value[op] = value

    def record(self, op: int, invoke: float, complete: float, outcome: int) -> None:
        self.invoked(op, invoke)
        self.completed(op, complete, outcome)

    def completed_by(self, at: float) -> int:
        return int(np.count_nonzero(self.complete <= at))

    def outcomes(self) -> dict[str, int]:
        counts = np.bincount(self.outcome, minlength=4)
        return {name: int(counts[code]) for code, name in OUTCOME_NAMES.items()}

    def columns(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """The history as it is stored: integers that compress well, each
        moment to the nanosecond (the invocation from the trace's time, the
        completion and the moment of effect from the invocation), each shown
        value; ``NONE`` where there is none. ``t``: the trace's times."""
        invoke = _nanoseconds(self.invoke)
        base = _nanoseconds(t)
        return {
            "invoke": _delta(invoke, base), "complete": _delta(_nanoseconds(self.complete), invoke),
            "applied": _delta(_nanoseconds(self.applied_at), invoke), "outcome": self.outcome,
            "spread": self.spread, "timed_out": self.timed_out,
            "value": np.where(np.isnan(self.value), NONE, np.nan_to_num(self.value)).astype(np.int64),
            "commits_known": np.array(self.commits_known),
        }

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], t: np.ndarray) -> "History":
        """The history ``columns`` stored (what judging it needs), its moments to the nanosecond."""
        history = cls(len(t))
        invoke = _undelta(columns["invoke"], _nanoseconds(t))
        history.invoke = _seconds(invoke)
        history.complete = _seconds(_undelta(columns["complete"], invoke))
        history.applied_at = _seconds(_undelta(columns["applied"], invoke))
        history.outcome = np.asarray(columns["outcome"], np.int8)
        history.spread = np.asarray(columns["spread"], bool)
        history.timed_out = np.asarray(columns["timed_out"], bool)
        value = np.asarray(columns["value"], np.int64)
        history.value = np.where(value == NONE, np.nan, value.astype(float))
        history.commits_known = bool(columns["commits_known"])
        return history

    def rounded(self, t: np.ndarray) -> "History":
        """This history as it is stored and read back: what the run judges
        users' values on, so that `countdrift judge` finds the same."""
        return History.from_columns(self.columns(t), t)


def _nanoseconds(seconds: np.ndarray) -> np.ndarray:
    """Seconds as whole nanoseconds (NONE for NaN; infinity is never a recorded moment)."""
    finite = np.isfinite(seconds)
    return np.where(finite, np.round(np.where(finite, seconds, 0.0) * 1e9), 0).astype(np.int64) \
        + np.where(finite, 0, NONE)


def _seconds(nanoseconds: np.ndarray) -> np.ndarray:
    return np.where(nanoseconds == NONE, np.nan, nanoseconds / 1e9)


def _delta(value: np.ndarray, base: np.ndarray) -> np.ndarray:
    return np.where((value == NONE) | (base == NONE), NONE, value - np.where(base == NONE, 0, base))


def _undelta(delta: np.ndarray, base: np.ndarray) -> np.ndarray:
    delta = np.asarray(delta, np.int64)
    return np.where((delta == NONE) | (base == NONE), NONE, delta + np.where(base == NONE, 0, base))
