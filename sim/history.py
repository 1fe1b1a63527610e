"""What happened to each operation of the trace, as Jepsen records it.

Each operation is invoked once (its first request leaves the client) and
completes once (its last reply arrives or the client gives up), with one
outcome: ok, fail (the server said no: it did not apply, or not all of it)
or unknown (a reply was lost: it may or may not have applied).

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
OUTCOME_NAMES = {OK: "ok", FAIL: "fail", UNKNOWN: "unknown"}


class History:
    def __init__(self, operations: int) -> None:
        self.invoke = np.full(operations, np.nan)
        self.complete = np.full(operations, np.nan)
        self.outcome = np.zeros(operations, np.int8)
        self.applied_at = np.full(operations, np.nan)   # the server applied its first write request
        self.spread = np.zeros(operations, bool)        # an attempt sent more than one write request
        self.timed_out = np.zeros(operations, bool)     # a request of it timed out
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
        """The server applied one of the operation's write requests at ``at``."""
        current = self.applied_at[op]
        if not current <= at:   # NaN, or later
            self.applied_at[op] = at

    def record(self, op: int, invoke: float, complete: float, outcome: int) -> None:
        self.invoked(op, invoke)
        self.completed(op, complete, outcome)

    def completed_by(self, at: float) -> int:
        return int(np.count_nonzero(self.complete <= at))

    def outcomes(self) -> dict[str, int]:
        counts = np.bincount(self.outcome, minlength=4)
        return {name: int(counts[code]) for code, name in OUTCOME_NAMES.items()}
