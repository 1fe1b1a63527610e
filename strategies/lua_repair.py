"""lua_repair: lua, and for users with few conversations, overwrite the total
with the sum of the per-conversation hash on every change (self-healing)."""
from __future__ import annotations

from sim.lua import load_script
from strategies.lua import Lua

CHANGE_REPAIR = load_script(__file__, "change_repair")


class LuaRepair(Lua):
    name = "lua_repair"
    repairs = True
    repair_off = {"repair_max_conversations": -1}
    summary = "lua + recompute the total from the hash when the user has <= N conversations"
    scripts = (CHANGE_REPAIR,)
    deliver_script = read_script = CHANGE_REPAIR
    defaults = {"repair_max_conversations": 50}
    bounds = {**Lua.bounds, "repair_max_conversations": (-1, 1e9)}   # -1: never repair

    def deliver_args(self, conversation: int) -> tuple:
        return (str(conversation), "deliver", str(self.repair_max_conversations))

    def read_args(self, conversation: int) -> tuple:
        return (str(conversation), "read", str(self.repair_max_conversations))
