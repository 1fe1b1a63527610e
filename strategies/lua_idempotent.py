"""lua_idempotent: lua, plus a per-(message, recipient) dedup key set inside
the same script, so a retried delivery is counted once. Reads have no key:
clearing twice clears once, but a read retried after its reply was lost
also clears what arrived in between (the simulation's exact truth sees it
under reset_peer)."""
from __future__ import annotations

from sim.commands import Script
from sim.lua import load_script
from strategies import keys
from strategies.lua import READ, Lua

DELIVER_ONCE = load_script(__file__, "deliver_once")


class LuaIdempotent(Lua):
    name = "lua_idempotent"
    summary = "lua + SET NX dedup key per (message, recipient) inside the script"
    scripts = (DELIVER_ONCE, READ)
    defaults = {"dedup_ttl_s": 86400}
    bounds = {**Lua.bounds, "dedup_ttl_s": (1, 1e9)}

    def deliver_call(self, message: int, conversation: int, user: int) -> Script:
        return Script(DELIVER_ONCE, (keys.unread(user), self.total_key(user), keys.seen(user, message)),
                      (str(conversation), str(self.dedup_ttl_s)))
