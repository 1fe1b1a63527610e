"""Where ``mid_script_power_loss`` strikes an operation: right after its
first write, on every backend and for every strategy.

The shared client loop, once the fault is armed, puts a :class:`Stall` (the
server held, writing nothing) right after the first write of the next
operation that has a write with more of the operation after it:

- inside a script, after its first ``redis.call`` (``Script.stall_s``): the
  cut lands while the script runs;
- inside a MULTI/EXEC or a pipeline, after the first write command, when
  more commands follow it in that request;
- otherwise (the first write ends its request: naive's HDEL, multi's
  MULTI HGET HDEL EXEC, lock's SET NX) at the start of the operation's next
  request, so that the cut falls between two requests;
- an operation whose only write ends it (derived's HDEL) is no target.

The nemesis then cuts the power while the stall holds the server. What a
cut there does is the backend's business: all of a script or a MULTI/EXEC
is lost, and so is a pipeline read in one go (Redis writes the AOF once per
event-loop iteration), while a write acknowledged in an earlier request
stays.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from sim.commands import Pipeline, Request, Script, Stall, Transaction, may_write

DEFER = "defer"   # the first write ends its request: stall before the operation's next one


@dataclass(frozen=True)
class Placed:
    request: Request                   # what to send instead
    target: str                        # Script, Transaction, Pipeline, between requests
    unwrap: Callable[[Any], Any]       # the reply the strategy expects, from the reply to ``request``


def _same(reply: Any) -> Any:
    return reply


def _without(reply: Any, index: int) -> Any:
    """A list reply without the stall's element (None, an error: unchanged)."""
    return reply[:index] + reply[index + 1:] if type(reply) is list else reply


def inside(request: Request, seconds: float) -> Placed | str | None:
    """The request with a stall right after its first write; DEFER when that
    write ends the request; None when it does not write."""
    kind = type(request)
    if kind is Script:
        return Placed(replace(request, stall_s=seconds), "Script", _same)
    if kind is tuple:
        return DEFER if may_write(request) else None
    if kind is not Pipeline and kind is not Transaction:
        return None
    commands = request.commands
    for index, item in enumerate(commands):
        if not may_write(item):
            continue
        if type(item) is Script or type(item) is Transaction:
            placed = inside(item, seconds)
            if isinstance(placed, Placed):
                def unwrap(reply: Any, index: int = index, inner: Callable = placed.unwrap) -> Any:
                    if type(reply) is not list:
                        return reply
                    return reply[:index] + [inner(reply[index])] + reply[index + 1:]
                changed = commands[:index] + (placed.request,) + commands[index + 1:]
                return Placed(kind(changed), placed.target, unwrap)
        if index == len(commands) - 1:
            return DEFER
        changed = commands[:index + 1] + (Stall(seconds),) + commands[index + 1:]
        return Placed(kind(changed), kind.__name__, lambda reply, at=index + 1: _without(reply, at))
    return None


def before(request: Request, seconds: float) -> Placed:
    """The request with a stall before it: the operation's previous request
    ended with a write, so the cut falls between the two."""
    if type(request) is Pipeline:
        return Placed(Pipeline((Stall(seconds), *request.commands)), "between requests",
                      lambda reply: reply[1:] if type(reply) is list else reply)
    return Placed(Pipeline((Stall(seconds), request)), "between requests",
                  lambda reply: reply[1] if type(reply) is list else reply)
