"""The nemesis on real processes: the same fault schedule as the simulation,
applied with signals, files and toxiproxy, recording the same effects
through the shared FaultLog. Every fault kind is one method named after it;
each undoes what it did (restarts the server, heals the network) also when
the run ends while it lasts.

Power loss is emulated, since killing a process keeps the OS page cache: a
sampler records the size of every node's growing AOF file at each moment
the fsync policy would have synced it (every whole second of the run for
``everysec``, every 30 s for ``no``, the same moments as in the simulation);
power loss is SIGKILL, then the primary's file is truncated to its last
recorded size (plus ``tear_bytes`` of the next write, to tear it in the
middle of a command), then the restart (``aof-load-truncated yes``). With
``always`` every acknowledged write was synced: nothing is cut. With the AOF
off the restart loads the last RDB snapshot.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import redis

from sim.backends.real.deployment import Servers
from sim.backends.real.driver import RealDriver
from sim.backends.real.processes import RedisServer
from sim.backends.real.routes import ClientRoutes
from sim.backends.real.toxics import Toxics
from sim.client import in_flight, strike_clients
from sim.faults import Fault
from sim.nemesis import ALREADY_DOWN, FSYNC_PERIOD_S, AckLog, Nemesis, Split, StallTarget, left_with_old_primary
from sim.scenario import ServerConfig

_PREPARE_S = 0.05   # a failover's lag is set this long before the replica must be that far behind
_POLL_S = 0.05      # how often the nemesis asks the sentinels, or the old primary its role


def growing_aof(folder: Path) -> tuple[Path, int] | None:
    """The multi-part AOF's incremental file that new writes go to, and its
    size. A rewrite (a replica's resync, BGREWRITEAOF) may remove a file
    between the listing and its stat: what is gone is not the growing one."""
    sizes = []
    for path in folder.glob("*.incr.aof"):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        sizes.append((status.st_mtime, path, status.st_size))
    if not sizes:
        return None
    _, path, size = max(sizes)
    return path, size


async def until(node: RedisServer, check: Callable[[redis.Redis], bool], period_s: float) -> None:
    """Ask ``node`` every ``period_s`` until ``check`` says yes (an error: not yet)."""
    probe = node.client(socket_timeout=1.0)
    try:
        while True:
            try:
                if await asyncio.to_thread(check, probe):
                    return
            except redis.RedisError:
                pass
            await asyncio.sleep(period_s)
    finally:
        probe.close()


class RealNemesis(Nemesis):
    def __init__(self, driver: RealDriver, servers: Servers, toxics: Toxics, routes: ClientRoutes,
                 schedule: list[Fault], seed: int, config: ServerConfig, acks: AckLog, target: StallTarget) -> None:
        super().__init__(driver, schedule, seed, acks, target)
        self.servers = servers
        self.toxics = toxics
        self.routes = routes
        self.config = config
        self.synced: dict[str, tuple[float, Path | None, int]] = {}   # node -> (time, AOF file, size) at its last fsync
        self.down = False            # a fault holds the primary down
        self._partitions: Counter[str] = Counter()   # proxy -> partitions open on it

    def coroutines(self) -> list:
        background = [self._apply(index, fault) for index, fault in enumerate(self.schedule)]
        if self.config.appendonly and FSYNC_PERIOD_S[self.config.appendfsync]:
            background.append(self._fsync_sampler())
        return background

    async def _apply(self, index: int, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.at - self.lead_s(fault) - self.driver.now()))
        await getattr(self, fault.kind)(index, fault)

    async def _fsync_sampler(self) -> None:
        """At each emulated fsync (whole multiples of the period, in run
        time), the size of every node's growing AOF."""
        period = FSYNC_PERIOD_S[self.config.appendfsync]
        tick = 0
        while True:
            at = tick * period
            await asyncio.sleep(max(0.0, at - self.driver.now()))
            for node in self.servers.nodes:
                growing = growing_aof(node.aof_folder)
                self.synced[node.name] = (at, *(growing or (None, 0)))
            tick += 1

    # -- the server -------------------------------------------------------------
    def _already_down(self, index: int) -> bool:
        if self.down:
            self.log.not_applied(index, ALREADY_DOWN)
            return True
        return False

    async def _kill(self, index: int, died_at: float, keep_until: float,
                    cut_replication: bool = False) -> RedisServer:
        """SIGKILL the primary now (``died_at``, the run time its losses are
        measured from); what survives reaches back to ``keep_until``."""
        self.down = True
        self.log.struck(index, died_at, operations_in_flight=in_flight(self.driver.clients))
        self.losses(index, died_at, keep_until)
        primary = self.servers.primary
        if cut_replication:   # what is on its way to the replicas never arrives
            await asyncio.to_thread(self.servers.isolate, primary)
        await asyncio.to_thread(primary.kill)
        return primary

    async def _restart(self, index: int, primary: RedisServer) -> None:
        await self._start(primary)
        self.down = False
        self.log.ended(index, self.driver.now())

    async def _start(self, node: RedisServer) -> None:
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(self.servers.isolate, node, False)

    async def _heal(self, primary: RedisServer) -> None:
        """The run ended while the primary was down: bring it back (the
        fault's record says it was cut short), so that the counters can be
        read."""
        if self.down and self.servers.primary is primary and not primary.running:
            await self._start(primary)
        self.down = False

    async def server_crash(self, index: int, fault: Fault) -> None:
        """SIGKILL and a restart after ``duration``; with Sentinel on, the
        sentinels may promote a replica first, if the primary stays down long
        enough for them (the old one then rejoins as a replica)."""
        if self._already_down(index):
            return
        died_at = self.driver.now()
        keep = died_at if self.config.appendonly else self._last_save()
        sentinel = self.servers.sentinels is not None and self._has_replica()
        primary = await self._kill(index, died_at, keep, cut_replication=sentinel)
        self.log.update(index, promoted=False)
        try:
            if sentinel and await self._promotion(index, primary, died_at, died_at + fault.duration):
                self.losses(index, died_at, died_at - self.config.replication_lag_ms / 1000.0)
                self.log.update(index, promoted=True)
                self.log.ended(index, self.driver.now())
                await asyncio.sleep(max(0.0, died_at + fault.duration - self.driver.now()))
                await self._start(primary)   # Sentinel makes it a replica of the new primary
            else:
                await asyncio.sleep(max(0.0, died_at + fault.duration - self.driver.now()))
                await self._restart(index, primary)
        finally:
            await self._heal(primary)

    def _has_replica(self) -> bool:
        """Whether a replica is up that Sentinel could promote."""
        return any(replica.running for replica in self.servers.replicas)

    async def _promotion(self, index: int, old: RedisServer, struck: float, until: float) -> bool:
        """Wait, asking the sentinels, until they name another primary than
        ``old`` (then follow them and say so) or until ``until``."""
        old_address = self.servers.node_proxies[old.name].listen
        while self.driver.now() < until:
            address = await self.servers.sentinels.ask()
            if address is not None and address != old_address:
                await asyncio.to_thread(self.servers.follow_sentinels)
                self.down = False
                self.log.promoted(index, struck, self.driver.now(), self.servers.primary.name)
                return True
            await asyncio.sleep(_POLL_S)
        return False

    def _last_save(self) -> float:
        """The run time of the primary's last RDB snapshot (AOF off)."""
        saved = self.servers.primary.client().lastsave().timestamp()
        return self.driver.now() - (time.time() - saved)

    async def power_loss(self, index: int, fault: Fault) -> None:
        if self._already_down(index):
            return
        died_at = self.driver.now()
        primary = await self._kill(index, died_at, self._synced_until(died_at))
        try:
            self._lose_unsynced(primary, fault.param("tear_bytes"))
            await asyncio.sleep(fault.duration)
            await self._restart(index, primary)
        finally:
            await self._heal(primary)

    def _synced_until(self, now: float) -> float:
        """When the primary's AOF was last on disk, in run time."""
        if not self.config.appendonly:
            return self._last_save()
        if not FSYNC_PERIOD_S[self.config.appendfsync]:
            return now
        return self.synced.get(self.servers.primary.name, (0.0, None, 0))[0]

    def _lose_unsynced(self, node: RedisServer, tear_bytes: int) -> None:
        """Truncate the dead node's AOF to what its last fsync covered, plus
        ``tear_bytes`` of what came next."""
        if not self.config.appendonly or not FSYNC_PERIOD_S[self.config.appendfsync]:
            return
        _, synced_file, size = self.synced.get(node.name, (0.0, None, 0))
        growing = growing_aof(node.aof_folder)
        if growing is None:
            return
        current, length = growing
        keep = size if current == synced_file else 0   # a file begun since the fsync is all unsynced
        with open(current, "r+b") as handle:
            handle.truncate(min(length, keep + tear_bytes))

    async def mid_script_power_loss(self, index: int, fault: Fault) -> None:
        """Arm the stall (sim/stall.py); when an operation reaches it and the
        primary is seen busy in it (a PING gets no answer), cut the power;
        strike anyway when the window ends. Like every fault on the server,
        it does not strike a server that is already down when it is due."""
        if self._already_down(index):
            return
        target, driver = self.target, self.driver
        stall_s = fault.param("stall_ms") / 1000.0
        deadline = driver.now() + fault.param("within_s")
        while driver.now() < deadline:
            caught = asyncio.Event()
            target.arm(stall_s, caught.set)
            try:
                await asyncio.wait_for(caught.wait(), deadline - driver.now())
            except TimeoutError:
                break
            if not self.down and await self._busy(stall_s, target.caught["sent_at"]):
                await self._cut_power(index, fault, target.caught)
                return
        target.disarm()
        if not self._already_down(index):
            await self._cut_power(index, fault, {"target": "none", "target_operation": None})

    async def _busy(self, stall_s: float, sent_at: float) -> bool:
        """Whether the primary stops answering PING (a quarter of the stall)
        before the stalled request could have finished."""
        probe = self.servers.primary.client(socket_timeout=max(0.002, stall_s / 4), socket_connect_timeout=1.0)
        give_up = sent_at + stall_s + 0.5
        try:
            while self.driver.now() < give_up:
                try:
                    await asyncio.to_thread(probe.ping)
                except redis.exceptions.TimeoutError:
                    return True
                except redis.exceptions.ConnectionError:
                    return False
                await asyncio.sleep(0.0005)
            return False
        finally:
            probe.close()

    async def _cut_power(self, index: int, fault: Fault, caught: dict[str, Any]) -> None:
        self.log.update(index, target=caught["target"], target_operation=caught["target_operation"])
        await self.power_loss(index, fault)

    def failover_lag_ms(self, fault: Fault) -> float:
        lag_ms = fault.param("lag_ms")
        return self.config.replication_lag_ms if lag_ms < 0 else lag_ms

    async def failover(self, index: int, fault: Fault) -> None:
        """The replication links lag ``lag_ms`` from a little over ``lag_ms``
        before the fault (see lead_s); then they are cut and the primary is
        killed. Without Sentinel the harness promotes the replica after
        ``duration`` (at once if the run ends first); with Sentinel on, the
        sentinels promote one when they decide, and the old primary comes
        back after ``duration`` at the earliest, as a replica."""
        lag_ms = self.failover_lag_ms(fault)
        changed = lag_ms != self.config.replication_lag_ms
        if changed:
            await asyncio.to_thread(self.servers.set_replication_lag, lag_ms)
            await asyncio.sleep(max(0.0, fault.at - self.driver.now()))
        try:
            if self._already_down(index):
                return
            if self.servers.sentinels is not None and not self._has_replica():
                self.log.not_applied(index, "no replica to promote (the last one was promoted)")
                return
            died_at = self.driver.now()
            old = await self._kill(index, died_at, died_at - lag_ms / 1000.0, cut_replication=True)
            if self.servers.sentinels is not None:
                await self._promotion(index, old, died_at, float("inf"))
                self.log.ended(index, self.driver.now())
                await asyncio.sleep(max(0.0, died_at + fault.duration - self.driver.now()))
                await self._start(old)   # Sentinel makes it a replica of the new primary
                return
            try:
                await asyncio.sleep(fault.duration)
            finally:
                await asyncio.to_thread(self.servers.promote)
                self.down = False
                self.log.promoted(index, died_at, self.driver.now(), self.servers.primary.name)
            self.log.ended(index, self.driver.now())
        finally:
            if changed:   # the node proxies carry the scenario's lag again
                await asyncio.to_thread(self.servers.set_replication_lag, self.config.replication_lag_ms)

    async def split_brain(self, index: int, fault: Fault) -> None:
        """The primary's node proxy goes silent (a timeout toxic both ways:
        links stay open, nothing crosses), so the sentinels and the replicas
        lose it as in a real partition; the clients not left with it have
        their links to it closed and cannot open new ones (the routes);
        the sentinels promote a replica if the partition lasts long enough.
        When it heals, the old primary's links are reopened, and the
        sentinels make it a replica of the new one when they get to it."""
        if self._already_down(index):
            return
        servers, driver, routes = self.servers, self.driver, self.routes
        now, old = driver.now(), servers.primary
        minority = left_with_old_primary(self.seed, index, len(driver.clients), fault.param("clients_share"))
        self.log.struck(index, now, clients_left=len(minority), promoted=False, acknowledged_writes_lost=0,
                        old_primary_acknowledged=0)
        routes.split = split = Split(old, minority)
        acknowledged = self.acks.watch(old.name)
        self.log.old_primary(index, acknowledged)
        node_proxy = servers.node_proxies[old.name].name
        for stream in ("upstream", "downstream"):
            await self.toxics.add(node_proxy, f"split{index}_{stream}", "timeout", stream, {"timeout": 0})
        majority = [proxy.name for i, proxy in enumerate(servers.client_proxies)
                    if i not in minority and self._partitions[proxy.name] == 0]
        await asyncio.gather(*(self._close_links(proxy) for proxy in majority))
        promoted = False
        try:
            promoted = await self._promotion(index, old, now, now + fault.duration)
            if promoted:
                lag_s = self.config.replication_lag_ms / 1000.0
                self.log.old_primary(index, acknowledged, self.acks.lost_operations(now - lag_s, now))
                self.log.update(index, promoted=True)
            await asyncio.sleep(max(0.0, now + fault.duration - driver.now()))
        finally:
            for stream in ("upstream", "downstream"):
                await self.toxics.remove(node_proxy, f"split{index}_{stream}")
            await self._close_links(node_proxy)   # bytes were dropped mid-stream: start the links afresh
            split.healed = True
        self.log.ended(index, driver.now())
        try:
            if promoted:
                await self._demotion(index, old)
        finally:
            if routes.split is split:
                routes.split = None

    async def _close_links(self, proxy: str) -> None:
        await self.toxics.enable(proxy, False)
        await self.toxics.enable(proxy, True)

    async def _demotion(self, index: int, old: RedisServer) -> None:
        """Until the old primary is a replica (the sentinels, or the cluster, made it one)."""
        await until(old, lambda probe: probe.execute_command("ROLE")[0] == "slave", _POLL_S)
        self.log.update(index, demoted_at=round(self.driver.now(), 6))

    async def cluster_failover(self, index: int, fault: Fault) -> None:
        self._needs_cluster(index, fault)

    async def slot_migration(self, index: int, fault: Fault) -> None:
        self._needs_cluster(index, fault)

    async def minority_partition(self, index: int, fault: Fault) -> None:
        self._needs_cluster(index, fault)

    def _needs_cluster(self, index: int, fault: Fault) -> None:
        """A kind for a cluster only (sim/backends/real/cluster_nemesis.py); a
        scenario on one server is refused when it loads."""
        self.log.not_applied(index, f"a {fault.kind} needs a Redis Cluster")

    def lead_s(self, fault: Fault) -> float:
        """How long before its time a fault starts preparing."""
        if fault.kind == "failover" and self.failover_lag_ms(fault) != self.config.replication_lag_ms:
            return self.failover_lag_ms(fault) / 1000.0 + _PREPARE_S
        return 0.0

    # -- the clients --------------------------------------------------------------------
    async def client_crash(self, index: int, fault: Fault) -> None:
        now = self.driver.now()
        self.log.struck(index, now, **strike_clients(fault, self.driver.clients, self.rng, now))
        await asyncio.sleep(fault.duration)
        self.log.ended(index, self.driver.now())

    client_pause = client_crash

    async def worker_crash(self, index: int, fault: Fault) -> None:
        now = self.driver.now()
        self.log.struck(index, now, **strike_clients(fault, self.driver.workers, self.rng, now))
        await asyncio.sleep(fault.duration)
        self.log.ended(index, self.driver.now())

    # -- the network (toxiproxy, on every client's proxy) --------------------------------
    async def _on_every_proxy(self, action) -> None:
        await asyncio.gather(*(action(proxy.name) for proxy in self.servers.client_proxies))

    async def _window(self, index: int, fault: Fault, apply, undo) -> None:
        """Apply the fault on every client's proxy, and undo it after
        ``duration`` or when the run ends. The driver's dice see the windows
        that decide whether a request is reset (a partition or a blackhole
        takes the request before a reset could)."""
        if fault.kind != "latency":
            self.driver.network.open(index, fault)
        await self._on_every_proxy(apply)
        self.log.struck(index, self.driver.now())
        try:
            await asyncio.sleep(fault.duration)
        finally:
            await self._on_every_proxy(undo)
        self.log.ended(index, self.driver.now())

    async def partition(self, index: int, fault: Fault) -> None:
        """Disable every client's proxy; overlapping partitions keep them
        disabled until the last one ends."""
        await self._window(index, fault, self._cut_proxy, self._mend_proxy)

    async def _cut_proxy(self, proxy: str) -> None:
        """Disable a client's proxy (connections refused, open ones closed),
        until every partition that cut it has mended it."""
        if self._partitions[proxy] == 0:
            await self.toxics.enable(proxy, False)
        self._partitions[proxy] += 1

    async def _mend_proxy(self, proxy: str) -> None:
        self._partitions[proxy] -= 1
        if self._partitions[proxy] == 0:
            await self.toxics.enable(proxy, True)

    async def latency(self, index: int, fault: Fault) -> None:
        # The simulation adds delay + jitter * U[0, 1) each way; toxiproxy adds latency + U[-jitter, jitter].
        attributes = {"latency": round(fault.param("delay_ms") + fault.param("jitter_ms") / 2),
                      "jitter": round(fault.param("jitter_ms") / 2)}

        async def apply(proxy: str) -> None:
            for stream in ("upstream", "downstream"):   # windows that overlap add up, as in the simulation
                await self.toxics.add(proxy, f"latency{index}_{stream}", "latency", stream, attributes)

        async def undo(proxy: str) -> None:
            for stream in ("upstream", "downstream"):
                await self.toxics.remove(proxy, f"latency{index}_{stream}")

        await self._window(index, fault, apply, undo)

    async def reset_peer(self, index: int, fault: Fault) -> None:
        """The driver arms a reset on the client's proxy for each request
        whose fate is RESET while the window is open (sim/network.py)."""

        async def nothing(proxy: str) -> None:
            return None

        await self._window(index, fault, nothing, nothing)

    async def blackhole(self, index: int, fault: Fault) -> None:
        # The timeout toxic with timeout 0 drops what the clients send until it is removed.
        await self._window(index, fault,
                           lambda proxy: self.toxics.add(proxy, f"blackhole{index}", "timeout", "upstream",
                                                         {"timeout": 0}),
                           lambda proxy: self.toxics.remove(proxy, f"blackhole{index}"))
