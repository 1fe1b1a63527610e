"""write_behind: buffer the increments, flush them combined per key.

Deliveries do not write counters at once: their increments wait in a buffer
that a flusher folds into the counters every ``flush_ms`` (Discord commits
read states from memory every 30 s). ``buffer_in`` says which side buffers,
the lecture author's "let the side less likely to crash buffer" (the
default: Redis):

- ``"app"``: the application's memory. Each process buffers the increments
  of the users it serves (user % processes: the service that owns a user's
  read state), combined per (user, conversation), and flushes them through
  lua's script with a count; a delivery also flushes a buffer that has
  ``flush_max`` increments waiting. A read or a badge sees the buffer only
  in the process that owns the user: with ``[clients] route = "by_user"``
  every read of a user is there, with round-robin routing most are not
  (what is buffered elsewhere is missed, and flushed after the read: an
  overcount). A crash of the process loses its buffer (the cause
  ``lost_in_buffer``).
- ``"redis"``: a hash of pending increments per user in Redis (one HINCRBY
  a recipient), and the user in a set that a flusher pops ``flush_max`` at a
  time, folding each user's pending counts into the counters in one script.
  Reads and badges read the counters and the pending counts together, so
  they are exact at every moment; nothing is lost with a process.
"""
from __future__ import annotations

import copy
from typing import Sequence

from sim.commands import Backoff, Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import Job, counts_from_flat, whole
from strategies.lua import READ, Lua

ADD = load_script(__file__, "add_unread")
FOLD = load_script(__file__, "fold_pending")
READ_PENDING = load_script(__file__, "read_pending")
BUFFERS = ("app", "redis")
# How long a read waits for its process's flush of the same conversation to come back.
FLUSH_WAIT_S = 0.0005


class _Buffer:
    """One process's increments not yet sent: user -> conversation -> count;
    and the (user, conversation) pairs of a flush still on its way."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[int, int]] = {}
        self.waiting = 0
        self.in_flight: set[tuple[int, int]] = set()
        self.users_in_flight: set[int] = set()

    def add(self, user: int, conversation: int, count: int = 1) -> None:
        mine = self.pending.get(user)
        if mine is None:
            mine = self.pending[user] = {}
        mine[conversation] = mine.get(conversation, 0) + count
        self.waiting += count

    def take(self, user: int, conversation: int) -> int:
        mine = self.pending.get(user)
        count = mine.pop(conversation, 0) if mine else 0
        if count:
            self.waiting -= count
            if not mine:
                del self.pending[user]
        return count

    def of_user(self, user: int) -> int:
        return sum(self.pending.get(user, {}).values())

    def clear(self) -> int:
        lost = self.waiting
        self.pending, self.waiting = {}, 0
        return lost


class WriteBehind(Lua):
    name = "write_behind"
    summary = ("increments buffered (in the app's memory or a Redis hash) and flushed combined per key "
               "every flush_ms")
    scripts = (*Lua.scripts, ADD, FOLD, READ_PENDING)
    defaults = {"buffer_in": "redis", "flush_ms": 100.0, "flush_max": 1000}
    bounds = {**Lua.bounds, "flush_ms": (0.1, 600_000), "flush_max": (1, 1_000_000)}
    choices = {"buffer_in": BUFFERS}
    shared_keys = (keys.BUFFERED,)

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.process = -1          # the base object runs in no process (it reads the counters back)
        self.processes = 1
        self._buffers: list[_Buffer] = [_Buffer()]

    @property
    def buffers(self) -> bool:
        return self.buffer_in == "app"

    # -- processes and their flushers ---------------------------------------------
    def in_process(self, process: int, processes: int) -> "WriteBehind":
        if self.buffer_in == "redis":
            return self
        if len(self._buffers) != processes:
            self._buffers = [_Buffer() for _ in range(processes)]
            self.processes = processes
        view = copy.copy(self)
        view.process = process
        return view

    def jobs(self) -> tuple[Job, ...]:
        if self.buffer_in == "redis":
            return (Job("flusher", self.flush_ms / 1000.0, self._fold_some, again_at_once=True),)
        if self.process < 0:
            return ()
        buffer = self._buffers[self.process]
        return (Job(f"flusher {self.process}", self.flush_ms / 1000.0, lambda: self._flush(buffer),
                    crash=buffer.clear),)

    def crashed(self, process: int) -> int:
        if self.buffer_in == "redis" or not 0 <= process < len(self._buffers):
            return 0
        return self._buffers[process].clear()

    def _owner(self, user: int) -> _Buffer:
        return self._buffers[user % self.processes]

    def _flush(self, buffer: _Buffer) -> Operation:
        """Send what the buffer holds, one script per (user, conversation)
        with its count; put it back when no reply came (at least once: a
        flush whose reply was lost may apply twice)."""
        taken = [(user, conversation, count) for user, mine in buffer.pending.items()
                 for conversation, count in mine.items()]
        if not taken:
            return 0
        buffer.users_in_flight = set(buffer.pending)
        buffer.pending, buffer.waiting = {}, 0
        buffer.in_flight = {(user, conversation) for user, conversation, _ in taken}
        sent = False
        try:
            yield Pipeline(tuple(Script(ADD, (keys.unread(user), self.total_key(user)), (str(conversation), str(count)))
                                 for user, conversation, count in taken))
            sent = True
        finally:
            buffer.in_flight, buffer.users_in_flight = set(), set()
            if not sent:
                for user, conversation, count in taken:
                    buffer.add(user, conversation, count)
        return len(taken)

    def _fold_some(self) -> Operation:
        users = yield ("SPOP", keys.BUFFERED, self.flush_max)
        if not users:
            return 0
        yield Pipeline(tuple(Script(FOLD, (keys.pending(int(user)), keys.unread(int(user)),
                                           self.total_key(int(user))), ()) for user in users))
        return len(users)

    # -- operations ------------------------------------------------------------------
    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        if self.buffer_in == "redis":
            yield Pipeline((*(("HINCRBY", keys.pending(user), str(conversation), 1) for user in recipients),
                            ("SADD", keys.BUFFERED, *(str(user) for user in recipients))))
            return
        # A full buffer is flushed before the message is added: a retry of
        # this operation then adds it once.
        for buffer in {id(self._owner(user)): self._owner(user) for user in recipients}.values():
            if buffer.waiting >= self.flush_max:
                yield from self._flush(buffer)
        for user in recipients:
            self._owner(user).add(user, conversation)

    def open_conversation(self, user: int, conversation: int) -> Operation:
        if self.buffer_in == "redis":
            count = yield Script(READ_PENDING, (keys.unread(user), self.total_key(user), keys.pending(user)),
                                 (str(conversation),))
            return int(count or 0)
        buffered = 0
        if user % self.processes == self.process:
            buffer = self._owner(user)
            while (user, conversation) in buffer.in_flight:   # its flush must land before the read clears it
                yield Backoff(FLUSH_WAIT_S)
            buffered = buffer.take(user, conversation)
        count = yield Script(READ, (keys.unread(user), self.total_key(user)), (str(conversation),))
        return int(count or 0) + buffered

    def fetch_badge(self, user: int) -> Operation:
        if self.buffer_in == "redis":
            total, pending = yield Pipeline((("GET", self.total_key(user)), ("HVALS", keys.pending(user))))
            return int(total or 0) + sum(int(value) for value in pending)
        mine = 0
        if user % self.processes == self.process:
            buffer = self._owner(user)
            while user in buffer.users_in_flight:   # its flush must land before the total is read
                yield Backoff(FLUSH_WAIT_S)
            mine = buffer.of_user(user)   # as the GET leaves: a flush that starts later comes after it
        total = yield ("GET", self.total_key(user))
        return int(total or 0) + mine

    def counters(self, user: int) -> Operation:
        """The counters with what waits to be folded in (a hash in Redis, or
        the owner process's buffer), as a read by the owner sees them."""
        if self.buffer_in == "redis":
            flat, total, pending = yield Pipeline((("HGETALL", keys.unread(user)), ("GET", self.total_key(user)),
                                                   ("HGETALL", keys.pending(user))))
            waiting, bad_pending = counts_from_flat(pending)
        else:
            flat, total = yield Pipeline((("HGETALL", keys.unread(user)), ("GET", self.total_key(user))))
            waiting, bad_pending = self._owner(user).pending.get(user, {}), 0   # (a flush on its way: Redis's)
        counts, bad = counts_from_flat(flat)
        for conversation, count in waiting.items():
            counts[conversation] = counts.get(conversation, 0) + count
        value = whole(total or 0)
        return counts, (value or 0) + sum(waiting.values()), bad + bad_pending + (value is None)
