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

What a crash keeps of the request in service follows when Redis writes the
AOF: once per event-loop iteration, before it sends that iteration's replies
(``beforeSleep``). A script, a MULTI/EXEC and a pipeline that fits in one
read of the socket (16 KB) are lost whole; a larger pipeline keeps the
16 KB pieces served in earlier iterations.
"""
from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from sim.backends.model.aof import AppendOnlyFile
from sim.backends.model.journal import Journal
from sim.backends.model.persistence import Persistence
from sim.backends.model.scripting import ScriptEngine
from sim.backends.model.store import SERVER_COMMANDS, WALKS, ServerCommand, Store, check_arity
from sim.backends.model.values import OK
from sim.commands import CommandError, Pipeline, Request, Script, Stall, Transaction, may_write, wire_size
from sim.lua import LuaScript

READ_CHUNK_BYTES = 16 * 1024   # PROTO_IOBUF_LEN: what Redis reads from a socket per iteration
# A replica retries a lost primary once per replication cron (every 1 s), so
# after a restart writes under min-replicas-to-write are refused until its
# next tick: up to a second (0.91-0.98 s measured on redis 7.0.15 here with
# an instant restart; ~0.65 s on average in faults_server_crash).
REPLICA_CRON_S = 1.0
NOREPLICAS = "NOREPLICAS Not enough good replicas to write."
# The server runs these, not the store.
_CONNECTION_COMMANDS = SERVER_COMMANDS   # in upper case, as the strategies send them: one test in the hot path


@dataclass(frozen=True)
class ServiceTimes:
    """What each part of a request costs the server, in seconds (`countdrift
    calibrate` measures them on a real redis-server)."""

    request: float = 10e-6       # a round trip's fixed cost: read, parse, reply, write
    command: float = 1e-6        # each command the request carries
    script: float = 3e-6         # each script it runs, beyond a command
    script_call: float = 0.5e-6  # each redis.call the script makes
    fsync_always: float = 0.0    # a write's wait for the fsync under appendfsync always
    # A request that finds the server idle for longer than this: the process
    # wakes up first, at this cost. Measured with redis-benchmark's PING: one
    # client (the server idle 30 us between requests) cost the server 23.1 us
    # each, four (idle about 4 us) 8.0 us, fifty 7.1 us.
    wake: float = 0.0
    # Each element a command walks: a field of HGETALL, HVALS or HKEYS, a
    # member of SMEMBERS (HGETALL of a 1,000-field hash against HGET of one
    # field); a stream's entry XRANGE, XREADGROUP or XAUTOCLAIM reads, an id
    # XACK acknowledges, an id XDEL deletes (each its own probe: a stream
    # entry costs Redis far more than a hash's field).
    element: float = 0.0
    stream_read: float = 0.0
    stream_ack: float = 0.0
    stream_delete: float = 0.0

    def walk_costs(self) -> dict[str, float]:
        """What one element costs each command of WALKS."""
        return {"HGETALL": self.element, "HVALS": self.element, "HKEYS": self.element, "SMEMBERS": self.element,
                "XRANGE": self.stream_read, "XREADGROUP": self.stream_read, "XAUTOCLAIM": self.stream_read,
                "XACK": self.stream_ack, "XDEL": self.stream_delete}


class Connection:
    """Server-side state of one client connection: its WATCHed keys, the
    server (and which of its processes) it reached, the end of its last
    write (for WAIT); on a cluster, the client's number (who reaches which
    node across a partition)."""

    __slots__ = ("watched", "dirty", "server", "incarnation", "last_write", "asking", "client")

    def __init__(self, server: "Server | None" = None, client: int = -1) -> None:
        self.watched: set[str] = set()
        self.dirty = False
        self.server = server
        self.incarnation = server.incarnation if server is not None else 0
        self.last_write = -math.inf
        self.asking = False   # ASKING came before the next command (a cluster's slot migration)
        self.client = client

    def close(self) -> None:
        """The network closed it (a partition): a reply on its way is lost,
        and the client finds out at its next request."""
        self.incarnation = -1


class Entry:
    """One request in the server's queue, and later its reply."""

    __slots__ = ("start", "end", "request", "connection", "reply", "error", "committed", "lost", "applied_at")

    def __init__(self, start: float, end: float, request: Request, connection: Connection) -> None:
        self.start = start
        self.end = end
        self.request = request
        self.connection = connection
        self.reply: Any = None
        self.error: CommandError | None = None  # the first error reply inside it
        self.committed = False   # its effects happened (all of them, or a pipeline's prefix)
        self.lost = False        # the server died before replying
        self.applied_at = math.nan   # when its effects happened


class Server:
    def __init__(self, service: ServiceTimes | None = None, persistence: Persistence | None = None,
                 replicas: int = 0, replication_lag_s: float = 0.0, min_replicas_to_write: int = 0,
                 name: str = "primary") -> None:
        self.name = name
        self.service = service or ServiceTimes()
        self._walk_costs = self.service.walk_costs()
        self._one_command_s = self.service.request + self.service.command   # a round trip of one command
        self.persistence = persistence or Persistence()
        self._fsync_always = self.persistence.appendonly and self.persistence.appendfsync == "always"
        self.replicas = replicas
        self.replication_lag_s = replication_lag_s   # how far behind the primary every replica is
        # min-replicas-to-write: writes are refused while fewer replicas are
        # connected (after a restart, until they are back).
        self.min_replicas_to_write = min_replicas_to_write
        self.replicas_back_at = 0.0
        self.replicas_silent_from = math.inf   # cut off from its replicas: they stop counting then
        self.incarnation = 0         # bumped when the process dies: old connections are dead
        self.down_until = -math.inf  # connections are refused until then
        self.store = Store()
        self.scripts = ScriptEngine(self.store)
        self.queue: deque[Entry] = deque()
        self.free_at = 0.0
        self.aof: AppendOnlyFile | None = None   # kept only when a power loss may tear its tail
        self.requests = 0  # commands as clients sent them (MULTI, EXEC and EVALSHA included)
        self.busy_s = 0.0  # service time given so far (the real server's CPU time)
        self._first_error: CommandError | None = None
        # On a cluster shard while slots migrate: the error a request gets
        # instead of running (ASK, TRYAGAIN, MOVED), decided as it runs.
        self.guard: Callable[[Server, Connection, Request], str | None] | None = None

    @property
    def commands(self) -> int:
        """Commands executed, counted as INFO commandstats does: those a script
        runs with redis.call count too."""
        return self.requests + self.scripts.calls

    # -- timing -------------------------------------------------------------
    def service_time(self, request: Request) -> float:
        """How long the server is busy with one round trip's request."""
        return self._busy(request, may_write(request))

    def _walk(self, command: tuple) -> float:
        """What the elements a command of WALKS will walk cost, from the
        keyspace as the command arrives (the queue ahead of it may still
        change it)."""
        unit = self._walk_costs.get(command[0], 0.0)
        return unit * self.store.elements(command) if unit else 0.0

    def _busy(self, request: Request, writes: bool) -> float:
        if type(request) is tuple:
            busy = self._one_command_s + (self._walk(request) if request[0] in WALKS else 0.0)
        else:
            busy = self.service.request + self._work(request)
        if self._fsync_always and writes:
            busy += self.service.fsync_always
        return busy

    def _work(self, request: Request) -> float:
        kind = type(request)
        if kind is tuple:
            return self.service.command + (self._walk(request) if request[0] in WALKS else 0.0)
        if kind is Script:
            return (self.service.script + self.service.script_call * self.scripts.expected_calls(request.script)
                    + self.service.element * self.scripts.expected_elements(request.script) + request.stall_s)
        if kind is Pipeline:
            command, work, walk = self.service.command, self._work, self._walk
            return sum([(command + walk(r) if r[0] in WALKS else command) if type(r) is tuple else work(r)
                        for r in request.commands])
        if kind is Transaction:
            return self.service.command * 2 + sum([self._work(r) for r in request.commands])
        if kind is Stall:
            return request.seconds
        raise TypeError(f"not a Redis request: {request!r}")

    def submit(self, connection: Connection, request: Request, arrival: float, writes: bool | None = None) -> Entry:
        """Queue a request that reaches the server at ``arrival`` (``writes``:
        whether it may write, when the caller knows already).

        Requests must be submitted in arrival order (the driver's clients all
        see the same network delay, so they do).
        """
        if writes is None:
            writes = may_write(request)
        busy = self._busy(request, writes)
        if arrival > self.free_at:
            start = arrival
            if arrival - self.free_at > self.service.wake:   # idle long enough to have gone to sleep
                busy += self.service.wake
        else:
            start = self.free_at
        end = start + busy
        self.free_at = end
        self.busy_s += busy
        entry = Entry(start, end, request, connection)
        self.queue.append(entry)
        if writes:
            connection.last_write = end
        return entry

    def wait(self, connection: Connection, arrival: float, replicas: int, timeout: float) -> tuple[float, int]:
        """WAIT: when the reply leaves the server, and how many replicas had
        acknowledged the connection's last write by then. A replica has a
        write ``replication_lag_s`` after the primary applied it; WAIT returns
        as soon as ``replicas`` have it, or at its timeout (0: never) with
        those that do. WAIT blocks the client only, not the server."""
        self.requests += 1
        ready = arrival + self.service.command
        if connection.last_write == -math.inf:
            return ready, self.replicas   # nothing written on this connection: every replica is up to date
        acknowledged = connection.last_write + self.replication_lag_s
        if self.replicas >= replicas and (timeout <= 0 or acknowledged <= arrival + timeout):
            return max(ready, acknowledged), self.replicas
        deadline = arrival + timeout if timeout > 0 else math.inf
        return deadline, self.replicas if acknowledged <= deadline else 0

    def replica_has_until(self, t: float, lag_s: float | None = None) -> float:
        """A replica cut off at t holds the writes applied up to this time."""
        return t - (self.replication_lag_s if lag_s is None else lag_s)

    def advance(self, now: float) -> None:
        """Commit, in order, every queued request whose service ended by ``now``."""
        queue = self.queue
        store = self.store
        while queue and queue[0].end <= now:
            entry = queue.popleft()
            store.now = end = entry.end
            self._first_error = None
            entry.reply = self.run(entry.connection, entry.request)
            entry.error = self._first_error
            entry.committed = True
            # An EXEC that WATCH aborted applied nothing: it is no moment of effect.
            aborted = entry.reply is None and type(entry.request) is Transaction
            entry.applied_at = math.nan if aborted else end

    # -- faults ---------------------------------------------------------------
    def keep_history(self, seconds: float) -> None:
        """Journal writes so that a fault can roll back up to ``seconds``."""
        self.store.journal = Journal(keep_s=seconds + 1.0)

    def keep_aof(self) -> None:
        """Keep the AOF command by command (a power loss may tear its tail)."""
        self.aof = AppendOnlyFile()
        self.store.batch = []

    def crash(self, at: float, down_for: float, keep_until: float, tear_bytes: int = 0,
              replicas_after_s: float = REPLICA_CRON_S) -> dict:
        """The server process dies at ``at`` and restarts from its own disk
        after ``down_for``, which holds the writes applied by ``keep_until``
        (plus ``tear_bytes`` of the AOF when it keeps one); its replicas are
        back ``replicas_after_s`` after the restart."""
        effects = self._die(at)
        if self.aof is not None:
            if keep_until < at:
                self.aof.cut(self.aof.offset_at(keep_until) + tear_bytes)
            effects.update(self.aof.load(self.store))
            if self.store.journal is not None:   # the journal cannot take writes back past a restart
                self.store.journal = Journal(keep_s=self.store.journal.keep_s)
        elif keep_until < at and self.store.journal is not None:
            effects["keys_rolled_back"] = self._rollback(keep_until, None)
        self.scripts.keep_libraries(keep_until)
        self._restart(at, down_for, replicas_after_s)
        return effects

    def fail_over(self, at: float, down_for: float, keep_until: float, preserve_prefix: str | None = None) -> dict:
        """The primary is gone at ``at``; after ``down_for`` a replica that had
        its writes up to ``keep_until`` serves instead (keys starting with
        ``preserve_prefix`` as they were: a counterfactual), with an AOF of
        its own."""
        effects = self._die(at)
        if keep_until < at and self.store.journal is not None:
            effects["keys_rolled_back"] = self._rollback(keep_until, preserve_prefix)
        self.scripts.keep_libraries(keep_until)
        if self.aof is not None:
            self.aof = AppendOnlyFile((copy.deepcopy(self.store.data), dict(self.store.expires)))
        # The other replicas are pointed at it and connect at once (REPLICAOF);
        # real failovers here refused 4-25 writes under min-replicas-to-write.
        self._restart(at, down_for, 0.0)
        return effects

    def fork(self, at: float, keep_until: float, name: str, preserve_prefix: str | None = None) -> "Server":
        """A replica cut off from this primary, promoted at ``at`` while this
        one goes on serving (a split brain): it holds this primary's writes
        up to ``keep_until``, the libraries loaded by then, and an empty
        script cache."""
        self.advance(at)
        replica = Server(self.service, self.persistence, self.replicas, self.replication_lag_s,
                         self.min_replicas_to_write, name)
        store = replica.store
        journal = self.store.journal
        store.data = copy.deepcopy(self.store.data)
        store.expires = dict(self.store.expires)
        if journal is not None:
            store.journal = journal.copy()
            replica._rollback(keep_until, preserve_prefix)
            store.journal = Journal(keep_s=journal.keep_s)
        if self.aof is not None:
            replica.aof = AppendOnlyFile((copy.deepcopy(store.data), dict(store.expires)))
            store.batch = []
        replica.scripts.adopt_libraries(self.scripts, keep_until)
        replica.requests, replica.scripts.calls = self.requests, self.scripts.calls
        replica.incarnation = self.incarnation + 1
        replica.free_at = at
        return replica

    def demote(self, at: float) -> None:
        """Sentinel made this old primary a replica of the new one: what it
        had not replied to is lost, its connections are closed, and it takes
        no more clients."""
        self._die(at)
        self.incarnation += 1
        self.down_until = math.inf

    def _die(self, at: float) -> dict:
        """What ended by ``at`` happened; the request in service is lost
        whole, but for the 16 KB pieces of a large pipeline served in earlier
        event-loop iterations; the rest of the queue is lost."""
        self.advance(at)
        effects: dict[str, Any] = {"cut": None, "keys_rolled_back": 0}
        if self.queue and self.queue[0].start < at:
            head = self.queue[0]
            effects["cut"] = type(head.request).__name__
            if type(head.request) is Pipeline:
                kept = self._served_pieces(head, at)
                self.store.now = at
                self.run(head.connection, Pipeline(kept))
                head.committed = bool(kept)
                head.applied_at = at
        for entry in self.queue:
            entry.lost = True
        self.queue.clear()
        return effects

    def _restart(self, at: float, down_for: float, replicas_after_s: float) -> None:
        """The script cache is empty afterwards (the libraries stay: they
        are data) and old connections are dead."""
        self.store.watchers.clear()
        self.scripts.flush()
        self.incarnation += 1
        self.down_until = self.free_at = at + down_for
        self.replicas_back_at = self.down_until + replicas_after_s

    def _served_pieces(self, entry: Entry, at: float) -> tuple:
        """The commands of a pipeline in service at ``at`` that Redis served
        in earlier event-loop iterations: those whose 16 KB read came before
        the read of the command in progress."""
        t, offset = entry.start + self.service.request, 0
        served: list[tuple[int, Any]] = []
        for command in entry.request.commands:
            t += self._work(command)
            offset += wire_size(command)
            iteration = (offset - 1) // READ_CHUNK_BYTES
            if t > at:
                return tuple(command for read, command in served if read < iteration)
            served.append((iteration, command))
        return tuple(command for _, command in served)

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
        """Execute a request now; an error reply is returned as a CommandError.
        Each command, script and transaction is one unit of the AOF."""
        if self.aof is None and not self.min_replicas_to_write:   # nothing to do around each unit
            if type(request) is Pipeline:
                if self.guard is not None:   # each command may be refused (a slot migration)
                    return [self._execute(connection, r) for r in request.commands]
                return self._pipeline(connection, request.commands)
            return self._execute(connection, request)
        if type(request) is Pipeline:
            return [self.run(connection, r) for r in request.commands]
        if self.min_replicas_to_write:
            self.store.refusal = NOREPLICAS if self._too_few_replicas() else None
        try:
            return self._execute(connection, request)
        finally:
            if self.aof is not None and self.store.batch:
                self.aof.append(self.store.now, self.store.batch)
                self.store.batch = []

    def _pipeline(self, connection: Connection, commands: tuple) -> list:
        """A pipeline's replies when nothing is done around each unit: a
        plain command goes straight to the store (a call less for each of
        the thousands a large group's delivery pipelines), a pipeline inside
        it (the checker's batched reads) straight here."""
        replies: list = []
        append = replies.append
        execute, store_execute = self._execute, self.store.execute
        plain = 0
        try:
            for command in commands:
                if type(command) is tuple and command[0] not in _CONNECTION_COMMANDS:
                    plain += 1
                    try:
                        append(store_execute(command))
                    except CommandError as error:
                        append(self._error_reply(error))
                    except ServerCommand:   # one of the server's, not in upper case
                        plain -= 1
                        append(execute(connection, command))
                elif type(command) is Pipeline:
                    append(self._pipeline(connection, command.commands))
                else:
                    append(execute(connection, command))
        finally:
            self.requests += plain
        return replies

    def _error_reply(self, error: CommandError) -> CommandError:
        """An error reply, remembered when it is the request's first."""
        if self._first_error is None:
            self._first_error = error
        return error

    def _execute(self, connection: Connection, request: Request) -> Any:
        kind = type(request)
        try:
            if self.guard is not None and kind is not Pipeline:
                refused = self.guard(self, connection, request)
                if refused is not None:
                    self.requests += 1
                    raise CommandError(refused)
            if kind is tuple:
                self.requests += 1
                if request[0] in _CONNECTION_COMMANDS:
                    return self._connection_command(connection, request)
                try:
                    return self.store.execute(request)
                except ServerCommand:   # one of the server's, not in upper case
                    return self._connection_command(connection, request)
            if kind is Script:
                self.requests += 1
                script = request.script
                if script.library:
                    return self.scripts.fcall(script.name, request.keys, request.args)
                return self.scripts.evalsha(script.sha, request.keys, request.args)
            if kind is Transaction:
                return self._transaction(connection, request.commands)
            if kind is Stall:
                return None
            if kind is Pipeline:   # inside a pipeline
                return self.run(connection, request)
        except CommandError as error:
            return self._error_reply(error)
        raise TypeError(f"not a Redis request: {request!r}")

    def inspect(self, request: Request) -> Any:
        """Run a request outside the workload (the checker reading counters):
        not counted, on a connection of its own, where the caller routed it
        (a cluster's migration guard stays out of it)."""
        requests, calls, guard = self.requests, self.scripts.calls, self.guard
        self.guard = None
        try:
            return self.run(Connection(), request)
        finally:
            self.requests, self.scripts.calls, self.guard = requests, calls, guard

    def _connection_command(self, connection: Connection, words: tuple) -> Any:
        """WATCH, UNWATCH and SCRIPT: what the server does, not the store."""
        name = words[0].upper()
        if name == "WATCH":
            self.store.watch(connection, words[1:])
            return OK
        if name == "UNWATCH":
            self.store.unwatch(connection)
            return OK
        if name == "ASKING":
            connection.asking = True
            return OK
        if name == "FCALL":
            return self._fcall(words)
        if name == "FUNCTION":
            return self._function_command(words)
        return self._script_command(words)

    def _fcall(self, words: tuple) -> Any:
        if len(words) < 3:
            raise CommandError("ERR wrong number of arguments for 'fcall' command")
        try:
            count = int(words[2])
        except ValueError:
            raise CommandError("ERR Bad number of keys provided") from None
        if count < 0:
            raise CommandError("ERR Number of keys can't be negative")
        if count > len(words) - 3:
            raise CommandError("ERR Number of keys can't be greater than number of args")
        return self.scripts.fcall(str(words[1]), tuple(words[3:3 + count]), tuple(words[3 + count:]))

    def _function_command(self, words: tuple) -> Any:
        """FUNCTION LOAD [REPLACE], DELETE, FLUSH and LIST [LIBRARYNAME p] [WITHCODE]."""
        sub = str(words[1]).upper() if len(words) > 1 else ""
        rest = [str(word) for word in words[2:]]
        if sub == "LOAD" and rest:
            replace = len(rest) == 2 and rest[0].upper() == "REPLACE"
            if len(rest) == 1 or replace:
                return self.scripts.load_library(rest[-1], replace, self.store.now)
        elif sub == "DELETE" and len(rest) == 1:
            self.scripts.delete_library(rest[0])
            return OK
        elif sub == "FLUSH" and len(rest) <= 1:
            self.scripts.libraries.clear()
            return OK
        elif sub == "LIST":
            pattern, with_code, index = "*", False, 0
            while index < len(rest):
                option = rest[index].upper()
                if option == "WITHCODE":
                    with_code, index = True, index + 1
                elif option == "LIBRARYNAME" and index + 1 < len(rest):
                    pattern, index = rest[index + 1], index + 2
                else:
                    raise CommandError(f"ERR Unknown argument {rest[index]}")
            return self.scripts.list_libraries(pattern, with_code)
        raise CommandError(f"ERR unknown subcommand or wrong number of arguments for 'FUNCTION {sub}'")

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

    def _too_few_replicas(self) -> bool:
        now = self.store.now
        return (self.replicas < self.min_replicas_to_write or now < self.replicas_back_at
                or now >= self.replicas_silent_from)

    def _transaction(self, connection: Connection, commands: tuple) -> Any:
        self.requests += 2  # MULTI and EXEC; the queued commands count as they run
        queued = []
        try:
            for words in commands:
                if type(words) is not Script:
                    check_arity(words)
                    if str(words[0]).upper() == "WATCH":   # refused at once ("WATCH inside MULTI is not
                        self.requests += 1                 # allowed"), not queued: the transaction goes on
                        continue
                    if self.store.refusal is not None and may_write(words):   # refused as it is queued
                        raise CommandError(self.store.refusal)
                queued.append(words)
        except CommandError:
            self.requests += len(commands)
            self.store.unwatch(connection)
            raise CommandError("EXECABORT Transaction discarded because of previous errors.") from None
        aborted = connection.dirty
        self.store.unwatch(connection)
        if aborted:
            self.requests += len(queued)
            return None
        return [self._execute(connection, command) for command in queued]
