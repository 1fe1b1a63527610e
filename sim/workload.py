"""The trace as the drivers read it: each operation as a strategy's generator."""
from __future__ import annotations

from sim.commands import Operation
from sim.traffic import DELIVER, READ, Trace
from strategies.base import Strategy


class Workload:
    def __init__(self, trace: Trace) -> None:
        # Python lists: the drivers read them once per operation, on the hot path.
        self.t = trace.t.tolist()
        self.kind = trace.kind.tolist()
        self.user = trace.user.tolist()
        self.conv = trace.conv.tolist()
        self.message = trace.message.tolist()
        self.members = [trace.conv_members[start:end].tolist()
                        for start, end in zip(trace.conv_offsets[:-1], trace.conv_offsets[1:])]

    def __len__(self) -> int:
        return len(self.t)

    def operation(self, strategy: Strategy, op: int) -> Operation:
        kind = self.kind[op]
        if kind == DELIVER:
            sender = self.user[op]
            recipients = [user for user in self.members[self.conv[op]] if user != sender]
            return strategy.deliver(self.message[op], self.conv[op], recipients)
        if kind == READ:
            return strategy.open_conversation(self.user[op], self.conv[op])
        return strategy.fetch_badge(self.user[op])
