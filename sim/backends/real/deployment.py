"""The processes of one run: a primary, its replicas, a toxiproxy-server in
front of them and, with Sentinel on, the redis-sentinel processes watching
them, all in one temporary folder.

In a run with network faults each virtual client reaches the primary through
a toxiproxy proxy of its own (``client<i>``), so that a fault can be put on
exactly one client's link (a reset of the reply of one chosen request) or on
all of them; in other runs the clients connect to the primary of the moment
directly, so that the proxy's hop does not bound what Redis can do.

Every node has a node proxy (``node-<name>``), which is how the other nodes
and the sentinels reach it: replicas replicate through their primary's node
proxy, which carries the replication lag as a latency toxic (on loopback a
killed primary has already pushed nearly everything to its replica, and only
lag on the replication link shows what a failover loses), and each node
announces its node proxy as its address (``replica-announce-port``), so that
the sentinels know every node by it. Disabling a node proxy cuts the node
off from its replicas and from the sentinels, and nothing else.
"""
from __future__ import annotations

import time
from pathlib import Path

import redis

from sim.backends.real.processes import RedisServer, ToxiproxyServer
from sim.backends.real.sentinels import Sentinels
from sim.scenario import SentinelConfig
from sim.watchdog import remove_scratch, scratch_folder, signals_held


class Servers:
    def __init__(self, appendonly: bool = True, appendfsync: str = "everysec", rdb_interval_s: float = 60.0,
                 replicas: int = 0, clients: int = 1, replication_lag_ms: float = 0.0,
                 keep_folder: bool = False, client_proxies: bool = True, min_replicas_to_write: int = 0,
                 min_replicas_max_lag: int = 10, sentinel: SentinelConfig | None = None) -> None:
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
        self.sentinel_config = sentinel if sentinel is not None and sentinel.enabled else None
        self.folder: Path | None = None              # made by start(), removed by close()
        self.toxiproxy: ToxiproxyServer | None = None
        self.sentinels: Sentinels | None = None
        self.primary: RedisServer | None = None
        self.replicas: list[RedisServer] = []
        self.nodes: list[RedisServer] = []
        self.client_proxies: list = []
        self.node_proxies: dict[str, object] = {}    # node name -> the proxy the others reach it by
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
        self.folder = scratch_folder("countdrift-")
        self.toxiproxy = ToxiproxyServer(self.folder)
        self.toxiproxy.start()
        self.primary = self._server("primary")
        self.primary.start()
        if self.proxied:
            self.client_proxies = [self.toxiproxy.proxy(f"client{index}", self.primary.address)
                                   for index in range(self.client_count)]
        for _ in range(self.replica_count):
            self.replicas.append(self._replica_of(self.primary))
        if self.sentinel_config is not None:
            self.sentinels = Sentinels(self.folder, self.sentinel_config, self.node_proxies[self.primary.name].listen)
            self.sentinels.start()

    def _server(self, role: str, extra: dict[str, str] | None = None) -> RedisServer:
        self._generation += 1
        name = f"{role}{self._generation}"
        server = RedisServer(name, self.folder / name, {**self.persistence_config(), **(extra or {})})
        proxy = self.toxiproxy.proxy(f"node-{name}", server.address)
        if self.replication_lag_ms > 0:
            proxy.add_toxic(name="lag", type="latency", stream="downstream",
                            attributes={"latency": round(self.replication_lag_ms), "jitter": 0})
        self.node_proxies[name] = proxy
        host, port = proxy.listen.split(":")
        server.config.update({"replica-announce-ip": host, "replica-announce-port": port})
        self.nodes.append(server)
        return server

    def _replica_of(self, primary: RedisServer) -> RedisServer:
        replica = self._server("replica")
        replica.config["replicaof"] = self._link(primary)
        replica.start()
        return replica

    def _link(self, primary: RedisServer) -> str:
        """The primary's node proxy, as REPLICAOF takes it."""
        return self.node_proxies[primary.name].listen.replace(":", " ")

    def close(self) -> None:
        """Stop every process, then remove the folder. An interrupt that
        comes meanwhile (Ctrl-C, SIGTERM) is held until everything is stopped
        and removed (a server takes at most a few seconds), then delivered:
        one that cut the removal short left the folder behind."""
        with signals_held():
            self._close()

    def _close(self) -> None:
        try:
            if self.sentinels is not None:   # first, so that they reconfigure nothing while the nodes stop
                self.sentinels.stop()
            # Replicas first: a primary told to stop waits for its replicas to acknowledge its last
            # writes (they do once a second): its stop took 0.77 s here, the whole stop 0.18 s so.
            for server in sorted(self.nodes, key=lambda node: node is self.primary):
                server.stop()
            if self.toxiproxy is not None:
                self.toxiproxy.stop()
        finally:
            if self.folder is not None and not self.keep_folder:
                remove_scratch(self.folder)

    def wait_for_replicas(self, timeout: float = 10.0) -> None:
        """Until every replica's link to the primary is up and synced, and
        the sentinels (if any) know them all."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while replica.client().info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {replica.name} did not sync within {timeout:.0f} s")
                time.sleep(0.05)
        if self.sentinels is not None:
            self.sentinels.wait_until_watching(len(self.replicas))

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

    def node_at(self, address: str) -> RedisServer | None:
        """The node whose node proxy listens at ``address`` (as the sentinels name it)."""
        for name, proxy in self.node_proxies.items():
            if proxy.listen == address:
                return next(node for node in self.nodes if node.name == name)
        return None

    def follow_sentinels(self) -> RedisServer:
        """Take the primary the sentinels name as the primary of the moment."""
        address = self.sentinels.primary_address()
        node = self.node_at(address) if address else None
        if node is not None and node is not self.primary:
            self.primary = node
            self.replicas = [other for other in self.nodes if other is not node]
        return self.primary

    # -- replication lag and failover -----------------------------------------------
    def set_replication_lag(self, lag_ms: float) -> None:
        """Every replica's link now delays what the primary sends by ``lag_ms``.

        A latency toxic added to a live link can stall that link for good
        (toxiproxy 2.12.0: in 2 of 4 trials a replica received nothing more,
        measured); a link opened after the change has it from the start. So
        the replicas' connections are closed and they reconnect (a partial
        resync, a few milliseconds)."""
        for proxy in self.node_proxies.values():
            if proxy.get_toxic("lag"):
                proxy.destroy_toxic("lag")
            if lag_ms > 0:
                proxy.add_toxic(name="lag", type="latency", stream="downstream",
                                attributes={"latency": round(lag_ms), "jitter": 0})
        try:
            self.primary.client().execute_command("CLIENT", "KILL", "TYPE", "replica")
        except redis.ConnectionError:   # the primary is down: its replicas reconnect when it is back
            pass

    def isolate(self, node: RedisServer, isolated: bool = True) -> None:
        """Cut ``node`` off from its replicas and the sentinels (what is on
        its way to them never arrives), or reconnect it."""
        proxy = self.node_proxies[node.name]
        if isolated:
            proxy.disable()
        else:
            proxy.enable()

    def promote(self) -> RedisServer:
        """Without Sentinel, the harness's failover: make the first replica the
        primary (REPLICAOF NO ONE, written to its configuration), stop the
        old one for good, point the other replicas at the new one, and start
        a fresh replica of it."""
        if not self.replicas:
            raise RuntimeError("a failover needs a replica")
        old = self.primary
        new = self.replicas.pop(0)
        new.reconfigure("REPLICAOF", "NO", "ONE")
        self.primary = new
        for proxy in self.client_proxies:
            self.toxiproxy.set_upstream(proxy.name, new.address)
        if old is not None:
            old.stop()
            self.nodes.remove(old)
        for replica in self.replicas:   # the other replicas follow the new primary
            replica.reconfigure("REPLICAOF", *self._link(new).split())
        self.replicas.append(self._replica_of(new))
        return new
