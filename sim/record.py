"""One strategy's entry in results.json, built alike for every backend."""
from __future__ import annotations

from sim.backend import Execution
from sim.checker import Drift
from sim.metrics import performance
from sim.scenario import Scenario
from sim.traffic import DELIVER, Trace
from strategies.base import Strategy


def recovery(timeline: list[dict], faults: list[dict]) -> list[dict]:
    """For each fault, from the moment it struck until the next one struck:
    the drift just before it, the peak after it, and how long after the fault
    was undone the drift came back down to where it was (None: not before the
    next fault or the run's end). A fault that did not strike has None for all."""
    struck = [fault["effects"]["struck_at"] for fault in faults]
    out = []
    for index, fault in enumerate(faults):
        start = struck[index]
        entry = {"kind": fault["kind"], "at": fault["at"], "struck_at": start}
        if start is None:
            out.append({**entry, "drift_before": None, "peak_drift": None, "recovered_after_s": None})
            continue
        end = fault["effects"]["ended_at"]
        end = start + fault["duration"] if end is None else end
        following = [t for t in struck[index + 1:] if t is not None and t > start]
        until = min(following) if following else float("inf")
        before = [point["abs_drift_sum"] for point in timeline if point["t"] <= start]
        baseline = before[-1] if before else 0
        window = [point for point in timeline if start < point["t"] <= until]
        peak = max((point["abs_drift_sum"] for point in window), default=baseline)
        recovered = None
        if peak > baseline:
            for point in window:
                if point["t"] >= end and point["abs_drift_sum"] <= baseline:
                    recovered = round(point["t"] - end, 6)
                    break
        else:
            recovered = 0.0
        out.append({**entry, "drift_before": baseline, "peak_drift": peak, "recovered_after_s": recovered})
    return out


def run_record(scenario: Scenario, trace: Trace, strategy: Strategy, execution: Execution, drift: Drift) -> dict:
    """The part of a run's results that every backend reports alike."""
    history = execution.history
    faults = sorted(execution.faults, key=lambda fault: (fault["at"], fault["kind"]))
    return {
        "strategy": strategy.name,
        "options": {**strategy.options, "retries": scenario.clients.retries,
                    "backoff_ms": scenario.clients.backoff_ms, "timeout_ms": scenario.clients.timeout_ms,
                    "appendfsync": scenario.server.appendfsync if scenario.server.appendonly else "off",
                    "load": scenario.run.load, "clients": scenario.clients.count,
                    **({"think_time_ms": scenario.run.think_time_ms} if scenario.run.load == "closed" else {})},
        "messages": int((trace.kind == DELIVER).sum()),
        **performance(trace, history, scenario.run.load == "open"),
        "faults": faults,
        "drift": drift.as_dict(),
        "recovery": recovery(execution.timeline, faults),
        "outcomes": history.outcomes(),
        "retries": history.retries,
        "ambiguous": history.ambiguous,
        "errors": sum(history.errors.values()),
        "errors_by_kind": dict(sorted(history.errors.items())),
        "reconnects": execution.reconnects,
        "script_loads": execution.script_loads,
        "noscript": execution.noscript,
        "operations_cut_by_client_crash": execution.operations_cut_by_client_crash,
        "wait_replies": {str(replicas): count for replicas, count in sorted(execution.wait_replies.items())},
        **({"workers": execution.workers} if execution.workers else {}),
        "timeline": execution.timeline,
        **execution.figures,
    }
