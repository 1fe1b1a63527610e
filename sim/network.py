"""Network faults as windows in time, and the fate of each request in them.

The nemesis opens windows of ``latency`` (delay and jitter each way),
``partition`` (connections refused and reset), ``blackhole`` (requests
vanish: the client times out) and ``reset_peer`` (the request reaches the
server, its reply is lost to a reset). A request's fate depends only on the
windows open when it is sent and on (operation, attempt, request): the same
request meets the same fate under every strategy and on every backend. The
simulation carries every fate out itself; on real servers toxiproxy carries
out partitions, blackholes and delays, and the driver arms a reset on the
client's own proxy for exactly the requests whose fate is RESET.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sim.faults import Fault
from sim.nemesis import uniform

DELIVER, REFUSE, VANISH, RESET = 0, 1, 2, 3


@dataclass
class Route:
    fate: int = DELIVER
    delay_out: float = 0.0    # added one-way delay, seconds
    delay_back: float = 0.0
    window: int = -1          # the schedule index of the window that reset it


CLEAR = Route()


class Network:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.windows: list[tuple[int, Fault]] = []     # (schedule index, fault)
        self.replies_lost: Counter[int] = Counter()    # schedule index -> replies a reset took

    def open(self, index: int, fault: Fault) -> None:
        self.windows.append((index, fault))

    def route(self, now: float, op: int, attempt: int, request: int) -> Route:
        """What happens to request number ``request`` of attempt ``attempt``
        of operation ``op``, sent now."""
        if not self.windows:
            return CLEAR
        self.windows = [(index, window) for index, window in self.windows if window.end > now]
        active = [(index, window) for index, window in self.windows if window.at <= now]
        if not active:
            return CLEAR
        route = Route()
        for index, window in active:
            kind = window.kind
            if kind == "partition":
                route.fate = REFUSE
            elif kind == "blackhole" and route.fate != REFUSE:
                route.fate = VANISH
            elif kind == "reset_peer" and route.fate == DELIVER:
                if uniform(self.seed, op, attempt, request, 1) < window.param("probability"):
                    route.fate, route.window = RESET, index
            elif kind == "latency":
                delay, jitter = window.param("delay_ms") / 1000.0, window.param("jitter_ms") / 1000.0
                route.delay_out += delay + jitter * uniform(self.seed, op, attempt, request, 2)
                route.delay_back += delay + jitter * uniform(self.seed, op, attempt, request, 3)
        return route
