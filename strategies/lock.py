"""lock: a per-user lock (SET NX PX with a token, compare-and-delete release).

Safe only while the holder finishes within the TTL and the lock key survives:
a pause longer than the TTL, or a failover that loses the key, lets two
clients in at once (DESIGN.md; fencing tokens are the known remedy).
"""
from __future__ import annotations

import itertools
from typing import Sequence

from sim.commands import Backoff, Operation, Pipeline, Script
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
    defaults = {"ttl_ms": 1000, "max_attempts": 200, "backoff_ms": 0.5}
    bounds = {**Strategy.bounds, "ttl_ms": (1, 1e9), "max_attempts": (1, 1e9)}

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
            if held:
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
        if count is not None:
            yield Pipeline((("HDEL", unread, field), ("DECRBY", self.total_key(user), int(count))))
        yield self._release(user, token)
        return int(count or 0)
