"""The SimPy driver: virtual clients replay a trace through a strategy
against the simulated server, while the nemesis breaks things.

Operations are dealt to the clients round-robin in trace order; each client
runs its operations one after another on its own connection, starting each
at its trace time or, when it is behind, as soon as it is free (the wait is
latency). Every request costs one network round trip plus its place in the
server's FIFO queue. The driver owns every retry: an operation whose outcome
is unknown (reply lost, timeout) or that could not reach the server is run
again, whole, by the retry policy; a client that lost its connection
reconnects and loads the strategy's scripts again (the script cache does not
survive a restart or a failover).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import simpy

from sim.backends.model import network
from sim.client import CAUSES, Attempt, Client, ClientConfig, ConnectionRefused
from sim.backends.model.network import Network
from sim.backends.model.server import Connection, Entry, Server, may_write
from sim.checker import Counters, Drift, check, read_counters
from sim.commands import Backoff, CommandError, ConnectionLost, Pipeline
from sim.history import FAIL, OK, UNKNOWN, History
from sim.traffic import Trace
from sim.truth import Memberships, truth_ranges
from sim.workload import Workload
from strategies.base import Strategy

class SimDriver:
    def __init__(self, trace: Trace, strategy: Strategy, clients: ClientConfig, server: Server,
                 seed: int = 0, timeline_points: int = 20, causes: frozenset[str] = frozenset(CAUSES),
                 progress: Callable[[float, int], None] | None = None) -> None:
        self.trace = trace
        self.strategy = strategy
        self.config = clients
        self.causes = causes
        self.env = simpy.Environment()
        self.server = server
        self.network = Network(seed)
        self.clients = [Client(index) for index in range(clients.count)]
        self.history = History(len(trace.t))
        self.pairs = Memberships(trace)
        self.timeline: list[dict] = []
        self.timeline_points = timeline_points
        self.progress = progress
        self.reconnects = 0
        self.script_loads = 0
        self.noscript = 0
        self.crashed_operations = 0
        self._half_rtt = clients.rtt_ms / 2000.0
        self._timeout = clients.timeout_ms / 1000.0
        self._wait_replicas = int(strategy.options.get("wait_replicas", 0))
        # Counterfactual when "retry_applied_twice" is off: the reply of a
        # request that reached the server is never lost (no timeout, no reset).
        self._replies_lost = "retry_applied_twice" in causes
        self.workload = Workload(trace)
        self._t = self.workload.t
        for script in strategy.scripts:
            self.server.scripts.load(script)

    # -- the run ----------------------------------------------------------------
    def run(self, processes: tuple = ()) -> None:
        """Run the trace to its end; ``processes`` (the nemesis) run beside it."""
        n_ops = len(self._t)
        for client in self.clients:
            client.connection = Connection(self.server.incarnation)
            self.env.process(self._client(client, range(client.index, n_ops, len(self.clients))))
        for process in processes:
            self.env.process(process)
        if self.timeline_points and n_ops:
            self.env.process(self._ticker())
        if self.progress and n_ops:
            self.env.process(self._progress_ticker())
        self.env.run()
        self.server.advance(np.inf)

    def drift(self, at: float = np.inf) -> Drift:
        truth = truth_ranges(self.trace, self.history, self.pairs, at)
        return check(self.pairs, truth, self.counters())

    def counters(self) -> Counters:
        return read_counters(self.strategy, self.trace.users, self.server.inspect)

    def _ticker(self):
        span = self._t[-1]
        previous_ops, previous_at = 0, 0.0
        for point in range(1, self.timeline_points + 1):
            at = span * point / self.timeline_points
            yield self.env.timeout(at - self.env.now)
            self.server.advance(at)
            drift = self.drift(at)
            ops = self.history.completed_by(at)
            self.timeline.append({
                "t": round(at, 9), "ops": ops,
                "ops_per_s": round((ops - previous_ops) / (at - previous_at), 3),
                "users_inconsistent": drift.users_inconsistent, "abs_drift_sum": drift.abs_drift_sum})
            previous_ops, previous_at = ops, at

    def _progress_ticker(self, steps: int = 100):
        span = self._t[-1]
        for step in range(1, steps + 1):
            yield self.env.timeout(span * step / steps - self.env.now)
            self.progress(self.env.now, self.history.completed_by(self.env.now))

    # -- clients ----------------------------------------------------------------
    def _client(self, client: Client, ops: range):
        env, history = self.env, self.history
        for op in ops:
            intended = self._t[op]
            if intended > env.now:
                yield env.timeout(intended - env.now)
            if client.pause_for is not None and "two_lock_holders" not in self.causes:
                # Counterfactual: the pause falls between operations, never inside one.
                yield from self._pause(client)
            history.invoked(op, env.now)
            attempt = 0
            while True:
                result = yield from self._attempt(client, op, attempt)
                if result.crashed:
                    # The client died inside the operation: nobody retries it.
                    self.crashed_operations += 1
                    yield env.timeout(client.crash_for)
                    client.crash_for = client.connection = None
                    break
                if not result.retriable:
                    break
                if attempt >= self.config.retries and "gave_up" in self.causes:
                    break  # (counterfactual when off: retry until it goes through)
                attempt += 1
                history.retries += 1
                yield env.timeout(self.config.backoff(attempt))
            history.completed(op, env.now, result.outcome)

    def _pause(self, client: Client):
        yield self.env.timeout(client.pause_for)
        client.pause_for = None

    def _attempt(self, client: Client, op: int, attempt: int):
        """One attempt of an operation."""
        history = self.history
        operation = self.workload.operation(self.strategy, op)
        entries: list[Entry] = []
        reply: Any = None
        error: Exception | None = None
        failed = False
        sent = 0
        try:
            while True:
                request = operation.send(reply) if error is None else operation.throw(error)
                reply = error = None
                sent += 1
                if type(request) is Backoff:
                    history.retries += 1
                    yield self.env.timeout(request.seconds)
                    continue
                # A client crash strikes between two requests of an operation.
                if client.crash_for is not None and client.strikes(self.env.now, len(entries), 1):
                    operation.close()
                    return Attempt(UNKNOWN, crashed=True)
                try:
                    reply = yield from self._request(client, request, entries, op, attempt, sent)
                except CommandError as found:
                    error = found
                    continue
                if entries[-1].error is not None:  # inside a pipeline or a transaction
                    failed = True
                    history.errors[_error_code(entries[-1].error)] += 1
                # A pause strikes when a reply comes back, preferably one that
                # an operation will act on (it has read, and will write).
                if (client.pause_for is not None and "two_lock_holders" in self.causes
                        and client.strikes(self.env.now, len(entries), 2)):
                    yield from self._pause(client)
        except StopIteration:
            return Attempt(FAIL if failed else OK)
        except ConnectionLost as lost:
            refused = isinstance(lost, ConnectionRefused)
            if refused:
                history.errors["connection refused"] += 1
            # Refused before anything was sent: it surely did not apply.
            outcome = FAIL if refused and not entries else UNKNOWN
            return Attempt(outcome, retriable=True)
        except CommandError as found:
            history.errors[_error_code(found)] += 1
            return Attempt(FAIL)
        except Exception as gave_up:  # a strategy gave up: lock busy, WATCH kept aborting
            history.errors[type(gave_up).__name__] += 1
            return Attempt(FAIL)

    def _request(self, client: Client, request: Any, entries: list[Entry], op: int, attempt: int, number: int):
        """Send one request and return its reply; raise CommandError for an
        error reply, ConnectionLost when the reply is lost. The operation, the
        attempt and the request's number decide the network's dice."""
        env, server = self.env, self.server
        route = self.network.route(env.now, op, attempt, number) if self.network.windows else network.CLEAR
        if route.fate == network.REFUSE:
            yield env.timeout(2 * self._half_rtt)
            client.connection = None
            raise ConnectionRefused("partitioned")
        if route.fate == network.VANISH:
            yield env.timeout(self._timeout)
            client.connection = None
            self.history.ambiguous += 1
            raise ConnectionLost("timeout")
        if client.connection is not None and client.connection.incarnation != server.incarnation:
            # The server this connection went to has died: the socket is closed.
            yield env.timeout(2 * self._half_rtt)
            client.connection = None
            self.history.ambiguous += 1
            raise ConnectionLost("connection closed by server")
        if client.connection is None:
            yield from self._reconnect(client)
        if route.delay_out:
            yield env.timeout(route.delay_out)
        connection = client.connection
        sent = env.now
        entry = server.submit(connection, request, sent + self._half_rtt)
        entries.append(entry)
        reply_at = entry.end + self._half_rtt + route.delay_back
        replies_lost = self._replies_lost
        if reply_at - sent > self._timeout and replies_lost:
            yield env.timeout(self._timeout)
            client.connection = None
            self.history.ambiguous += 1
            raise ConnectionLost("timeout")
        yield env.timeout(reply_at - sent)
        server.advance(env.now)
        if entry.lost or (route.fate == network.RESET and replies_lost):
            client.connection = None
            self.history.ambiguous += 1
            raise ConnectionLost("connection reset" if not entry.lost else "server went away")
        reply = entry.reply
        if type(reply) is CommandError:
            if str(reply).startswith("NOSCRIPT"):
                self.noscript += 1
                client.connection = None  # reconnect, load the scripts, send again
                return (yield from self._request(client, request, entries, op, attempt, number))
            raise reply
        if self._wait_replicas and may_write(request):
            ready, _ = server.wait(connection, env.now + self._half_rtt, self._wait_replicas,
                                   self.config.wait_timeout_ms / 1000.0)
            yield env.timeout(ready + self._half_rtt - env.now)
        return reply

    def _reconnect(self, client: Client):
        env, server = self.env, self.server
        if env.now < server.down_until:
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("server down")
        self.reconnects += 1
        client.connection = Connection(server.incarnation)
        if self.strategy.scripts:
            self.script_loads += 1
            load = Pipeline(tuple(("SCRIPT", "LOAD", script.source) for script in self.strategy.scripts))
            entry = server.submit(client.connection, load, env.now + self._half_rtt)
            yield env.timeout(entry.end + 2 * self._half_rtt - env.now)
            server.advance(env.now)
            if entry.lost:
                client.connection = None
                raise ConnectionRefused("server went away while loading scripts")


def _error_code(error: CommandError) -> str:
    text = str(error)
    return text.split(" ", 1)[0] if text else "ERR"
