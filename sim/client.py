"""What every backend's virtual clients share: the retry policy, what the
nemesis can do to a client, and how an attempt ended."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.commands import ConnectionLost

# Mechanisms by which counters go wrong, each one a run can switch off to
# measure what it contributes (see sim/causes.py).
CAUSES = ("gave_up", "retry_applied_twice", "lost_unfsynced", "lost_on_failover", "two_lock_holders")


@dataclass(frozen=True)
class ClientConfig:
    count: int = 32
    rtt_ms: float = 0.2           # the simulated network's round trip
    timeout_ms: float = 1000.0
    retries: int = 2              # re-runs of an operation that failed to reach Redis or lost a reply
    backoff_ms: float = 5.0       # doubled at each retry...
    max_backoff_ms: float = 1000.0  # ...up to this
    wait_timeout_ms: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
        return min(self.max_backoff_ms, self.backoff_ms * 2 ** min(attempt - 1, 30)) / 1000.0


class ConnectionRefused(ConnectionLost):
    """The request never reached the server (it is down, or partitioned away)."""


class Client:
    """One virtual client: its connection, and what the nemesis did to it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.connection: Any = None
        self.crash_for: float | None = None   # set by a client_crash: dies mid-operation
        self.pause_for: float | None = None   # set by a client_pause: freezes mid-operation
        self.struck_since = 0.0               # when the crash or pause was set

    def crash(self, now: float, down_for: float) -> None:
        self.crash_for, self.struck_since = down_for, now

    def pause(self, now: float, pause_for: float) -> None:
        self.pause_for, self.struck_since = pause_for, now

    def strikes(self, now: float, requests_done: int, wanted: int) -> bool:
        """Does a pending crash or pause strike now? It waits for an operation
        that has done ``wanted`` requests; after a second it settles for one
        request done, after two for any moment."""
        waited = now - self.struck_since
        return requests_done >= wanted or (waited > 1.0 and requests_done > 0) or waited > 2.0


@dataclass(frozen=True)
class Attempt:
    outcome: int
    retriable: bool = False        # it failed at the connection: the retry policy may run it again
    crashed: bool = False          # the client died inside it
