"""lua_repair: lua, and for users with few conversations, overwrite the total
with the sum of the per-conversation hash on every change (self-healing)."""
from __future__ import annotations

from sim.lua import load_script
from strategies.lua import Lua

DELIVER_REPAIR = load_script(__file__, "deliver_repair")
READ_REPAIR = load_script(__file__, "read_repair")


class LuaRepair(Lua):
    name = "lua_repair"
    summary = "lua + recompute the total from the hash when the user has <= N conversations"
    scripts = (DELIVER_REPAIR, READ_REPAIR)
    deliver_script = DELIVER_REPAIR
    read_script = READ_REPAIR
    defaults = {"repair_max_conversations": 50}

    def extra_args(self) -> tuple:
        return (str(self.repair_max_conversations),)
