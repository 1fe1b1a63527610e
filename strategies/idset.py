"""idset: a hash of unread message ids per user (field = message id, value =
conversation). Delivering twice sets the same field: idempotent by nature.
Total = HLEN; a conversation's count = its ids."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from sim.commands import Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import Strategy, whole

READ_IDS = load_script(__file__, "read_ids")


class IdSet(Strategy):
    name = "idset"
    keeps_total = False
    summary = "HSET ids:{u} <message> <conversation>; badge = HLEN; read removes the conversation's ids in Lua"
    scripts = (READ_IDS,)

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field, value = str(message), str(conversation)
        yield Pipeline(tuple(("HSET", keys.unread_ids(user), field, value) for user in recipients))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        return int((yield Script(READ_IDS, (keys.unread_ids(user),), (str(conversation),))) or 0)

    def fetch_badge(self, user: int) -> Operation:
        return (yield ("HLEN", keys.unread_ids(user)))

    def counters(self, user: int) -> Operation:
        (flat,) = yield Pipeline((("HGETALL", keys.unread_ids(user)),))
        if not isinstance(flat, list):
            return {}, 0, 1
        conversations = [whole(flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
        counts = Counter(conversation for conversation in conversations if conversation is not None)
        return dict(counts), len(flat) // 2, conversations.count(None)
