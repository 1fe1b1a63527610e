"""What survives a fault: the fsync policy and the replication lag.

Redis writes each command to the AOF before it replies, so a process crash
(SIGKILL) keeps everything acknowledged: the OS page cache survives. Power
loss keeps only what reached the disk: with ``appendfsync always`` every
write (fsync before the reply), with ``everysec`` what the once-a-second
fsync covered (up to about a second lost), with ``no`` what the OS flushed
(about 30 s), and with the AOF off only the last RDB snapshot, for a process
crash too. (Redis manual, "Redis persistence".)

Replication is asynchronous: a replica holds the primary's writes up to the
replication lag ago, so a failover loses roughly write rate x lag (Redis
manual, "Redis replication"). The lag is the scenario's
``replication_lag_ms``, the same at every moment, as on the real backend,
where it is a latency toxic on each replica's link (see the server's
``wait`` and ``replica_has_until``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sim.nemesis import FSYNC_PERIOD_S


@dataclass(frozen=True)
class Persistence:
    appendonly: bool = True
    appendfsync: str = "everysec"   # always | everysec | no
    rdb_interval_s: float = 60.0    # snapshot period when the AOF is off

    def _floor(self, t: float, period: float) -> float:
        return math.floor(t / period) * period

    def survives_crash(self, t: float) -> float:
        """Writes committed up to this time survive a process crash at t."""
        return t if self.appendonly else self._floor(t, self.rdb_interval_s)

    def survives_power_loss(self, t: float) -> float:
        """Writes committed up to this time survive a power loss at t."""
        if not self.appendonly:
            return self._floor(t, self.rdb_interval_s)
        period = FSYNC_PERIOD_S[self.appendfsync]
        return self._floor(t, period) if period else t
