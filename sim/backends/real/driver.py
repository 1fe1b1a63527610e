"""The asyncio driver: virtual clients replay a trace through a strategy
against real redis-server processes, in wall-clock time.

The same round-robin dealing, retry policy and history as the simulated
driver (the shared ClientLoop): each virtual client is an asyncio task with
one connection of its own (hiredis, no retry of its own), through the
toxiproxy proxy unless the run is direct. An operation's intended start is
its trace time after the run's start; latency is measured from it.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import numpy as np
import redis.exceptions

from sim.backends.real.connection import AsyncConnection, SyncConnection
from sim.checker import Counters, Drift, check, read_counters
from sim.client import CAUSES, Client, ClientConfig, ClientLoop, ConnectionRefused, Send, Sleep, next_instruction
from sim.commands import CommandError, ConnectionLost, may_write
from sim.history import History
from sim.metrics import timeline_point
from sim.traffic import Trace
from sim.truth import Memberships, truth_ranges
from sim.workload import Workload
from strategies.base import Strategy

CONNECTION_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError,
                     asyncio.IncompleteReadError)


class RealDriver:
    def __init__(self, trace: Trace, strategy: Strategy, config: ClientConfig, address: tuple[str, int],
                 direct_address: Callable[[], tuple[str, int]], timeline_points: int = 0,
                 causes: frozenset[str] = frozenset(CAUSES),
                 progress: Callable[[float, int], None] | None = None, paced: bool = True) -> None:
        self.trace = trace
        self.strategy = strategy
        self.address = address
        self.direct_address = direct_address
        self.timeline_points = timeline_points
        self.progress = progress
        self.workload = Workload(trace)
        self.history = History(len(trace.t))
        # paced=False: closed loop, each client starts its next operation at once (benchmarks).
        self.loop = ClientLoop(self.workload, strategy, config, self.history, causes, self.now, paced)
        self.pairs = Memberships(trace)
        self.clients = [Client(index) for index in range(config.count)]
        self.timeline: list[dict] = []
        self.reconnects = 0
        self.script_loads = 0
        self.noscript = 0
        self._timeout = config.timeout_ms / 1000.0
        self._wait_replicas = int(strategy.options.get("wait_replicas", 0))
        self._wait_timeout_ms = config.wait_timeout_ms
        self._start = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: dict[AsyncConnection, float] = {}   # connection -> when its request times out

    def now(self) -> float:
        """Seconds since the run started (history times are in these)."""
        return self._loop.time() - self._start

    # -- the run ------------------------------------------------------------------
    async def run(self, background: tuple = ()) -> None:
        """Run the trace to its end; ``background`` coroutines (the nemesis)
        run beside it and are cancelled at the end."""
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time() + 0.05
        n_ops = len(self.workload)
        clients = [asyncio.create_task(self._client(client, range(client.index, n_ops, len(self.clients))))
                   for client in self.clients]
        helpers = [asyncio.create_task(coroutine) for coroutine in (*background, self._watchdog())]
        if self.timeline_points and n_ops:
            helpers.append(asyncio.create_task(self._ticker()))
        if self.progress and n_ops:
            helpers.append(asyncio.create_task(self._progress_ticker()))
        try:
            await asyncio.gather(*clients)
        finally:
            for task in clients + helpers:
                task.cancel()
            await asyncio.gather(*clients, *helpers, return_exceptions=True)
            for client in self.clients:
                if client.connection is not None:
                    await client.connection.close()

    def counters(self) -> Counters:
        connection = SyncConnection(*self.direct_address())  # the primary of the moment, not via the proxy
        try:
            return read_counters(self.strategy, self.trace.users, connection.execute)
        finally:
            connection.close()

    def drift(self, at: float = np.inf) -> Drift:
        truth = truth_ranges(self.trace, self.history, self.pairs, at)
        return check(self.pairs, truth, self.counters())

    async def _ticker(self):
        span = self.workload.t[-1]
        for point in range(1, self.timeline_points + 1):
            await asyncio.sleep(max(0.0, span * point / self.timeline_points - self.now()))
            at = self.now()
            drift = await asyncio.to_thread(self.drift, at)
            self.timeline.append(timeline_point(at, drift, self.history,
                                                self.timeline[-1] if self.timeline else None))

    async def _progress_ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            at = self.now()
            self.progress(min(at, self.workload.t[-1]), self.history.completed_by(at))

    # -- clients --------------------------------------------------------------------
    async def _client(self, client: Client, ops: range) -> None:
        """Carry out the shared client loop's instructions in wall-clock time."""
        loop = self.loop.run(client, ops)
        answer: Any = None
        error: Exception | None = None
        while (instruction := next_instruction(loop, answer, error)) is not None:
            answer = error = None
            kind = type(instruction)
            if kind is Send:
                try:
                    reply = await self._request(client, instruction.request)
                    answer = (reply, _first_error(reply) if isinstance(reply, list) else None)
                except ConnectionLost as lost:
                    error = lost
            elif kind is Sleep:
                await asyncio.sleep(instruction.seconds)
            else:
                await self._drop(client)

    async def _request(self, client: Client, request: Any) -> Any:
        if client.connection is None:
            connection = AsyncConnection(*self.address, timeout=self._timeout)
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.connect(self.strategy.scripts)
            except (TimeoutError, *CONNECTION_ERRORS) as error:
                await connection.close()
                raise ConnectionRefused(str(error)) from None
            self.reconnects += 1
            self.script_loads += bool(self.strategy.scripts)
            client.connection = connection
        connection = client.connection
        try:
            # The watchdog, not a timer per request, enforces the timeout.
            self._deadlines[connection] = self._loop.time() + self._timeout
            reply = await connection.execute(request)
            if self._wait_replicas and may_write(request):
                self._deadlines[connection] += self._wait_timeout_ms / 1000.0
                await connection.execute(("WAIT", self._wait_replicas, int(self._wait_timeout_ms)))
            return reply
        except CONNECTION_ERRORS as error:
            self.history.ambiguous += 1
            await self._drop(client)
            raise ConnectionLost("timeout" if connection.timed_out else str(error)) from None
        finally:
            self._deadlines.pop(connection, None)

    async def _watchdog(self) -> None:
        """Abort the connections whose request is late: their clients see a
        timeout (checked every quarter of the timeout, at most every 50 ms)."""
        period = min(0.05, self._timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            for connection in [c for c, deadline in self._deadlines.items() if deadline < now]:
                connection.time_out()

    async def _drop(self, client: Client) -> None:
        if client.connection is not None:
            self.noscript += client.connection.noscript
            await client.connection.close()
            client.connection = None


def _first_error(reply: list) -> CommandError | None:
    """The first error reply inside a pipeline's or a transaction's replies."""
    for item in reply:
        if isinstance(item, CommandError):
            return item
        if isinstance(item, list):
            found = _first_error(item)
            if found is not None:
                return found
    return None
