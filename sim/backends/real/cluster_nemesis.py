"""The nemesis on a real Redis Cluster: the faults that strike one shard.

The same schedule, parameters and effects as the simulation's nemesis
(sim/backends/model/nemesis.py); the network and client faults are
:class:`~sim.backends.real.nemesis.RealNemesis`'s own. A server fault
strikes the primary of the shard its ``shard`` parameter names, and its
record says which shard and which slots:

- ``server_crash``: SIGKILL, and a restart from the same folder after
  ``duration`` (shorter than cluster-node-timeout: the scenario sees to it,
  so the cluster does not fail the shard over); the node loads its AOF and
  its nodes.conf, and answers CLUSTERDOWN for its first 2 s (cluster.c's
  CLUSTER_WRITABLE_DELAY);
- ``power_loss``: the same, with the node's AOF cut back to its last
  emulated fsync first (RealNemesis's sampler covers every node);
- ``cluster_failover``: SIGKILL only; the cluster does the rest. The
  nemesis watches (every 10 ms) another primary's ``cluster_state`` (it
  turns ``fail`` when the dead primary is flagged FAIL: ``failed_at``) and
  the replica's ROLE (``master``: ``promoted_at``); the old primary is
  started again after ``duration`` (or the promotion, if later), and the
  cluster makes it a replica of the promoted one. Clients follow by
  themselves: a refused link makes them read the slot map again;
- ``minority_partition``: the primary is cut off from the other nodes
  (the bus relay closes every bus link between it and them:
  sim/backends/real/bus_relay.py), from its replica (the replica's user
  is switched off there and its link killed) and from the clients not left
  with it (their proxies to it are disabled), while the clients left with it
  lose their proxies to every other node. The nemesis watches the old
  primary's ``cluster_state`` (``fail``: ``refused_at``) and the promotion
  as for ``cluster_failover``; after ``duration`` (or the promotion, if
  later) everything is mended, and the cluster makes the old primary a
  replica of the promoted one (``demoted_at``);
- ``slot_migration``: what ``redis-cli --cluster reshard`` sends, with
  every slot opened first: CLUSTER SETSLOT IMPORTING on the target and
  MIGRATING on the source for each slot, then, one slot at a time at an
  even pace, CLUSTER GETKEYSINSLOT and MIGRATE of its keys, and CLUSTER
  SETSLOT NODE on the target, the source and the other primaries. Clients
  follow ASK and MOVED by themselves (sim/backends/real/cluster.py).
"""
from __future__ import annotations

import asyncio
import time

import redis

from sim.backends.real.cluster import REPLICATION_USER
from sim.backends.real.nemesis import RealNemesis, until
from sim.backends.real.processes import RedisServer
from sim.client import in_flight
from sim.cluster import SlotMap, migrating_slots, shard_slots
from sim.faults import Fault
from sim.nemesis import ALREADY_DOWN, FSYNC_PERIOD_S, left_with_old_primary

_WATCH_S = 0.01          # how often the failover's progress is read
_PROMOTION_PATIENCE = 10  # node timeouts (plus 5 s) to wait for a promotion before giving up


class ClusterNemesis(RealNemesis):
    """RealNemesis, with the server faults aimed at one shard of a ClusterServers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.down_shards: set[int] = set()
        self.slots = SlotMap.even(self.servers.primary_count)

    def _struck(self, index: int, fault: Fault) -> tuple[RedisServer, int]:
        shard = fault.param("shard")
        self.log.update(index, shard=shard, slots=shard_slots(self.slots, shard))
        return self.servers.primaries[shard], shard

    def _shard_down(self, index: int, shard: int) -> bool:
        if shard in self.down_shards:
            self.log.not_applied(index, ALREADY_DOWN)
            return True
        return False

    def _node_last_save(self, node: RedisServer) -> float:
        saved = node.client().lastsave().timestamp()
        return self.driver.now() - (time.time() - saved)

    async def _crash(self, index: int, fault: Fault, power: bool) -> None:
        primary, shard = self._struck(index, fault)
        if self._shard_down(index, shard):
            return
        self.down_shards.add(shard)
        died_at = self.driver.now()
        if not self.config.appendonly:
            keep = await asyncio.to_thread(self._node_last_save, primary)
        elif power and FSYNC_PERIOD_S[self.config.appendfsync]:
            keep = self.synced.get(primary.name, (0.0, None, 0))[0]
        else:
            keep = died_at
        self.log.struck(index, died_at, operations_in_flight=in_flight(self.driver.clients))
        self.losses(index, died_at, keep, shard)
        try:
            await asyncio.to_thread(primary.kill)
            if power:
                self._lose_unsynced(primary, fault.param("tear_bytes"))
            await asyncio.sleep(max(0.0, died_at + fault.duration - self.driver.now()))
            await asyncio.to_thread(primary.start)
            self.log.ended(index, self.driver.now())
        finally:
            if not primary.running:   # the run ended while it was down: back, so that it can be read
                await asyncio.to_thread(primary.start)
            self.down_shards.discard(shard)

    async def server_crash(self, index: int, fault: Fault) -> None:
        await self._crash(index, fault, power=False)
        if fault.kind == "server_crash":
            self.log.update(index, promoted=False)

    async def power_loss(self, index: int, fault: Fault) -> None:
        await self._crash(index, fault, power=True)

    def _promotable(self, index: int, fault: Fault) -> tuple[RedisServer, int, list[RedisServer]] | None:
        """The primary a fault that ends in a promotion strikes, its shard,
        and the replicas that may be promoted (None: the fault cannot strike)."""
        primary, shard = self._struck(index, fault)
        if self._shard_down(index, shard):
            return None
        replicas = [replica for replica in self.servers.replicas[shard] if replica.running]
        if not replicas:
            self.log.not_applied(index, "no replica to promote (the last one was promoted)")
            return None
        return primary, shard, replicas

    def _promoted(self, index: int, shard: int, old: RedisServer, promoted: RedisServer, struck: float) -> None:
        """The cluster named ``promoted`` the primary of ``shard``: ``old`` is its replica now."""
        self.servers.primaries[shard] = promoted
        self.servers.replicas[shard] = [old, *(r for r in self.servers.replicas[shard] if r is not promoted)]
        self.log.promoted(index, struck, self.driver.now(), promoted.name)

    async def cluster_failover(self, index: int, fault: Fault) -> None:
        struck = self._promotable(index, fault)
        if struck is None:
            return
        primary, shard, replicas = struck
        self.down_shards.add(shard)
        died_at = self.driver.now()
        self.log.struck(index, died_at, operations_in_flight=in_flight(self.driver.clients))
        # The replication links are direct (no lag emulated: the scenario has replication_lag_ms = 0).
        self.losses(index, died_at, died_at - self.config.replication_lag_ms / 1000.0, shard)
        try:
            await asyncio.to_thread(primary.kill)
            promoted = await self._promotion(index, shard, replicas, died_at)
            if promoted is not None:
                self._promoted(index, shard, primary, promoted, died_at)
                self.log.ended(index, self.driver.now())
            await asyncio.sleep(max(0.0, died_at + fault.duration - self.driver.now()))
            await asyncio.to_thread(primary.start)   # the cluster makes it a replica of the promoted one
        finally:
            if not primary.running:
                await asyncio.to_thread(primary.start)
            self.down_shards.discard(shard)

    async def minority_partition(self, index: int, fault: Fault) -> None:
        struck = self._promotable(index, fault)
        if struck is None:
            return
        old, shard, replicas = struck
        servers, driver = self.servers, self.driver
        self.down_shards.add(shard)
        now = driver.now()
        minority = left_with_old_primary(self.seed, index, len(driver.clients), fault.param("clients_share"))
        self.log.struck(index, now, clients_left=len(minority), promoted=False, acknowledged_writes_lost=0,
                        old_primary_acknowledged=0)
        acknowledged = self.acks.watch_cut_off(shard, minority)
        self.log.old_primary(index, acknowledged)
        proxies = [proxy.name for client, mine in enumerate(servers.proxies_of) for address, proxy in mine.items()
                   if (address == old.address) != (client in minority)]
        refusal = None
        try:
            await asyncio.to_thread(self._cut_off, old, True)
            await asyncio.gather(*(self._cut_proxy(proxy) for proxy in proxies))
            refusal = asyncio.ensure_future(self._refusal(index, old))
            promoted = await self._promotion(index, shard, replicas, now)
            if promoted is not None:
                self._promoted(index, shard, old, promoted, now)
                lag_s = self.config.replication_lag_ms / 1000.0
                self.log.old_primary(index, acknowledged, self.acks.lost_operations(now - lag_s, now, shard))
                self.log.update(index, promoted=True)
            await asyncio.sleep(max(0.0, now + fault.duration - driver.now()))
        finally:
            if refusal is not None:
                refusal.cancel()
            await asyncio.to_thread(self._cut_off, old, False)
            await asyncio.gather(*(self._mend_proxy(proxy) for proxy in proxies))
            self.acks.unwatch_cut_off(acknowledged)
            self.down_shards.discard(shard)
        self.log.ended(index, driver.now())
        await self._demotion(index, old)

    def _cut_off(self, node: RedisServer, cut: bool) -> None:
        """Cut ``node`` off from the other nodes and its replicas (or mend it)."""
        relay = self.servers.bus_relay
        with node.client() as client:
            if cut:
                relay.cut(self.servers.node_ids[node.name], self.servers.relay_ports[node.name])
                client.execute_command("ACL", "SETUSER", REPLICATION_USER, "off")
                client.execute_command("CLIENT", "KILL", "USER", REPLICATION_USER)
            else:
                relay.heal()
                client.execute_command("ACL", "SETUSER", REPLICATION_USER, "on")

    async def _refusal(self, index: int, node: RedisServer) -> None:
        """Until the cut-off primary's cluster_state is fail (it answers CLUSTERDOWN)."""
        await until(node, lambda probe: probe.cluster("INFO").get("cluster_state") == "fail", _WATCH_S)
        self.log.update(index, refused_at=round(self.driver.now(), 6))

    async def slot_migration(self, index: int, fault: Fault) -> None:
        source, target = fault.param("shard"), fault.param("to_shard")
        slots = migrating_slots(self.driver.trace.users, self.slots, source, fault.param("slots"))
        started = self.driver.now()
        self.log.struck(index, started, shard=source, to_shard=target, slots=",".join(map(str, slots)))
        await asyncio.to_thread(self._open_slots, slots, source, target)
        moved = 0
        for number, slot in enumerate(slots, 1):
            await asyncio.sleep(max(0.0, started + fault.duration * number / len(slots) - self.driver.now()))
            moved += await asyncio.to_thread(self._move_slot, slot, source, target)
        self.log.ended(index, self.driver.now(), keys_moved=moved)

    def _open_slots(self, slots: list[int], source: int, target: int) -> None:
        primaries, ids = self.servers.primaries, self.servers.node_ids
        with primaries[target].client() as importing, primaries[source].client() as migrating:
            for slot in slots:
                importing.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[primaries[source].name])
                migrating.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[primaries[target].name])

    def _move_slot(self, slot: int, source: int, target: int) -> int:
        """MIGRATE the slot's keys, then give it to the target (target, source, others: redis-cli's order)."""
        primaries = self.servers.primaries
        to = primaries[target]
        with primaries[source].client() as node:
            keys = node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
            if keys:
                host, port = to.address.rsplit(":", 1)
                node.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)
        owner = self.servers.node_ids[to.name]
        for primary in [to, primaries[source], *(p for n, p in enumerate(primaries) if n not in (source, target))]:
            with primary.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner)
        self.slots.give(slot, target)
        return len(keys)

    async def _promotion(self, index: int, shard: int, replicas: list[RedisServer],
                         died_at: float) -> RedisServer | None:
        """Watch the cluster until a replica of ``shard`` is its primary
        (None if none is within the patience); record when another primary
        first saw the cluster fail (the dead one flagged FAIL)."""
        other = next(node for number, node in enumerate(self.servers.primaries) if number != shard)
        watcher = other.client(socket_timeout=1.0)
        probes = [replica.client(socket_timeout=1.0) for replica in replicas]
        deadline = died_at + _PROMOTION_PATIENCE * self.servers.node_timeout_ms / 1000.0 + 5.0
        failed = False

        def look() -> RedisServer | None:
            nonlocal failed
            if not failed:
                try:
                    failed = watcher.cluster("INFO").get("cluster_state") == "fail"
                except redis.RedisError:
                    pass
                if failed:
                    self.log.update(index, failed_at=round(self.driver.now(), 6))
            for replica, probe in zip(replicas, probes):
                try:
                    if probe.execute_command("ROLE")[0] == "master":
                        return replica
                except redis.RedisError:
                    pass
            return None

        try:
            while self.driver.now() < deadline:
                found = await asyncio.to_thread(look)
                if found is not None:
                    return found
                await asyncio.sleep(_WATCH_S)
            return None
        finally:
            watcher.close()
            for probe in probes:
                probe.close()
