"""A simulated Redis Cluster: one simulated server per shard, and a slot map.

:class:`ClusterServer` stands where the driver expects the one server (the
same ``submit``, ``advance``, ``inspect``, ``incarnation`` ...), so the
SimPy driver runs unchanged: a cluster-aware client in front of several
FIFO servers. Each shard is a :class:`~sim.backends.model.server.Server`
(its own queue, store, persistence and replicas, as the single server
has); a request is routed by the slot of its first key (sim/cluster.py,
redis-py's CRC16), and a pipeline whose items live on several shards is
split by shard, each part sent at once (in parallel, as a cluster client
sends them) and queued on its shard: its reply is back when the slowest
part is. A client holds one connection per shard (WATCH and MULTI stay on
the shard of their keys). Keyless commands (the handshake's PING and
SCRIPT LOAD) go to every shard; KEYS and DBSIZE are gathered from all.

A node answers a request it does not serve with the error real redis 7.0
gives (sim/cluster.py: CROSSSLOT, MOVED, EXECABORT, CLUSTERDOWN), costing
one command of its time and running nothing. The slot map never changes
(no resharding yet: a failover keeps a shard's slots on the shard, its
replica serving them), so a cluster-aware client sees MOVED only where a
transaction's queued command lives on another node.

A client's link to each shard is its own (the driver opens, refuses and
drops them one by one: :meth:`ClusterServer.dead_links`,
:meth:`~ClusterServer.open_links`), so a shard that is down refuses only
the requests that need it. A restarted primary answers CLUSTERDOWN for
its first 2 s, and every node does while a failed primary waits for its
replica's promotion (``down_windows``, set by the nemesis's
``cluster_failover``, timed by :func:`sim.cluster.promotion_times`).

A minority partition (:class:`ShardCut`) gives each client its own view:
the clients left with the cut-off primary reach it and no other node, the
others reach every node but it (and its promoted replica once the cluster
names one); a link across the cut is dead (:meth:`ClusterServer.node`).
"""
from __future__ import annotations

import math
from typing import Any

from sim.backends.model.migration import SlotMigration
from sim.backends.model.server import Connection, Entry, Server
from sim.cluster import (
    CRON_S,
    CROSSSLOT,
    SlotMap,
    asking,
    cluster_down_error,
    command_keys,
    merge_keyless,
    node_error,
    request_shards,
    route,
    split_pipeline,
)
from sim.commands import CommandError, Pipeline, Request, first_error

_PLACEHOLDER = ("PING",)   # what a node's time on a refused request is charged as


class ClusterEntry:
    """A request the cluster split or refused: its parts on the shards, and
    the reply assembled from them, in the request's order."""

    __slots__ = ("parts", "sources", "names", "errors", "single")

    def __init__(self, parts: list[Entry], sources: list[list[tuple[int, int]]], names: list[Any],
                 errors: dict[int, CommandError], single: bool) -> None:
        self.parts = parts       # one Entry per shard it went to
        self.sources = sources   # per item: [(part, position in that part's reply), ...]
        self.names = names       # per item: the command's name when it went to every shard, else None
        self.errors = errors     # item -> the error its node answered instead of running it
        self.single = single     # not a pipeline: the reply is the one item's

    @property
    def end(self) -> float:
        return max(part.end for part in self.parts)

    @property
    def lost(self) -> bool:
        return any(part.lost for part in self.parts)

    @property
    def committed(self) -> bool:
        return any(part.committed for part in self.parts)

    @property
    def applied_at(self) -> float:
        times = [part.applied_at for part in self.parts if part.committed]
        return max(times) if times else math.nan

    @property
    def reply(self) -> Any:
        items = []
        for index, sources in enumerate(self.sources):
            if index in self.errors:
                items.append(self.errors[index])
                continue
            replies = [self.parts[part].reply if self.single else self.parts[part].reply[position]
                       for part, position in sources]
            items.append(replies[0] if self.names[index] is None else merge_keyless(self.names[index], replies))
        return items[0] if self.single else items

    @property
    def error(self) -> CommandError | None:
        return first_error(self.reply if not self.single else [self.reply])


class ShardCut:
    """A minority partition: shard ``shard``'s old primary ``old``, cut off
    from the rest of the cluster with the clients ``minority``; it answers
    CLUSTERDOWN from ``refuses_at`` (it missed a majority of primaries)."""

    __slots__ = ("shard", "old", "minority", "refuses_at")

    def __init__(self, shard: int, old: Server, minority: frozenset[int], refuses_at: float) -> None:
        self.shard = shard
        self.old = old
        self.minority = minority
        self.refuses_at = refuses_at


class ClusterServer:
    """The shards' primaries behind one face (see the module's docstring)."""

    def __init__(self, shards: list[Server], slots: SlotMap | None = None) -> None:
        self.shards = shards
        self.slots = slots or SlotMap.even(len(shards))
        self.name = "cluster"
        self.incarnation = 0          # the cluster as a whole never restarts (its shards may, later)
        self.down_until = -math.inf
        # node addresses as MOVED names them (the simulation's: the shard's name)
        self.addresses = [shard.name for shard in shards]
        # A client's connection -> its link to each shard it holds one to (see shards_of, open_links).
        self._links: dict[Connection, dict[int, Connection]] = {}
        self.handshake: Request | None = None   # what opening a link sends (the driver sets it)
        # CLUSTERDOWN: every node, while a failed primary is not yet replaced (the nemesis adds
        # the windows), and a restarted primary until it is writable again (per shard).
        self.down_windows: list[tuple[float, float]] = []
        self.writable_at = [-math.inf] * len(shards)
        self.migration: SlotMigration | None = None   # slots on the move (the slot_migration fault)
        self.cut: ShardCut | None = None              # a minority partition, while it lasts

    # -- what the driver and the checker read -------------------------------------
    @property
    def requests(self) -> int:
        return sum(shard.requests for shard in self.shards)

    @property
    def commands(self) -> int:
        return sum(shard.commands for shard in self.shards)

    @property
    def busy_s(self) -> float:
        """Service time given so far by the busiest shard (the one that bounds
        the cluster); 0 where the servers do not count it."""
        return max(getattr(shard, "busy_s", 0.0) for shard in self.shards)

    @property
    def service(self):
        return self.shards[0].service

    def shard_commands(self) -> dict[str, int]:
        return {shard.name: shard.commands for shard in self.shards}

    def keep_history(self, seconds: float) -> None:
        for shard in self.shards:
            shard.keep_history(seconds)

    def keep_aof(self) -> None:
        for shard in self.shards:
            shard.keep_aof()

    def advance(self, now: float) -> None:
        for shard in self.shards:
            shard.advance(now)
        if self.cut is not None:
            self.cut.old.advance(now)

    # -- requests -----------------------------------------------------------------------
    def _link(self, connection: Connection, shard: int) -> Connection:
        links = self._links.setdefault(connection, {})
        link = links.get(shard)
        if link is None:
            link = links[shard] = Connection(self.node(connection.client, shard))
        return link

    def node(self, client: int, shard: int) -> Server | None:
        """The node serving ``shard`` that client ``client`` reaches (None:
        none, across a minority partition)."""
        server = self.shards[shard]
        cut = self.cut
        if cut is None:
            return server
        if client in cut.minority:
            return cut.old if shard == cut.shard else None
        return None if server is cut.old else server

    # -- each client's links, one per shard, independent of each other ------------------
    def shards_of(self, request: Request) -> list[int]:
        """The shards a request goes to (a keyless command: every shard; ASKING
        and its request: the shard importing the slot)."""
        if self.migration is not None and asking(request) is not None:
            return [self.migration.target]
        return request_shards(request, self.slots, len(self.shards))

    def give_slot(self, slot: int, shard: int) -> None:
        """CLUSTER SETSLOT ... NODE on every node: clients learn it from the
        next MOVED (here at once: the slot map is every client's)."""
        self.slots.give(slot, shard)

    def dead_links(self, connection: Connection, shards: list[int]) -> list[int]:
        """Of ``shards``, those whose link the shard closed (it died since)
        or a partition cut: they are forgotten, and the next request there
        opens a new one."""
        links = self._links.get(connection, {})
        dead = [shard for shard in shards if shard in links
                and (links[shard].incarnation != links[shard].server.incarnation
                     or links[shard].server is not self.node(connection.client, shard))]
        for shard in dead:
            del links[shard]
        return dead

    def missing_links(self, connection: Connection, shards: list[int]) -> list[int]:
        links = self._links.get(connection, {})
        return [shard for shard in shards if shard not in links]

    def open_links(self, connection: Connection, shards: list[int], arrival: float) -> dict[int, Entry]:
        """Open a link to each of ``shards``: its handshake, queued there."""
        links = self._links.setdefault(connection, {})
        entries = {}
        for shard in shards:
            link = links[shard] = Connection(self.node(connection.client, shard))
            entries[shard] = link.server.submit(link, self.handshake, arrival)
        return entries

    def drop_links(self, connection: Connection, shards: list[int] | None = None) -> None:
        """The client closes its links to ``shards`` (all: None)."""
        links = self._links.get(connection, {})
        for shard in list(links) if shards is None else shards:
            links.pop(shard, None)

    def submit(self, connection: Connection, request: Request, arrival: float,
               writes: bool | None = None) -> Entry | ClusterEntry:
        """Route the request to its shards (``writes``, as for one server:
        whether it may write, when the caller knows already)."""
        if self.migration is not None and asking(request) is not None:   # following an ASK: the node decides
            target = self.migration.target
            return self.shards[target].submit(self._link(connection, target), request, arrival, writes)
        if type(request) is Pipeline:
            return self._submit_pipeline(connection, request, arrival)
        if type(request) is tuple and not command_keys(request):   # to every shard
            links = [self._link(connection, index) for index in range(len(self.shards))]
            parts = [link.server.submit(link, request, arrival) for link in links]
            return ClusterEntry(parts, [[(index, 0) for index in range(len(parts))]], [request[0]], {}, single=True)
        shard = route(request, self.slots)
        link = self._link(connection, shard)
        error = self._error(request, shard, arrival, link.server)
        if error is None:
            return link.server.submit(link, request, arrival, writes)
        entry = link.server.submit(link, _PLACEHOLDER, arrival)
        return ClusterEntry([entry], [[(0, 0)]], [None], {0: CommandError(error)}, single=True)

    def _submit_pipeline(self, connection: Connection, pipeline: Pipeline, arrival: float) -> ClusterEntry:
        items = pipeline.commands
        parts: list[Entry] = []
        sources: list[list[tuple[int, int]]] = [[] for _ in items]
        names = [None] * len(items)
        errors: dict[int, CommandError] = {}
        for shard, indices in split_pipeline(pipeline, self.slots, len(self.shards)).items():
            link = self._link(connection, shard)
            sent = []
            for position, index in enumerate(indices):
                item = items[index]
                if type(item) is tuple and not command_keys(item):
                    names[index] = item[0]
                    error = None
                else:
                    error = self._error(item, shard, arrival, link.server)
                if error is not None:
                    errors[index] = CommandError(error)
                    item = _PLACEHOLDER
                sent.append(item)
                sources[index].append((len(parts), position))
            parts.append(link.server.submit(link, Pipeline(tuple(sent)), arrival))
        return ClusterEntry(parts, sources, names, errors, single=False)

    def is_down(self, shard: int, at: float, node: Server | None = None) -> bool:
        """Whether ``shard``'s node (``node``, when the client reaches another
        than the cluster names: a minority's old primary) answers CLUSTERDOWN at ``at``."""
        if self.cut is not None and node is self.cut.old:
            return at >= self.cut.refuses_at
        return at < self.writable_at[shard] or any(start <= at < end for start, end in self.down_windows)

    def _error(self, request: Request, shard: int, arrival: float, node: Server) -> str | None:
        """The node's error, in cluster.c's order: CROSSSLOT, then CLUSTERDOWN, then MOVED."""
        error = node_error(request, self.slots, shard, self.addresses)
        if error != CROSSSLOT and self.is_down(shard, arrival, node):
            return cluster_down_error(request) or error
        return error

    def wait(self, connection: Connection, arrival: float, replicas: int, timeout: float) -> tuple[float, int]:
        """WAIT, as the cluster client sends it: to every primary on its own
        link; the reply is back when the last node's is, and says the fewest
        replicas any node confirmed."""
        links = [self._link(connection, index) for index in range(len(self.shards))]
        answers = [link.server.wait(link, arrival, replicas, timeout) for link in links]
        return max(ready for ready, _ in answers), min(count for _, count in answers)

    def inspect(self, request: Request) -> Any:
        """Run a request outside the workload (reading counters), routed
        as a cluster client would; a nested pipeline item by item."""
        if type(request) is Pipeline:
            return [self.inspect(item) for item in request.commands]
        if type(request) is tuple and not command_keys(request):
            return merge_keyless(request[0], [shard.inspect(request) for shard in self.shards])
        shard = route(request, self.slots)
        error = node_error(request, self.slots, shard, self.addresses)
        if error is not None:
            return CommandError(error)
        if self.migration is not None:   # where an ASK would send the reader
            shard = self.migration.holder(shard, request)
        return self.shards[shard].inspect(request)



# A minority partition (the minority_partition fault): the bus links
# between the cut-off primary and the others are closed, as a firewall that
# rejects would have them (the real backend's relay: bus_relay.py). Every
# node opens a new link at its next clusterCron tick and pings on it at
# once: the first unanswered ping leaves within CUT_PING_S of the cut, on
# both sides. The cut-off primary flags each other primary PFAIL a node
# timeout after that, and its cluster_state turns fail (every request
# answered CLUSTERDOWN) once fewer than a majority of the primaries with
# slots are reachable, itself included (clusterUpdateState). With
# cluster-node-timeout 1000 on redis-server 7.0.15 here, in 8 cuts: the cut
# primary failed 1.016-1.094 s after the cut (mean 1.058), the majority
# flagged it FAIL 1.159-1.334 s after (mean 1.231), the replica was primary
# 1.978-2.260 s after (mean 2.111). Modelled: 1.0-1.1 s (mean 1.067),
# 1.15-1.25 s, 1.66-2.36 s (mean 2.01).
CUT_PING_S = CRON_S


def minority_refusal_time(node_timeout_s: float, primaries: int, draws: list[float]) -> float:
    """Seconds from the cut to the cut-off primary's CLUSTERDOWN, given a
    uniform draw in [0, 1) per other primary (inf: it never has a majority
    to lose, one primary alone)."""
    pfail = sorted(node_timeout_s + draw * CUT_PING_S for draw in draws[:primaries - 1])
    lost = primaries - (primaries // 2 + 1) + 1   # PFAIL flags that leave it without a majority
    return pfail[lost - 1] if 0 < lost <= len(pfail) else math.inf
