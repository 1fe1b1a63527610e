"""The nemesis on real processes: the same fault schedule as the simulation,
applied with signals, files and toxiproxy. Every fault kind is one method
named after it.

Power loss is emulated, since killing a process keeps the OS page cache: a
sampler records the size of the AOF's growing file at every moment the fsync
policy would have synced it (every second for ``everysec``, every 30 s for
``no``); power loss is SIGKILL, then the file is truncated to the last
recorded size (plus ``tear_bytes`` of the next write, to tear it in the middle
of a command, which ``aof-load-truncated yes`` repairs at start-up), then the
restart. With ``always`` every acknowledged write was synced: nothing is cut.
With the AOF off the restart loads the last RDB snapshot.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import redis

from sim.backends.real.deployment import Deployment
from sim.backends.real.driver import RealDriver
from sim.client import strike_clients
from sim.faults import Fault

_BUSY_PROBE_S = 0.005
_REARM_S = 0.02


def growing_aof(folder: Path) -> Path | None:
    """The multi-part AOF's incremental file that new writes go to."""
    files = sorted(folder.glob("*.incr.aof"), key=lambda path: path.stat().st_mtime)
    return files[-1] if files else None


class RealNemesis:
    def __init__(self, driver: RealDriver, deployment: Deployment, schedule: list[Fault], seed: int,
                 replication_lag_ms: float, auto_failover_s: float | None = None) -> None:
        self.driver = driver
        self.auto_failover_s = auto_failover_s
        self.deployment = deployment
        self.schedule = schedule
        self.replication_lag_ms = replication_lag_ms
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E3E]))
        self.applied: list[dict] = []
        self.synced: list[tuple[float, Path, int]] = []   # (time, AOF file, size) at each emulated fsync

    def coroutines(self) -> list:
        background = [self._apply(fault) for fault in self.schedule]
        if self.deployment.appendonly and self.deployment.appendfsync != "always":
            background.append(self._fsync_sampler())
        return background

    async def _apply(self, fault: Fault) -> None:
        await asyncio.sleep(max(0.0, fault.at - self.driver.now()))
        record: dict[str, Any] = fault.to_dict()
        record["started"] = round(self.driver.now(), 6)
        record["effects"] = await getattr(self, fault.kind)(fault) or {}
        self.applied.append(record)

    async def _fsync_sampler(self) -> None:
        period = 1.0 if self.deployment.appendfsync == "everysec" else 30.0
        while True:
            aof = growing_aof(self.deployment.primary.aof_folder)
            if aof is not None:
                self.synced.append((self.driver.now(), aof, aof.stat().st_size))
            await asyncio.sleep(period)

    # -- the server -------------------------------------------------------------
    async def server_crash(self, fault: Fault) -> dict:
        """SIGKILL and a restart after ``duration``; with automatic failover,
        a replica is promoted instead once the primary has been down for the
        detection delay (as Sentinel would)."""
        detection = self.auto_failover_s
        if detection is not None and self.deployment.replicas and fault.duration > detection:
            await self._cut_replication_and_kill()
            await asyncio.sleep(detection)
            return {"auto_failover": await self._promote()}
        await asyncio.to_thread(self.deployment.primary.kill)
        await asyncio.sleep(fault.duration)
        await asyncio.to_thread(self.deployment.primary.start)
        return {}

    async def power_loss(self, fault: Fault) -> dict:
        primary = self.deployment.primary
        await asyncio.to_thread(primary.kill)
        effects = self._lose_unsynced(int(fault.params.get("tear_bytes", 0)))
        await asyncio.sleep(fault.duration)
        await asyncio.to_thread(primary.start)
        return effects

    def _lose_unsynced(self, tear_bytes: int) -> dict:
        if not self.deployment.appendonly or self.deployment.appendfsync == "always" or not self.synced:
            return {"aof_bytes_cut": 0}
        _, aof, size = self.synced[-1]
        current = growing_aof(self.deployment.primary.aof_folder)
        if current != aof:
            return {"aof_bytes_cut": 0}
        length = aof.stat().st_size
        keep = min(length, size + tear_bytes)
        with open(aof, "r+b") as handle:
            handle.truncate(keep)
        self.synced.clear()
        return {"aof_bytes_cut": length - keep}

    async def mid_script_power_loss(self, fault: Fault) -> dict:
        """Wait for the primary to be busy (a PING goes unanswered for 5 ms:
        a script or a long pipeline is running), then cut the power."""
        # A busy server also holds up redis-py's connection handshake: time it out too.
        probe = self.deployment.primary.client(socket_timeout=_BUSY_PROBE_S,
                                               socket_connect_timeout=_BUSY_PROBE_S)
        deadline = self.driver.now() + fault.param("within_s")
        hit = None
        while self.driver.now() < deadline:
            try:
                await asyncio.to_thread(probe.ping)
            except redis.exceptions.TimeoutError:
                hit = round(self.driver.now(), 6)
                break
            except redis.exceptions.ConnectionError:
                break
            await asyncio.sleep(0.001)
        probe.close()
        if hit is None:
            return {"hit_busy_server_at": None}  # never caught it busy: no power cut, as in the simulation
        effects = await self.power_loss(fault)
        effects["hit_busy_server_at"] = hit
        return effects

    async def failover(self, fault: Fault) -> dict:
        """Cut the replication link (what was in flight on it never arrives),
        kill the primary, and after ``duration`` promote the replica."""
        await self._cut_replication_and_kill()
        await asyncio.sleep(fault.duration)
        return {"promoted": await self._promote()}

    async def _cut_replication_and_kill(self) -> None:
        for proxy in self.deployment.replication_proxies.values():
            await asyncio.to_thread(proxy.disable)
        await asyncio.to_thread(self.deployment.primary.kill)

    async def _promote(self) -> str:
        new = await asyncio.to_thread(self.deployment.promote)
        await asyncio.to_thread(self.add_replication_lag)
        return new.name

    def add_replication_lag(self) -> None:
        """Delay the replication links, as distance and load would."""
        if self.replication_lag_ms <= 0:
            return
        for proxy in self.deployment.replication_proxies.values():
            if not proxy.get_toxic("lag"):
                proxy.add_toxic(name="lag", type="latency", stream="downstream",
                                attributes={"latency": int(self.replication_lag_ms), "jitter": 0})

    # -- the clients --------------------------------------------------------------------
    async def client_crash(self, fault: Fault) -> dict:
        return strike_clients(fault, self.driver.clients, self.rng, self.driver.now())

    client_pause = client_crash

    # -- the network (toxiproxy, on the clients' proxy) -----------------------------------
    async def _toxic(self, fault: Fault, **toxic: Any) -> dict:
        proxy = self.deployment.client_proxy
        await asyncio.to_thread(lambda: proxy.add_toxic(name=fault.kind, **toxic))
        await asyncio.sleep(fault.duration)
        await asyncio.to_thread(proxy.destroy_toxic, fault.kind)
        return {}

    async def partition(self, fault: Fault) -> dict:
        proxy = self.deployment.client_proxy
        await asyncio.to_thread(proxy.disable)
        await asyncio.sleep(fault.duration)
        await asyncio.to_thread(proxy.enable)
        return {}

    async def latency(self, fault: Fault) -> dict:
        # toxiproxy's latency toxic adds latency +- jitter on one stream; put it on the replies.
        return await self._toxic(fault, type="latency", stream="downstream",
                                 attributes={"latency": int(2 * fault.param("delay_ms")),
                                             "jitter": int(2 * fault.param("jitter_ms"))})

    async def reset_peer(self, fault: Fault) -> dict:
        """Connections are cut after the request reached Redis: applied, reply
        lost. toxiproxy's reset_peer toxic resets a link a set time after it is
        armed, whatever the link carries then; limit_data on the replies cuts a
        link at its next reply, which is the moment wanted. toxiproxy draws
        ``toxicity`` per link when the toxic is added, so it is re-armed every
        20 ms for the fault's duration."""
        proxy = self.deployment.client_proxy
        end = self.driver.now() + fault.duration
        armed = 0
        while self.driver.now() < end:
            await asyncio.to_thread(lambda: proxy.add_toxic(
                name=fault.kind, type="limit_data", stream="downstream",
                toxicity=float(fault.param("probability")), attributes={"bytes": 1}))
            await asyncio.sleep(_REARM_S)
            await asyncio.to_thread(proxy.destroy_toxic, fault.kind)
            armed += 1
        return {"armed": armed}

    async def blackhole(self, fault: Fault) -> dict:
        # The timeout toxic with timeout 0 drops data until it is removed.
        return await self._toxic(fault, type="timeout", stream="upstream", attributes={"timeout": 0})
