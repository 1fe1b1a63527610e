"""watch: optimistic WATCH + read + MULTI/EXEC, retried when a write intervenes."""
from __future__ import annotations

from typing import Sequence

from sim.commands import Backoff, Operation, Transaction
from strategies import keys
from strategies.base import GaveUp, Strategy
from strategies.multi import increment_transactions


class RetriesExhausted(GaveUp):
    pass


class Watch(Strategy):
    name = "watch"
    backs_off = True
    summary = "WATCH the user's hash, read, MULTI/EXEC the clear; retry on abort"
    # watch_deliveries: the textbook optimistic dual write, deliveries WATCH
    # their recipients' counters too (and retry when a write intervenes).
    defaults = {"max_attempts": 50, "backoff_ms": 0.5, "watch_deliveries": False}
    bounds = {**Strategy.bounds, "max_attempts": (1, 1e9)}

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        if not self.watch_deliveries:
            # Increments are blind writes: they need no WATCH, and they abort a racing reader.
            yield increment_transactions(conversation, recipients, self.total_key)
            return
        field = str(conversation)
        watched = tuple(key for user in recipients for key in (keys.unread(user), self.total_key(user)))
        for _ in range(self.max_attempts):
            yield ("WATCH", *watched)
            done = yield Transaction(tuple(command for user in recipients for command in (
                ("HINCRBY", keys.unread(user), field, 1), ("INCRBY", self.total_key(user), 1))))
            if done is not None:
                return
            yield Backoff(self.backoff_ms / 1000.0)
        raise RetriesExhausted(f"WATCH aborted {self.max_attempts} times")

    def open_conversation(self, user: int, conversation: int) -> Operation:
        unread, field = keys.unread(user), str(conversation)
        for _ in range(self.max_attempts):
            yield ("WATCH", unread)
            count = yield ("HGET", unread, field)
            if count is None:
                yield ("UNWATCH",)
                return 0
            done = yield Transaction((("HDEL", unread, field),
                                      ("DECRBY", self.total_key(user), int(count))))
            if done is not None:
                return int(count)
            yield Backoff(self.backoff_ms / 1000.0)
        raise RetriesExhausted(f"WATCH aborted {self.max_attempts} times")
