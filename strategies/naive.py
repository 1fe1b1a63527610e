"""naive: two independent commands per change, no atomicity at all."""
from __future__ import annotations

from typing import Sequence

from sim.commands import Operation, Pipeline
from strategies import keys
from strategies.base import Strategy


class Naive(Strategy):
    name = "naive"
    summary = "HINCRBY + INCRBY as independent commands; read-then-clear in three round trips"

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field = str(conversation)
        commands = []
        for user in recipients:
            commands.append(("HINCRBY", keys.unread(user), field, 1))
            commands.append(("INCRBY", self.total_key(user), 1))
        # Pipelined for speed, but not atomic: each command stands alone.
        yield Pipeline(tuple(commands))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        field = str(conversation)
        count = yield ("HGET", keys.unread(user), field)
        if count is None:
            return 0
        yield ("HDEL", keys.unread(user), field)
        yield ("DECRBY", self.total_key(user), int(count))
        return int(count)
