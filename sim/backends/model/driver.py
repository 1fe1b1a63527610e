"""The SimPy driver: virtual clients replay a trace through a strategy
against the simulated server.

Operations are dealt to the clients round-robin in trace order; each client
runs its operations one after another on its own connection, starting each
at its trace time or, when it is behind, as soon as it is free (the wait is
latency). Every request costs one network round trip plus its place in the
server's FIFO queue; a reply later than the timeout is given up on (outcome
unknown) and the operation is retried by the retry policy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import simpy

from sim.backends.model.server import Connection, Server, ServiceTimes
from sim.checker import Counters, Drift, check
from sim.commands import Backoff, CommandError, ConnectionLost, run_now
from sim.history import FAIL, OK, UNKNOWN, History
from sim.traffic import DELIVER, READ, Trace
from sim.truth import Memberships, truth_ranges
from strategies.base import Strategy


@dataclass(frozen=True)
class ClientConfig:
    count: int = 32
    rtt_ms: float = 0.2
    timeout_ms: float = 1000.0
    retries: int = 2            # re-runs of an operation whose outcome is unknown
    backoff_ms: float = 5.0


class SimDriver:
    def __init__(self, trace: Trace, strategy: Strategy, clients: ClientConfig,
                 service: ServiceTimes, timeline_points: int = 20,
                 progress: Callable[[float, int], None] | None = None) -> None:
        self.trace = trace
        self.strategy = strategy
        self.clients = clients
        self.env = simpy.Environment()
        self.server = Server(service)
        self.history = History(len(trace.t))
        self.pairs = Memberships(trace)
        self.timeline: list[dict] = []
        self.timeline_points = timeline_points
        self.progress = progress
        self._half_rtt = clients.rtt_ms / 2000.0
        self._timeout = clients.timeout_ms / 1000.0
        self._t = trace.t.tolist()
        self._kind = trace.kind.tolist()
        self._user = trace.user.tolist()
        self._conv = trace.conv.tolist()
        self._message = trace.message.tolist()
        self._members = [trace.conv_members[start:end].tolist()
                         for start, end in zip(trace.conv_offsets[:-1], trace.conv_offsets[1:])]
        for script in strategy.scripts:
            self.server.scripts.load(script)

    # -- the run ----------------------------------------------------------------
    def run(self) -> None:
        n_ops = len(self._t)
        for client in range(self.clients.count):
            self.env.process(self._client(range(client, n_ops, self.clients.count)))
        if self.timeline_points and n_ops:
            self.env.process(self._ticker())
        self.env.run()
        self.server.advance(np.inf)

    def drift(self, at: float = np.inf) -> Drift:
        truth = truth_ranges(self.trace, self.history, self.pairs, at)
        return check(self.pairs, truth, self.counters())

    def counters(self) -> Counters:
        inspect = self.server.inspect
        return Counters.collect(self.trace.users, (
            (user, *run_now(self.strategy.counters(user), inspect)) for user in range(self.trace.users)))

    def _ticker(self):
        span = self._t[-1]
        for point in range(1, self.timeline_points + 1):
            at = span * point / self.timeline_points
            yield self.env.timeout(at - self.env.now)
            self.server.advance(at)
            self.timeline.append(self._snapshot(at))
            if self.progress:
                self.progress(at, self.history.completed_by(at))

    def _snapshot(self, at: float) -> dict:
        drift = self.drift(at)
        return {"t": round(at, 9), "ops": self.history.completed_by(at),
                "users_inconsistent": drift.users_inconsistent, "abs_drift_sum": drift.abs_drift_sum}

    # -- clients ----------------------------------------------------------------
    def _operation(self, op: int):
        kind = self._kind[op]
        if kind == DELIVER:
            sender = self._user[op]
            recipients = [user for user in self._members[self._conv[op]] if user != sender]
            return self.strategy.deliver(self._message[op], self._conv[op], recipients)
        if kind == READ:
            return self.strategy.open_conversation(self._user[op], self._conv[op])
        return self.strategy.fetch_badge(self._user[op])

    def _client(self, ops: range):
        env = self.env
        history = self.history
        retries = self.clients.retries
        backoff = self.clients.backoff_ms / 1000.0
        session = [Connection()]
        for op in ops:
            intended = self._t[op]
            if intended > env.now:
                yield env.timeout(intended - env.now)
            history.invoked(op, env.now)
            attempt = 0
            while True:
                outcome = yield from self._attempt(op, session)
                if outcome != UNKNOWN or attempt >= retries:
                    break
                attempt += 1
                history.retries += 1
                yield env.timeout(backoff)
            history.completed(op, env.now, outcome)

    def _attempt(self, op: int, session: list[Connection]):
        """Run one attempt of an operation; returns its outcome."""
        env, server, history = self.env, self.server, self.history
        half_rtt, timeout = self._half_rtt, self._timeout
        operation = self._operation(op)
        reply: Any = None
        error: Exception | None = None
        failed = False
        try:
            while True:
                request = operation.send(reply) if error is None else operation.throw(error)
                reply = error = None
                if type(request) is Backoff:
                    history.retries += 1
                    yield env.timeout(request.seconds)
                    continue
                sent = env.now
                entry = server.submit(session[0], request, sent + half_rtt)
                if entry.end + half_rtt - sent > timeout:
                    yield env.timeout(timeout)
                    session[0] = Connection()  # the client drops the connection
                    history.ambiguous += 1
                    error = ConnectionLost("timeout")
                    continue
                yield env.timeout(entry.end + half_rtt - sent)
                server.advance(env.now)
                reply = entry.reply
                if type(reply) is CommandError:
                    error, reply = reply, None
                elif entry.error is not None:  # inside a pipeline or a transaction
                    failed = True
                    history.errors[_error_code(entry.error)] += 1
        except StopIteration:
            return FAIL if failed else OK
        except ConnectionLost:
            return UNKNOWN
        except CommandError as found:
            history.errors[_error_code(found)] += 1
            return FAIL
        except Exception as gave_up:  # a strategy gave up: lock busy, WATCH kept aborting
            history.errors[type(gave_up).__name__] += 1
            return FAIL


def _error_code(error: CommandError) -> str:
    text = str(error)
    return text.split(" ", 1)[0] if text else "ERR"
