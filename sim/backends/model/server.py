"""A single-threaded Redis server as a computed FIFO queue.

Real Redis executes one request at a time in arrival order. Instead of a
SimPy Resource and an event per command, the server computes each request's
service window when it arrives (start = max(arrival, previous end), end =
start + service time) and commits requests lazily, in order, once the clock
passes their end. A client sleeps until its reply time and then reads the
committed result: one SimPy event per round trip.

A request's effects become visible at the end of its service window, all at
once: for a script or MULTI/EXEC this is what Redis guarantees, and it is what
lets a fault at time t cut the queue exactly (everything that ended before t
happened, nothing after did).

A pipeline is served as one block, as Redis serves the commands it read from
one client's socket in one go; a very large pipeline on a real server may be
read in several pieces and interleave with other clients.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from sim.backends.model.journal import Journal
from sim.backends.model.persistence import Persistence, ReplicationLag
from sim.backends.model.scripting import ScriptEngine
from sim.backends.model.store import OK, Store, check_arity
from sim.commands import CommandError, Pipeline, Request, Script, Transaction, may_write
from sim.lua import LuaScript


@dataclass(frozen=True)
class ServiceTimes:
    """Service time of each kind of request, in seconds."""

    command: float = 4e-6
    script: float = 8e-6
    script_per_key: float = 1.5e-6


class Connection:
    """Server-side state of one client connection: its WATCHed keys, the
    server process it belongs to, the end of its last write (for WAIT)."""

    __slots__ = ("watched", "dirty", "incarnation", "last_write")

    def __init__(self, incarnation: int = 0) -> None:
        self.watched: set[str] = set()
        self.dirty = False
        self.incarnation = incarnation
        self.last_write = -math.inf


class Entry:
    """One request in the server's queue, and later its reply."""

    __slots__ = ("start", "end", "request", "connection", "reply", "error", "committed", "lost")

    def __init__(self, start: float, end: float, request: Request, connection: Connection) -> None:
        self.start = start
        self.end = end
        self.request = request
        self.connection = connection
        self.reply: Any = None
        self.error: CommandError | None = None  # the first error reply inside it
        self.committed = False   # its effects happened (all of them, or a pipeline's prefix)
        self.lost = False        # the server died before replying


class Server:
    def __init__(self, service: ServiceTimes | None = None, persistence: Persistence | None = None,
                 lag: ReplicationLag | None = None) -> None:
        self.service = service or ServiceTimes()
        self.persistence = persistence or Persistence()
        self.lag = lag               # None: no replica
        self.incarnation = 0         # bumped when the process dies: old connections are dead
        self.down_until = -math.inf  # connections are refused until then
        self.store = Store()
        self.scripts = ScriptEngine(self.store)
        # End times of recent committed writes, kept while a fault may roll back.
        self._recent_writes: deque[float] | None = None
        self._history_s = 0.0
        self.queue: deque[Entry] = deque()
        self.free_at = 0.0
        self.requests = 0  # commands as clients sent them (MULTI, EXEC and EVALSHA included)
        self._first_error: CommandError | None = None

    @property
    def commands(self) -> int:
        """Commands executed, counted as INFO commandstats does: those a script
        runs with redis.call count too."""
        return self.requests + self.scripts.calls

    # -- timing -------------------------------------------------------------
    def service_time(self, request: Request) -> float:
        kind = type(request)
        if kind is tuple:
            return self.service.command
        if kind is Script:
            return self.service.script + self.service.script_per_key * len(request.keys)
        if kind is Pipeline:
            return sum(self.service_time(r) for r in request.commands)
        if kind is Transaction:
            return self.service.command * (len(request.commands) + 2)
        raise TypeError(f"not a Redis request: {request!r}")

    def submit(self, connection: Connection, request: Request, arrival: float) -> Entry:
        """Queue a request that reaches the server at ``arrival``.

        Requests must be submitted in arrival order (the driver's clients all
        see the same network delay, so they do).
        """
        start = arrival if arrival > self.free_at else self.free_at
        end = start + self.service_time(request)
        self.free_at = end
        entry = Entry(start, end, request, connection)
        self.queue.append(entry)
        if may_write(request):
            connection.last_write = end
        return entry

    def wait(self, connection: Connection, arrival: float, replicas: int, timeout: float) -> tuple[float, int]:
        """WAIT: when the reply leaves the server, and how many replicas acknowledged
        the connection's last write. WAIT blocks the client only, not the server."""
        self.requests += 1
        ready = arrival + self.service.command
        if self.lag is None or replicas <= 0 or connection.last_write == -math.inf:
            return ready, 0
        acknowledged = connection.last_write + self.lag.at(connection.last_write)
        if acknowledged <= arrival + timeout:
            return max(ready, acknowledged), 1
        return arrival + timeout, 0

    def advance(self, now: float) -> None:
        """Commit, in order, every queued request whose service ended by ``now``."""
        queue = self.queue
        while queue and queue[0].end <= now:
            entry = queue.popleft()
            self.store.now = entry.end
            self._first_error = None
            entry.reply = self.run(entry.connection, entry.request)
            entry.error = self._first_error
            entry.committed = True
            if self._recent_writes is not None and may_write(entry.request):
                self._recent_writes.append(entry.end)
                while self._recent_writes[0] < entry.end - self._history_s:
                    self._recent_writes.popleft()

    # -- faults ---------------------------------------------------------------
    def keep_history(self, seconds: float) -> None:
        """Journal writes so that a fault can roll back up to ``seconds``."""
        self.store.journal = Journal(keep_s=seconds + 1.0)
        self._recent_writes = deque()
        self._history_s = seconds + 1.0

    def crash(self, at: float, down_for: float, keep_until: float,
              preserve_prefix: str | None = None) -> dict:
        """The server process dies at ``at``: what ended by then happened; of
        the request being served, a pipeline keeps its finished commands and a
        script or a transaction is lost whole; the rest of the queue is lost.
        The keyspace is rolled back to ``keep_until`` (what the disk or the
        promoted replica holds), except keys starting with ``preserve_prefix``.
        The script cache is empty afterwards and old connections are dead."""
        self.advance(at)
        effects: dict[str, Any] = {"cut": None, "requests_lost": len(self.queue), "keys_rolled_back": 0,
                                   "acknowledged_writes_lost": 0}
        if self.queue and self.queue[0].start < at:
            head = self.queue[0]
            effects["cut"] = type(head.request).__name__
            if type(head.request) is Pipeline:
                finished, t = [], head.start
                for request in head.request.commands:
                    t += self.service_time(request)
                    if t > at:
                        break
                    finished.append(request)
                self.store.now = at
                self.run(head.connection, Pipeline(tuple(finished)))
                head.committed = bool(finished)
                effects["pipeline_commands_kept"] = len(finished)
        for entry in self.queue:
            entry.lost = True
        self.queue.clear()
        if keep_until < at and self.store.journal is not None:
            effects["keys_rolled_back"] = self._rollback(keep_until, preserve_prefix)
            # Writes whose reply had left the server: the client was told "done".
            effects["acknowledged_writes_lost"] = sum(1 for end in self._recent_writes if end > keep_until)
            self._recent_writes.clear()
        self.store.watchers.clear()
        self.scripts.flush()
        self.incarnation += 1
        self.down_until = self.free_at = at + down_for
        return effects

    def _rollback(self, to: float, preserve_prefix: str | None) -> int:
        data, expires = self.store.data, self.store.expires
        kept = {}
        if preserve_prefix:
            kept = {key: (value, expires.get(key)) for key, value in data.items() if key.startswith(preserve_prefix)}
        changed = self.store.journal.rollback(data, expires, to)
        if preserve_prefix:
            for key in [key for key in data if key.startswith(preserve_prefix)]:
                del data[key]
                expires.pop(key, None)
            for key, (value, expire) in kept.items():
                data[key] = value
                if expire is not None:
                    expires[key] = expire
        return len(changed)

    # -- execution ------------------------------------------------------------
    def run(self, connection: Connection, request: Request) -> Any:
        """Execute a request now; an error reply is returned as a CommandError."""
        kind = type(request)
        try:
            if kind is tuple:
                self.requests += 1
                return self._command(connection, request)
            if kind is Script:
                self.requests += 1
                return self.scripts.evalsha(request.script.sha, request.keys, request.args)
            if kind is Pipeline:
                return [self.run(connection, r) for r in request.commands]
            if kind is Transaction:
                return self._transaction(connection, request.commands)
        except CommandError as error:
            if self._first_error is None:
                self._first_error = error
            return error
        raise TypeError(f"not a Redis request: {request!r}")

    def inspect(self, request: Request) -> Any:
        """Run a request outside the workload (the checker reading counters):
        not counted, on a connection of its own."""
        requests, calls = self.requests, self.scripts.calls
        try:
            return self.run(Connection(), request)
        finally:
            self.requests, self.scripts.calls = requests, calls

    def _command(self, connection: Connection, words: tuple) -> Any:
        name = words[0]
        if name == "WATCH":
            self.store.watch(connection, words[1:])
            return OK
        if name == "UNWATCH":
            self.store.unwatch(connection)
            return OK
        if name == "SCRIPT":
            return self._script_command(words)
        return self.store.execute(words)

    def _script_command(self, words: tuple) -> Any:
        sub = str(words[1]).upper() if len(words) > 1 else ""
        if sub == "LOAD" and len(words) == 3:
            return self.scripts.load(LuaScript("loaded", words[2]))
        if sub == "EXISTS":
            return [int(sha in self.scripts.cache) for sha in words[2:]]
        if sub == "FLUSH":
            self.scripts.flush()
            return OK
        raise CommandError(f"ERR unknown subcommand or wrong number of arguments for 'SCRIPT {sub}'")

    def _transaction(self, connection: Connection, commands: tuple) -> Any:
        self.requests += 2  # MULTI and EXEC; the queued commands count as they run
        try:
            for words in commands:
                if type(words) is not Script:
                    check_arity(words)
        except CommandError:
            self.requests += len(commands)
            self.store.unwatch(connection)
            raise CommandError("EXECABORT Transaction discarded because of previous errors.") from None
        aborted = connection.dirty
        self.store.unwatch(connection)
        if aborted:
            self.requests += len(commands)
            return None
        return [self.run(connection, command) for command in commands]
