"""The SimPy driver: virtual clients replay a trace through a strategy
against the simulated server, while the nemesis breaks things.

Operations are dealt to the clients round-robin in trace order; what a
client does with them (start times, retries, crashes, pauses) is the shared
ClientLoop (sim/client.py); this driver carries its instructions out in
simulated time. Every request costs one network round trip plus its place in
the server's FIFO queue; a client that lost its connection reconnects and
loads the strategy's scripts again (the script cache does not survive a
restart or a failover).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import simpy

from sim.backends.model import network
from sim.backends.model.network import Network
from sim.backends.model.server import Connection, Server
from sim.checker import Counters, Drift, check, read_counters
from sim.client import CAUSES, Client, ClientConfig, ClientLoop, ConnectionRefused, Send, Sleep, next_instruction
from sim.commands import CommandError, ConnectionLost, Pipeline, may_write
from sim.history import History
from sim.metrics import timeline_point
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
        self._half_rtt = clients.rtt_ms / 2000.0
        self._timeout = clients.timeout_ms / 1000.0
        self._wait_replicas = int(strategy.options.get("wait_replicas", 0))
        # Counterfactual when "retry_applied_twice" is off: the reply of a
        # request that reached the server is never lost (no timeout, no reset).
        self._replies_lost = "retry_applied_twice" in causes
        self.workload = Workload(trace)
        self._t = self.workload.t
        self.loop = ClientLoop(self.workload, strategy, clients, self.history, causes, lambda: self.env.now)
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
        for point in range(1, self.timeline_points + 1):
            at = span * point / self.timeline_points
            yield self.env.timeout(at - self.env.now)
            self.server.advance(at)
            self.timeline.append(timeline_point(at, self.drift(at), self.history,
                                                self.timeline[-1] if self.timeline else None))

    def _progress_ticker(self, steps: int = 100):
        span = self._t[-1]
        for step in range(1, steps + 1):
            yield self.env.timeout(span * step / steps - self.env.now)
            self.progress(self.env.now, self.history.completed_by(self.env.now))

    # -- clients ----------------------------------------------------------------
    def _client(self, client: Client, ops: range):
        """Carry out the shared client loop's instructions in simulated time."""
        env = self.env
        loop = self.loop.run(client, ops)
        answer: Any = None
        error: Exception | None = None
        while (instruction := next_instruction(loop, answer, error)) is not None:
            answer = error = None
            kind = type(instruction)
            if kind is Send:
                try:
                    answer = yield from self._request(client, instruction)
                except ConnectionLost as lost:
                    error = lost
            elif kind is Sleep:
                yield env.timeout(instruction.seconds)
            else:
                client.connection = None

    def _request(self, client: Client, send: Send):
        """Send one request; return (reply, first error inside it); raise
        ConnectionLost when the reply is lost. The operation, the attempt and
        the request's number decide the network's dice."""
        env, server = self.env, self.server
        request = send.request
        route = (self.network.route(env.now, send.operation, send.attempt, send.number)
                 if self.network.windows else network.CLEAR)
        if route.fate == network.REFUSE:
            yield env.timeout(2 * self._half_rtt)
            client.connection = None
            raise ConnectionRefused("partitioned")
        if route.fate == network.VANISH:
            yield env.timeout(self._timeout)
            raise self._lose(client, "timeout")
        if client.connection is not None and client.connection.incarnation != server.incarnation:
            # The server this connection went to has died: the socket is closed.
            yield env.timeout(2 * self._half_rtt)
            raise self._lose(client, "connection closed by server")
        if client.connection is None:
            yield from self._reconnect(client)
        if route.delay_out:
            yield env.timeout(route.delay_out)
        connection = client.connection
        sent = env.now
        entry = server.submit(connection, request, sent + self._half_rtt)
        reply_at = entry.end + self._half_rtt + route.delay_back
        replies_lost = self._replies_lost
        if reply_at - sent > self._timeout and replies_lost:
            yield env.timeout(self._timeout)
            raise self._lose(client, "timeout")
        yield env.timeout(reply_at - sent)
        server.advance(env.now)
        if entry.lost or (route.fate == network.RESET and replies_lost):
            raise self._lose(client, "connection reset" if not entry.lost else "server went away")
        reply = entry.reply
        if _is_noscript(reply):
            self.noscript += 1
            client.connection = None  # reconnect, load the scripts, send again
            return (yield from self._request(client, send))
        if self._wait_replicas and may_write(request):
            ready, _ = server.wait(connection, env.now + self._half_rtt, self._wait_replicas,
                                   self.config.wait_timeout_ms / 1000.0)
            yield env.timeout(ready + self._half_rtt - env.now)
        return reply, entry.error

    def _lose(self, client: Client, why: str) -> ConnectionLost:
        """The reply is lost: the client drops the connection; the outcome is unknown."""
        client.connection = None
        self.history.ambiguous += 1
        return ConnectionLost(why)

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


def _is_noscript(reply: Any) -> bool:
    return type(reply) is CommandError and str(reply).startswith("NOSCRIPT")
