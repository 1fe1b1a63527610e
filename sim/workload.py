"""The trace as the drivers read it: each operation as the strategy's generator
(the strategy is told the conversations' members first)."""
from __future__ import annotations

from array import array

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
        self.strategy = strategy
        strategy.prepare(self.members, trace.users)

    def __len__(self) -> int:
        return len(self.t)

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
