"""async_total: conversation counts kept at once, the total by a queue.

A delivery counts the message in the recipient's conversation count and
appends the recipient to a Redis Stream, in one script; so does a read that
cleared something. A consumer group's workers (``consumers`` of them, each
its own consumer) read the stream ``batch`` entries at a time, recompute
each user's total from their conversation counts (HVALS, summed, in one
script) and acknowledge the entries. Each pass first claims entries left
pending longer than ``claim_idle_ms`` (XAUTOCLAIM: a consumer that crashed
left them), then reads new ones. The badge a push carries is the total as
it stands: stale until the consumers catch up (the lecture author's
objection: APNs cannot add badges up, so every push needs the total). The
conversation counts are always right; the total is right once the queue is
drained.
"""
from __future__ import annotations

from typing import Sequence

from sim.commands import CommandError, Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import Job, Strategy
from strategies.reconciler import RECOUNT

DELIVER = load_script(__file__, "deliver_queued")
READ = load_script(__file__, "read_queued")


class AsyncTotal(Strategy):
    name = "async_total"
    summary = ("per-conversation HINCRBY + XADD of the user (Lua); consumers recount the total from the stream "
               "(XREADGROUP, HVALS, SET, XACK)")
    scripts = (DELIVER, READ, RECOUNT)
    defaults = {"consumers": 1, "batch": 100, "poll_ms": 10.0, "claim_idle_ms": 1000.0}
    bounds = {**Strategy.bounds, "consumers": (1, 64), "batch": (1, 100_000), "poll_ms": (0.1, 60_000),
              "claim_idle_ms": (1, 3_600_000)}
    shared_keys = (keys.RECOUNT,)
    total_lags = True

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._grouped = False   # the consumer group is known to exist

    def jobs(self) -> tuple[Job, ...]:
        return tuple(Job(f"consumer {index}", self.poll_ms / 1000.0,
                         lambda name=f"consumer{index}": self._consume(name), again_at_once=True, crash_after=1,
                         left=self._pending)
                     for index in range(self.consumers))

    def _consume(self, consumer: str) -> Operation:
        """Claim what a dead consumer left, read what is new; recount each
        user once; acknowledge and delete. Returns the entries handled."""
        group, batch = keys.RECOUNT_GROUP, str(self.batch)
        for _ in range(2):   # the group made again once, if it was lost (a failover, a restart without it)
            if not self._grouped:   # from the stream's start: deliveries may have come first
                try:
                    yield ("XGROUP", "CREATE", keys.RECOUNT, group, "0", "MKSTREAM")
                except CommandError as error:
                    if not str(error).startswith("BUSYGROUP"):
                        raise
                self._grouped = True
            claimed, fresh = yield Pipeline((
                ("XAUTOCLAIM", keys.RECOUNT, group, consumer, str(int(self.claim_idle_ms)), "0-0", "COUNT", batch),
                ("XREADGROUP", "GROUP", group, consumer, "COUNT", batch, "STREAMS", keys.RECOUNT, ">")))
            error = next((reply for reply in (claimed, fresh) if isinstance(reply, CommandError)), None)
            if error is None:
                break
            if not str(error).startswith("NOGROUP"):
                raise error
            self._grouped = False
        else:
            raise error
        entries = list(claimed[1])
        if fresh is not None:
            for _, stream_entries in fresh:
                entries.extend(stream_entries)
        if not entries:
            return 0
        users = sorted({int(_field(fields, "user")) for _, fields in entries if fields})
        ids = [entry_id for entry_id, _ in entries]
        yield Pipeline((*(Script(RECOUNT, (keys.unread(user), self.total_key(user)), ()) for user in users),
                        ("XACK", keys.RECOUNT, group, *ids), ("XDEL", keys.RECOUNT, *ids)))
        return len(entries)

    def _pending(self) -> Operation:
        """How many entries the group has delivered and not acknowledged (a
        rollback may take an XACK back: they wait to be claimed)."""
        try:
            summary = yield ("XPENDING", keys.RECOUNT, keys.RECOUNT_GROUP)
        except CommandError:   # no stream or no group: nothing is pending
            return 0
        return int(summary[0])

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        field = str(conversation)
        yield Pipeline(tuple(Script(DELIVER, (keys.unread(user), keys.RECOUNT), (field, str(user)))
                             for user in recipients))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        count = yield Script(READ, (keys.unread(user), keys.RECOUNT), (str(conversation), str(user)))
        return int(count or 0)

    def login(self, user: int) -> Operation:
        """The reader's proposal: the total recounted at login (one script),
        and shown."""
        total = yield Script(RECOUNT, (keys.unread(user), self.total_key(user)), ())
        return int(total)


def _field(fields: list, name: str) -> str:
    """A stream entry's field, from its flat [field, value, ...]."""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    raise ValueError(f"stream entry without {name!r}: {fields!r}")
