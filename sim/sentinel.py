"""Redis Sentinel's timing, as the simulation models it (the real backend
runs redis-sentinel processes and leaves every decision to them).

The sentinels ping the primary every second; one that gets no valid reply
for ``down_after_ms`` marks it subjectively down, asks the others (every
second), and once a quorum agrees, a leader is elected (after a random
desync of up to a second) that sends REPLICAOF NO ONE to the best replica
and, at its next INFO (every second during a failover), names it the
primary: clients asking ``SENTINEL get-master-addr-by-name`` get the new
address from then on (sentinel.c). An old primary that comes back is made a
replica of the new one at the first INFO (every 10 s) at least 8 s after it
first reported itself a primary (``sentinel_info_period``,
``sentinel_publish_period * 4``): until then it takes the writes of any
client still connected to it.
"""
from __future__ import annotations

from sim.scenario import SentinelConfig

# From the down-after verdict to clients being told the promoted replica.
# Measured here (redis-sentinel 7.0.15, 3 sentinels, quorum 2, down-after
# 1000 ms): the new address 2.18-2.26 s after the primary was killed.
ELECTION_S = 1.25
# A killed primary refuses the sentinels' connections: they count down-after
# from its last reply. A silent one (a partition) leaves their pings
# pending: they count from the first unanswered one, about half a period
# later (measured 2.68-2.80 s from the cut to the new address).
SILENT_S = 0.5
# From an old primary's return to its demotion (measured 10.83-10.90 s after
# the partition healed).
CONVERT_S = 10.9


def promotion_delay(sentinel: SentinelConfig, silent: bool = False) -> float:
    """Seconds from the primary becoming unreachable (``silent``: cut off,
    not dead) to the promoted replica being named."""
    return sentinel.down_after_ms / 1000.0 + ELECTION_S + (SILENT_S if silent else 0.0)
