"""A live slot migration on the simulated cluster (the ``slot_migration`` fault).

The source shard's slots are marked MIGRATING and the target's IMPORTING
(CLUSTER SETSLOT), then each slot's keys move at once (MIGRATE: gone from
the source, restored on the target, atomically on the source's event loop)
and the slot is given to the target (CLUSTER SETSLOT ... NODE), one slot
after the other. While a slot is open, what a node answers a request for
its keys is decided as the request runs, by the rules of redis 7.0's
cluster.c (``getNodeByQuery``), checked against redis-server 7.0.15 in
tests/test_cluster.py:

- the source serves a request whose keys it all has; one whose keys it
  has none of gets ``ASK <slot> <target>``; one with some of them,
  ``TRYAGAIN`` (a multi-key request during rehashing);
- the target answers ``MOVED <slot> <source>``, unless ASKING came just
  before: then it serves, but a request on several keys of which it lacks
  one gets ``TRYAGAIN``;
- inside MULTI a queued command that gets either makes EXEC answer
  EXECABORT.

A cluster client follows ASK with ASKING and the request on the target,
once (the SimPy driver, as the real client in sim/backends/real/cluster.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sim.cluster import EXECABORT, TRYAGAIN, key_slot, request_keys
from sim.commands import Request, Transaction

if TYPE_CHECKING:
    from sim.backends.model.cluster import ClusterServer
    from sim.backends.model.server import Connection, Server

# What a script's own call gets on a key the node does not serve (script.c, redis 7.0;
# redis-server adds the script's sha and line).
SCRIPT_NON_LOCAL = "ERR Script attempted to access a non local key in a cluster node"


class SlotMigration:
    """Slots open from ``source`` to ``target`` until each one's keys move."""

    def __init__(self, cluster: "ClusterServer", source: int, target: int, slots: list[int]) -> None:
        self.cluster = cluster
        self.source = source
        self.target = target
        self.open = set(slots)
        self.keys_moved = 0
        cluster.shards[source].guard = self._at_source
        cluster.shards[target].guard = self._at_target
        cluster.shards[source].scripts.call_guard = self._inside_script

    def move(self, slot: int, at: float) -> int:
        """MIGRATE the slot's keys at ``at`` and give the slot to the target; how many keys moved."""
        cluster = self.cluster
        source, target = cluster.shards[self.source], cluster.shards[self.target]
        source.advance(at)
        target.advance(at)
        source.store.now = target.store.now = at
        moved = 0
        for key in [key for key in source.store.data if key_slot(key) == slot]:
            taken = source.store.take(key)
            if taken is not None:
                target.store.put(key, *taken)
                moved += 1
        cluster.give_slot(slot, self.target)
        self.open.discard(slot)
        self.keys_moved += moved
        if not self.open:
            source.guard = target.guard = source.scripts.call_guard = None
            cluster.migration = None
        return moved

    def holder(self, shard: int, request: Request) -> int:
        """Where a cluster client that follows ASK reads ``request`` sent to ``shard``."""
        keys = request_keys(request)
        if shard == self.source and self._open(keys) is not None and not any(
                self.cluster.shards[shard].store.exists(key) for key in keys):
            return self.target
        return shard

    def _at_source(self, server: "Server", connection: "Connection", request: Request) -> str | None:
        connection.asking = False
        return self._refusal(request, lambda keys: self._source_answer(server, keys))

    def _at_target(self, server: "Server", connection: "Connection", request: Request) -> str | None:
        asking, connection.asking = connection.asking, False   # ASKING holds through MULTI ... EXEC
        return self._refusal(request, lambda keys: self._target_answer(server, keys, asking))

    def _inside_script(self, words: tuple) -> str | None:
        """A redis.call on the source is checked as a command of its own
        (script.c's scriptVerifyClusterState): on a key of an open slot that
        the source lacks (a key the script itself deleted, for one), the
        script stops there with this error, what it wrote before kept."""
        keys = request_keys(words)
        if self._source_answer(self.cluster.shards[self.source], keys) is None:
            return None
        return SCRIPT_NON_LOCAL

    def _refusal(self, request: Request, answer) -> str | None:
        """What a node answers instead of running ``request`` (None: it runs):
        a queued command refused makes EXEC answer EXECABORT, and EXEC itself
        is checked with every queued key."""
        if type(request) is Transaction:
            commands = [request_keys(command) for command in request.commands]
            if any(answer(keys) is not None for keys in commands):
                return EXECABORT
            return answer([key for keys in commands for key in keys])
        return answer(request_keys(request))

    def _open(self, keys: list[str]) -> int | None:
        """The slot of ``keys`` if it is open (CROSSSLOT was answered before, at the node)."""
        if not keys:
            return None
        slot = key_slot(keys[0])
        return slot if slot in self.open else None

    def _source_answer(self, server: "Server", keys: list[str]) -> str | None:
        slot = self._open(keys)
        if slot is None:
            return None
        missing = sum(not server.store.exists(key) for key in keys)
        if not missing:
            return None
        if missing < len(keys):
            return TRYAGAIN
        return f"ASK {slot} {self.cluster.addresses[self.target]}"

    def _target_answer(self, server: "Server", keys: list[str], asking: bool) -> str | None:
        slot = self._open(keys)
        if slot is None:
            return None
        if not asking:
            return f"MOVED {slot} {self.cluster.addresses[self.source]}"
        if len(set(keys)) > 1 and not all(server.store.exists(key) for key in keys):
            return TRYAGAIN
        return None
