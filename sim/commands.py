"""The backend-neutral language in which strategies speak to Redis.

A strategy operation is a generator that yields one of these requests and
receives the reply, so the same strategy code runs on the SimPy model and on
a real redis-server: each backend only has to execute a request.

- a plain ``tuple`` such as ``("HINCRBY", key, field, 1)`` is one command,
  one round trip; its reply is sent back, an error reply is raised as
  :class:`CommandError` inside the generator;
- :class:`Script` runs a Lua script by EVALSHA (the backend loads it when the
  server answers NOSCRIPT), or a library's function by FCALL;
- :class:`Pipeline` sends several commands in one round trip, not atomic;
  the reply is a list in which an error reply stands as a CommandError;
- :class:`Transaction` is MULTI ... EXEC on the same connection: the reply is
  the list of results, or ``None`` when a WATCHed key changed;
- :class:`Backoff` asks the driver to wait; it counts as a retry.

The harness itself adds one more (strategies never yield it):
:class:`Stall` inside a Pipeline or Transaction, or ``Script.stall_s``,
holds the server at that point, writing nothing, so that
``mid_script_power_loss`` can strike an operation between two of its
writes on every backend (see :mod:`sim.stall`).

A lost reply (connection reset, timeout) is raised as :class:`ConnectionLost`:
the command may or may not have been applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Union

from sim.lua import LuaScript


class CommandError(Exception):
    """An error reply from Redis (WRONGTYPE, NOSCRIPT, a script error...)."""


class ConnectionLost(Exception):
    """The reply never came back: the outcome of the request is unknown."""


@dataclass(frozen=True, slots=True)
class Script:
    script: LuaScript
    keys: tuple
    args: tuple = ()
    stall_s: float = 0.0   # hold the server this long after the script's first redis.call


@dataclass(frozen=True, slots=True)
class Stall:
    """Hold the server for ``seconds`` here, writing nothing (a busy loop in
    a script of its own on a real server; service time in the simulation)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Pipeline:
    commands: tuple


@dataclass(frozen=True, slots=True)
class Transaction:
    commands: tuple


@dataclass(frozen=True, slots=True)
class Backoff:
    seconds: float


Request = Union[tuple, Script, Pipeline, Transaction, Backoff, Stall]
Operation = Generator[Request, Any, Any]


READ_ONLY = frozenset({"GET", "HGET", "HGETALL", "HVALS", "HKEYS", "HLEN", "HEXISTS", "EXISTS",
                       "TYPE", "PTTL", "SISMEMBER", "SMEMBERS", "SCARD", "KEYS", "DBSIZE", "PING",
                       "WATCH", "UNWATCH", "SCRIPT", "WAIT", "SELECT"})


def may_write(request: Request) -> bool:
    """Whether a request may change the keyspace (WAIT follows such requests)."""
    kind = type(request)
    if kind is tuple:
        return request[0] not in READ_ONLY
    if kind is Pipeline or kind is Transaction:
        for item in request.commands:   # a loop, not any() over a generator: every request is asked
            if (item[0] not in READ_ONLY) if type(item) is tuple else may_write(item):
                return True
        return False
    return kind is not Stall


def first_error(replies: list) -> CommandError | None:
    """The first error reply inside a pipeline's or a transaction's replies."""
    for item in replies:
        if isinstance(item, CommandError):
            return item
        if isinstance(item, list):
            found = first_error(item)
            if found is not None:
                return found
    return None


def sent_commands(request: Request) -> int:
    """Commands a client sends for the request (EVALSHA for a script,
    MULTI and EXEC around a transaction): what its own CPU handles."""
    kind = type(request)
    if kind is Pipeline:
        return sum([sent_commands(item) for item in request.commands])
    if kind is Transaction:
        return 2 + sum([sent_commands(item) for item in request.commands])
    return 1


def reply_elements(request: Request, reply: object) -> int:
    """The items of the arrays in a request's reply (a stream read's entries
    and their fields, HVALS's values...): what a client's CPU reads and walks
    beyond a reply per command."""
    if type(request) is Pipeline and type(reply) is list:
        return sum([reply_elements(part, item) for part, item in zip(request.commands, reply)])
    return _items(reply) if type(reply) is list else 0


def array_items(replies: list) -> int:
    """``reply_elements`` of a request, from its commands' replies as they
    came (one per command: a pipeline's parts, MULTI ... EXEC's), before
    they are put back in the request's shape."""
    return sum([_items(reply) for reply in replies if type(reply) is list])


def _items(array: list) -> int:
    return len(array) + sum([_items(item) for item in array if type(item) is list])


def wire_size(request: Request) -> int:
    """Bytes of the request in RESP, as a client sends it (EVALSHA for a
    script, MULTI ... EXEC around a transaction)."""
    kind = type(request)
    if kind is tuple:
        words = [str(word).encode() for word in request]
    elif kind is Script:
        script = request.script
        words = [*((b"FCALL", script.name.encode()) if script.library else (b"EVALSHA", script.sha.encode())),
                 str(len(request.keys)).encode(), *(str(word).encode() for word in (*request.keys, *request.args))]
    elif kind is Pipeline:
        return sum(wire_size(item) for item in request.commands)
    elif kind is Transaction:
        return wire_size(("MULTI",)) + sum(wire_size(item) for item in request.commands) + wire_size(("EXEC",))
    elif kind is Stall:
        return 160   # EVAL of a short busy loop
    else:
        raise TypeError(f"not a Redis request: {request!r}")
    return len(f"*{len(words)}\r\n") + sum(len(f"${len(word)}\r\n") + len(word) + 2 for word in words)


SIMPLE_REPLIES = frozenset({"OK", "QUEUED", "PONG"})


def reply_size(request: Request, reply: Any) -> int:
    """Bytes of a request's reply in RESP2, as a server sends it (a
    transaction's +OK and +QUEUED included; OK, QUEUED and PONG as simple
    strings)."""
    kind = type(request)
    if kind is Pipeline:
        return sum(reply_size(item, answer) for item, answer in zip(request.commands, reply))
    if kind is Transaction:
        return 5 + 9 * len(request.commands) + _resp_size(reply)   # +OK, then +QUEUED per command
    return _resp_size(reply)


def _resp_size(value: Any) -> int:
    if isinstance(value, CommandError):
        return len(str(value).encode()) + 3
    if value is None:
        return 5                                     # $-1
    if isinstance(value, bool) or isinstance(value, int):
        return len(str(int(value))) + 3
    if isinstance(value, (list, tuple)):
        return len(f"*{len(value)}") + 2 + sum(_resp_size(item) for item in value)
    if value in SIMPLE_REPLIES:
        return len(value) + 3
    data = value if isinstance(value, bytes) else str(value).encode()
    return len(f"${len(data)}") + 2 + len(data) + 2


def run_now(operation: Operation, execute: Callable[[Request], Any]) -> Any:
    """Drive an operation to its end with ``execute``, outside simulated time
    (reading counters back for the checker, the differential tests); a
    Backoff does not wait."""
    reply: Any = None
    error: CommandError | None = None
    try:
        while True:
            request = operation.send(reply) if error is None else operation.throw(error)
            reply, error = (None if type(request) is Backoff else execute(request)), None
            if isinstance(reply, CommandError):
                reply, error = None, reply
    except StopIteration as stop:
        return stop.value


def run_batch(operations: list[Operation], execute: Callable[[Request], Any]) -> list[Any]:
    """Drive many operations in lockstep, their pending requests sent
    together as one Pipeline per step (one round trip to a real server).
    Error replies are thrown into their operations; Backoff does not wait."""
    results: list[Any] = [None] * len(operations)
    pending: dict[int, tuple[Any, CommandError | None]] = {i: (None, None) for i in range(len(operations))}
    while pending:
        requests: dict[int, Request] = {}
        for index, (reply, error) in pending.items():
            operation = operations[index]
            try:
                while True:
                    request = operation.send(reply) if error is None else operation.throw(error)
                    if type(request) is not Backoff:
                        break
                    reply, error = None, None
                requests[index] = request
            except StopIteration as stop:
                results[index] = stop.value
        if not requests:
            break
        replies = execute(Pipeline(tuple(requests.values())))
        pending = {index: ((None, reply) if isinstance(reply, CommandError) else (reply, None))
                   for index, reply in zip(requests, replies)}
    return results
