"""Redis Sentinel on the real backend: redis-sentinel processes watch the
primary; deciding that it is down, electing a leader, choosing and
promoting a replica, and turning an old primary that comes back into a
replica are all theirs. The harness, like a Sentinel-aware client, only
asks them where the primary is (``SENTINEL get-master-addr-by-name``).

They reach every node through its node proxy (sim/backends/real/deployment.py),
so that a split brain can cut the primary off from them.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis

from sim.backends.real.connection import AsyncConnection
from sim.backends.real.processes import ProcessError, SentinelProcess
from sim.commands import ConnectionLost
from sim.scenario import SentinelConfig

MASTER = "countdrift"            # the name the sentinels know the primary by
_ASK_TIMEOUT_S = 0.5


class Sentinels:
    def __init__(self, folder: Path, config: SentinelConfig, primary_address: str) -> None:
        settings = {"down-after-milliseconds": str(round(config.down_after_ms)),
                    "failover-timeout": str(round(config.failover_timeout_ms)),
                    "parallel-syncs": str(config.parallel_syncs)}
        self.config = config
        self.processes = [SentinelProcess(f"sentinel{index}", folder / f"sentinel{index}", MASTER, primary_address,
                                          config.quorum, settings) for index in range(config.count)]
        for sentinel in self.processes:
            sentinel.peers = [peer for peer in self.processes if peer is not sentinel]
        self._connections: dict[int, AsyncConnection] = {}

    def start(self) -> None:
        for sentinel in self.processes:
            sentinel.start()

    def stop(self) -> None:
        for sentinel in self.processes:
            sentinel.stop()

    def wait_until_watching(self, replicas: int, timeout: float = 20.0) -> None:
        """Until every sentinel knows the primary's replicas (from its first
        INFO) and the other sentinels (named in its configuration): before
        that, a failover could not reach its quorum."""
        deadline = time.monotonic() + timeout
        for sentinel in self.processes:
            while True:
                try:
                    master = sentinel.client().sentinel_master(MASTER)
                    if (master["num-slaves"] >= replicas
                            and master["num-other-sentinels"] >= len(self.processes) - 1):
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise ProcessError(f"{sentinel.name} did not see {replicas} replicas and "
                                       f"{len(self.processes) - 1} other sentinels within {timeout:.0f} s")
                time.sleep(0.1)

    def primary_address(self) -> str | None:
        """Where the sentinels say the primary is ("host:port" of its node
        proxy), asking each in turn; None if none answers."""
        for sentinel in self.processes:
            try:
                host, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
                return f"{host}:{port}"
            except (redis.RedisError, TypeError):
                continue
        return None

    def agree(self) -> set[str]:
        """Every sentinel's answer (the test checks that they agree)."""
        answers = set()
        for sentinel in self.processes:
            host, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
            answers.add(f"{host}:{port}")
        return answers

    async def ask(self) -> str | None:
        """``primary_address`` from inside a run's event loop: one kept
        connection per sentinel, each asked in turn."""
        for index, sentinel in enumerate(self.processes):
            try:
                async with asyncio.timeout(_ASK_TIMEOUT_S):
                    connection = self._connections.get(index)
                    if connection is None:
                        connection = AsyncConnection("127.0.0.1", sentinel.port)
                        await connection.connect(())
                        self._connections[index] = connection
                    reply = await connection.execute(("SENTINEL", "get-master-addr-by-name", MASTER))
                host, port = reply
                return f"{host}:{port}"
            except (TimeoutError, OSError, ConnectionError, ConnectionLost, ValueError, TypeError):
                dropped = self._connections.pop(index, None)
                if dropped is not None:
                    await dropped.close()
        return None

    async def close_connections(self) -> None:
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()
