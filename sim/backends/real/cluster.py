"""A real Redis Cluster on 127.0.0.1, and a cluster-aware client for the driver.

:class:`ClusterServers` starts ``primaries`` redis-server processes in
cluster mode (``cluster-enabled yes``, each node's ``nodes.conf`` in the
run's temporary folder, persistence as the scenario says) and
``replicas_per_primary`` replicas of each; assigns the slots as
``redis-cli --cluster create`` would (sim/cluster.py's even split, with
CLUSTER ADDSLOTSRANGE), joins the nodes with CLUSTER MEET and the replicas
with CLUSTER REPLICATE, and waits until every node says cluster_state:ok
and every replica is synced. Every process is a
:class:`~sim.backends.real.processes.RedisServer`, registered to be stopped
by PID when the run ends, fails or is interrupted; the folder is removed in
a ``finally``. In a run with network faults a toxiproxy-server is started
too, with a proxy from each client to each node (``client<i>-shard<j>``, and
``-replica<k>`` for a replica), through which that client reaches that node.
In a run with a minority partition, the nodes' bus links go through a relay
that can cut one node off (sim/backends/real/bus_relay.py: each node
announces a relay port as its bus port), and the replicas authenticate as a
user of their own (``REPLICATION_USER``), so that the cut-off primary can
refuse its replica (ACL SETUSER off, CLIENT KILL USER) while its clients
carry on.

Hand-written rather than redis-py's ``RedisCluster``, and why: the driver
needs what that client hides. Each virtual client owns one raw connection
per primary (hiredis on a bare asyncio protocol, no retry of its own, as
for a single server: connection.py), so that a request's fate (ok, error,
unknown) is the driver's to record, WATCH and MULTI stay on one
connection, and a transaction or a script whose keys span slots reaches
the server and gets the server's own CROSSSLOT or EXECABORT instead of a
client-side exception. What is a library's: the key -> slot function
(redis-py's ``redis.crc.key_slot``, via sim/cluster.py) and the connections
(redis-py's for reads and set-up, hiredis's parser for the driver).

The client, :class:`ClusterConnection`, routes a request by the slot of
its first key to the owning primary's connection, splits a pipeline by node
(each node's part sent at once, the replies put back in order), follows
MOVED (refreshes the slot map from CLUSTER SLOTS and sends the request once
more) and ASK (ASKING then the request, once, on the named node). Its link
to each node is independent of the others: a node that is down refuses the
requests that need it, the slot map is read again from any node that
answers (a promoted replica), and the other nodes' links stay open.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sim.backends.real.connection import AsyncConnection, HandshakeFailed, SyncConnection
from sim.backends.real.processes import (
    BusRelayProcess,
    ProcessError,
    RedisServer,
    ToxiproxyServer,
    free_port,
    stop_process,
)
from sim.client import ConnectionRefused
from sim.cluster import SlotMap, command_keys, even_split, merge_keyless, route
from sim.commands import CommandError, Pipeline, Request
from sim.lua import Code
from sim.watchdog import remove_scratch, scratch_folder, signals_held

NODE_TIMEOUT_MS = 15000   # cluster-node-timeout: Redis's default ([server] cluster_node_timeout_ms)
REPLICATION_USER = "countdrift-replication"   # who the replicas are on their primary (a relayed cluster)
_REPLICATION_PASSWORD = "countdrift"


class ClusterServers:
    """The processes of one cluster run, all in one temporary folder."""

    def __init__(self, primaries: int = 3, replicas_per_primary: int = 1, appendonly: bool = True,
                 appendfsync: str = "everysec", rdb_interval_s: float = 60.0, keep_folder: bool = False,
                 min_replicas_to_write: int = 0, min_replicas_max_lag: int = 10,
                 client_proxies: bool = False, clients: int = 1, node_timeout_ms: int = NODE_TIMEOUT_MS,
                 bus_relay: bool = False) -> None:
        self.primary_count = primaries
        self.node_timeout_ms = int(node_timeout_ms)
        self.replicas_per_primary = replicas_per_primary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.rdb_interval_s = rdb_interval_s
        self.keep_folder = keep_folder
        self.min_replicas = {"min-replicas-to-write": str(min_replicas_to_write),
                             "min-replicas-max-lag": str(min_replicas_max_lag)} if min_replicas_to_write else {}
        self.proxied = client_proxies
        self.client_count = clients
        self.toxiproxy: ToxiproxyServer | None = None
        self.relayed = bus_relay
        self.bus_relay: BusRelayProcess | None = None
        self.relay_ports: dict[str, int] = {}        # node name -> the relay port it announces as its bus port
        self.client_proxies: list = []                # every client's proxy to every primary
        self.proxies_of: list[dict[str, Any]] = []    # per client: node address -> its proxy to it
        self.folder: Path | None = None
        self.primaries: list[RedisServer] = []
        self.replicas: list[list[RedisServer]] = []   # per shard
        self.nodes: list[RedisServer] = []
        self.node_ids: dict[str, str] = {}            # node name -> cluster node id

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> "ClusterServers":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def config(self) -> dict[str, str]:
        persistence = ({"appendonly": "yes", "appendfsync": self.appendfsync} if self.appendonly else
                       {"appendonly": "no", "save": f"{max(1, int(self.rdb_interval_s))} 1"})
        replication = ({"user": f"{REPLICATION_USER} on >{_REPLICATION_PASSWORD} ~* &* +@all",
                        "masteruser": REPLICATION_USER, "masterauth": _REPLICATION_PASSWORD} if self.relayed else {})
        return {**persistence, **self.min_replicas, **replication, "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf", "cluster-node-timeout": str(self.node_timeout_ms)}

    def _node(self, name: str) -> RedisServer:
        # The cluster bus port is the client port + 10000 by default, which may
        # lie in the ephemeral range or past 65535: each node gets one of its own.
        node = RedisServer(name, self.folder / name, self.config())
        bus = free_port()
        node.config["cluster-port"] = str(bus)
        self.nodes.append(node)
        node.start()
        self.node_ids[name] = node.client().execute_command("CLUSTER", "MYID")
        return node

    def start(self) -> None:
        self.folder = scratch_folder("countdrift-cluster-")
        for shard in range(self.primary_count):
            self.primaries.append(self._node(f"shard{shard}-primary"))
            self.replicas.append([self._node(f"shard{shard}-replica{index}")
                                  for index in range(self.replicas_per_primary)])
        for primary, (first, last) in zip(self.primaries, even_split(self.primary_count)):
            primary.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        if self.relayed:   # each node announces its relay port as its bus port (kept across restarts)
            self.bus_relay = BusRelayProcess([int(node.config["cluster-port"]) for node in self.nodes], self.folder)
            self.bus_relay.start()
            for node, port in zip(self.nodes, self.bus_relay.ports):
                node.reconfigure("CONFIG", "SET", "cluster-announce-bus-port", str(port))
                self.relay_ports[node.name] = port
        # Every node meets every other (rather than one node all, and gossip the rest: 2-3 s more here).
        for index, node in enumerate(self.nodes):
            client = node.client()
            for other in self.nodes[index + 1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, self.bus_port(other))
        self._wait(lambda: all(self._knows_all(node) for node in self.nodes), "every node to know every other")
        for primary, replicas in zip(self.primaries, self.replicas):
            for replica in replicas:
                replica.client().execute_command("CLUSTER", "REPLICATE", self.node_ids[primary.name])
        self._wait(self.ready, "cluster_state:ok on every node and every replica synced")
        if self.proxied:
            self._proxies()

    def bus_port(self, node: RedisServer) -> int:
        """Where the other nodes reach ``node``'s bus: the relay's port for it, or its own."""
        return self.relay_ports.get(node.name) or int(node.config["cluster-port"])

    def _proxies(self) -> None:
        """A toxiproxy proxy from each client to each primary (``client<i>-shard<j>``),
        so that a network fault strikes the links of chosen clients to every node;
        and to each replica (``client<i>-shard<j>-replica<k>``), which clients
        reach once the cluster has promoted it (cluster_failover)."""
        self.toxiproxy = ToxiproxyServer(self.folder)
        self.toxiproxy.start()
        for index in range(self.client_count):
            mine = {}
            for shard, primary in enumerate(self.primaries):
                nodes = [(f"client{index}-shard{shard}", primary)] + [
                    (f"client{index}-shard{shard}-replica{number}", replica)
                    for number, replica in enumerate(self.replicas[shard])]
                for name, node in nodes:
                    proxy = self.toxiproxy.proxy(name, node.address)
                    mine[node.address] = proxy
                    self.client_proxies.append(proxy)
            self.proxies_of.append(mine)

    def client_address(self, index: int, address: str) -> str:
        """Where client ``index`` reaches the node at ``address``: its proxy, or the node."""
        if not self.proxied:
            return address
        proxy = self.proxies_of[index].get(address)
        return proxy.listen if proxy is not None else address

    def _knows_all(self, node: RedisServer) -> bool:
        """Whether ``node`` knows every node by its id, each past the handshake
        (a node still in handshake is listed under a provisional id)."""
        lines = node.client().execute_command("CLUSTER", "NODES").strip().splitlines()
        known = {line.split()[0] for line in lines if "handshake" not in line.split()[2]}
        return known >= set(self.node_ids.values())

    def ready(self) -> bool:
        for node in self.nodes:
            if node.client().cluster("INFO").get("cluster_state") != "ok":
                return False
        return all(replica.client().info("replication").get("master_link_status") == "up"
                   for replicas in self.replicas for replica in replicas)

    @staticmethod
    def _wait(check, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise ProcessError(f"the cluster did not come up within {timeout:.0f} s: waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every process by its PID, then remove the folder. An
        interrupt that comes meanwhile (Ctrl-C, SIGTERM) is held until
        everything is stopped and removed, then delivered: one that cut the
        removal short left the folder behind."""
        with signals_held():
            self._close()

    def _close(self) -> None:
        try:
            if self.toxiproxy is not None:
                self.toxiproxy.stop()
            if self.bus_relay is not None:
                self.bus_relay.stop()
            # Replicas first: a primary told to stop waits (up to shutdown-timeout, 10 s) for
            # replicas that have not acknowledged its last writes, and the stop would SIGKILL it.
            replicas = {replica.name for shard in self.replicas for replica in shard}
            for node in sorted(self.nodes, key=lambda node: node.name not in replicas):
                if node.process is not None:
                    _stop_node(node.process)
        finally:
            if self.folder is not None and not self.keep_folder:
                _remove(self.folder)

    # -- what the driver needs ------------------------------------------------------------
    @property
    def addresses(self) -> list[str]:
        return [primary.address for primary in self.primaries]

    def slot_map(self) -> "ClusterMap":
        cluster = ClusterMap.read(self.primaries[0].address)
        cluster.seeds = [node.address for node in self.nodes]
        return cluster

    def name_of(self, address: str) -> str:
        return next((node.name for node in self.nodes if node.address == address), address)


def _stop_node(process, patience_s: float = 3.0) -> None:
    """SIGTERM, again every 0.2 s while it lives (a replica that has just
    synced refuses it while it writes its initial AOF: "Writing initial AOF,
    can't exit", and does not try again by itself), then SIGKILL."""
    deadline = time.monotonic() + patience_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            os.kill(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        try:
            process.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    stop_process(process, timeout=1.0)


def _remove(folder: Path, patience_s: float = 3.0) -> None:
    """Remove the run's folder; again while something still writes in it
    (an AOF rewrite's child finishing after its parent was stopped)."""
    deadline = time.monotonic() + patience_s
    while True:
        remove_scratch(folder)
        if not folder.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


class ClusterMap:
    """The slot map as a client knows it: slot ranges -> shard, and each
    shard's primary address (``host:port``). Shared by a run's clients."""

    REFRESH_S = 0.05   # after a failure, the map is read again at most this often

    def __init__(self, slots: SlotMap, addresses: list[str], seeds: list[str] | None = None) -> None:
        self.slots = slots
        self.addresses = addresses
        self.seeds = list(seeds or addresses)   # every node: where to read the map when a primary is gone
        self._read_at = -float("inf")

    @classmethod
    def read(cls, address: str) -> "ClusterMap":
        """CLUSTER SLOTS of the node at ``address``."""
        host, port = address.rsplit(":", 1)
        # No retry of redis-py's own (its default backs off and tries again on a refused
        # connection: a dead node held a thread for seconds, and the nemesis waited for one).
        client = redis.Redis(host=host, port=int(port), decode_responses=True, socket_timeout=5,
                             socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            reply = client.cluster("SLOTS")
        finally:
            client.close()
        # [[first, last, [host, port, id, ...], [replica...]...], ...]
        addresses: list[str] = []
        ranges = []
        for first, last, owner, *_ in sorted(reply, key=lambda entry: entry[0]):
            primary = f"{owner[0]}:{owner[1]}"
            if primary not in addresses:
                addresses.append(primary)
            ranges.append((int(first), int(last), addresses.index(primary)))
        return cls(SlotMap(ranges), addresses)

    def refresh(self, address: str) -> None:
        fresh = ClusterMap.read(address)
        self.slots, self.addresses = fresh.slots, fresh.addresses
        self._read_at = time.monotonic()

    def refresh_any(self) -> None:
        """Read the map from the first node that answers (a link failed: its
        node may be gone, its slots served by a promoted replica); at most
        every REFRESH_S, however many clients ask."""
        if time.monotonic() - self._read_at < self.REFRESH_S:
            return
        self._read_at = time.monotonic()
        for address in [*self.addresses, *self.seeds]:
            try:
                self.refresh(address)
                return
            except (redis.RedisError, OSError):
                continue

    def route(self, request: Request) -> str:
        return self.addresses[route(request, self.slots)]


def _redirect(reply: Any) -> tuple[str, str] | None:
    """("MOVED" | "ASK", address) when a reply is a redirection."""
    if isinstance(reply, CommandError):
        words = str(reply).split()
        if len(words) == 3 and words[0] in ("MOVED", "ASK"):
            return words[0], words[2]
    return None


def _split(request: Pipeline, route_of) -> tuple[dict[str, list[int]], list[Any]]:
    """A pipeline's items by node address (keyless ones to every node)."""
    parts: dict[str, list[int]] = {}
    names: list[Any] = [None] * len(request.commands)
    for index, item in enumerate(request.commands):
        if type(item) is tuple and not command_keys(item):
            names[index] = item[0]
            for address in route_of(None):
                parts.setdefault(address, []).append(index)
        else:
            parts.setdefault(route_of(item), []).append(index)
    return parts, names


class ClusterConnection:
    """One virtual client's connections to the cluster: a link per primary,
    each independent of the others, as a cluster client holds them; the
    same face as :class:`~sim.backends.real.connection.AsyncConnection`.

    ``connect`` opens a link to every primary that answers the handshake
    (at least one must); a link to a node that did not, or to one first
    named by a redirect or a new slot map, is opened when a request needs
    it. A request that needs a link its node has closed (it died), or one
    that cannot be opened (the node is down), is refused before any part
    is sent anywhere, and that link is forgotten; the slot map is read
    again (its slots may have a new primary). After a lost reply the driver
    calls :meth:`discard_broken`: the links that failed are closed, the
    others stay open, so a request to a live shard goes on while another
    shard is down."""

    def __init__(self, cluster: ClusterMap, reach=None, proxy_of=None, name_of=None) -> None:
        self.cluster = cluster
        self.reach = reach or (lambda address: address)   # a node's address -> where to connect (a proxy)
        self.proxy_of = proxy_of                          # a node's address -> the name of the proxy to it
        self.name_of = name_of or (lambda address: address)   # a node's address -> its name (links opened)
        self.on_link = None                               # called with a node's name when a link opens
        self.connect_timeout: float | None = None         # a link's handshake (the driver sets the client's timeout)
        self.links: dict[str, AsyncConnection] = {}
        self.code: tuple[Code, ...] = ()
        self.redirects = 0
        self._noscript = 0
        self._requests = 0   # of links closed since
        self._commands = 0
        self._elements = 0
        self._timed_out = False

    @property
    def noscript(self) -> int:
        return self._noscript + sum(link.noscript for link in self.links.values())

    @property
    def requests(self) -> int:
        """Requests and commands sent on its links (where a link counts them)."""
        return self._requests + sum(getattr(link, "requests", 0) for link in self.links.values())

    @property
    def commands(self) -> int:
        return self._commands + sum(getattr(link, "commands", 0) for link in self.links.values())

    @property
    def elements(self) -> int:
        return self._elements + sum(getattr(link, "elements", 0) for link in self.links.values())

    @property
    def timed_out(self) -> bool:
        return self._timed_out or any(link.timed_out for link in self.links.values())

    @property
    def loaded(self) -> bool:
        """Whether a link's handshake loaded code its node lacked."""
        return any(link.loaded for link in self.links.values())

    async def connect(self, code: tuple[Code, ...]) -> None:
        """Open a link to every primary that answers (ConnectionRefused if none does)."""
        self.code = code
        results = await asyncio.gather(*(self._link(address) for address in self.cluster.addresses),
                                       return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure
        if len(failures) == len(results):
            raise ConnectionRefused(str(failures[0]) or type(failures[0]).__name__)

    async def _link(self, address: str) -> AsyncConnection:
        """The open link to ``address``, opened (with the handshake) if there
        is none; ConnectionRefused, nothing sent, if it was closed by its node
        or cannot be opened."""
        link = self.links.get(address)
        if link is not None:
            if link.protocol is not None and link.protocol.lost is None:
                return link
            await self._forget(address)
            await self._stale()
            raise ConnectionRefused(str(link.protocol.lost) if link.protocol is not None else "not connected")
        host, port = self.reach(address).rsplit(":", 1)
        link = AsyncConnection(host, int(port))
        try:
            async with asyncio.timeout(self.connect_timeout):   # a handshake that vanishes (blackhole) is refused
                await link.connect(self.code)
        except (TimeoutError, HandshakeFailed, ConnectionRefused, ConnectionError, OSError,
                asyncio.IncompleteReadError) as error:
            await link.close()
            await self._stale()
            raise ConnectionRefused(str(error) or type(error).__name__) from None
        self.links[address] = link
        if self.on_link is not None:
            self.on_link(self.name_of(address))
        return link

    async def _links(self, addresses: list[str]) -> list[AsyncConnection]:
        """A live link to each of ``addresses`` (each opened if needed), or
        ConnectionRefused before anything is sent on any of them: sending
        the other parts first would apply them while the client reports the
        request refused, surely not applied."""
        links, refused = [], None
        for address in addresses:
            try:
                links.append(await self._link(address))
            except ConnectionRefused as error:
                refused = refused or error
        if refused is not None:
            raise refused
        return links

    async def _forget(self, address: str) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            self._noscript += link.noscript
            self._requests += link.requests
            self._commands += link.commands
            self._elements += getattr(link, "elements", 0)
            await link.close()

    async def _stale(self) -> None:
        """A node failed us: read the slot map again (it may have a new primary)."""
        await asyncio.to_thread(self.cluster.refresh_any)

    async def discard_broken(self) -> None:
        """After a lost reply or a refusal: close the links that failed
        (closed by their node, or timed out), keep the others."""
        broken = [address for address, link in self.links.items()
                  if link.timed_out or link.protocol is None or link.protocol.lost is not None]
        lost = any(not self.links[address].timed_out for address in broken)
        for address in broken:
            await self._forget(address)
        self._timed_out = False
        if lost:
            await self._stale()

    def proxies_for(self, request: Request) -> list[str]:
        """The names of the proxies a request will cross (the driver arms a
        reset on those only: arming every node's costs the run requests)."""
        if self.proxy_of is None:
            return []
        if type(request) is Pipeline:
            addresses = set()
            for item in request.commands:
                routed = self._route(None if type(item) is tuple and not command_keys(item) else item)
                addresses.update(routed if isinstance(routed, list) else [routed])
        elif type(request) is tuple and not command_keys(request):
            addresses = set(self.cluster.addresses)
        else:
            addresses = {self.cluster.route(request)}
        names = (self.proxy_of(address) for address in sorted(addresses))
        return [name for name in names if name is not None]

    def _route(self, item: Request | None) -> Any:
        if item is None:
            return list(self.cluster.addresses)
        return self.cluster.route(item)

    async def execute(self, request: Request) -> object:
        if type(request) is Pipeline:
            return await self._pipeline(request)
        if type(request) is tuple and not command_keys(request):
            links = await self._links(list(self.cluster.addresses))
            replies = await asyncio.gather(*(link.execute(request) for link in links))
            return merge_keyless(request[0], list(replies))
        (link,) = await self._links([self.cluster.route(request)])
        reply = await link.execute(request)
        return await self._follow(request, reply)

    async def _follow(self, request: Request, reply: Any) -> Any:
        """MOVED: refresh the map, send once more; ASK: ASKING and the request, once, there."""
        redirect = _redirect(reply)
        if redirect is None:
            return reply
        self.redirects += 1
        kind, address = redirect
        link = await self._link(address)
        if kind == "MOVED":
            await asyncio.to_thread(self.cluster.refresh, address)
            return await link.execute(request)
        asking, reply = await link.execute(Pipeline((("ASKING",), request)))
        return reply

    async def _pipeline(self, request: Pipeline) -> list:
        parts, names = _split(request, self._route)
        addresses = list(parts)
        links = await self._links(addresses)
        replies = await asyncio.gather(*(link.execute(Pipeline(tuple(request.commands[index]
                                                                     for index in parts[address])))
                                         for link, address in zip(links, addresses)))
        gathered: dict[int, list] = {}
        for address, part in zip(addresses, replies):
            for index, value in zip(parts[address], part):
                gathered.setdefault(index, []).append(value)
        out = []
        for index, item in enumerate(request.commands):
            values = gathered[index]
            if names[index] is not None:
                out.append(merge_keyless(names[index], values))
            else:
                out.append(await self._follow(item, values[0]))
        return out

    def time_out(self) -> None:
        """The request is late: abort the links it waits on (all, if none is known)."""
        self._timed_out = True
        waiting = [link for link in self.links.values()
                   if link.protocol is not None and link.protocol.waiting]
        for link in waiting or list(self.links.values()):
            link.time_out()

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()


class ClusterReader:
    """Synchronous reads for the checker: a nested pipeline's commands
    grouped by node, one round trip per node."""

    def __init__(self, cluster: ClusterMap, code: tuple[Code, ...] = ()) -> None:
        self.cluster = cluster
        self.code = code   # loaded on each node when first reached (a pipeline's NOSCRIPT is not retried)
        self.links: dict[str, SyncConnection] = {}

    def _link(self, address: str) -> SyncConnection:
        if address not in self.links:
            host, port = address.rsplit(":", 1)
            self.links[address] = SyncConnection(host, int(port))
            self.links[address].load(self.code)
        return self.links[address]

    def execute(self, request: Request, again: bool = True) -> Any:
        leaves: list[Request] = []
        shape = _leaves(request, leaves)
        by_node: dict[str, list[int]] = {}
        for index, leaf in enumerate(leaves):
            if type(leaf) is tuple and not command_keys(leaf):
                for address in self.cluster.addresses:
                    by_node.setdefault(address, []).append(index)
            else:
                by_node.setdefault(self.cluster.route(leaf), []).append(index)
        values: dict[int, list] = {}
        for address, indices in by_node.items():
            try:
                replies = self._link(address).execute(Pipeline(tuple(leaves[index] for index in indices)))
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop(address)
                self.cluster.refresh_any()   # the node is gone: its slots may have a new primary
                raise
            for index, value in zip(indices, replies):
                values.setdefault(index, []).append(value)
                if isinstance(value, CommandError) and str(value).startswith("CLUSTERDOWN"):
                    raise value   # not readable yet (the caller tries again)
        answers = [merge_keyless(leaf[0], values[index]) if type(leaf) is tuple and not command_keys(leaf)
                   else values[index][0] for index, leaf in enumerate(leaves)]
        if again and any(_redirect(answer) for answer in answers):   # the map changed: read it again, once
            self.cluster.refresh(self.cluster.addresses[0])
            return self.execute(request, again=False)
        return _rebuild(shape, iter(answers))

    def _drop(self, address: str) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        for link in self.links.values():
            link.close()


def _leaves(request: Request, out: list) -> Any:
    """Flatten nested pipelines; the shape to rebuild the reply with."""
    if type(request) is Pipeline:
        return [_leaves(item, out) for item in request.commands]
    out.append(request)
    return None


def _rebuild(shape: Any, answers) -> Any:
    if shape is None:
        return next(answers)
    return [_rebuild(item, answers) for item in shape]


class ClusterRoutes:
    """Where a cluster run's clients connect: the cluster, through a
    cluster-aware connection (the driver asks ``connection`` and ``reader``)."""

    def __init__(self, servers: ClusterServers) -> None:
        self.servers = servers
        self.cluster = servers.slot_map()
        self.split = None

    async def connect_to(self, index: int) -> tuple[str, int, str]:
        host, port = self.cluster.addresses[0].rsplit(":", 1)
        return host, int(port), "cluster"

    def connection(self, index: int) -> ClusterConnection:
        """Client ``index``'s connection: through its proxies when the run has network faults."""
        name_of = self.servers.name_of
        if not self.servers.proxied:
            return ClusterConnection(self.cluster, name_of=name_of)
        mine = self.servers.proxies_of[index]
        # A node with no proxy of this client's (a replica promoted since): reached directly.
        return ClusterConnection(self.cluster, lambda address: mine[address].listen if address in mine else address,
                                 lambda address: mine[address].name if address in mine else None, name_of)

    def proxies(self) -> list[list[str]]:
        """Per client, the names of its proxies (the driver arms a reset on them)."""
        return [[proxy.name for proxy in mine.values()] for mine in self.servers.proxies_of]

    def reader(self) -> ClusterReader:
        return ClusterReader(self.cluster)

    def primary_address(self) -> tuple[str, int]:
        host, port = self.cluster.addresses[0].rsplit(":", 1)
        return host, int(port)
