"""function: lua's scripts as a Redis Function library (FUNCTION LOAD, FCALL).

The same two scripts as ``lua``, registered once as the functions of a
library. Since Redis 7.0 a library is part of the dataset: written to the
RDB and the AOF, replicated, so a restarted or promoted node still has it
(Redis manual, "Redis functions"). EVALSHA's scripts live in a cache that a
restart or a failover empties (NOSCRIPT): every connection loads them again.
A connection here sends FUNCTION LOAD as it opens, which a node that kept
the library refuses ("already exists"): the run's ``script_loads`` counts
only the connections that found it missing.
"""
from __future__ import annotations

from sim.lua import LuaLibrary
from strategies.lua import DELIVER, READ, Lua

LIBRARY = LuaLibrary("countdrift", (DELIVER, READ))


class Function(Lua):
    name = "function"
    summary = "lua's two scripts as one Redis Function library: FCALL per recipient and per read, loaded once"
    scripts = ()
    libraries = (LIBRARY,)
    deliver_script = LIBRARY.function(DELIVER)
    read_script = LIBRARY.function(READ)
