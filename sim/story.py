"""One user's story: every operation that touched them, as it ran.

A :class:`Tracer` rides in the shared client loop (sim/client.py) and
records, for the operations it follows, each request as it was sent and
what came back (a reply, an error reply, a lost connection), and when the
operation completed. Where the backend can read the store without
disturbing the run (the simulation: its clock stands still while it
reads), the tracer also takes the user's counters as each of their
operations completes, so that they can be set beside the truth at that
moment (`countdrift explain`, sim/experiments/explain.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sim.traffic import BADGE, DELIVER, LOGIN, READ, Trace


@dataclass
class Exchange:
    """One request of an operation, and what came back."""

    at: float                  # when it was sent
    attempt: int               # 0: the first; 1, 2...: the retries
    request: Any
    reply: Any = None          # the reply (an error reply is a CommandError)
    lost: str = ""             # the connection failed: why (the reply never came)
    answered_at: float | None = None


@dataclass
class Step:
    """What one operation did, as far as the tracer saw it."""

    op: int
    client: int = -1
    exchanges: list[Exchange] = field(default_factory=list)
    completed_at: float | None = None
    outcome: int = 0
    # The user's counters once it completed (conversation -> count, total), where readable.
    counters: tuple[dict[int, int], int] | None = None


class Tracer:
    """Follows ``ops`` (operation indexes of the trace) through a run for ``user``.

    ``read`` (set by a backend that can): the user's counters now, as
    (conversation -> count, total), read without disturbing the run.
    """

    def __init__(self, user: int, ops: np.ndarray) -> None:
        self.user = user
        self.ops = frozenset(int(op) for op in ops)
        self.steps: dict[int, Step] = {}
        self.read: Callable[[int], tuple[dict[int, int], int]] | None = None

    def step(self, op: int) -> Step:
        step = self.steps.get(op)
        if step is None:
            step = self.steps[op] = Step(op)
        return step

    def sent(self, op: int, client: int, attempt: int, request: Any, at: float) -> Exchange:
        step = self.step(op)
        step.client = client
        exchange = Exchange(at, attempt, request)
        step.exchanges.append(exchange)
        return exchange

    def completed(self, op: int, outcome: int, at: float) -> None:
        step = self.step(op)
        step.completed_at, step.outcome = at, outcome
        if self.read is not None:
            step.counters = self.read(self.user)


def touching(trace: Trace, user: int) -> np.ndarray:
    """The operations that touch ``user``'s counters or show them something:
    deliveries of others' messages to the user's conversations, and the
    user's own reads, badge fetches and logins, in trace order."""
    member = np.zeros(trace.conversations, bool)
    conv_of_slot = np.repeat(np.arange(trace.conversations), np.diff(trace.conv_offsets))
    member[conv_of_slot[trace.conv_members == user]] = True
    delivered = (trace.kind == DELIVER) & member[trace.conv] & (trace.user != user)
    own = np.isin(trace.kind, (READ, BADGE, LOGIN)) & (trace.user == user)
    return np.flatnonzero(delivered | own)


@dataclass
class Row:
    """One operation of a story."""

    op: int
    kind: str
    conv: int
    by: int                      # the trace's user of it: the sender of a message, the reader
    invoked: float
    completed: float
    outcome: str                 # ok, fail, unknown
    shown: int | None = None     # what it showed the user (a badge, an opened conversation's count)
    client: int | None = None
    exchanges: list[Exchange] | None = None       # None: not kept (a real run's requests)
    counters: tuple[int, int] | None = None       # the user's total and conversations' sum after it
    conv_count: int | None = None                 # the count of its conversation after it
    truth: tuple[int, int] | None = None          # the user's true total then, as a range


@dataclass
class Story:
    """How one user's counters came to differ from the truth."""

    strategy: str
    user: int
    scenario: str
    seed: int
    backend: str
    total: int                   # at the end
    conversations_sum: int
    truth: tuple[int, int]
    drift: int
    faults: list[dict]           # the run's faults, as recorded
    rows: list[Row]
    cause: str                   # the mechanism that made most of this user's drift
    shares: dict[str, int]       # each mechanism's share of this user's drift (signed)
    replayed: bool               # the simulation ran it again: requests, replies, counters between steps
    notes: list[str] = field(default_factory=list)
