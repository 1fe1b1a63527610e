"""The trace as the drivers read it: each operation as the strategy's generator
in the application process that runs it (the strategy is told the
conversations' members first), and the strategy's background jobs."""
from __future__ import annotations

from array import array
from typing import Sequence

import numpy as np

from sim.commands import Operation
from sim.scenario import Scenario
from sim.traffic import BADGE, DELIVER, READ, Trace
from strategies import make_strategy
from strategies.base import Job, Strategy


class Workload:
    def __init__(self, trace: Trace, strategy: Strategy, processes: int = 1) -> None:
        # Python arrays: the drivers read them once per operation, on the hot
        # path, where an array's item costs about a list's and a numpy
        # array's several times that; and they hold 8 bytes an item (a list
        # of ints or floats held 36 to 40: 270 MiB on the review scenario).
        self.t = _array("d", trace.t)
        self.kind = _array("q", trace.kind)
        self.user = _array("q", trace.user)
        self.conv = _array("q", trace.conv)
        self.message = _array("q", trace.message)
        self.members = [trace.conv_members[start:end].tolist()
                        for start, end in zip(trace.conv_offsets[:-1], trace.conv_offsets[1:])]
        self._by_user: list[list[int]] | None = None
        self.strategy = strategy
        strategy.prepare(self.members, trace.users)
        # Each virtual client is an application process: a strategy that keeps
        # something in a process's memory runs as a view of its own in each.
        self.views = [strategy.in_process(process, processes) for process in range(processes)]
        distinct = {id(view): view for view in self.views}.values()
        self.jobs: list[Job] = [*(job for view in distinct for job in view.jobs()), *strategy.shared_jobs()]

    def __len__(self) -> int:
        return len(self.t)

    def dealt(self, client: int, clients: int, route: str) -> Sequence[int]:
        """The operations that client ``client`` of ``clients`` sends, in
        order of start: every ``clients``-th one (``round_robin``), or those
        of the users it serves (``by_user``: user % clients), so that a
        user's operations go over one connection, in order."""
        if route == "round_robin":
            return range(client, len(self.t), clients)
        if self._by_user is None or len(self._by_user) != clients:
            owner = np.frombuffer(self.user, dtype=np.int64) % clients
            order = np.argsort(owner, kind="stable")
            cuts = np.searchsorted(owner[order], np.arange(clients + 1))
            self._by_user = [order[cuts[i]:cuts[i + 1]].tolist() for i in range(clients)]
        return self._by_user[client]

    def crashed(self, process: int) -> int:
        """The application process died: the changes its memory held, lost."""
        return self.strategy.crashed(process)

    def changed_users(self, op: int) -> list[int]:
        """The users whose counters operation ``op`` may change: a
        delivery's recipients, else the user who reads, fetches or logs in
        (a badge or a login that writes: a recount)."""
        if self.kind[op] == DELIVER:
            sender = self.user[op]
            return [user for user in self.members[self.conv[op]] if user != sender]
        return [self.user[op]]

    def operation(self, op: int, process: int = 0) -> Operation:
        """Operation ``op`` of the trace, as the strategy's generator in ``process``."""
        strategy = self.views[process]
        kind = self.kind[op]
        if kind == DELIVER:
            sender, conv = self.user[op], self.conv[op]
            recipients = [user for user in self.members[conv] if user != sender]
            return strategy.deliver(self.message[op], conv, sender, recipients)
        if kind == READ:
            return strategy.open_conversation(self.user[op], self.conv[op])
        if kind == BADGE:
            return strategy.fetch_badge(self.user[op])
        return strategy.login(self.user[op])


def _array(code: str, values: np.ndarray) -> array:
    """A numpy array's values as a Python array of ``code`` ("d": float64, "q": int64)."""
    items = array(code)
    items.frombytes(np.ascontiguousarray(values, dtype=np.float64 if code == "d" else np.int64).tobytes())
    return items


def job_count(strategy: Strategy, processes: int) -> int:
    """How many background workers the strategy runs beside ``processes``
    application processes (a backend gives each a connection, and on real
    servers a proxy, of its own)."""
    views = {id(view): view for view in (strategy.in_process(p, processes) for p in range(processes))}
    return sum(len(view.jobs()) for view in views.values()) + len(strategy.shared_jobs())


def most_workers(scenario: Scenario) -> int:
    """The most background workers any of the scenario's strategies runs."""
    return max((job_count(make_strategy(name, **scenario.strategy_options.get(name, {})), scenario.clients.count)
                for name in scenario.strategies), default=0)
