"""A strategy's background workers (a flusher, a queue's consumers), written
once for every backend: like the client loop (sim/client.py), a generator
of instructions (Sleep, Send, DISCONNECT) that each driver carries out on a
connection of the worker's own.

A worker runs its job's pass every ``every_s`` seconds (at once again after a
pass that handled items, for a job that asks it), from the run's start until
the clients are done; then it drains: passes until one handles nothing (the
last flush, the last consume), giving up after ``DRAIN_S`` seconds of
failing passes. A pass that fails at the connection is simply the next
pass's work (a queue's entries stay pending, a buffer puts back what was
surely not sent). A job may say what waits that no pass could take yet (a
queue's entries pending, not yet idle long enough to claim): the drain
waits for them. A worker_crash kills the worker between two requests of
a pass: what its process held in memory is lost (``lost_in_buffer``, unless
that cause is switched off), it stays down for the crash's duration, then
starts again on a new connection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sim.client import DISCONNECT, Client, Send, Sleep
from sim.commands import Backoff, CommandError, ConnectionLost, Operation, may_write
from strategies.base import Job

# How long a drain keeps trying through failures (a server still down).
DRAIN_S = 30.0


@dataclass
class WorkerStats:
    passes: int = 0
    items: int = 0              # what the passes handled (increments flushed, entries consumed)
    failed_passes: int = 0      # ended by the connection or an error reply
    crashes: int = 0
    lost_in_buffer: int = 0     # changes lost with a crashed process's memory (clients' and workers')
    clients_done_at: float = 0.0
    drained_at: float = 0.0     # when the last worker's drain ended (run seconds)

    def as_dict(self, workers: int, lost_by_clients: int) -> dict:
        """What results.json says of the workers (none: empty); a crashed
        client's lost buffer is counted with theirs."""
        if not workers and not lost_by_clients:
            return {}
        return {"count": workers, "passes": self.passes, "items": self.items, "failed_passes": self.failed_passes,
                "crashes": self.crashes, "lost_in_buffer": self.lost_in_buffer + lost_by_clients,
                "drain_s": round(max(0.0, self.drained_at - self.clients_done_at), 6)}


class WorkerLoop:
    def __init__(self, clock: Callable[[], float], causes: frozenset[str], stats: WorkerStats) -> None:
        self.clock = clock
        self.causes = causes
        self.stats = stats

    def run(self, worker: Client, job: Job, clients_done: Callable[[], bool]):
        """The worker's instructions; ``clients_done`` tells it when to drain."""
        stats = self.stats
        draining_since: float | None = None
        passes = 0
        while True:
            if draining_since is None and clients_done():
                draining_since = self.clock()
                stats.clients_done_at = max(stats.clients_done_at, draining_since)
            passes += 1
            handled, failed, crashed = yield from self._pass(worker, job.step, passes, job.crash_after)
            stats.passes += 1
            stats.failed_passes += failed
            if crashed:
                stats.crashes += 1
                if "lost_in_buffer" in self.causes:
                    stats.lost_in_buffer += job.crash()
                yield Sleep(worker.crash_for)
                worker.crash_for = None
                yield DISCONNECT
                continue
            stats.items += handled
            if draining_since is not None:
                if handled == 0 and not failed and job.left is not None:   # what no pass could take yet
                    passes += 1
                    waiting, failed, crashed = yield from self._pass(worker, job.left, passes, job.crash_after)
                    failed = failed or crashed or waiting > 0   # (a crash strikes again at the next pass)
                if (handled == 0 and not failed) or self.clock() - draining_since > DRAIN_S:
                    stats.drained_at = max(stats.drained_at, self.clock())
                    return
                if failed:
                    yield Sleep(job.every_s)
                continue
            if handled and job.again_at_once and not failed:
                continue
            yield Sleep(job.every_s)

    def _pass(self, worker: Client, operation: Callable[[], Operation], passes: int, crash_after: int):
        """One pass of ``operation``: (what it returned, failed, crashed)."""
        step = operation()
        reply, error = None, None
        number = 0
        try:
            while True:
                request = step.send(reply) if error is None else step.throw(error)
                reply = error = None
                if type(request) is Backoff:
                    yield Sleep(request.seconds)
                    continue
                if worker.crash_for is not None and worker.strikes(self.clock(), number, crash_after):
                    step.close()
                    return 0, False, True
                number += 1
                try:
                    reply, _, _ = yield Send(request, -1 - worker.index, passes, number, may_write(request))
                except ConnectionLost:
                    step.close()
                    return 0, True, False
                if isinstance(reply, CommandError):
                    error, reply = reply, None
        except StopIteration as stop:
            return int(stop.value or 0), False, False
        except CommandError:
            return 0, True, False
