"""The asyncio driver: virtual clients replay a trace through a strategy
against real redis-server processes, in wall-clock time.

The same round-robin dealing, retry policy, WAIT and history as the
simulated driver (the shared ClientLoop): each virtual client is an asyncio
task with one connection of its own (hiredis, no retry of its own), through
its own toxiproxy proxy unless the run is direct. A request whose fate
under an open reset_peer window is RESET (the network's dice, the same as
in the simulation) gets a limit_data toxic armed on its client's proxy just
before it is sent, so that it runs and its reply is cut. An operation's
intended start is its trace time after the run's start; latency is measured
from it. The run ends when every client has finished its operations.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Protocol, TypeVar

import redis.exceptions

from sim.backends.real.connection import AsyncConnection, HandshakeFailed, SyncConnection
from sim.backends.real.timer import FineTimer
from sim.backends.real.toxics import Toxics
from sim.checker import Counters, check, read_counters
from sim.client import CAUSES, Client, ClientLoop, ConnectionRefused, Send, Sleep, next_instruction
from sim.cluster import refused_whole
from sim.commands import CommandError, ConnectionLost, first_error, run_now
from sim.history import History
from sim.metrics import timeline_point
from sim.nemesis import AckLog, StallTarget
from sim.network import RESET, Network
from sim.scenario import ClientConfig
from sim.traffic import Trace
from sim.truth import Memberships, truth_ranges
from sim.worker import WorkerLoop, WorkerStats
from sim.workload import Workload
from strategies.base import Strategy

T = TypeVar("T")

CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError,
                     asyncio.IncompleteReadError)
# Reading the counters fails while the primary is down, loading, or not yet promoted.
UNREADABLE = (*CONNECTION_ERRORS, redis.exceptions.RedisError, CommandError)
_RESET_TOXIC = "reset_peer"


class Routes(Protocol):
    """Where clients connect (sim/backends/real/routes.py). A cluster's
    routes (sim/backends/real/cluster.py) also give each client its
    connection (``connection(index)``) and the checker its reader
    (``reader()``)."""

    async def connect_to(self, index: int) -> tuple[str, int, str]: ...

    def primary_address(self) -> tuple[str, int]: ...


class RealDriver:
    def __init__(self, trace: Trace, strategy: Strategy, config: ClientConfig,
                 routes: Routes, timeline_points: int = 0, causes: frozenset[str] = frozenset(CAUSES),
                 progress: Callable[[float, int], None] | None = None, paced: bool = True,
                 acks: AckLog | None = None, target: StallTarget | None = None, seed: int = 0,
                 toxics: Toxics | None = None, proxies: list | None = None, think_s: float = 0.0) -> None:
        self.trace = trace
        self.strategy = strategy
        self.routes = routes
        self.timeline_points = timeline_points
        self.progress = progress
        self.toxics = toxics
        self.proxies = proxies or []
        self.network = Network(seed)          # the nemesis opens windows; the driver arms resets
        self.workload = Workload(trace, strategy, config.count)
        self.history = History(len(trace.t))
        # paced=False: closed loop, each client starts its next operation when its last is done.
        self.loop = ClientLoop(self.workload, strategy, config, self.history, causes, self.now, paced,
                               acks, target, think_s=think_s)
        self.pairs = Memberships(trace)
        self.clients = [Client(index) for index in range(config.count)]
        # The strategy's background jobs, each a worker with a connection (and a proxy) of its own.
        self.workers = [Client(config.count + index) for index in range(len(self.workload.jobs))]
        self.worker_stats = WorkerStats()
        self.worker_loop = WorkerLoop(self.now, causes, self.worker_stats)
        self.clients_done = False
        self.timeline: list[dict] = []
        self.reconnects = 0
        self.script_loads = 0
        self.noscript = 0
        self.resets_missed = 0   # armed resets whose reply came back whole anyway
        self.requests_sent = 0   # by every connection of the run, the commands in them,
        self.commands_sent = 0   # and the array items of their replies
        self.elements_read = 0
        self.sleeps = 0   # the clients' timed waits (backoffs, start times): each a timer the loop handles
        self.run_end = 0.0
        self._timeout = config.timeout_ms / 1000.0
        self._start = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: FineTimer | None = None   # the clients' sleeps (uvloop's timers count whole ms)
        self._deadlines: dict[AsyncConnection, float] = {}   # connection -> when its request times out
        self._cluster = hasattr(routes, "connection")   # a Redis Cluster: a link per node

    def now(self) -> float:
        """Seconds since the run started (history times are in these). Not the
        event loop's clock: uvloop's (libuv's) has whole milliseconds, which
        made every real latency a multiple of 1 ms."""
        return time.perf_counter() - self._start

    # -- the run ------------------------------------------------------------------
    async def run(self, background: tuple = ()) -> None:
        """Run the trace to its end; ``background`` coroutines (the nemesis)
        run beside it and are cancelled at the end (they undo what they did)."""
        self._loop = asyncio.get_running_loop()
        self._timer = FineTimer(self._loop)
        self._start = time.perf_counter() + 0.05
        n_ops = len(self.workload)
        clients = [asyncio.create_task(self._carry(client, self.loop.run(client)))
                   for client in self.clients]
        workers = [asyncio.create_task(self._carry(worker, self.worker_loop.run(worker, job, self._done)))
                   for worker, job in zip(self.workers, self.workload.jobs)]
        helpers = [asyncio.create_task(coroutine) for coroutine in (*background, self._watchdog())]
        if self.progress and n_ops:
            helpers.append(asyncio.create_task(self._progress_ticker()))
        ticker = asyncio.create_task(self._ticker()) if self.timeline_points and n_ops else None
        finished = False
        try:
            await asyncio.gather(*clients)
            self.clients_done = True
            await asyncio.gather(*workers)   # their last pass: the last flush, the last consume
            finished = True
        finally:
            self.run_end = self.now()
            for task in clients + workers + helpers:
                task.cancel()
            results = await asyncio.gather(*clients, *workers, *helpers, return_exceptions=True)
            if ticker is not None:
                if not finished or not self.loop.paced:   # closed loop: the trace's clock is not the run's
                    ticker.cancel()
                # Its last points are due by now: it takes them once the nemesis has healed the server.
                results.append((await asyncio.gather(ticker, return_exceptions=True))[0])
            try:
                for client in self.clients + self.workers:
                    await self._drop(client)
            finally:
                self._timer.close()
        failures = [result for result in results if isinstance(result, Exception)
                    and not isinstance(result, asyncio.CancelledError)]
        if failures:
            raise failures[0]

    def counters(self, patience_s: float = 10.0) -> Counters:
        """The counters on the primary of the moment (not via a proxy), once
        it answers (it may still be loading its AOF)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return self._read_counters()
            except UNREADABLE:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def _read_counters(self) -> Counters:
        return self._read(lambda execute: read_counters(self.strategy, self.trace.users, self.trace.conversations,
                                                        execute))

    def strategy_figures(self) -> dict[str, int]:
        """What only the strategy counts, read after the run (once the counters were)."""
        return self._read(lambda execute: run_now(self.strategy.run_figures(self.trace.users), execute))

    def _read(self, reading: Callable[[Callable], T]) -> T:
        """``reading`` on the primary of the moment, directly (on a cluster, on every node it needs)."""
        reader = getattr(self.routes, "reader", None)
        connection = reader() if reader is not None else SyncConnection(*self.routes.primary_address())
        try:
            return reading(connection.execute)
        finally:
            connection.close()

    async def _ticker(self):
        """A timeline point every span/points seconds, through outages: when
        the primary cannot be read (down, loading, not yet promoted) the point
        waits until it can, and is taken then."""
        span = self.workload.t[-1]
        for point in range(1, self.timeline_points + 1):
            await asyncio.sleep(max(0.0, span * point / self.timeline_points - self.now()))
            while True:
                since = self.now()
                try:
                    counters = await asyncio.to_thread(self._read_counters)
                    break
                except UNREADABLE:
                    await asyncio.sleep(0.05)
            # The counters were read over a while: the truth of any moment of it is right.
            at = since
            truth = truth_ranges(self.trace, self.history, self.pairs, self.now(), since)
            drift = check(self.pairs, truth, counters)
            self.timeline.append(timeline_point(at, drift, self.history,
                                                self.timeline[-1] if self.timeline else None))

    async def _progress_ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            at = self.now()
            self.progress(min(at, self.workload.t[-1]), self.history.completed_by(at))

    # -- clients --------------------------------------------------------------------
    def _done(self) -> bool:
        return self.clients_done

    async def _carry(self, client: Client, loop) -> None:
        """Carry out the instructions of a client's loop (or a worker's) in wall-clock time."""
        answer: Any = None
        error: Exception | None = None
        while (instruction := next_instruction(loop, answer, error)) is not None:
            answer = error = None
            kind = type(instruction)
            if kind is Send:
                try:
                    answer = await self._request(client, instruction)
                except ConnectionLost as lost:
                    error = lost
            elif kind is Sleep:
                self.sleeps += 1
                await self._timer.sleep(instruction.seconds)
            else:
                await self._drop(client)

    async def _connect(self, client: Client) -> None:
        host, port, node = await self.routes.connect_to(client.index)
        # A cluster's routes give each client a cluster-aware connection (sim/backends/real/cluster.py).
        factory = getattr(self.routes, "connection", None)
        connection = factory(client.index) if factory is not None else AsyncConnection(host, port)
        if factory is not None:   # a cluster: each link that opens counts as a connection to its node
            connection.on_link = lambda name: client.connects.append((self.now(), name))
            connection.connect_timeout = self._timeout
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect(self.strategy.code)
        except (TimeoutError, HandshakeFailed, ConnectionRefused, *CONNECTION_ERRORS) as error:
            await connection.close()
            raise ConnectionRefused(str(error) or type(error).__name__) from None
        self.reconnects += 1
        self.script_loads += connection.loaded
        client.connection = connection
        client.connected(self.now(), node)

    async def _request(self, client: Client, send: Send) -> tuple[Any, CommandError | None, float]:
        """Send one request; return (reply, first error inside it, when it
        came back); raise ConnectionRefused when it was not sent,
        ConnectionLost when its reply is lost."""
        if client.connection is None:
            await self._connect(client)
        connection = client.connection
        request = send.request
        reset = -1
        if self.network.windows and self.toxics is not None:
            route = self.network.route(self.now(), send.operation, send.attempt, send.number)
            if route.fate == RESET:
                reset = route.window
                armed = self._proxies_of(client, request)
                await asyncio.gather(*(self.toxics.add(proxy, _RESET_TOXIC, "limit_data", "downstream", {"bytes": 1})
                                       for proxy in armed))
        timeout = self._timeout
        if type(request) is tuple and request[0] == "WAIT":
            timeout += request[2] / 1000.0
        try:
            # The watchdog, not a timer per request, enforces the timeout.
            self._deadlines[connection] = self._loop.time() + timeout
            reply = await connection.execute(request)
        except ConnectionRefused:
            await self._drop_failed(client)
            raise
        except CONNECTION_ERRORS as error:
            self.history.ambiguous += 1
            if connection.timed_out and send.operation >= 0:   # it may still run on the server, later
                self.history.timed_out[send.operation] = True
            await self._drop_failed(client)
            if reset >= 0:
                self.network.replies_lost[reset] += 1
            raise ConnectionLost("timeout" if connection.timed_out else str(error)) from None
        finally:
            self._deadlines.pop(connection, None)
            if reset >= 0:
                await asyncio.gather(*(self.toxics.remove(proxy, _RESET_TOXIC) for proxy in armed))
        if reset >= 0:
            self.resets_missed += 1
        if self._cluster and refused_whole(reply):   # nothing ran: a cluster client tries again later
            raise ConnectionRefused("CLUSTERDOWN")
        inside = first_error(reply) if isinstance(reply, list) else None
        if _read_only(reply if inside is None else inside):
            # The node is a replica now (Sentinel demoted it): nothing was
            # written; a Sentinel-aware client reconnects to the primary.
            await self._drop(client)
            raise ConnectionRefused("the server is a replica now (READONLY)")
        return reply, inside, self.now()

    def _proxies_of(self, client: Client, request: Any) -> list[str]:
        """The client's proxy, or on a cluster its proxies to the nodes the request goes to."""
        route = getattr(client.connection, "proxies_for", None)
        return route(request) if route is not None else [self.proxies[client.index]]

    async def _watchdog(self) -> None:
        """Abort the connections whose request is late: their clients see a
        timeout (checked every quarter of the timeout, at most every 50 ms)."""
        period = min(0.05, self._timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            for connection in [c for c, deadline in self._deadlines.items() if deadline < now]:
                connection.time_out()

    async def _drop_failed(self, client: Client) -> None:
        """After a refusal or a lost reply: drop the connection, or on a
        cluster only the links that failed (the others stay open)."""
        discard = getattr(client.connection, "discard_broken", None)
        if discard is not None:
            await discard()
        else:
            await self._drop(client)

    async def _drop(self, client: Client) -> None:
        if client.connection is not None:
            self.noscript += client.connection.noscript
            self.requests_sent += client.connection.requests
            self.commands_sent += client.connection.commands
            self.elements_read += client.connection.elements
            await client.connection.close()
            client.connection = None


def _read_only(reply: object) -> bool:
    return isinstance(reply, CommandError) and "READONLY" in str(reply)
