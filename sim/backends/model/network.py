"""The network between the clients and the primary, and the faults on it.

The simulated counterpart of toxiproxy: the nemesis opens windows of
``latency`` (delay and jitter each way), ``partition`` (connections refused
and reset), ``blackhole`` (requests vanish: the client times out) and
``reset_peer`` (the request reaches the server, its reply is lost to a reset).
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.faults import Fault

DELIVER, REFUSE, VANISH, RESET = 0, 1, 2, 3


@dataclass
class Route:
    fate: int = DELIVER
    delay_out: float = 0.0    # added one-way delay, seconds
    delay_back: float = 0.0


CLEAR = Route()
_MASK = (1 << 64) - 1


def uniform(*words: int) -> float:
    """A uniform number in [0, 1) that depends only on ``words`` (splitmix64):
    the same request of the same operation meets the same fate under every
    strategy, so that strategies are compared under identical faults."""
    state = 0x9E3779B97F4A7C15
    for word in words:
        state = (state ^ (word & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
        state ^= state >> 29
    return (state >> 11) / float(1 << 53)


class Network:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.windows: list[Fault] = []

    def open(self, fault: Fault) -> None:
        self.windows.append(fault)

    def route(self, now: float, op: int, attempt: int, request: int) -> Route:
        """What happens to request number ``request`` of attempt ``attempt``
        of operation ``op``, sent now."""
        if not self.windows:
            return CLEAR
        self.windows = [window for window in self.windows if window.end > now]
        active = [window for window in self.windows if window.at <= now]
        if not active:
            return CLEAR
        route = Route()
        for window in active:
            kind = window.kind
            if kind == "partition":
                route.fate = REFUSE
            elif kind == "blackhole" and route.fate != REFUSE:
                route.fate = VANISH
            elif kind == "reset_peer" and route.fate == DELIVER:
                if uniform(self.seed, op, attempt, request, 1) < window.param("probability"):
                    route.fate = RESET
            elif kind == "latency":
                delay, jitter = window.param("delay_ms") / 1000.0, window.param("jitter_ms") / 1000.0
                route.delay_out += delay + jitter * uniform(self.seed, op, attempt, request, 2)
                route.delay_back += delay + jitter * uniform(self.seed, op, attempt, request, 3)
        return route
