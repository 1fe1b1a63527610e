"""derived: store only the per-conversation counts; the total is their sum,
computed on every badge fetch (HVALS). Nothing to keep in step, at the price
of an O(conversations) read on every push."""
from __future__ import annotations

from typing import Sequence

from sim.commands import Operation, Pipeline
from strategies import keys
from strategies.base import Strategy, counts_from_flat


class Derived(Strategy):
    name = "derived"
    keeps_total = False
    summary = "per-conversation HINCRBY only; badge = sum of HVALS"

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field = str(conversation)
        yield Pipeline(tuple(("HINCRBY", keys.unread(user), field, 1) for user in recipients))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        # The count shown is read in the same round trip as the clear.
        count, _ = yield Pipeline((("HGET", keys.unread(user), str(conversation)),
                                   ("HDEL", keys.unread(user), str(conversation))))
        return int(count or 0)

    def fetch_badge(self, user: int) -> Operation:
        values = yield ("HVALS", keys.unread(user))
        return sum(int(value) for value in values)

    def counters(self, user: int) -> Operation:
        (flat,) = yield Pipeline((("HGETALL", keys.unread(user)),))
        counts, bad = counts_from_flat(flat)
        return counts, sum(counts.values()), bad
