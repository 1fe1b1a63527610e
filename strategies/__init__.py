"""The atomicity strategies, by name (DESIGN.md's vocabulary)."""
from __future__ import annotations

from strategies.async_total import AsyncTotal
from strategies.base import Strategy
from strategies.derived import Derived
from strategies.function import Function
from strategies.idset import IdSet
from strategies.lock import Lock
from strategies.lock_fenced import LockFenced
from strategies.lua import Lua
from strategies.lua_idempotent import LuaIdempotent
from strategies.lua_repair import LuaRepair
from strategies.multi import Multi
from strategies.naive import Naive
from strategies.read_pointer import ReadPointer
from strategies.watch import Watch
from strategies.write_behind import WriteBehind

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (Naive, Multi, Watch, Lock, Lua, LuaRepair, Derived, IdSet, LuaIdempotent, ReadPointer,
                WriteBehind, AsyncTotal, Function, LockFenced)
}


# One of each way of sending an operation (separate commands, one script,
# an optimistic transaction, a lock): what calibration's one-client runs and
# the capacity ranking compare.
REPRESENTATIVE = ("naive", "lua", "watch", "lock")
# What `countdrift fidelity` runs by default: the race, the atomic script,
# the lock and the dedup (each drifts for a reason of its own under faults).
FIDELITY = ("naive", "lua", "lock", "lua_idempotent")


def make_strategy(name: str, **options) -> Strategy:
    return STRATEGIES[name](**options)
