"""Backend-neutral requests (sim/commands.py) as Redis commands on one
connection, and their replies back.

A request becomes a flat list of commands sent in one write (a pipeline: one
round trip): a Script is an EVALSHA (a library's function: an FCALL), a Transaction is MULTI ... EXEC on the
same connection (so WATCH works), a Pipeline is its parts in a row. The
replies are read in order and put back in the request's shape; an error
reply becomes a CommandError, as in the simulation.

The harness's stalls (sim/stall.py) are scripts too: a Stall is an EVAL of
lua/stall.lua, and a Script with ``stall_s`` is an EVAL of its own text
behind lua/stall_after_first_call.lua.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from sim.commands import CommandError, Pipeline, Request, Script, Stall, Transaction

_LUA = Path(__file__).with_name("lua")
STALL = (_LUA / "stall.lua").read_text()
STALL_AFTER_FIRST_CALL = (_LUA / "stall_after_first_call.lua").read_text()


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def flatten(request: Request) -> list[tuple]:
    kind = type(request)
    if kind is tuple:
        return [request]
    if kind is Script:
        if request.stall_s:
            source = (f"local __stall_ms = {_milliseconds(request.stall_s)}\n"
                      f"{STALL_AFTER_FIRST_CALL}{request.script.source}")
            return [("EVAL", source, len(request.keys), *request.keys, *request.args)]
        if request.script.library:
            return [("FCALL", request.script.name, len(request.keys), *request.keys, *request.args)]
        return [("EVALSHA", request.script.sha, len(request.keys), *request.keys, *request.args)]
    if kind is Stall:
        return [("EVAL", STALL, 0, _milliseconds(request.seconds))]
    if kind is Transaction:
        return [("MULTI",), *(command for part in request.commands for command in flatten(part)), ("EXEC",)]
    if kind is Pipeline:
        return [command for part in request.commands for command in flatten(part)]
    raise TypeError(f"not a Redis request: {request!r}")


def as_command_error(error: ResponseError) -> CommandError:
    """redis-py strips the error code of the errors it knows (ERR, NOSCRIPT,
    EXECABORT...) into ``status_code``: put it back, as the server sent it."""
    code = getattr(error, "status_code", None)
    return CommandError(f"{code} {error}" if code else str(error))


def _reply(value: Any) -> Any:
    if isinstance(value, ResponseError):
        return as_command_error(value)
    if isinstance(value, hiredis.ReplyError):
        return CommandError(str(value))
    if isinstance(value, list):
        return [_reply(item) for item in value]
    return value


def assemble(request: Request, replies: list) -> Any:
    """The replies to ``flatten(request)`` in the request's shape."""
    replies = [_reply(value) for value in replies]
    reply, end = _take(request, replies, 0)
    assert end == len(replies)
    return reply


def _take(request: Request, replies: list, at: int) -> tuple[Any, int]:
    """The reply to ``request`` from ``replies[at:]``, and where the next
    begins (an index, not a slice: a pipeline of n parts stays linear)."""
    kind = type(request)
    if kind is tuple or kind is Script or kind is Stall:
        return replies[at], at + 1
    if kind is Pipeline:
        out = []
        for part in request.commands:
            value, at = _take(part, replies, at)
            out.append(value)
        return out, at
    count = len(flatten(request))
    block, end = replies[at:at + count], at + count
    queued_errors = [value for value in block[1:-1] if isinstance(value, CommandError)]
    exec_reply = block[-1]
    if isinstance(exec_reply, CommandError):
        if queued_errors and str(queued_errors[0]).startswith("CLUSTERDOWN"):
            return queued_errors[0], end   # EXECABORT because the cluster was down: say so (sim/cluster.py)
        if len(queued_errors) == count - 2 and all(str(error).startswith("MOVED") for error in queued_errors):
            # every queued command lives elsewhere (its slot moved): nothing ran, and the
            # cluster client follows the MOVED (a new slot map, the transaction sent there)
            return queued_errors[0], end
        return exec_reply, end
    if queued_errors and exec_reply is None:
        return queued_errors[0], end
    return exec_reply, end
