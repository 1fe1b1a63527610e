"""What survives a fault: the fsync policy and the replication lag.

Redis writes each command to the AOF before it replies, so a process crash
(SIGKILL) keeps everything acknowledged: the OS page cache survives. Power
loss keeps only what reached the disk: with ``appendfsync always`` every
write (fsync before the reply), with ``everysec`` what the once-a-second
fsync covered (up to about a second lost), with ``no`` what the OS flushed
(about 30 s), and with the AOF off only the last RDB snapshot, for a process
crash too. (Redis manual, "Redis persistence".)

Replication is asynchronous: a replica holds the primary's writes up to the
replication lag ago. The lag varies: it is drawn afresh every
``lag_period_s`` from an exponential law around its mean, so WAIT usually
returns in time but sometimes times out, and a failover loses roughly
write rate x lag (Redis manual, "Redis replication"; WAIT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Persistence:
    appendonly: bool = True
    appendfsync: str = "everysec"   # always | everysec | no
    rdb_interval_s: float = 60.0    # snapshot period when the AOF is off
    os_flush_s: float = 30.0        # dirty page write-back with appendfsync no

    def _floor(self, t: float, period: float) -> float:
        return math.floor(t / period) * period

    def survives_crash(self, t: float) -> float:
        """Writes committed up to this time survive a process crash at t."""
        return t if self.appendonly else self._floor(t, self.rdb_interval_s)

    def survives_power_loss(self, t: float) -> float:
        """Writes committed up to this time survive a power loss at t."""
        if not self.appendonly:
            return self._floor(t, self.rdb_interval_s)
        if self.appendfsync == "always":
            return t
        if self.appendfsync == "everysec":
            return self._floor(t, 1.0)
        return self._floor(t, self.os_flush_s)

    def horizon_s(self) -> float:
        """How far back a rollback may reach."""
        if not self.appendonly:
            return self.rdb_interval_s
        return {"always": 0.0, "everysec": 1.0}.get(self.appendfsync, self.os_flush_s)


class ReplicationLag:
    def __init__(self, mean_ms: float, seed: int, period_s: float = 0.1) -> None:
        self.mean_s = mean_ms / 1000.0
        self.period_s = period_s
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A6]))
        self.slots: list[float] = []

    def at(self, t: float) -> float:
        """The replication lag, in seconds, at time t."""
        slot = max(0, int(t / self.period_s))
        while len(self.slots) <= slot:
            self.slots.append(float(self.rng.exponential(self.mean_s)) if self.mean_s > 0 else 0.0)
        return self.slots[slot]

    def replica_has_until(self, t: float) -> float:
        """A replica promoted at t holds the writes committed up to this time."""
        return t - self.at(t)
