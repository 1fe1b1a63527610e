"""lua: one script per change, so both counters move together or not at all."""
from __future__ import annotations

from typing import Sequence

from sim.commands import Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import Strategy

DELIVER = load_script(__file__, "deliver")
READ = load_script(__file__, "read")


class Lua(Strategy):
    name = "lua"
    summary = "one EVALSHA per recipient (HINCRBY+INCRBY) and per read (HGET, HDEL, DECRBY)"
    scripts = (DELIVER, READ)
    deliver_script = DELIVER
    read_script = READ

    def deliver_args(self, conversation: int) -> tuple:
        return (str(conversation),)

    def read_args(self, conversation: int) -> tuple:
        return (str(conversation),)

    def deliver_call(self, message: int, conversation: int, user: int) -> Script:
        return Script(self.deliver_script, (keys.unread(user), self.total_key(user)), self.deliver_args(conversation))

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        # One script per recipient: each is atomic and touches one user's
        # slot only, as Redis Cluster requires; pipelined in one round trip.
        yield Pipeline(tuple(self.deliver_call(message, conversation, user) for user in recipients))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        count = yield Script(self.read_script, (keys.unread(user), self.total_key(user)),
                             self.read_args(conversation))
        return int(count or 0)
