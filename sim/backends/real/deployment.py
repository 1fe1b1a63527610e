"""A Redis deployment for one run: a primary, its replicas, and a
toxiproxy-server in front of them, all in one temporary folder.

Clients reach the primary through the toxiproxy proxy ``clients``; each
replica replicates through a proxy of its own (``replication<N>``), so that
network faults and replication lag can be put on either link: on loopback a
killed primary has already pushed nearly everything to its replica, and only
lag on the replication link shows what a failover loses.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from sim.backends.real.processes import RedisServer, ToxiproxyServer


class Deployment:
    def __init__(self, appendonly: bool = True, appendfsync: str = "everysec", rdb_interval_s: float = 60.0,
                 replicas: int = 0, keep_folder: bool = False) -> None:
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.rdb_interval_s = rdb_interval_s
        self.replica_count = replicas
        self.keep_folder = keep_folder
        self.folder = Path(tempfile.mkdtemp(prefix="countdrift-"))
        self.toxiproxy = ToxiproxyServer(self.folder)
        self.primary: RedisServer | None = None
        self.replicas: list[RedisServer] = []
        self.client_proxy = None
        self.replication_proxies: dict[str, object] = {}
        self._generation = 0

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "Deployment":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def persistence_config(self) -> dict[str, str]:
        if self.appendonly:
            return {"appendonly": "yes", "appendfsync": self.appendfsync}
        return {"appendonly": "no", "save": f"{max(1, int(self.rdb_interval_s))} 1"}

    def start(self) -> None:
        self.toxiproxy.start()
        self.primary = self._server("primary")
        self.primary.start()
        self.client_proxy = self.toxiproxy.proxy("clients", self.primary.address)
        for _ in range(self.replica_count):
            self.replicas.append(self._replica_of(self.primary))

    def _server(self, role: str, extra: dict[str, str] | None = None) -> RedisServer:
        self._generation += 1
        name = f"{role}{self._generation}"
        return RedisServer(name, self.folder / name, {**self.persistence_config(), **(extra or {})})

    def _replica_of(self, primary: RedisServer) -> RedisServer:
        link = f"replication{self._generation + 1}"
        proxy = self.toxiproxy.proxy(link, primary.address)
        host, port = proxy.listen.split(":")
        replica = self._server("replica", {"replicaof": f"{host} {port}"})
        replica.start()
        self.replication_proxies[replica.name] = proxy
        return replica

    def close(self) -> None:
        for server in [self.primary, *self.replicas]:
            if server is not None:
                server.stop()
        self.toxiproxy.stop()
        if not self.keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def wait_for_replicas(self, timeout: float = 10.0) -> None:
        """Until every replica's link to the primary is up and synced."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while replica.client().info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {replica.name} did not sync within {timeout:.0f} s")
                time.sleep(0.05)

    # -- addresses ------------------------------------------------------------------
    @property
    def client_address(self) -> tuple[str, int]:
        host, port = self.client_proxy.listen.split(":")
        return host, int(port)

    @property
    def direct_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.primary.port

    # -- failover -----------------------------------------------------------------
    def promote(self) -> RedisServer:
        """Make the first replica the primary (REPLICAOF NO ONE), point the
        clients' proxy at it, and start a fresh replica of it."""
        if not self.replicas:
            raise RuntimeError("a failover needs a replica")
        old = self.primary
        new = self.replicas.pop(0)
        new.client().execute_command("REPLICAOF", "NO", "ONE")
        self.replication_proxies.pop(new.name).destroy()
        self.primary = new
        self.toxiproxy.set_upstream("clients", new.address)
        if old is not None:
            old.stop()
        self.replicas.append(self._replica_of(new))
        return new
