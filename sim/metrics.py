"""Throughput and latency from a history.

Open loop, latency is measured from each operation's intended start (its
time in the trace), not from when a client got round to sending it: a
stalled server or a backlogged client shows up as latency instead of
silently thinning the load (no coordinated omission). Closed loop, an
operation has no intended start but its invocation, and throughput is what
the clients achieved.
"""
from __future__ import annotations

import numpy as np

from sim.checker import Drift
from sim.history import NOT_RUN, History
from sim.traffic import KIND_NAMES, LOGIN, Trace


def latency_summary(latency_s: np.ndarray) -> dict[str, float]:
    if len(latency_s) == 0:
        return {"p50": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    p50, p99, p999 = np.percentile(latency_s, [50, 99, 99.9]) * 1000.0
    return {"p50": round(float(p50), 6), "p99": round(float(p99), 6),
            "p999": round(float(p999), 6), "max": round(float(latency_s.max()) * 1000.0, 6)}


def performance(trace: Trace, history: History, open_loop: bool = True) -> dict:
    ran = history.outcome != NOT_RUN
    began = trace.t if open_loop else history.invoke
    latency = history.complete[ran] - began[ran]
    start = float(np.nanmin(began)) if ran.any() else 0.0
    end = float(np.nanmax(history.complete)) if ran.any() else start
    duration = max(end - start, 1e-9)
    kinds = trace.kind[ran]
    return {
        "operations": int(ran.sum()),
        "duration_s": round(duration, 9),
        "throughput_ops_per_s": round(float(ran.sum()) / duration, 6),
        "latency_ms": latency_summary(latency),
        "latency_ms_by_kind": {name: latency_summary(latency[kinds == code])
                               for code, name in enumerate(KIND_NAMES) if code != LOGIN or (kinds == code).any()},
    }


def timeline_point(at: float, drift: Drift, history: History, previous: dict | None) -> dict:
    """One point of a run's timeline: operations done by ``at``, the rate
    since the previous point, and the drift then."""
    ops = history.completed_by(at)
    previous_ops, previous_at = (previous["ops"], previous["t"]) if previous else (0, 0.0)
    return {"t": round(at, 9), "ops": ops,
            "ops_per_s": round((ops - previous_ops) / max(at - previous_at, 1e-9), 3),
            "users_inconsistent": drift.users_inconsistent, "abs_drift_sum": drift.abs_drift_sum}
