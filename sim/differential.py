"""The same requests on two servers (the simulated one and a real
redis-server): the same replies, error codes included, and the same
keyspace.

What the differential tests and `countdrift check-strategy` hold a
strategy's operations to; each server is reached by a function that sends
one request and returns its reply.
"""
from __future__ import annotations

from typing import Any, Callable

from sim.commands import CommandError, Operation, Request, run_now

Execute = Callable[[Request], Any]


def dump(execute: Execute) -> dict:
    """Every key: its type and value, and whether it has a TTL (a stream:
    its entries' fields, in order; their ids take each server's clock)."""
    state = {}
    for key in sorted(execute(("KEYS", "*"))):
        kind = execute(("TYPE", key))
        value = {"string": ("GET", key), "hash": ("HGETALL", key), "set": ("SMEMBERS", key),
                 "stream": ("XRANGE", key, "-", "+"), "list": ("LRANGE", key, "0", "-1"),
                 "zset": ("ZRANGE", key, "0", "-1", "WITHSCORES")}[str(kind)]
        raw = execute(value)
        if kind == "hash":
            raw = dict(zip(raw[::2], raw[1::2]))
        elif kind == "set":
            raw = sorted(raw)
        elif kind == "stream":
            raw = [fields for _, fields in raw]
        state[key] = (str(kind), raw, execute(("PTTL", key)) > 0)
    return state


def normalise(reply: Any) -> Any:
    """A reply as both servers must agree on it: an error by its code."""
    if isinstance(reply, CommandError):
        return ("error", str(reply).split(" ", 1)[0])
    if isinstance(reply, list):
        return [normalise(item) for item in reply]
    return reply


class Mismatch(AssertionError):
    """The two servers answered, or ended, differently."""


class Both:
    """Each operation on the simulated server and on the real one."""

    def __init__(self, sim: Execute, real: Execute) -> None:
        self.sim = sim
        self.real = real

    def run(self, make: Callable[[], Operation], other: Callable[[], Operation] | None = None) -> Any:
        """The operation ``make`` gives, on each server (each its own
        generator; ``other``'s on the real one, if given); Mismatch when
        their replies differ."""
        sim_reply = _outcome(make, self.sim)
        real_reply = _outcome(other or make, self.real)
        if normalise(sim_reply) != normalise(real_reply):
            raise Mismatch(f"simulated {normalise(sim_reply)!r}, redis-server {normalise(real_reply)!r}")
        return sim_reply

    def assert_same_state(self) -> None:
        sim, real = dump(self.sim), dump(self.real)
        if sim != real:
            differ = sorted(key for key in sim.keys() | real.keys() if sim.get(key) != real.get(key))
            first = differ[0]
            raise Mismatch(f"the keyspaces differ at {', '.join(differ[:5])}: {first} simulated {sim.get(first)}, "
                           f"on redis-server {real.get(first)}")


def _outcome(make: Callable[[], Operation], execute: Execute) -> Any:
    """The operation's result, or the error reply it let through (one side's
    error is a difference to report, not a crash)."""
    try:
        return run_now(make(), execute)
    except CommandError as error:
        return error
