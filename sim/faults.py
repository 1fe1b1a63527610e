"""Fault schedules: what breaks, when, for how long (DESIGN.md's vocabulary).

A scenario lists faults explicitly (``[[faults]]`` with kind, at, duration,
params) or gives per-kind rates (``[[fault_rates]]``) from which a schedule
is drawn with the run's seed. Both backends read the same schedule; the one
actually applied is written into results.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# kind -> (what it is, default duration in seconds, {param: default})
FAULT_KINDS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "client_crash": (
        "the app process dies between two commands of one operation; its work is not retried",
        0.5, {"clients": 1}),
    "client_pause": (
        "a stop-the-world pause of clients (GC, SIGSTOP) in the middle of an operation",
        2.0, {"clients": 1}),
    "server_crash": (
        "redis-server is killed (SIGKILL) and restarted after `duration`; the OS page cache survives",
        0.5, {}),
    "power_loss": (
        "the machine loses power: what was not fsynced is lost; back after `duration`",
        1.0, {"tear_bytes": 0}),
    "mid_script_power_loss": (
        "power fails while a script or MULTI/EXEC runs (between two commands for naive)",
        1.0, {"within_s": 5.0}),
    "failover": (
        "the primary dies; after `duration` a replica that lacks the writes of the last "
        "replication lag is promoted",
        1.0, {"lag_ms": -1.0}),
    "partition": (
        "clients are cut from the primary: connections refused and reset",
        1.0, {}),
    "latency": (
        "added network delay and jitter on every request, each way",
        2.0, {"delay_ms": 20.0, "jitter_ms": 5.0}),
    "reset_peer": (
        "connections are reset after the request reached the server: applied, reply lost",
        1.0, {"probability": 0.5}),
    "blackhole": (
        "requests vanish without an answer; clients time out",
        1.0, {}),
}


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Any:
        return self.params.get(name, FAULT_KINDS[self.kind][2][name])

    @property
    def end(self) -> float:
        return self.at + self.duration

    def to_dict(self) -> dict:
        return {"kind": self.kind, "at": round(self.at, 9), "duration": self.duration,
                "params": {name: self.param(name) for name in FAULT_KINDS[self.kind][2]}}


@dataclass(frozen=True)
class FaultRate:
    kind: str
    per_minute: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)


def draw_schedule(rates: list[FaultRate], span_s: float, seed: int) -> list[Fault]:
    """A Poisson process per kind over the trace's span, seeded by the run."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA17]))
    faults = []
    for rate in rates:
        t = 0.0
        while rate.per_minute > 0:
            t += rng.exponential(60.0 / rate.per_minute)
            if t >= span_s:
                break
            faults.append(Fault(rate.kind, t, rate.duration, dict(rate.params)))
    return sorted(faults, key=lambda fault: (fault.at, fault.kind))
