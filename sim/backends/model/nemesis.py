"""The nemesis of the simulation: applies a fault schedule to the simulated
server, network and clients, and records what each fault did (the effects
of sim/faults.py's specification, through the shared FaultLog). Every
fault kind is one method named after it."""
from __future__ import annotations

from sim.backends.model.cluster import CUT_PING_S, ShardCut, minority_refusal_time
from sim.backends.model.driver import SimDriver
from sim.backends.model.migration import SlotMigration
from sim.backends.model.server import REPLICA_CRON_S
from sim.client import in_flight, strike_clients
from sim.cluster import WRITABLE_DELAY_S, migrating_slots, promotion_times, shard_slots
from sim.faults import Fault
from sim.nemesis import ALREADY_DOWN, AckLog, Nemesis, Split, StallTarget, left_with_old_primary, uniform
from sim.scenario import SentinelConfig, ServerConfig
from sim.sentinel import CONVERT_S, promotion_delay
from strategies import keys

_FIND_STALL_S = 0.0001   # how often to look for the stalled request in the server's queue


class SimNemesis(Nemesis):
    def __init__(self, driver: SimDriver, schedule: list[Fault], seed: int, server: ServerConfig,
                 sentinel: SentinelConfig, acks: AckLog, target: StallTarget) -> None:
        super().__init__(driver, schedule, seed, acks, target)
        self.env = driver.env
        self.config = server
        self.sentinel = sentinel
        self.promotion_s = promotion_delay(sentinel)

    def processes(self) -> list:
        return [self._apply(index, fault) for index, fault in enumerate(self.schedule)]

    @property
    def server(self):
        """The primary of the moment."""
        return self.driver.server

    def _apply(self, index: int, fault: Fault):
        if fault.at > self.env.now:
            yield self.env.timeout(fault.at - self.env.now)
        yield from getattr(self, fault.kind)(index, fault)

    # -- the server -------------------------------------------------------------
    def _struck(self, index: int, fault: Fault):
        """The server a fault strikes: the primary, or on a cluster the
        primary of the shard its ``shard`` parameter names (recorded, with
        its slots); and that shard (None on one server)."""
        shards = getattr(self.driver.server, "shards", None)
        if shards is None:
            return self.server, None
        shard = fault.param("shard")
        self.log.update(index, shard=shard, slots=shard_slots(self.driver.server.slots, shard))
        return shards[shard], shard

    def _server_down(self, index: int, server=None) -> bool:
        if self.env.now < (server or self.server).down_until:
            self.log.not_applied(index, ALREADY_DOWN)
            return True
        return False

    def _kill(self, index: int, keep_until: float, down_for: float, tear_bytes: int = 0,
              replica: bool = False, server=None, shard: int | None = None) -> None:
        """The primary dies now; what survives reaches back to ``keep_until``:
        on its own disk (it restarts), or on the replica promoted instead."""
        now = self.env.now
        server = server or self.server
        self.log.struck(index, now, operations_in_flight=in_flight(self.driver.clients))
        self.losses(index, now, keep_until, shard)
        if replica:
            server.fail_over(now, down_for, keep_until, self._preserved())
        else:
            # The replicas' cron ticks fall anywhere in the second after the restart.
            server.crash(now, down_for, keep_until, tear_bytes,
                         replicas_after_s=uniform(self.seed, index, 0x5E1C) * REPLICA_CRON_S)
            if shard is not None:   # a restarted cluster primary answers CLUSTERDOWN for a while
                self.driver.server.writable_at[shard] = server.down_until + WRITABLE_DELAY_S

    def _back_up(self, index: int, server=None):
        server = server or self.server
        yield self.env.timeout(max(0.0, server.down_until - self.env.now))
        self.log.ended(index, self.env.now)

    def server_crash(self, index: int, fault: Fault):
        server, shard = self._struck(index, fault)
        if self._server_down(index, server):
            return
        now = self.env.now
        self._kill(index, server.persistence.survives_crash(now), fault.duration, server=server, shard=shard)
        self.log.update(index, promoted=False)
        if shard is not None:
            yield from self._back_up(index, server)
            return
        if self.sentinel.enabled and self.server.replicas and fault.duration > self.promotion_s:
            # Sentinel finds the primary down and promotes a replica before it is back.
            yield self.env.timeout(self.promotion_s)
            keep = self._replica_keeps(now, self.config.replication_lag_ms / 1000.0)
            self.server.fail_over(self.env.now, 0.0, keep, self._preserved())
            self.losses(index, now, keep)
            self.log.update(index, promoted=True)
            self._promoted(index, now, now + fault.duration)
        yield from self._back_up(index)

    def _promoted(self, index: int, struck: float, old_back_at: float) -> None:
        """Sentinel named a replica the primary now; the old primary, back at
        ``old_back_at``, rejoins as a replica once Sentinel converts it."""
        self.log.promoted(index, struck, self.env.now, self.server.name)
        server = self.server
        server.replicas -= 1
        self.env.process(self._rejoin(server, old_back_at + CONVERT_S))

    def _rejoin(self, server, at: float):
        yield self.env.timeout(max(0.0, at - self.env.now))
        server.replicas += 1

    def power_loss(self, index: int, fault: Fault):
        server, shard = self._struck(index, fault) if fault.kind == "power_loss" else (self.server, None)
        if self._server_down(index, server):
            return
        now = self.env.now
        if "lost_unfsynced" in self.driver.causes:
            keep, tear = server.persistence.survives_power_loss(now), fault.param("tear_bytes")
        else:
            keep, tear = server.persistence.survives_crash(now), 0  # counterfactual: as a process crash
        self._kill(index, keep, fault.duration, tear, server=server, shard=shard)
        yield from self._back_up(index, server)

    def _promotable(self, index: int, server) -> bool:
        """Whether a fault that ends in a promotion can strike ``server``: it
        is up, and has a replica to promote."""
        if self._server_down(index, server):
            return False
        if not server.replicas:
            self.log.not_applied(index, "no replica to promote (the last one was promoted)")
            return False
        return True

    def cluster_failover(self, index: int, fault: Fault):
        """A cluster shard's primary dies; the cluster flags it FAIL and its
        replica wins the election when cluster.c's timing says
        (:func:`~sim.cluster.promotion_times`); every node
        answers CLUSTERDOWN in between. The replica lacks the writes of the
        last replication lag; the old primary rejoins as a replica after
        ``duration`` (or the promotion, if later)."""
        server, shard = self._struck(index, fault)
        if not self._promotable(index, server):
            return
        env, cluster = self.env, self.driver.server
        now = env.now
        draws = tuple(uniform(self.seed, index, salt) for salt in (0xFA11, 0xC205, 0xE1EC))
        failed_s, promoted_s = promotion_times(self.config.cluster_node_timeout_ms / 1000.0, draws)
        keep = self._replica_keeps(now, self.config.replication_lag_ms / 1000.0, server)
        self._kill(index, keep, promoted_s, replica=True, server=server, shard=shard)
        cluster.down_windows.append((now + failed_s, now + promoted_s))
        self.log.update(index, failed_at=round(now + failed_s, 6))
        server.replicas -= 1
        yield env.timeout(promoted_s)
        self.log.promoted(index, now, env.now, server.name)
        self.log.ended(index, env.now)
        env.process(self._rejoin(server, now + max(fault.duration, promoted_s)))

    def minority_partition(self, index: int, fault: Fault):
        """A shard's primary is cut off with the clients left on its side
        (:class:`~sim.backends.model.cluster.ShardCut`): it takes their
        writes until it misses a majority (:func:`minority_refusal_time`);
        on the other side the cluster flags it FAIL and promotes its replica
        as in a cluster_failover, holding the writes up to the cut. When the
        partition heals (not before the promotion), the old primary becomes
        a replica: what it took after the cut is lost."""
        old, shard = self._struck(index, fault)
        if not self._promotable(index, old):
            return
        env, driver, cluster = self.env, self.driver, self.driver.server
        if cluster.cut is not None:
            self.log.not_applied(index, "another minority partition was under way")
            return
        now = env.now
        share = fault.param("clients_share") if "lost_in_split_brain" in driver.causes else 0.0
        minority = left_with_old_primary(self.seed, index, len(driver.clients), share)
        timeout_s = self.config.cluster_node_timeout_ms / 1000.0
        refuses_s = minority_refusal_time(timeout_s, len(cluster.shards), [
            uniform(self.seed, index, other, 0x3170) for other in range(len(cluster.shards))])
        draws = tuple(uniform(self.seed, index, salt) for salt in (0xFA11, 0xC205, 0xE1EC))
        failed_s, promoted_s = promotion_times(timeout_s, draws, first_ping_s=CUT_PING_S)
        heals_s = max(fault.duration, promoted_s)
        self.log.struck(index, now, clients_left=len(minority), promoted=False, acknowledged_writes_lost=0,
                        old_primary_acknowledged=0, failed_at=round(now + failed_s, 6),
                        refused_at=round(now + refuses_s, 6) if refuses_s < heals_s else None)
        cluster.cut = ShardCut(shard, old, minority, now + refuses_s)
        acknowledged = self.acks.watch_cut_off(shard, minority)
        self.log.old_primary(index, acknowledged)
        cluster.down_windows.append((now + failed_s, now + promoted_s))
        yield env.timeout(promoted_s)
        keep = self._replica_keeps(now, self.config.replication_lag_ms / 1000.0, old)
        promoted = cluster.shards[shard] = old.fork(env.now, keep, f"{old.name}-replica0", self._preserved())
        promoted.replicas -= 1   # its replica is the old primary, once the partition heals
        self.log.old_primary(index, acknowledged, self.acks.lost_operations(keep, now, shard))
        self.log.update(index, promoted=True)
        self.log.promoted(index, now, env.now, promoted.name)
        yield env.timeout(max(0.0, now + heals_s - env.now))
        cluster.cut = None
        self.acks.unwatch_cut_off(acknowledged)
        old.demote(env.now)   # it learns of the promotion from the first pong, and rejoins as a replica
        promoted.replicas += 1
        self.log.ended(index, env.now, demoted_at=round(env.now, 6))

    def slot_migration(self, index: int, fault: Fault):
        """Live resharding: slots of the ``shard`` move to ``to_shard`` while
        traffic flows (sim/backends/model/migration.py): all open at once,
        then each slot's keys migrate at an even pace over the fault's
        duration, the slot given to the target right after."""
        cluster, env = self.driver.server, self.env
        source, target = fault.param("shard"), fault.param("to_shard")
        slots = migrating_slots(self.driver.trace.users, cluster.slots, source, fault.param("slots"))
        self.log.struck(index, env.now, shard=source, to_shard=target, slots=",".join(map(str, slots)))
        if not slots:
            self.log.ended(index, env.now, keys_moved=0)
            return
        migration = cluster.migration = SlotMigration(cluster, source, target, slots)
        started = env.now
        for number, slot in enumerate(slots, 1):
            yield env.timeout(max(0.0, started + fault.duration * number / len(slots) - env.now))
            migration.move(slot, env.now)
        self.log.ended(index, env.now, keys_moved=migration.keys_moved)

    def mid_script_power_loss(self, index: int, fault: Fault):
        """Arm the stall (sim/stall.py); when an operation reaches it, cut the
        power while the stall holds the server; strike anyway when the
        window ends. Like every fault on the server, it does not strike a
        server that is already down when it is due."""
        if self._server_down(index):
            return
        env, target = self.env, self.target
        deadline = env.now + fault.param("within_s")
        while env.now < deadline:
            caught = env.event()
            target.arm(fault.param("stall_ms") / 1000.0, caught.succeed)
            yield caught | env.timeout(deadline - env.now)
            if not caught.triggered:
                break
            entry = yield from self._stalled_entry(target.caught["request"], deadline)
            if entry is not None:
                middle = entry.end - target.stall_s / 2
                if middle > env.now:
                    yield env.timeout(middle - env.now)
                if not entry.committed and not entry.lost:
                    if not self._server_down(index):
                        yield from self._cut_power(index, fault, target.caught)
                    return
        target.disarm()
        if not self._server_down(index):
            yield from self._cut_power(index, fault, {"target": "none", "target_operation": None})

    def _stalled_entry(self, request, deadline: float):
        """The stalled request once it is in the server's queue (None if it
        never arrives: refused, lost on the way)."""
        env = self.env
        give_up = min(deadline, env.now + self.driver.config.timeout_ms / 1000.0)
        while env.now < give_up:
            for entry in self.server.queue:
                if entry.request is request:
                    return entry
            yield env.timeout(_FIND_STALL_S)
        return None

    def _cut_power(self, index: int, fault: Fault, caught: dict):
        self.log.update(index, target=caught["target"], target_operation=caught["target_operation"])
        yield from self.power_loss(index, fault)

    def failover(self, index: int, fault: Fault):
        """The replica is promoted after ``duration``, or, with Sentinel on,
        when Sentinel decides (the old primary stays down at least
        ``duration``, then rejoins as a replica)."""
        if self._server_down(index):
            return
        if not self.server.replicas:
            self.log.not_applied(index, "no replica to promote (the last one was promoted)")
            return
        lag_ms = fault.param("lag_ms")
        now = self.env.now
        keep = self._replica_keeps(now, (self.config.replication_lag_ms if lag_ms < 0 else lag_ms) / 1000.0,
                                   self.server)
        delay = self.promotion_s if self.sentinel.enabled else fault.duration
        self._kill(index, keep, delay, replica=True)
        yield from self._back_up(index)
        if self.sentinel.enabled:
            self._promoted(index, now, now + max(delay, fault.duration))
        else:
            self.log.promoted(index, now, self.env.now, self.server.name)

    def _replica_keeps(self, died_at: float, lag_s: float, server=None) -> float:
        """A replica promoted after the primary died holds its writes up to then."""
        if "lost_on_failover" in self.driver.causes:
            return (server or self.server).replica_has_until(died_at, lag_s)
        return died_at   # counterfactual: the replica has everything

    def _preserved(self) -> str | None:
        """Counterfactual when two_lock_holders is off: lock keys survive a failover."""
        return keys.LOCK_PREFIX if "two_lock_holders" not in self.driver.causes else None

    def split_brain(self, index: int, fault: Fault):
        """The primary, with the share of clients left on its side, is cut
        off from the rest; Sentinel promotes a replica on the other side
        once it has found the primary down (if the partition lasts that
        long), and demotes the old primary some seconds after it heals:
        what the old primary acknowledged in between is gone."""
        if self._server_down(index):
            return
        env, driver = self.env, self.driver
        now, old = env.now, self.server
        share = fault.param("clients_share") if "lost_in_split_brain" in driver.causes else 0.0
        minority = left_with_old_primary(self.seed, index, len(driver.clients), share)
        self.log.struck(index, now, clients_left=len(minority), promoted=False, acknowledged_writes_lost=0,
                        old_primary_acknowledged=0)
        driver.split = split = Split(old, minority)
        for client in driver.clients:
            if client.index not in minority and client.connection is not None:
                client.connection.close()
        if self.config.min_replicas_to_write:
            # Its replicas' acknowledgements stop; they stop counting once older than the max lag.
            old.replicas_silent_from = now + self.config.min_replicas_max_lag + uniform(
                self.seed, index, 0x5A1E) * REPLICA_CRON_S
        acknowledged = self.acks.watch(old.name)
        self.log.old_primary(index, acknowledged)
        delay = promotion_delay(self.sentinel, silent=True)
        promoted = fault.duration > delay
        if promoted:
            yield env.timeout(delay)
            keep = self._replica_keeps(now, self.config.replication_lag_ms / 1000.0)
            driver.server = old.fork(env.now, keep, f"replica{index}", self._preserved())
            self.log.old_primary(index, acknowledged, self.acks.lost_operations(keep, now))
            self.log.update(index, promoted=True)
            self._promoted(index, now, now + fault.duration)
        yield env.timeout(max(0.0, now + fault.duration - env.now))
        split.healed = True
        if not promoted:   # its replicas are back; else they follow the new primary, and it has none
            old.replicas_silent_from = float("inf")
        self.log.ended(index, env.now)
        if promoted:
            yield env.timeout(CONVERT_S)
            old.demote(env.now)
            self.log.update(index, demoted_at=round(env.now, 6))
        if driver.split is split:
            driver.split = None

    # -- the clients ----------------------------------------------------------------
    def client_crash(self, index: int, fault: Fault):
        self.log.struck(index, self.env.now,
                        **strike_clients(fault, self.driver.clients, self.rng, self.env.now))
        yield self.env.timeout(fault.duration)
        self.log.ended(index, self.env.now)

    client_pause = client_crash

    def worker_crash(self, index: int, fault: Fault):
        self.log.struck(index, self.env.now,
                        **strike_clients(fault, self.driver.workers, self.rng, self.env.now))
        yield self.env.timeout(fault.duration)
        self.log.ended(index, self.env.now)

    # -- the network ------------------------------------------------------------------
    def _network(self, index: int, fault: Fault):
        self.driver.network.open(index, fault)
        self.log.struck(index, self.env.now)
        yield self.env.timeout(fault.duration)
        self.log.ended(index, self.env.now)

    partition = latency = reset_peer = blackhole = _network
