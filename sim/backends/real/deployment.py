"""The processes of one run: a primary, its replicas, and a toxiproxy-server
in front of them, all in one temporary folder.

In a run with network faults each virtual client reaches the primary through
a toxiproxy proxy of its own (``client<i>``), so that a fault can be put on
exactly one client's link (a reset of the reply of one chosen request) or on
all of them; in other runs the clients connect to the primary of the moment
directly, so that the proxy's hop does not bound what Redis can do; each replica
replicates through a proxy of its own (``replication<N>``) that carries the
replication lag as a latency toxic: on loopback a killed primary has already
pushed nearly everything to its replica, and only lag on the replication
link shows what a failover loses.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from sim.backends.real.processes import RedisServer, ToxiproxyServer


class Servers:
    def __init__(self, appendonly: bool = True, appendfsync: str = "everysec", rdb_interval_s: float = 60.0,
                 replicas: int = 0, clients: int = 1, replication_lag_ms: float = 0.0,
                 keep_folder: bool = False, client_proxies: bool = True, min_replicas_to_write: int = 0,
                 min_replicas_max_lag: int = 10) -> None:
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.rdb_interval_s = rdb_interval_s
        self.replica_count = replicas
        self.client_count = clients
        self.replication_lag_ms = replication_lag_ms
        self.keep_folder = keep_folder
        self.proxied = client_proxies
        self.min_replicas = {"min-replicas-to-write": str(min_replicas_to_write),
                             "min-replicas-max-lag": str(min_replicas_max_lag)} if min_replicas_to_write else {}
        self.folder = Path(tempfile.mkdtemp(prefix="countdrift-"))
        self.toxiproxy = ToxiproxyServer(self.folder)
        self.primary: RedisServer | None = None
        self.replicas: list[RedisServer] = []
        self.client_proxies: list = []
        self.replication_proxies: dict[str, object] = {}    # replica name -> its proxy
        self._generation = 0

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "Servers":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def persistence_config(self) -> dict[str, str]:
        """Persistence, and min-replicas (every node: a replica may be promoted)."""
        if self.appendonly:
            return {"appendonly": "yes", "appendfsync": self.appendfsync, **self.min_replicas}
        return {"appendonly": "no", "save": f"{max(1, int(self.rdb_interval_s))} 1", **self.min_replicas}

    def start(self) -> None:
        self.toxiproxy.start()
        self.primary = self._server("primary")
        self.primary.start()
        if self.proxied:
            self.client_proxies = [self.toxiproxy.proxy(f"client{index}", self.primary.address)
                                   for index in range(self.client_count)]
        for _ in range(self.replica_count):
            self.replicas.append(self._replica_of(self.primary))

    def _server(self, role: str, extra: dict[str, str] | None = None) -> RedisServer:
        self._generation += 1
        name = f"{role}{self._generation}"
        return RedisServer(name, self.folder / name, {**self.persistence_config(), **(extra or {})})

    def _replica_of(self, primary: RedisServer) -> RedisServer:
        replica = self._server("replica")
        replica.config["replicaof"] = self._link(replica, primary)
        replica.start()
        return replica

    def _link(self, replica: RedisServer, primary: RedisServer) -> str:
        """A replication proxy from ``replica`` to ``primary``, with the lag;
        its address as REPLICAOF takes it."""
        proxy = self.toxiproxy.proxy(f"replication-{replica.name}-{primary.name}", primary.address)
        if self.replication_lag_ms > 0:
            proxy.add_toxic(name="lag", type="latency", stream="downstream",
                            attributes={"latency": round(self.replication_lag_ms), "jitter": 0})
        self.replication_proxies[replica.name] = proxy
        return proxy.listen.replace(":", " ")

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
    def client_address(self, index: int) -> tuple[str, int]:
        """Where client ``index`` connects: its proxy, or the primary of the moment."""
        if not self.proxied:
            return self.direct_address
        host, port = self.client_proxies[index].listen.split(":")
        return host, int(port)

    @property
    def direct_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.primary.port

    # -- replication lag and failover -----------------------------------------------
    def set_replication_lag(self, lag_ms: float) -> None:
        """Every replica's link now delays what the primary sends by ``lag_ms``.

        A latency toxic added to a live link can stall that link for good
        (toxiproxy 2.12.0: in 2 of 4 trials a replica received nothing more,
        measured); a link opened after the change has it from the start. So
        the replicas' connections are closed and they reconnect (a partial
        resync, a few milliseconds)."""
        for proxy in self.replication_proxies.values():
            if proxy.get_toxic("lag"):
                proxy.destroy_toxic("lag")
            if lag_ms > 0:
                proxy.add_toxic(name="lag", type="latency", stream="downstream",
                                attributes={"latency": round(lag_ms), "jitter": 0})
        self.primary.client().execute_command("CLIENT", "KILL", "TYPE", "replica")

    def cut_replication(self) -> None:
        """What is on its way to the replicas never arrives."""
        for proxy in self.replication_proxies.values():
            proxy.disable()

    def promote(self) -> RedisServer:
        """Make the first replica the primary (REPLICAOF NO ONE, and for good:
        it restarts as a primary), point every client's proxy at it, and start
        a fresh replica of it."""
        if not self.replicas:
            raise RuntimeError("a failover needs a replica")
        old = self.primary
        new = self.replicas.pop(0)
        new.client().execute_command("REPLICAOF", "NO", "ONE")
        new.config.pop("replicaof", None)
        self.replication_proxies.pop(new.name).destroy()
        self.primary = new
        for proxy in self.client_proxies:
            self.toxiproxy.set_upstream(proxy.name, new.address)
        if old is not None:
            old.stop()
        for replica in self.replicas:   # the other replicas follow the new primary
            self.replication_proxies.pop(replica.name).destroy()
            replica.config["replicaof"] = self._link(replica, new)
            replica.client().execute_command("REPLICAOF", *replica.config["replicaof"].split())
        self.replicas.append(self._replica_of(new))
        return new
