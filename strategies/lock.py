"""lock: a per-user lock (SET NX PX with a token, compare-and-delete release).

Safe only while the holder finishes within the TTL and the lock key survives:
a pause longer than the TTL, or a failover that loses the key, lets two
clients in at once (DESIGN.md; fencing tokens are the known remedy:
lock_fenced).

Option ``on_failure``: what a holder does when its second write fails.
``"retry"`` (the default) sends both writes in one pipeline and leaves a
failed operation to the client's retries: the first write stays applied.
``"rollback"`` (the lecture author's answer) sends the second write only
once the first has applied, and when it is refused (an error reply: surely
not applied) takes the first back before the lock is released.
"""
from __future__ import annotations

import itertools
from typing import Sequence

from sim.commands import Backoff, CommandError, Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import GaveUp, Strategy

RELEASE = load_script(__file__, "release_lock")


class LockNotAcquired(GaveUp):
    pass


class Lock(Strategy):
    name = "lock"
    holds_lock = True
    backs_off = True
    summary = "per-user lock SET NX PX + token; writes under the lock; Lua compare-and-delete release"
    scripts = (RELEASE,)
    defaults = {"ttl_ms": 1000, "max_attempts": 200, "backoff_ms": 0.5, "on_failure": "retry"}
    bounds = {**Strategy.bounds, "ttl_ms": (1, 1e9), "max_attempts": (1, 1e9)}
    choices = {"on_failure": ("retry", "rollback")}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._tokens = itertools.count(1)

    def _acquire(self, user: int, token: str) -> tuple:
        return ("SET", keys.lock(user), token, "NX", "PX", self.ttl_ms)

    def _release(self, user: int, token: str) -> Script:
        return Script(RELEASE, (keys.lock(user),), (token,))

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field = str(conversation)
        token = f"t{next(self._tokens)}"
        waiting = list(recipients)
        for _ in range(self.max_attempts):
            replies = yield Pipeline(tuple(self._acquire(user, token) for user in waiting))
            held = [user for user, reply in zip(waiting, replies) if reply is not None]
            if held and self.on_failure == "rollback":
                yield from self._write_or_roll_back(held, field, token)
            elif held:
                work = []
                for user in held:
                    work.append(("HINCRBY", keys.unread(user), field, 1))
                    work.append(("INCRBY", self.total_key(user), 1))
                    work.append(self._release(user, token))
                yield Pipeline(tuple(work))
            waiting = [user for user, reply in zip(waiting, replies) if reply is None]
            if not waiting:
                return
            yield Backoff(self.backoff_ms / 1000.0)
        raise LockNotAcquired(f"{len(waiting)} recipients' locks stayed busy")

    def _write_or_roll_back(self, held: list[int], field: str, token: str) -> Operation:
        """The holders' first writes, then their second ones; where a second
        is refused, its first is taken back; then the locks are released.
        (An error reply inside a pipeline fails the operation.)"""
        firsts = yield Pipeline(tuple(("HINCRBY", keys.unread(user), field, 1) for user in held))
        applied = [user for user, reply in zip(held, firsts) if not isinstance(reply, CommandError)]
        seconds = yield Pipeline(tuple(("INCRBY", self.total_key(user), 1) for user in applied))
        refused = [user for user, reply in zip(applied, seconds) if isinstance(reply, CommandError)]
        undo = tuple(("HINCRBY", keys.unread(user), field, -1) for user in refused)
        yield Pipeline((*undo, *(self._release(user, token) for user in held)))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        token = f"t{next(self._tokens)}"
        for _ in range(self.max_attempts):
            if (yield self._acquire(user, token)) is not None:
                break
            yield Backoff(self.backoff_ms / 1000.0)
        else:
            raise LockNotAcquired(f"lock of user {user} stayed busy")
        unread, field = keys.unread(user), str(conversation)
        count = yield ("HGET", unread, field)
        if count is not None and self.on_failure == "rollback":
            yield from self._clear_or_roll_back(user, field, count, token)
        elif count is not None:
            yield Pipeline((("HDEL", unread, field), ("DECRBY", self.total_key(user), int(count))))
        yield self._release(user, token)
        return int(count or 0)

    def _clear_or_roll_back(self, user: int, field: str, count: str, token: str) -> Operation:
        """HDEL, then DECRBY; a refused DECRBY puts the field back (HSET).
        A refusal is raised once the lock is released."""
        try:
            yield ("HDEL", keys.unread(user), field)
        except CommandError:
            yield self._release(user, token)
            raise
        try:
            yield ("DECRBY", self.total_key(user), int(count))
        except CommandError:
            yield Pipeline((("HSET", keys.unread(user), field, count), self._release(user, token)))
            raise
