"""What every backend's virtual clients share: the retry policy, what the
nemesis can do to a client, and how an attempt ended."""
from __future__ import annotations

import inspect
import numbers
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from sim import stall
from sim.commands import Backoff, CommandError, ConnectionLost, Pipeline, Script, Transaction, may_write
from sim.errors import StrategyError
from sim.faults import SPECS
from sim.history import FAIL, OK, UNKNOWN, History
from sim.lua import LuaScript, script_bug
from sim.nemesis import AckLog, StallTarget
from sim.scenario import ClientConfig
from sim.story import Tracer
from sim.traffic import KIND_NAMES
from sim.workload import Workload
from strategies.base import GaveUp, Strategy
from strategies.reconciler import mark

# Mechanisms by which counters go wrong, each one a run can switch off to
# measure what it contributes (see sim/causes.py).
CAUSES = ("gave_up", "retry_applied_twice", "lost_unfsynced", "lost_on_failover", "lost_in_split_brain",
          "two_lock_holders", "lost_in_buffer")


class ConnectionRefused(ConnectionLost):
    """The request was never sent: the server is down or partitioned away,
    or the connection was already closed. It surely did not apply."""


class Client:
    """One virtual client: its connection, and what the nemesis did to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.connection: Any = None
        self.node = ""                        # the server its connection reached
        self.connects: list[tuple[float, str]] = []   # (when, server) of every connection it opened
        self.sending = False                  # a request is out, its reply not back
        self.crash_for: float | None = None   # set by a client_crash: dies mid-operation
        self.pause_for: float | None = None   # set by a client_pause: freezes mid-operation
        self.struck_since = 0.0               # when the crash or pause was set

    def connected(self, now: float, node: str) -> None:
        self.node = node
        self.connects.append((now, node))

    def crash(self, now: float, down_for: float) -> None:
        self.crash_for, self.struck_since = down_for, now

    def pause(self, now: float, pause_for: float) -> None:
        self.pause_for, self.struck_since = pause_for, now

    def strikes(self, now: float, requests_done: int, wanted: int) -> bool:
        """Does a pending crash or pause strike now? It waits for an operation
        that has done ``wanted`` requests; after a second it settles for one
        request done, after two for any moment."""
        waited = now - self.struck_since
        return requests_done >= wanted or (waited > 1.0 and requests_done > 0) or waited > 2.0


def in_flight(clients: list[Client]) -> int:
    """Operations with a request out and its reply not back."""
    return sum(client.sending for client in clients)


@dataclass(frozen=True)
class Attempt:
    outcome: int
    retriable: bool = False        # it failed at the connection: the retry policy may run it again
    crashed: bool = False          # the client died inside it


# Every way an attempt ends, made once (one ends each operation).
_SUCCEEDED, _FAILED, _CRASHED = Attempt(OK), Attempt(FAIL), Attempt(UNKNOWN, crashed=True)
_REFUSED, _LOST = Attempt(FAIL, retriable=True), Attempt(UNKNOWN, retriable=True)


# Sleep and Send are named tuples: one is made per request, and a tuple is
# built in a third of a frozen dataclass's time.
class Sleep(NamedTuple):
    seconds: float


class Send(NamedTuple):
    """Send a request; the backend answers (reply, first error reply inside
    it or None, when the server applied it), or raises ConnectionLost /
    ConnectionRefused into the loop. (operation, attempt, number) name the
    request, for the network's dice; ``writes``: whether it may write."""

    request: Any
    operation: int
    attempt: int
    number: int
    writes: bool = False


class Disconnect:
    """Drop the client's connection (it crashed)."""


DISCONNECT = Disconnect()


def error_code(error: CommandError) -> str:
    text = str(error)
    return text.split(" ", 1)[0] if text else "ERR"


class ClientLoop:
    """How a virtual client runs its operations, written once for every
    backend: a generator of instructions (Sleep, Send, DISCONNECT) that the
    SimPy driver and the asyncio driver each carry out.

    An operation starts at its trace time (``paced``: open loop) or, closed
    loop, when the client's last one is done and ``think_s`` has passed; it
    is retried, whole, after a connection-level failure
    while the retry policy allows; a client crash strikes between two of its
    requests and nobody retries it; a pause strikes when a reply comes back.
    After each write the loop sends WAIT when the strategy asks for it, and
    it logs acknowledged writes (``acks``) for the faults that can take them
    back, and puts the stall of an armed ``mid_script_power_loss`` in place.
    """

    def __init__(self, workload: Workload, strategy: Strategy, config: ClientConfig, history: History,
                 causes: frozenset[str], clock: Callable[[], float], paced: bool = True,
                 acks: AckLog | None = None, target: StallTarget | None = None,
                 exact_commits: bool = False, think_s: float = 0.0) -> None:
        self.workload = workload
        self.strategy = strategy
        self.config = config
        self.history = history
        self.causes = causes
        self.clock = clock
        self.paced = paced
        self.think_s = think_s
        self.acks = acks
        self.target = target
        self.exact_commits = exact_commits   # the backend answers with when the server applied a request
        self.wait_replicas = int(strategy.options.get("wait_replicas", 0))
        self.no_single_moment = strategy.buffers   # the process's memory and Redis change at different moments
        # A reconciler's mark of the users an operation changes (SADD), sent in
        # the same round trip as each of its writes (a crash or a lost reply
        # between two writes leaves the user marked).
        self.marks_changes = strategy.marks_changes()
        self.crashed_operations = 0
        self.lost_in_buffer = 0   # changes lost with a crashed process's memory
        self.wait_replies: dict[int, int] = {}    # replicas WAIT confirmed -> how many times
        self.tracer: Tracer | None = None         # follows some operations request by request (sim/story.py)

    def run(self, client: Client):
        """The client's operations, in order of their start (see
        Workload.dealt), as instructions to its driver."""
        ops = self.workload.dealt(client.index, self.config.count, self.config.route)
        clock, history, paced, start_at = self.clock, self.history, self.paced, self.workload.t
        attempt_operation = self._attempt
        traced = self.tracer.ops if self.tracer is not None else frozenset()
        first = True
        for op in ops:
            if paced:
                delay = start_at[op] - clock()
                if delay > 0:
                    yield Sleep(delay)
            elif self.think_s and not first:
                yield Sleep(self.think_s)
            first = False
            if client.pause_for is not None and "two_lock_holders" not in self.causes:
                # Counterfactual: the pause falls between operations, never inside one.
                yield from self._pause(client)
            history.invoked(op, clock())
            if self.no_single_moment:
                history.spread[op] = True
            attempt = 0
            follow = op in traced
            while True:
                result = yield from (self._traced(client, op, attempt) if follow
                                     else attempt_operation(client, op, attempt))
                if result.crashed:
                    self.crashed_operations += 1
                    if "lost_in_buffer" in self.causes:
                        self.lost_in_buffer += self.workload.crashed(client.index)
                    yield Sleep(client.crash_for)
                    client.crash_for = None
                    yield DISCONNECT
                    break
                if not result.retriable:
                    break
                if attempt >= self.config.retries and "gave_up" in self.causes:
                    break  # (counterfactual when off: retry until it goes through)
                attempt += 1
                history.retries += 1
                yield Sleep(self.config.backoff(attempt))
            history.completed(op, clock(), result.outcome)
            if follow:
                self.tracer.completed(op, result.outcome, clock())

    def _traced(self, client: Client, op: int, attempt: int):
        """One attempt, with each request it sends and what came back told to the tracer."""
        inner = self._attempt(client, op, attempt)
        answer: Any = None
        error: Exception | None = None
        while True:
            try:
                instruction = inner.send(answer) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            exchange = (self.tracer.sent(op, client.index, attempt, instruction.request, self.clock())
                        if type(instruction) is Send else None)
            try:
                answer, error = (yield instruction), None
            except ConnectionLost as lost:
                answer, error = None, lost
            if exchange is not None:
                exchange.answered_at = self.clock()
                if error is None:
                    exchange.reply = answer[0]
                else:
                    exchange.lost = str(error) or type(error).__name__

    def _shown(self, op: int, value: Any) -> None:
        """What the operation showed the user: an int, or a bug of the strategy's."""
        if type(value) is bool or not isinstance(value, numbers.Integral):
            raise StrategyError(f"strategy {self.strategy.name}: {KIND_NAMES[self.workload.kind[op]]} (operation "
                                f"{op}) returned {type(value).__name__} {str(value)[:50]!r}, not the int a user "
                                f"is shown")
        self.history.shown(op, int(value))

    def _pause(self, client: Client):
        yield Sleep(client.pause_for)
        client.pause_for = None

    def _send(self, client: Client, request: Any, op: int, attempt: int, number: int):
        client.sending = True
        try:
            return (yield Send(request, op, attempt, number))
        finally:
            client.sending = False

    def _attempt(self, client: Client, op: int, attempt: int):
        history, target, acks = self.history, self.target, self.acks
        operation = self.workload.operation(op, client.index)
        reply: Any = None
        error: Exception | None = None
        failed = between = False
        number = done = writes_sent = 0
        op_mark: tuple | None = None   # the reconciler's mark, made at the first write
        try:
            while True:
                request = operation.send(reply) if error is None else operation.throw(error)
                reply = error = None
                kind = type(request)
                if kind not in YIELDED or (kind is tuple and not (request and type(request[0]) is str)):
                    raise self._bug(op, f"yielded {kind.__name__} {str(request)[:60]!r}, not a request (a command "
                                        f"tuple, Script, Pipeline or Transaction)", _yield_site(operation))
                if kind is Backoff:
                    history.retries += 1
                    yield Sleep(request.seconds)
                    continue
                if client.crash_for is not None and client.strikes(self.clock(), done, 1):
                    operation.close()
                    return _CRASHED
                unwrap = None
                deferred = False
                if target is not None and target.armed:
                    placed = stall.before(request, target.stall_s) if between else stall.inside(request,
                                                                                                target.stall_s)
                    deferred = placed is stall.DEFER
                    if isinstance(placed, stall.Placed):
                        unwrap = placed.unwrap
                        request, original = placed.request, request
                number += 1
                writes = may_write(request)
                marked = None
                if writes and self.marks_changes:   # the reconciler's mark rides with each write
                    if op_mark is None:
                        users = self.workload.changed_users(op)
                        op_mark = mark(users) if users else ()
                    if op_mark:
                        marked, request = request, Pipeline((op_mark, request))
                if unwrap is not None:   # the request the stall is in, as it is sent
                    target.catch(placed.target, KIND_NAMES[self.workload.kind[op]], op, request, self.clock())
                spreads = False
                if writes:
                    writes_sent += 1
                    spreads = writes_sent == 2 and not history.spread[op]
                    if spreads:   # no single moment of effect: the truth gives it a range
                        history.spread[op] = True
                client.sending = True   # _send's body, without a generator per request
                try:
                    reply, inside, applied_at = yield Send(request, op, attempt, number, writes)
                finally:
                    client.sending = False
                done += 1
                if marked is not None:
                    request = marked
                    reply = reply[1] if type(reply) is list else reply
                if unwrap is not None:
                    reply = unwrap(reply)
                    request = original
                    if isinstance(reply, CommandError):
                        inside = None
                between = deferred
                if writes and reply is None and type(request) is Transaction:
                    # WATCH aborted the EXEC: it wrote nothing, and is no moment of effect nor an acknowledged write
                    writes, writes_sent = False, writes_sent - 1
                    if spreads:
                        history.spread[op] = False
                if writes and self.exact_commits:
                    history.applied(op, applied_at)
                acked = None   # an error reply (NOREPLICAS, READONLY) acknowledged nothing
                if writes and acks is not None and inside is None and not isinstance(reply, CommandError):
                    acked = acks.acknowledged(applied_at, op, client.node, request, client.index)
                if writes and self.wait_replicas:
                    number += 1
                    replicas, _, _ = yield from self._send(
                        client, ("WAIT", self.wait_replicas, int(self.config.wait_timeout_ms)), op, attempt, number)
                    replicas = replicas if type(replicas) is int else 0
                    self.wait_replies[replicas] = self.wait_replies.get(replicas, 0) + 1
                    if acked is not None and replicas >= self.wait_replicas:
                        acked.confirmed = True
                if inside is not None or isinstance(reply, CommandError):
                    self._check_script_error(op, inside if inside is not None else reply)
                if isinstance(reply, CommandError):
                    error, reply = reply, None
                    continue
                if inside is not None:
                    failed = True
                    history.errors[error_code(inside)] += 1
                # A pause strikes when a reply comes back, preferably one that
                # the operation will act on (it has read, and will write).
                if (client.pause_for is not None and "two_lock_holders" in self.causes
                        and client.strikes(self.clock(), done, 2)):
                    yield from self._pause(client)
        except StopIteration as stop:
            if failed:
                return _FAILED
            if stop.value is not None:
                self._shown(op, stop.value)
            return _SUCCEEDED
        except ConnectionLost as lost:
            refused = isinstance(lost, ConnectionRefused)
            if refused:
                history.errors["connection refused"] += 1
            # Refused before anything was sent: it surely did not apply.
            return _REFUSED if refused and not done else _LOST
        except CommandError as found:
            history.errors[error_code(found)] += 1
            return _FAILED
        except GaveUp as gave_up:  # declared: a lock stayed busy, WATCH kept aborting
            history.errors[type(gave_up).__name__] += 1
            return _FAILED
        except Exception as bug:   # raised by the strategy's code: a bug of its own, never a failed operation
            where = in_strategy(bug, type(self.strategy))
            if where is None:
                raise
            raise self._bug(op, f"raised {type(bug).__name__}: {str(bug)[:200]}", where) from bug

    def _bug(self, op: int, what: str, where: str) -> StrategyError:
        return StrategyError(f"strategy {self.strategy.name}: {KIND_NAMES[self.workload.kind[op]]} (operation {op}) "
                             f"{what} at {where}")

    def _check_script_error(self, op: int, error: CommandError) -> None:
        """An error a script made itself (its Lua's, not a command's) ends the run."""
        line = script_bug(error)
        if line is None:
            return
        text = str(error)
        script = next((code for code in self.strategy.code if isinstance(code, LuaScript) and code.sha in text),
                      None)
        raise self._bug(op, f"got an error from its Lua: {text.split(' script: ')[0][:200]}",
                        script.place(line) if script is not None else f"line {line} of one of its scripts")


# What an operation may yield: a request, or a wait before it tries again.
YIELDED = frozenset({tuple, Script, Pipeline, Transaction, Backoff})


def _yield_site(operation) -> str:
    """``file:line`` where a generator (the innermost it yields from) stands."""
    while getattr(operation, "gi_yieldfrom", None) is not None and hasattr(operation.gi_yieldfrom, "gi_frame"):
        operation = operation.gi_yieldfrom
    frame = getattr(operation, "gi_frame", None)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


def in_strategy(error: BaseException, strategy: type[Strategy]) -> str | None:
    """``file:line`` of the innermost place in the strategy's own code that
    the error went through (its class's module or any strategy module), or
    None if it did not come from there."""
    own = {inspect.getfile(cls) for cls in strategy.__mro__ if cls not in (Strategy, object)}
    while error is not None:   # (SimPy raises a process's error anew, the original as its cause)
        frames = [frame for frame in traceback.extract_tb(error.__traceback__)
                  if frame.filename in own or Path(frame.filename).parent == _STRATEGIES]
        if frames:
            return f"{frames[-1].filename}:{frames[-1].lineno}"
        error = error.__cause__
    return None


_STRATEGIES = Path(inspect.getfile(Strategy)).parent


def next_instruction(loop, answer: Any, error: Exception | None):
    """Resume a ClientLoop with the answer to its last instruction (or the
    error it raised); None when the loop is done."""
    try:
        return loop.send(answer) if error is None else loop.throw(error)
    except StopIteration:
        return None


def strike_clients(fault: Any, clients: list[Client], rng: Any, now: float) -> dict:
    """A client_crash, client_pause or worker_crash: pick as many of
    ``clients`` (the virtual clients, or the workers) as the fault's count
    parameter asks (seeded) and set the fault on each; it strikes inside
    their next operation (a worker's next pass)."""
    spec = SPECS[fault.kind]
    count = min(int(fault.param(spec.strikes)), len(clients))
    chosen = [clients[i] for i in sorted(rng.choice(len(clients), size=count, replace=False).tolist())] if count else []
    for client in chosen:
        if spec.pauses_clients:
            client.pause(now, fault.duration)
        else:
            client.crash(now, fault.duration)
    return {spec.strikes: [client.index for client in chosen]}
