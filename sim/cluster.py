"""Redis Cluster's slot math and routing rules, shared by both backends.

The key -> slot function is redis-py's (:func:`redis.crc.key_slot`: CRC16
of the hash tag, or of the whole key, modulo 16,384), not a copy. What is
hand-written here, because no library exposes it for our backend-neutral
requests (:mod:`sim.commands`): which words of a request are keys, the even
split of the slots over the primaries that ``redis-cli --cluster create``
makes, and which error a node answers to a request whose keys span slots
or live on another node (the rules of cluster.c's ``getNodeByQuery`` in
redis 7.0, checked against redis-server 7.0.15 in tests/test_cluster.py):

- a command or a script whose own keys span two slots: ``CROSSSLOT``,
  whichever node it reaches, before it runs;
- a command whose key lives on another node: ``MOVED <slot> <address>``;
- inside MULTI, a queued command whose key lives on another node is
  answered MOVED and flags the transaction, so EXEC answers ``EXECABORT``;
  queued commands that all live on this node but in different slots are
  each QUEUED, and EXEC answers ``CROSSSLOT`` (the transaction is
  discarded, nothing runs).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.crc import key_slot as _key_slot

from sim.commands import CommandError, Pipeline, Request, Script, Stall, Transaction

CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"
# What every node answers a request with keys while the cluster is down (a
# primary flagged FAIL, not yet replaced), and a restarted primary for its
# first CLUSTER_WRITABLE_DELAY (cluster.c: 2,000 ms; measured 2.01 s on
# redis-server 7.0.15); inside MULTI the queued command gets it and EXEC
# answers EXECABORT (measured). PING and SCRIPT LOAD are still served.
CLUSTERDOWN = "CLUSTERDOWN The cluster is down"
WRITABLE_DELAY_S = 2.0
EXECABORT = "EXECABORT Transaction discarded because of previous errors."
# A request on several keys of a slot being migrated, not all of them on the node.
TRYAGAIN = "TRYAGAIN Multiple keys request during rehashing of slot"

# Commands with no key: they go to every node (PING, SCRIPT LOAD) or are
# gathered from all (KEYS, DBSIZE).
KEYLESS = frozenset({"PING", "SCRIPT", "FUNCTION", "WAIT", "KEYS", "DBSIZE", "UNWATCH", "INFO", "FLUSHALL"})
ALL_KEYS = frozenset({"WATCH", "DEL", "EXISTS", "MGET", "UNLINK"})   # every argument is a key


def key_slot(key: Any) -> int:
    """The slot of a key (redis-py's CRC16, hash tags honoured)."""
    if isinstance(key, str):
        key = key.encode()
    return _key_slot(key)


def command_keys(words: tuple) -> tuple:
    """The keys of one command as the strategies use them."""
    name = str(words[0]).upper()
    if name in KEYLESS:
        return ()
    if name in ALL_KEYS:
        return tuple(words[1:])
    if name == "FCALL":
        return tuple(words[3:3 + int(words[2])])
    return (words[1],) if len(words) > 1 else ()


def request_keys(request: Request) -> list:
    """The keys of a command, a script or a transaction, in order."""
    kind = type(request)
    if kind is tuple:
        return list(command_keys(request))
    if kind is Script:
        return list(request.keys)
    if kind is Transaction:
        return [key for command in request.commands for key in request_keys(command)]
    if kind is Stall:
        return []
    raise TypeError(f"not a single request: {request!r}")


def request_slots(request: Request) -> list[int]:
    """Slots of a command's, a script's or a transaction's keys, in order."""
    return [key_slot(key) for key in request_keys(request)]


def even_split(primaries: int) -> list[tuple[int, int]]:
    """Inclusive slot ranges, one per primary, as ``redis-cli --cluster
    create`` assigns them (redis-cli.c: slotsPerNode = 16384 / n as a
    float, each range ending at round(first + slotsPerNode) - 1, the last
    at 16383): 3 primaries get 0-5460, 5461-10922, 10923-16383."""
    per_node = SLOTS / primaries
    ranges, first, cursor = [], 0, 0.0
    for index in range(primaries):
        last = SLOTS - 1 if index == primaries - 1 else int(cursor + per_node - 1 + 0.5)
        ranges.append((first, last))
        first = last + 1
        cursor += per_node
    return ranges


@dataclass
class SlotMap:
    """Which shard owns each slot, as sorted inclusive ranges."""

    ranges: list[tuple[int, int, int]]   # (first, last, shard)

    @classmethod
    def even(cls, primaries: int) -> "SlotMap":
        return cls([(first, last, shard) for shard, (first, last) in enumerate(even_split(primaries))])

    def __post_init__(self) -> None:
        self._index()

    def _index(self) -> None:
        self.ranges.sort()
        self._firsts = [first for first, _, _ in self.ranges]

    def shard_of(self, slot: int) -> int | None:
        index = bisect_right(self._firsts, slot) - 1
        if index < 0:
            return None
        first, last, shard = self.ranges[index]
        return shard if first <= slot <= last else None

    def shard_of_key(self, key: Any) -> int | None:
        return self.shard_of(key_slot(key))

    def give(self, slot: int, shard: int) -> None:
        """CLUSTER SETSLOT <slot> NODE: the slot is the shard's from now on."""
        ranges = []
        for first, last, owner in self.ranges:
            if first <= slot <= last and owner != shard:
                ranges += [(first, slot - 1, owner), (slot, slot, shard), (slot + 1, last, owner)]
            else:
                ranges.append((first, last, owner))
        self.ranges = [(first, last, owner) for first, last, owner in ranges if first <= last]
        self._index()


def route(request: Request, slots: SlotMap, default: int = 0) -> int:
    """The shard a single request goes to: its first key's (a client sends
    a transaction where its first key lives, as redis-py does), or
    ``default`` when it has no key."""
    found = request_slots(request)
    if not found:
        return default
    shard = slots.shard_of(found[0])
    return default if shard is None else shard


def node_error(request: Request, slots: SlotMap, shard: int, address: Sequence[str]) -> str | None:
    """The error a node answers, before running anything, to a single
    request sent to ``shard`` (None: it runs there). ``address`` names each
    shard as MOVED does."""
    kind = type(request)
    if kind is Transaction:
        exec_slots: set[int] = set()
        for command in request.commands:
            error = node_error(command, slots, shard, address)
            if error is not None:
                return EXECABORT   # the queued command was answered the error; EXEC aborts
            exec_slots.update(request_slots(command))
        return CROSSSLOT if len(exec_slots) > 1 else None
    found = request_slots(request)
    if not found:
        return None
    if any(slot != found[0] for slot in found):
        return CROSSSLOT
    owner = slots.shard_of(found[0])
    if owner != shard:
        return f"MOVED {found[0]} {address[owner] if owner is not None else '?'}"
    return None


def split_pipeline(pipeline: Pipeline, slots: SlotMap, shards: int) -> dict[int, list[int]]:
    """Which of a pipeline's items go to which shard (by the item's first
    key; keyless items go to every shard and the first shard's reply
    stands), in order: {shard: [item index, ...]}."""
    parts: dict[int, list[int]] = {}
    for index, item in enumerate(pipeline.commands):
        if type(item) is tuple and not command_keys(item):
            for shard in range(shards):
                parts.setdefault(shard, []).append(index)
        else:
            parts.setdefault(route(item, slots), []).append(index)
    return parts


def merge_keyless(name: str, replies: list[Any]) -> Any:
    """One reply from every shard's reply to a keyless command: KEYS
    concatenated, DBSIZE summed, WAIT the fewest replicas any node
    confirmed (a node the client wrote nothing to confirms all of its
    replicas at once), the first shard's otherwise."""
    name = str(name).upper()
    if name == "WAIT":
        counts = [reply for reply in replies if isinstance(reply, int)]
        return min(counts) if len(counts) == len(replies) else next(
            reply for reply in replies if not isinstance(reply, int))
    if name == "KEYS":
        return [key for reply in replies if isinstance(reply, list) for key in reply]
    if name == "DBSIZE":
        return sum(reply for reply in replies if isinstance(reply, int))
    return replies[0]


def cluster_down_error(request: Request) -> str | None:
    """The error a node that is down answers a single request (None: one
    without keys, which it serves). A transaction's EXEC answers EXECABORT;
    both backends report the queued command's CLUSTERDOWN instead, which
    says why (sim/backends/real/protocol.py)."""
    return CLUSTERDOWN if request_slots(request) else None


def refused_whole(reply: Any) -> bool:
    """Whether a reply says nothing of its request ran because the cluster
    was down (every item CLUSTERDOWN, or EXECABORT behind it): a cluster
    client retries such a request as a refused one (redis-py retries
    ClusterDownError), rather than failing the operation."""
    if isinstance(reply, list):
        return bool(reply) and all(refused_whole(item) for item in reply)
    return isinstance(reply, CommandError) and str(reply).startswith("CLUSTERDOWN")


def asked(reply: Any) -> bool:
    """Whether a reply (or an item of a pipeline's) is an ASK redirection."""
    if isinstance(reply, list):
        return any(asked(item) for item in reply)
    return isinstance(reply, CommandError) and str(reply).startswith("ASK ")


def asking(request: Request) -> Request | None:
    """The request an ASKING pipeline carries to the node an ASK named (None: not one)."""
    if type(request) is Pipeline and len(request.commands) == 2 and request.commands[0] == ("ASKING",):
        return request.commands[1]
    return None


def migrating_slots(users: int, slots: SlotMap, shard: int, count: int) -> list[int]:
    """The slots a ``slot_migration`` moves off ``shard``: those of its
    users' hash tags, lowest user id first, ``count`` of them (fewer if the
    shard holds fewer users), so that each carries traffic. Both backends
    move the same ones."""
    chosen: list[int] = []
    for user in range(users):
        slot = key_slot(f"{{u{user}}}")
        if slots.shard_of(slot) == shard and slot not in chosen:
            chosen.append(slot)
            if len(chosen) == count:
                break
    return chosen


def shard_slots(slots: SlotMap, shard: int) -> str:
    """A shard's slot ranges as fault records give them: ``0-5460`` (``first-last``, comma-separated)."""
    return ",".join(f"{first}-{last}" for first, last, owner in slots.ranges if owner == shard)


def request_shards(request: Request, slots: SlotMap, shards: int) -> list[int]:
    """The shards a request goes to: a pipeline's by its items, a keyless
    command's every shard, any other request's its first key's."""
    if type(request) is Pipeline:
        return sorted(split_pipeline(request, slots, shards))
    if type(request) is tuple and not command_keys(request):
        return list(range(shards))
    return [route(request, slots)]


def user_shards(users: int, slots: SlotMap) -> np.ndarray:
    """The shard of each user's keys (all under the user's hash tag ``{u<id>}``)."""
    return np.fromiter((slots.shard_of_key(f"{{u{user}}}") for user in range(users)), np.int64, users)


# How the cluster replaces a failed primary, from redis 7.0's src/cluster.c
# (redis/redis, clusterCron, markNodeAsFailingIfNeeded, clusterHandleSlaveFailover):
# - clusterCron runs every 100 ms and pings a node whose last pong is older
#   than cluster-node-timeout / 2; a node whose ping has gone unanswered for
#   cluster-node-timeout is flagged PFAIL by the pinger;
# - PFAIL becomes FAIL on a node that holds reports (from gossip, sent with
#   every ping) from a majority of the primaries, and it broadcasts FAIL;
# - the failed primary's replica, at its next cron, schedules its election
#   at "500 ms (fixed, to let FAIL propagate) + random() % 500 + rank * 1000"
#   (rank 0: the replica with the most recent replication offset, the one
#   this model promotes), then asks the primaries for votes and wins in one
#   round trip.
# With cluster-node-timeout 1000 on redis-server 7.0.15 here, in 14 kills,
# FAIL came 1.11-1.65 s after the SIGKILL (mean 1.42), the election was
# scheduled 58 ms after it in one replica's log ("Start of election delayed
# for 970 milliseconds") and won 9 ms after it started; the replica was
# primary 1.90-2.67 s after the kill (mean 2.33). Modelled: FAIL 1.15-1.65 s
# (mean 1.40), promotion 1.66-2.76 s (mean 2.21).
FAIL_GOSSIP_S = 0.15      # from the ping's timeout to a majority's reports at one node (fit to the above)
CRON_S = 0.1              # clusterCron's period: when the replica notices the FAIL
ELECTION_FIXED_S = 0.5
ELECTION_RANDOM_S = 0.5
ELECTION_RANK_S = 1.0
VOTE_S = 0.01             # the vote's round trip


def promotion_times(node_timeout_s: float, draws: tuple[float, float, float], rank: int = 0,
                    first_ping_s: float | None = None) -> tuple[float, float]:
    """Seconds from a primary's death (or its cut) to its FAIL flag, and to
    its replica's promotion, given three uniform draws in [0, 1) (see
    above); ``first_ping_s``: the window in which the first unanswered ping
    leaves (half the node timeout when the node dies; see CUT_PING_S)."""
    first_unanswered, cron, election = draws
    window = node_timeout_s / 2 if first_ping_s is None else first_ping_s
    failed = node_timeout_s + first_unanswered * window + FAIL_GOSSIP_S
    promoted = (failed + cron * CRON_S + ELECTION_FIXED_S + election * ELECTION_RANDOM_S
                + rank * ELECTION_RANK_S + VOTE_S)
    return failed, promoted
