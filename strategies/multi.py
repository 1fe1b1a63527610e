"""multi: MULTI/EXEC without WATCH.

A delivery is one transaction per recipient. A read cannot use a value inside
the transaction that read it, so it reads-and-clears the conversation in one
transaction and lowers the total in a second command: correct when nothing
fails, one counter behind the other if the client dies in between.
"""
from __future__ import annotations

from typing import Callable, Sequence

from sim.commands import Operation, Pipeline, Transaction
from strategies import keys
from strategies.base import Strategy


def increment_transactions(conversation: int, recipients: Sequence[int],
                           total: Callable[[int], str] = keys.total) -> Pipeline:
    field = str(conversation)
    return Pipeline(tuple(
        Transaction((("HINCRBY", keys.unread(user), field, 1), ("INCRBY", total(user), 1)))
        for user in recipients))


class Multi(Strategy):
    name = "multi"
    summary = "MULTI/EXEC per recipient; read = MULTI HGET HDEL EXEC, then DECRBY"

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        yield increment_transactions(conversation, recipients, self.total_key)

    def open_conversation(self, user: int, conversation: int) -> Operation:
        field = str(conversation)
        count, _ = yield Transaction((("HGET", keys.unread(user), field),
                                      ("HDEL", keys.unread(user), field)))
        if count is not None:
            yield ("DECRBY", self.total_key(user), int(count))
        return int(count or 0)
