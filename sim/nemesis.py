"""What every backend's nemesis shares: the record of the faults it applied,
the acknowledged writes a fault can take back, the network's dice, and the
target that ``mid_script_power_loss`` waits for.

Each backend's nemesis decides *how* a fault strikes (SimPy events on the
model, signals and toxiproxy on real processes); what a fault means, when it
counts as applied and what it records are decided here, once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from sim.cluster import promotion_times
from sim.faults import SPECS, Fault, effects_record
from sim.sentinel import promotion_delay

if TYPE_CHECKING:
    from sim.scenario import SentinelConfig, ServerConfig

_MASK = (1 << 64) - 1
# How often each appendfsync policy puts the AOF on disk, in seconds: the
# writes a power loss can take back (``no``: the OS flushes dirty pages
# every 30 s).
FSYNC_PERIOD_S = {"always": 0.0, "everysec": 1.0, "no": 30.0}


def promotes(sentinel: SentinelConfig, schedule: list[Fault]) -> bool:
    """Whether a fault of this schedule may promote a replica."""
    return any(SPECS[fault.kind].promotes == "always"
               or (SPECS[fault.kind].promotes == "with_sentinel" and sentinel.enabled) for fault in schedule)


def rollback_horizon(server: ServerConfig, sentinel: SentinelConfig, schedule: list[Fault]) -> float:
    """How far back a fault of this schedule may take writes (0: never)."""
    specs = [SPECS[fault.kind] for fault in schedule]
    reach = 0.0
    if any(spec.rolls_back == "unfsynced" or (spec.rolls_back == "unsaved" and not server.appendonly)
           for spec in specs):
        reach = FSYNC_PERIOD_S[server.appendfsync] if server.appendonly else server.rdb_interval_s
    if promotes(sentinel, schedule):
        lags = [fault.param("lag_ms") for fault in schedule if SPECS[fault.kind].param_names & {"lag_ms"}]
        reach = max(reach, server.replication_lag_ms / 1000.0, *(lag / 1000.0 for lag in lags))
    if any(spec.strands_clients for spec in specs):
        # The old primary writes on until the replica is promoted from what it had: under Sentinel,
        # its promotion's delay; on a cluster, the latest the cluster's promotion can come.
        reach += (promotion_times(server.cluster_node_timeout_ms / 1000.0, (1.0, 1.0, 1.0))[1]
                  if server.topology == "cluster" else promotion_delay(sentinel, silent=True))
    return reach


class Split:
    """Who reaches which primary during a split brain, on every backend: the
    clients left on the old primary's side stay with it; the others cannot
    reach it, and reach the primary Sentinel names once it is another one.
    After the partition heals, a client that connects asks Sentinel again;
    one still connected to the old primary stays there until it is demoted."""

    def __init__(self, old: Any, minority: frozenset[int]) -> None:
        self.old = old
        self.minority = minority
        self.healed = False

    def route(self, index: int, primary: Any) -> Any:
        """Where client ``index`` connects, given the primary Sentinel names (None: nowhere)."""
        if self.healed:
            return primary
        if index in self.minority:
            return self.old
        return None if primary is self.old else primary


def left_with_old_primary(seed: int, fault_index: int, clients: int, share: float) -> frozenset[int]:
    """The clients a split brain leaves with the old primary: the same on every backend."""
    return frozenset(index for index in range(clients) if uniform(seed, fault_index, index, 0x5B1) < share)


def time_to_new_primary(clients: list, since: float, node: str, run_end: float) -> float | None:
    """Per client, on average, from the fault at ``since`` to its first
    connection to the promoted ``node`` (the run's end if it never made
    one). No client reaches it before its promotion: until then the primary
    is down or is another node."""
    if not clients:
        return None
    waits = []
    for client in clients:
        reached = next((at for at, where in client.connects if at >= since and where == node), run_end)
        waits.append(max(0.0, reached - since))
    return round(sum(waits) / len(waits), 6)


def uniform(*words: int) -> float:
    """A uniform number in [0, 1) that depends only on ``words`` (splitmix64):
    the same request of the same operation meets the same fate under every
    strategy and on every backend, so that they are compared under identical
    faults."""
    state = 0x9E3779B97F4A7C15
    for word in words:
        state = (state ^ (word & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return (state >> 11) / float(1 << 53)


def tears_aof(server: ServerConfig, schedule: list[Fault]) -> bool:
    """Whether a power loss of this schedule may leave a torn AOF tail."""
    return (server.appendonly and bool(FSYNC_PERIOD_S[server.appendfsync])
            and any(SPECS[fault.kind].tears and fault.param("tear_bytes") for fault in schedule))


class FaultLog:
    """The schedule as applied. Every scheduled fault has a record from the
    start, so none can vanish from the results: one that never struck says
    why, one still under way when the run ended says so."""

    def __init__(self, schedule: list[Fault]) -> None:
        self.schedule = schedule
        self._effects: list[dict[str, Any]] = [{} for _ in schedule]
        self._promotions: dict[int, tuple[float, float, str]] = {}   # fault -> (struck, promoted, new primary)
        # split brain -> (operations the promoted replica lacked, or None if none was promoted;
        # operations the old primary acknowledged after the cut)
        self._old_primaries: dict[int, tuple[set[int] | None, set[int]]] = {}

    def promoted(self, index: int, struck: float, at: float, node: str) -> None:
        """Fault ``index`` (struck at ``struck``) had replica ``node`` named the primary at ``at``."""
        self._promotions[index] = (struck, at, node)

    def old_primary(self, index: int, acknowledged: set[int], lost: set[int] | None = None) -> None:
        """A split brain's old primary acknowledges ``acknowledged`` (filled
        as the run goes on); ``lost``: what the promoted replica lacked at the
        cut, once one is promoted (then all of it is lost)."""
        self._old_primaries[index] = (lost, acknowledged)

    def struck(self, index: int, at: float, **effects: Any) -> None:
        self._effects[index].update(effects, applied=True, struck_at=round(at, 6))

    def update(self, index: int, **effects: Any) -> None:
        self._effects[index].update(effects)

    def ended(self, index: int, at: float, **effects: Any) -> None:
        self._effects[index].update(effects, ended_at=round(at, 6))

    def not_applied(self, index: int, reason: str) -> None:
        self._effects[index].update(applied=False, reason=reason)

    def records(self, run_end: float, clients: list) -> list[dict]:
        """Every scheduled fault with its effects, once the run has ended at
        ``run_end``; ``clients`` tell how long they took to reach a promoted replica."""
        for index, (struck, promoted, node) in self._promotions.items():
            self.update(index, promoted_at=round(promoted, 6),
                        clients_on_old_primary_s=time_to_new_primary(clients, struck, node, run_end))
        for index, (lost, acknowledged) in self._old_primaries.items():
            # Without a promotion nothing was lost: the old primary stayed the primary.
            self.update(index, old_primary_acknowledged=len(acknowledged),
                        acknowledged_writes_lost=len(lost | acknowledged) if lost is not None else 0)
        out = []
        for fault, effects in zip(self.schedule, self._effects):
            effects = dict(effects)
            if "applied" not in effects:
                effects.update(applied=False, reason=f"the run ended at {run_end:.3f} s, before it struck")
            elif effects["applied"] and effects.get("ended_at") is None and effects.get("reason") is None:
                effects["reason"] = f"the run ended at {run_end:.3f} s while it lasted"
            out.append({**fault.to_dict(), "effects": effects_record(fault.kind, **effects)})
        return out


@dataclass(slots=True)
class AckedWrite:
    applied_at: float    # when the server applied it (the sim: exactly; real: when its reply came back)
    op: int
    confirmed: bool = False   # WAIT said enough replicas had it
    shards: Any = None        # on a cluster, the shards it went to (None: one server)


class AckLog:
    """Recent writes the server acknowledged, by operation, so that a fault
    that takes back the writes after some moment (power loss: the last
    fsync; failover: the replica's lag) can say how many acknowledged
    operations it lost, and how many of those WAIT had confirmed; and every
    write a watched server (an old primary in a split brain) acknowledged."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.writes: deque[AckedWrite] = deque()
        self.watched: dict[str, set[int]] = {}   # server -> operations it acknowledged a write of
        # A minority partition's old primary: (shard, clients left with it, operations it acknowledged).
        self.cut_off: list[tuple[int, frozenset[int], set[int]]] = []
        # On a cluster, the shards a request goes to (set by the backend), so that a fault on one
        # shard counts only the writes that shard acknowledged.
        self.locate: Callable[[Any], Any] | None = None

    def watch(self, node: str) -> set[int]:
        """From now on, the operations whose write ``node`` acknowledges."""
        return self.watched.setdefault(node, set())

    def watch_cut_off(self, shard: int, clients: frozenset[int]) -> set[int]:
        """From now on (until :meth:`unwatch_cut_off`), the operations whose
        write on ``shard`` one of ``clients`` had acknowledged: in a minority
        partition, the old primary is the only node of the shard they reach."""
        operations: set[int] = set()
        self.cut_off.append((shard, clients, operations))
        return operations

    def unwatch_cut_off(self, operations: set[int]) -> None:
        self.cut_off = [entry for entry in self.cut_off if entry[2] is not operations]

    def acknowledged(self, applied_at: float, op: int, node: str = "", request: Any = None,
                     client: int = -1) -> AckedWrite:
        if self.watched and node in self.watched:
            self.watched[node].add(op)
        write = AckedWrite(applied_at, op)
        if self.locate is not None and request is not None:
            write.shards = frozenset(self.locate(request))
        for shard, clients, operations in self.cut_off:
            if client in clients and (write.shards is None or shard in write.shards):
                operations.add(op)
        writes = self.writes
        writes.append(write)
        horizon = applied_at - self.keep_s
        while writes[0].applied_at < horizon:
            writes.popleft()
        return write

    def lost(self, after: float, until: float, shard: int | None = None) -> tuple[int, int]:
        """Operations with an acknowledged write applied in (after, until]
        (on ``shard``, when given), and how many of them WAIT had confirmed."""
        confirmed = {write.op for write in self._window(after, until, shard) if write.confirmed}
        return len(self.lost_operations(after, until, shard)), len(confirmed)

    def lost_operations(self, after: float, until: float, shard: int | None = None) -> set[int]:
        """Operations with an acknowledged write applied in (after, until] (on ``shard``, when given)."""
        return {write.op for write in self._window(after, until, shard)}

    def _window(self, after: float, until: float, shard: int | None):
        return [write for write in self.writes if after < write.applied_at <= until
                and (shard is None or write.shards is None or shard in write.shards)]


class StallTarget:
    """What ``mid_script_power_loss`` waits for: the next operation to reach
    a point between two of its writes. Armed by the nemesis, caught by the
    shared client loop (which puts a stall of ``stall_s`` there, see
    :mod:`sim.stall`), then struck by the nemesis while the stall holds the
    server."""

    def __init__(self) -> None:
        self.stall_s = 0.0
        self.armed = False
        self.caught: dict[str, Any] | None = None   # target, target_operation, op, request, sent_at
        self._on_catch: Callable[[], Any] | None = None

    def arm(self, stall_s: float, on_catch: Callable[[], Any] | None = None) -> None:
        self.stall_s, self.armed, self.caught, self._on_catch = stall_s, True, None, on_catch

    def catch(self, target: str, operation: str, op: int, request: Any, sent_at: float) -> None:
        """The client loop put the stall in ``request``, about to be sent."""
        self.armed = False
        self.caught = {"target": target, "target_operation": operation, "op": op, "request": request,
                       "sent_at": sent_at}
        if self._on_catch is not None:
            self._on_catch()

    def disarm(self) -> None:
        self.armed = False


# Acknowledged writes are kept this long beyond the furthest a fault can take
# back (rollback_horizon): a write acknowledged just before a fault is in it.
ACK_MARGIN_S = 1.0
ALREADY_DOWN = "the server was already down"


def ack_log(server: ServerConfig, sentinel: SentinelConfig, schedule: list[Fault]) -> AckLog:
    """The log of acknowledged writes a run's faults may take back."""
    return AckLog(rollback_horizon(server, sentinel, schedule) + ACK_MARGIN_S)


class Nemesis:
    """What every backend's nemesis keeps alike: the schedule, its fault
    log, the seeded dice, the acknowledged writes a fault can take back and
    the stall target; the losses of a server that died, and the records at
    the end. Each backend's nemesis adds *how* a fault strikes."""

    def __init__(self, driver: Any, schedule: list[Fault], seed: int, acks: AckLog, target: StallTarget) -> None:
        self.driver = driver
        self.schedule = schedule
        self.seed = seed
        self.acks = acks
        self.target = target
        self.log = FaultLog(schedule)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E3E]))

    def records(self) -> list[dict]:
        """The schedule as applied, once the run has ended."""
        for index, count in self.driver.network.replies_lost.items():
            self.log.update(index, replies_lost=count)
        return self.log.records(self.driver.run_end, self.driver.clients)

    def losses(self, index: int, died_at: float, keep_until: float, shard: int | None = None) -> None:
        """A server (of ``shard``, on a cluster) died at ``died_at`` and what
        survives reaches back to ``keep_until``: the acknowledged writes lost."""
        acknowledged, confirmed = self.acks.lost(keep_until, died_at, shard)
        self.log.update(index, writes_lost_s=round(died_at - keep_until, 6), acknowledged_writes_lost=acknowledged,
                        wait_confirmed_writes_lost=confirmed)
