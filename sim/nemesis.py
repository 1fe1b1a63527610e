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

from sim.faults import Fault, effects_record

if TYPE_CHECKING:
    from sim.scenario import ServerConfig

_MASK = (1 << 64) - 1
# How often each appendfsync policy puts the AOF on disk, in seconds: the
# writes a power loss can take back (``no``: the OS flushes dirty pages
# every 30 s).
FSYNC_PERIOD_S = {"always": 0.0, "everysec": 1.0, "no": 30.0}


def rollback_horizon(server: ServerConfig, schedule: list[Fault]) -> float:
    """How far back a fault of this schedule may take writes (0: never)."""
    kinds = {fault.kind for fault in schedule}
    reach = 0.0
    if kinds & {"power_loss", "mid_script_power_loss"} or ("server_crash" in kinds and not server.appendonly):
        reach = FSYNC_PERIOD_S[server.appendfsync] if server.appendonly else server.rdb_interval_s
    if "failover" in kinds or (server.auto_failover and "server_crash" in kinds):
        lags = [fault.param("lag_ms") for fault in schedule if fault.kind == "failover"]
        reach = max(reach, server.replication_lag_ms / 1000.0, *(lag / 1000.0 for lag in lags))
    return reach


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
            and any(fault.kind in ("power_loss", "mid_script_power_loss") and fault.param("tear_bytes")
                    for fault in schedule))


class FaultLog:
    """The schedule as applied. Every scheduled fault has a record from the
    start, so none can vanish from the results: one that never struck says
    why, one still under way when the run ended says so."""

    def __init__(self, schedule: list[Fault]) -> None:
        self.schedule = schedule
        self._effects: list[dict[str, Any]] = [{} for _ in schedule]

    def struck(self, index: int, at: float, **effects: Any) -> None:
        self._effects[index].update(effects, applied=True, struck_at=round(at, 6))

    def update(self, index: int, **effects: Any) -> None:
        self._effects[index].update(effects)

    def ended(self, index: int, at: float, **effects: Any) -> None:
        self._effects[index].update(effects, ended_at=round(at, 6))

    def not_applied(self, index: int, reason: str) -> None:
        self._effects[index].update(applied=False, reason=reason)

    def records(self, run_end: float) -> list[dict]:
        """Every scheduled fault with its effects, once the run has ended at ``run_end``."""
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


class AckLog:
    """Recent writes the server acknowledged, by operation, so that a fault
    that takes back the writes after some moment (power loss: the last
    fsync; failover: the replica's lag) can say how many acknowledged
    operations it lost, and how many of those WAIT had confirmed."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.writes: deque[AckedWrite] = deque()

    def acknowledged(self, applied_at: float, op: int) -> AckedWrite:
        write = AckedWrite(applied_at, op)
        writes = self.writes
        writes.append(write)
        horizon = applied_at - self.keep_s
        while writes[0].applied_at < horizon:
            writes.popleft()
        return write

    def lost(self, after: float, until: float) -> tuple[int, int]:
        """Operations with an acknowledged write applied in (after, until],
        and how many of them WAIT had confirmed."""
        ops = {write.op for write in self.writes if after < write.applied_at <= until}
        confirmed = {write.op for write in self.writes if after < write.applied_at <= until and write.confirmed}
        return len(ops), len(confirmed)


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
