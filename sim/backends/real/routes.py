"""Where each virtual client connects, decided each time it connects, as a
Sentinel-aware client does: it asks the sentinels where the primary is (or,
without Sentinel, takes the primary the harness keeps), and goes there
through its own proxy when the run has network faults (pointing the proxy
at that node), directly otherwise. During a split brain the shared
:class:`~sim.nemesis.Split` decides who reaches what."""
from __future__ import annotations

from typing import Callable

from sim.backends.real.deployment import Servers
from sim.backends.real.processes import RedisServer
from sim.backends.real.toxics import Toxics
from sim.client import ConnectionRefused
from sim.nemesis import Split


class ClientRoutes:
    def __init__(self, servers: Servers, toxics: Toxics | None) -> None:
        self.servers = servers
        self.toxics = toxics
        self.split: Split | None = None
        self._upstreams = {index: servers.primary.address for index in range(len(servers.client_proxies))}

    async def primary(self) -> RedisServer | None:
        """The primary the sentinels name (None if none answers), or the harness's."""
        servers = self.servers
        if servers.sentinels is None:
            return servers.primary
        address = await servers.sentinels.ask()
        return servers.node_at(address) if address else None

    async def connect_to(self, index: int) -> tuple[str, int, str]:
        """Host, port and node name for client ``index``'s next connection;
        ConnectionRefused when it can reach no primary."""
        node = await self.primary()
        if node is None:
            raise ConnectionRefused("no sentinel answered")
        if self.split is not None:
            node = self.split.route(index, node)
            if node is None:
                raise ConnectionRefused("partitioned from the primary")
        servers = self.servers
        if not servers.proxied:
            return "127.0.0.1", node.port, node.name
        proxy = servers.client_proxies[index]
        if self._upstreams[index] != node.address:
            await self.toxics.upstream(proxy.name, node.address)
            self._upstreams[index] = node.address
        host, port = proxy.listen.split(":")
        return host, int(port), node.name

    def primary_address(self) -> tuple[str, int]:
        """The primary of the moment, directly (reading the counters)."""
        if self.servers.sentinels is not None:
            self.servers.follow_sentinels()
        return self.servers.direct_address


class FixedRoutes:
    """Each client to a fixed address (the driver's benchmark)."""

    def __init__(self, address: Callable[[int], tuple[str, int]], primary: tuple[str, int]) -> None:
        self.address = address
        self.primary = primary

    async def connect_to(self, index: int) -> tuple[str, int, str]:
        return (*self.address(index), "primary")

    def primary_address(self) -> tuple[str, int]:
        return self.primary
