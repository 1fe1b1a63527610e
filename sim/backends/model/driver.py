"""The SimPy driver: virtual clients replay a trace through a strategy
against the simulated server, while the nemesis breaks things.

Operations are dealt to the clients round-robin in trace order; what a
client does with them (start times, retries, crashes, pauses, WAIT, the
stall of a mid-script power loss) is the shared ClientLoop
(sim/client.py); this driver carries its instructions out in simulated time.
Every request costs one network round trip plus its place in the server's
FIFO queue. A client opens a connection with a handshake (PING, and SCRIPT
LOAD of the strategy's scripts: the script cache does not survive a
restart or a failover), as the real driver does; a request on a connection
the server has closed, or to a server that is down, is refused without being
sent. The run ends when every client has finished its operations.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import simpy

from sim import network
from sim.backends.model.server import Connection, Entry, Server
from sim.checker import Counters, Drift, check, read_counters
from sim.client import CAUSES, Client, ClientLoop, ConnectionRefused, Send, Sleep
from sim.cluster import asked, refused_whole
from sim.commands import (
    CommandError,
    ConnectionLost,
    Pipeline,
    first_error,
    reply_elements,
    run_batch,
    run_now,
    sent_commands,
)
from sim.heap import cyclic_gc_paused
from sim.history import History
from sim.lua import forgotten, load_command, load_replies
from sim.metrics import timeline_point
from sim.nemesis import AckLog, Split, StallTarget
from sim.network import Network
from sim.scenario import ClientConfig
from sim.story import Tracer
from sim.traffic import Trace
from sim.truth import Memberships, truth_ranges
from sim.worker import WorkerLoop, WorkerStats
from sim.workload import Workload
from strategies.base import Strategy


class SimDriver:
    def __init__(self, trace: Trace, strategy: Strategy, clients: ClientConfig, server: Server,
                 seed: int = 0, timeline_points: int = 20, causes: frozenset[str] = frozenset(CAUSES),
                 progress: Callable[[float, int], None] | None = None, acks: AckLog | None = None,
                 target: StallTarget | None = None, paced: bool = True, think_s: float = 0.0) -> None:
        self.trace = trace
        self.strategy = strategy
        self.config = clients
        self.causes = causes
        self.env = simpy.Environment()
        self.server = server   # the primary of the moment (Sentinel's answer)
        self.split: Split | None = None   # set by a split brain while it lasts
        self.network = Network(seed)
        self.clients = [Client(index) for index in range(clients.count)]
        self.history = History(len(trace.t))
        self.history.commits_known = True
        self.pairs = Memberships(trace)
        self.timeline: list[dict] = []
        self.timeline_points = timeline_points
        self.progress = progress
        self.reconnects = 0
        self.script_loads = 0
        self.noscript = 0
        self.run_end = 0.0
        self._half_rtt = clients.rtt_ms / 2000.0
        # The clients' shared process, when modelled: a FIFO CPU that every reply and timer passes through.
        self._driver_request = clients.driver_request_us / 1e6
        self._driver_command = clients.driver_command_us / 1e6
        self._driver_element = clients.driver_element_us / 1e6
        self._driver_wake = clients.driver_wake_us / 1e6
        self._driver_sleep = clients.driver_sleep_us / 1e6
        # Whether the shared process is modelled at all: one test per reply and per timer.
        self._driver_modelled = bool(self._driver_request or self._driver_command or self._driver_element
                                     or self._driver_wake or self._driver_sleep)
        self.driver_free = 0.0
        self.driver_busy = 0.0   # seconds of the shared process's CPU
        self.driver_wakes = 0    # the times it was idle when an event came
        self._timeout = clients.timeout_ms / 1000.0
        # Counterfactual when "retry_applied_twice" is off: the reply of a
        # request that reached the server is never lost (no timeout, no reset).
        self._replies_lost = "retry_applied_twice" in causes
        self._handshake = Pipeline((("PING",), *map(load_command, strategy.code)))
        self._cluster = hasattr(server, "open_links")   # a Redis Cluster: one link per shard
        if self._cluster:
            server.handshake = self._handshake
        self.workload = Workload(trace, strategy, clients.count)
        self._t = self.workload.t
        self.loop = ClientLoop(self.workload, strategy, clients, self.history, causes, lambda: self.env.now,
                               paced=paced, acks=acks, target=target, exact_commits=True, think_s=think_s)
        # The strategy's background jobs, each a worker with a connection of its own.
        self.workers = [Client(clients.count + index) for index in range(len(self.workload.jobs))]
        self.worker_stats = WorkerStats()
        self.worker_loop = WorkerLoop(lambda: self.env.now, causes, self.worker_stats)
        self.clients_done = False
        # Requests whose reply was lost while they could still apply: (entry, operation).
        self._unanswered: list[tuple[Entry, int]] = []

    # -- the run ----------------------------------------------------------------
    def run(self, processes: tuple = ()) -> None:
        """Run the trace to its end; ``processes`` (the nemesis) run beside it
        and stop with it."""
        n_ops = len(self._t)
        env = self.env
        clients = [env.process(self._carry(client, self.loop.run(client)))
                   for client in self.clients]
        workers = [env.process(self._carry(worker, self.worker_loop.run(worker, job, lambda: self.clients_done)))
                   for worker, job in zip(self.workers, self.workload.jobs)]
        for process in processes:
            env.process(process)
        if self.timeline_points and n_ops:
            env.process(self._ticker())
        if self.progress and n_ops:
            env.process(self._progress_ticker())
        with cyclic_gc_paused():
            env.run(until=env.all_of(clients))
            self.clients_done = True
            if workers:   # their last pass: the last flush, the last consume
                env.run(until=env.all_of(workers))
        self.run_end = env.now
        self.server.advance(np.inf)   # requests whose clients gave up still run
        self.settle()

    def settle(self) -> None:
        """Tell the history when the server applied the requests whose
        replies were lost (the simulation knows, the client did not)."""
        waiting = []
        for entry, op in self._unanswered:
            if entry.committed:
                self.history.applied(op, entry.applied_at)
            elif not entry.lost:
                waiting.append((entry, op))
        self._unanswered = waiting

    def drift(self, at: float = np.inf) -> Drift:
        truth = truth_ranges(self.trace, self.history, self.pairs, at)
        return check(self.pairs, truth, self.counters())

    def follow(self, tracer: Tracer) -> None:
        """Let ``tracer`` follow its operations, and read its user's counters
        when each completes (simulated time stands still while it reads)."""
        def read(user: int) -> tuple[dict[int, int], int]:
            self.server.advance(self.env.now)
            counts, total, _ = run_batch([self.strategy.counters(user)], self.server.inspect)[0]
            return counts, total

        self.loop.tracer = tracer
        tracer.read = read

    def counters(self) -> Counters:
        return read_counters(self.strategy, self.trace.users, self.trace.conversations, self.server.inspect)

    def strategy_figures(self) -> dict[str, int]:
        return run_now(self.strategy.run_figures(self.trace.users), self.server.inspect)

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
    def _carry(self, client: Client, loop):
        """Carry out the instructions of a client's loop (or a worker's) in simulated time."""
        env = self.env
        answer: Any = None
        error: Exception | None = None
        while True:
            try:   # next_instruction's body: a call less per instruction
                instruction = loop.send(answer) if error is None else loop.throw(error)
            except StopIteration:
                return
            answer = error = None
            kind = type(instruction)
            if kind is Send:
                try:
                    answer = yield from self._request(client, instruction)
                except ConnectionLost as lost:
                    error = lost
            elif kind is Sleep:
                yield env.timeout(instruction.seconds)
                if self._driver_modelled:   # the timer is an event of the shared process
                    yield from self._driver_job(self._driver_sleep)
            else:
                client.connection = None

    def _request(self, client: Client, send: Send):
        """Send one request; return (reply, first error inside it, when the
        server applied it); raise ConnectionRefused when it was not sent,
        ConnectionLost when its reply is lost. The operation, the attempt and
        the request's number decide the network's dice."""
        env = self.env
        request = send.request
        connection = client.connection
        if connection is not None and connection.incarnation != connection.server.incarnation:
            client.connection = None   # the server died and closed the socket: the client knows
            raise ConnectionRefused("connection closed by the server")
        route = (self.network.route(env.now, send.operation, send.attempt, send.number)
                 if self.network.windows else network.CLEAR)
        if route.fate == network.REFUSE:   # a partition refuses new connections and closes the others
            client.connection = None
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("partitioned")
        if client.connection is None:
            yield from self._connect(client, route)
        connection = client.connection
        server = connection.server
        if self._cluster:   # a link per shard, each opened, closed and refused on its own
            yield from self._shard_links(client, connection, request, route)
        sent = env.now
        if route.fate == network.VANISH:
            yield env.timeout(self._timeout)
            raise self._lose(client, "timeout", request)
        arrival = sent + route.delay_out + self._half_rtt
        timeout = self._timeout
        if type(request) is tuple and request[0] == "WAIT":
            ready, answer = server.wait(connection, arrival, request[1], request[2] / 1000.0)
            timeout += request[2] / 1000.0
            entry = None
        else:
            entry = server.submit(connection, request, arrival, send.writes)
            ready = entry.end
        reply_at = ready + self._half_rtt + route.delay_back
        if reply_at - sent > timeout and self._replies_lost:
            yield env.timeout(timeout)
            if send.operation >= 0:   # (a worker's request is no operation of the trace)
                self.history.timed_out[send.operation] = True   # for a client's view of the truth
            if entry is not None and send.writes and send.operation >= 0:
                self._unanswered.append((entry, send.operation))
            raise self._lose(client, "timeout", request)
        yield env.timeout(reply_at - sent)
        if self._driver_modelled:
            cost = self._driver_request + self._driver_command * sent_commands(request)
            if self._driver_element and entry is not None:   # the reply's arrays, read and walked
                server.advance(env.now)
                cost += self._driver_element * reply_elements(request, entry.reply)
            yield from self._driver_job(cost)
        if entry is None:
            if connection.incarnation != server.incarnation or (self._cluster and server.dead_links(
                    connection, server.shards_of(request))):
                raise self._lose(client, "server went away", request)
            return answer, None, ready
        server.advance(env.now)
        # A split brain closed the link while the request was out (on a cluster, a partition cut
        # one of its links): it ran, its reply is lost.
        closed = self._replies_lost and (connection.incarnation < 0 or (
            self._cluster and server.cut is not None
            and bool(server.dead_links(connection, server.shards_of(request)))))
        if entry.lost or closed or (route.fate == network.RESET and self._replies_lost):
            if entry.committed and send.writes and send.operation >= 0:   # it ran (a pipeline's first items, or all)
                self.history.applied(send.operation, entry.applied_at)
            if entry.lost or closed:
                raise self._lose(client, "server went away" if entry.lost else "connection closed", request)
            self.network.replies_lost[route.window] += 1
            raise self._lose(client, "connection reset", request)
        reply = entry.reply
        if self._cluster and refused_whole(reply):   # nothing ran: a cluster client tries again later
            raise ConnectionRefused("CLUSTERDOWN")
        if type(reply) is CommandError and forgotten(reply):
            self.noscript += 1
            client.connection = None  # reconnect, load the scripts (the libraries), send again
            return (yield from self._request(client, send))
        if self._cluster and asked(reply):   # a slot on the move
            return (yield from self._follow_asks(client, send, reply, entry.applied_at))
        return reply, entry.error, entry.applied_at   # NaN for an EXEC that WATCH aborted: it applied nothing

    def _follow_asks(self, client: Client, send: Send, reply, applied_at: float):
        """ASK: the request (a pipeline's item that got it) again, after
        ASKING, on the node the ASK names, one round trip each, as the real
        cluster client does."""
        request = send.request
        items = list(reply) if type(request) is Pipeline else [reply]
        commands = request.commands if type(request) is Pipeline else (request,)
        for index, item in enumerate(items):
            if asked(item):
                followed, _, at = yield from self._request(
                    client, send._replace(request=Pipeline((("ASKING",), commands[index]))))
                items[index] = followed[1]   # the reply to ASKING, then the request's
                applied_at = at if applied_at != applied_at else max(applied_at, at)   # NaN: none yet
        reply = items if type(request) is Pipeline else items[0]
        return reply, first_error(items), applied_at

    def _driver_job(self, cost: float):
        """A reply or a timer waits for the shared process, which handles
        events one at a time in the order they come, as an event loop does:
        the reply is read, the client's next step runs and its next request
        is written (``cost``: the request's encoding and its reply's reading,
        from the calibration's loaded fit), and only then does that request
        leave. If the process is idle, it waits in epoll and wakes up first:
        charged at every idle moment, not after an idle as long as the
        wake-up as for redis-server: here that was closer to the real driver
        (hot_user, lock, 8 clients: 18,118 ops/s simulated so, 20,000 with
        the server's rule, 11,428 real).

        Charged when the reply comes, not when the request is sent: a reply
        that comes while the process is busy waits for it, and the client's
        next request waits with it. Charged at the send (the reply's part
        early), a reply skipped that queue, and on the hot conversation the
        lock was held for less time than on real servers. With one
        calibration, in one sitting: hot_user's lock capacity 1.67x real's
        that way, 1.23x this way (with each sleep's cost), watch 1.35x and
        1.17x; the other cells did not move."""
        now = self.env.now
        start = self.driver_free
        if now > start:   # idle
            start = now
            cost += self._driver_wake
            self.driver_wakes += 1
        self.driver_free = start + cost
        self.driver_busy += cost
        if self.driver_free > now:
            yield self.env.timeout(self.driver_free - now)

    def _lose(self, client: Client, why: str, request=None) -> ConnectionLost:
        """The reply is lost: the client drops the connection (on a cluster,
        its links to the shards the request went to); the outcome is unknown."""
        if self._cluster and request is not None and client.connection is not None:
            self.server.drop_links(client.connection, self.server.shards_of(request))
        else:
            client.connection = None
        self.history.ambiguous += 1
        return ConnectionLost(why)

    def _shard_links(self, client: Client, connection: Connection, request, route: network.Route):
        """On a cluster, before a request is sent: every shard it goes to
        needs a live link. One the shard closed (it died) refuses the
        request, sending nothing anywhere, and is forgotten; a missing one
        is opened with the handshake, refused while its shard is down. A
        request to the other shards goes on as if nothing happened (the
        real cluster client: sim/backends/real/cluster.py)."""
        env, cluster = self.env, connection.server
        shards = cluster.shards_of(request)
        if cluster.dead_links(connection, shards):
            raise ConnectionRefused("connection closed by the server")
        missing = cluster.missing_links(connection, shards)
        if not missing:
            return
        nodes = [cluster.node(client.index, shard) for shard in missing]
        if any(node is None for node in nodes):
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("partitioned from the node")
        if any(env.now < node.down_until for node in nodes):
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("server down")
        if route.fate == network.VANISH:   # the handshake vanishes (a blackhole): refused at the timeout
            yield env.timeout(self._timeout)
            raise ConnectionRefused("no answer to the handshake")
        started = env.now
        entries = cluster.open_links(connection, missing, started + route.delay_out + self._half_rtt)
        reply_at = max(entry.end for entry in entries.values()) + self._half_rtt + route.delay_back
        if reply_at - started > self._timeout:
            cluster.drop_links(connection, missing)
            yield env.timeout(self._timeout)
            raise ConnectionRefused("the handshake timed out")
        yield env.timeout(reply_at - started)
        for node in nodes:
            node.advance(env.now)
        lost = [shard for shard, entry in entries.items() if entry.lost]
        if lost:
            cluster.drop_links(connection, lost)
            raise ConnectionRefused("server went away during the handshake")
        for node in nodes:
            client.connects.append((env.now, node.name))

    def _connect(self, client: Client, route: network.Route):
        """Open a connection: PING and the strategy's code loaded in one round trip; refused
        (nothing of the operation sent) when the server is down or does not
        answer."""
        env = self.env
        server = self.server if self.split is None else self.split.route(client.index, self.server)
        if server is None:
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("partitioned from the primary")
        if env.now < server.down_until:
            yield env.timeout(2 * self._half_rtt)
            raise ConnectionRefused("server down")
        if route.fate == network.VANISH:
            yield env.timeout(self._timeout)
            raise ConnectionRefused("no answer to the handshake")
        connection = Connection(server, client.index)
        started = env.now
        if self._cluster:   # a link to every shard that is up (the others: when a request needs them)
            nodes = [server.node(client.index, index) for index in range(len(server.shards))]
            up = [index for index, node in enumerate(nodes) if node is not None and env.now >= node.down_until]
            if not up:
                yield env.timeout(2 * self._half_rtt)
                raise ConnectionRefused("server down")
            entries = server.open_links(connection, up, started + route.delay_out + self._half_rtt)
            end = max(entry.end for entry in entries.values())
        else:
            entry = server.submit(connection, self._handshake, started + route.delay_out + self._half_rtt)
            end = entry.end
        reply_at = end + self._half_rtt + route.delay_back
        if reply_at - started > self._timeout:
            yield env.timeout(self._timeout)
            raise ConnectionRefused("the handshake timed out")
        yield env.timeout(reply_at - started)
        server.advance(env.now)
        if self._cluster:
            lost = [index for index, entry in entries.items() if entry.lost]
            server.drop_links(connection, lost)
            if len(lost) == len(entries):
                raise ConnectionRefused("server went away during the handshake")
            for index in entries:
                if index not in lost:
                    client.connects.append((env.now, nodes[index].name))
        elif entry.lost:
            raise ConnectionRefused("server went away during the handshake")
        self.reconnects += 1
        answers = [entry.reply for index, entry in entries.items() if index not in lost] if self._cluster else [
            entry.reply]
        self.script_loads += any(load_replies(self.strategy.code, answer[1:])[0] for answer in answers)
        client.connection = connection
        client.connected(env.now, server.name)
