"""What the simulated Redis's commands share: the error replies, the
status reply, and integers parsed as Redis parses them."""
from __future__ import annotations

from typing import Any

from sim.commands import CommandError

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
HASH_NOT_INTEGER = "ERR hash value is not an integer"
OVERFLOW = "ERR increment or decrement would overflow"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1   # a counter is a C long long


class Status(str):
    """A status reply (+OK), as distinct from a bulk string that reads "OK"."""


OK = Status("OK")


# Canonical decimal texts already parsed (counters take few distinct values):
# a dict lookup instead of int() and str() on every INCRBY and HINCRBY.
_PARSED: dict[str, int] = {}
_PARSED_MAX = 1 << 16


def to_int(value: Any, error: str = NOT_INTEGER) -> int:
    """Parse an integer as Redis's string2ll does: canonical decimal text only."""
    if type(value) is int:
        return value
    if type(value) is str:
        number = _PARSED.get(value)
        if number is not None:
            return number
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise CommandError(error) from None
    if str(number) != value or not INT64_MIN <= number <= INT64_MAX:
        raise CommandError(error)
    if len(_PARSED) < _PARSED_MAX:
        _PARSED[value] = number
    return number
