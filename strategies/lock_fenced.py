"""lock_fenced: lock, with a fencing token that a stale holder's writes cannot pass.

The lock hands out a token that grows with every attempt (HINCRBY in the
script that takes the lock), and every write goes through a script that
refuses a token lower than the highest that has written for that user
(Kleppmann's fencing, kept in Redis itself: no other system needed). A
holder paused past its TTL, or one whose lock a failover lost, may still
find a second holder beside it; when it writes after the newer one, its
write is turned away (counted in the fence's ``refused``) and it takes the
lock again and starts over. Its writes are one script each, so a failure
between them cannot leave half a change.
"""
from __future__ import annotations

from typing import Sequence

from sim.commands import Backoff, Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.lock import RELEASE, Lock, LockNotAcquired

ACQUIRE = load_script(__file__, "acquire_fenced")
WRITE = load_script(__file__, "fenced_write")


class LockFenced(Lock):
    name = "lock_fenced"
    summary = ("per-user lock with a fencing token (HINCRBY + SET NX PX in one script); writes by a script "
               "that refuses an older token")
    scripts = (RELEASE, ACQUIRE, WRITE)
    defaults = {name: value for name, value in Lock.defaults.items() if name != "on_failure"}
    choices = {}

    def _take(self, user: int) -> Script:
        return Script(ACQUIRE, (keys.lock(user), keys.fence(user)), (str(self.ttl_ms),))

    def _keys(self, user: int) -> tuple:
        return keys.unread(user), self.total_key(user), keys.fence(user)

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field = str(conversation)
        waiting = list(recipients)
        for _ in range(self.max_attempts):
            tokens = yield Pipeline(tuple(self._take(user) for user in waiting))
            held = [(user, str(token)) for user, token in zip(waiting, tokens) if token is not None]
            busy = [user for user, token in zip(waiting, tokens) if token is None]
            refused = []
            if held:
                work = []
                for user, token in held:
                    work.append(Script(WRITE, self._keys(user), (token, field)))
                    work.append(self._release(user, token))
                written = yield Pipeline(tuple(work))
                refused = [user for (user, _), reply in zip(held, written[::2]) if reply == 0]
            waiting = busy + refused   # a refused holder lost its lock to a newer one: it starts over
            if not waiting:
                return
            yield Backoff(self.backoff_ms / 1000.0)
        raise LockNotAcquired(f"{len(waiting)} recipients' locks stayed busy")

    def open_conversation(self, user: int, conversation: int) -> Operation:
        unread, field = keys.unread(user), str(conversation)
        for _ in range(self.max_attempts):
            token = yield self._take(user)
            if token is None:
                yield Backoff(self.backoff_ms / 1000.0)
                continue
            token = str(token)
            count = yield ("HGET", unread, field)
            if count is None:
                yield self._release(user, token)
                return 0
            written, _ = yield Pipeline((Script(WRITE, self._keys(user), (token, field, count)),
                                         self._release(user, token)))
            if written != 0:
                return int(count)
        raise LockNotAcquired(f"lock of user {user} stayed busy")

    def run_figures(self, users: int) -> Operation:
        """``fenced_off``: the writes its fences turned away (a holder that
        had lost its lock to a newer one), summed over the users."""
        replies = yield Pipeline(tuple(("HGET", keys.fence(user), "refused") for user in range(users)))
        return {"fenced_off": sum(int(reply) for reply in replies if isinstance(reply, str))}
