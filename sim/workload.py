"""The trace as the drivers read it: each operation as the strategy's generator
(the strategy is told the conversations' members first)."""
from __future__ import annotations

from array import array
from typing import Sequence

import numpy as np

from sim.commands import Operation
from sim.traffic import DELIVER, READ, Trace
from strategies.base import Strategy


class Workload:
    def __init__(self, trace: Trace, strategy: Strategy) -> None:
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

    def operation(self, op: int) -> Operation:
        """Operation ``op`` of the trace, as the strategy's generator."""
        strategy = self.strategy
        kind = self.kind[op]
        if kind == DELIVER:
            sender, conv = self.user[op], self.conv[op]
            recipients = [user for user in self.members[conv] if user != sender]
            return strategy.deliver(self.message[op], conv, sender, recipients)
        if kind == READ:
            return strategy.open_conversation(self.user[op], self.conv[op])
        return strategy.fetch_badge(self.user[op])


def _array(code: str, values: np.ndarray) -> array:
    """A numpy array's values as a Python array of ``code`` ("d": float64, "q": int64)."""
    items = array(code)
    items.frombytes(np.ascontiguousarray(values, dtype=np.float64 if code == "d" else np.int64).tobytes())
    return items
