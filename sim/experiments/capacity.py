"""`countdrift capacity`: the most a strategy sustains under a latency objective.

Closed loop with more and more clients: each client starts its next
operation as soon as its last one is done, so a run measures what the
strategy achieves at that concurrency, and p99 latency grows as the server
queues. A strategy's capacity is the highest throughput among the client
counts whose p99 stayed under the objective. A closed loop is used rather
than a search over the offered rate of an open loop because every point is
a stable measurement (an open loop above capacity only grows a backlog, and
the run's length decides how bad p99 gets), and because more clients is how
a real deployment adds load. The ramp stops once p99 is over the objective
at two counts in a row, or two doublings in a row bring no throughput 2%
above the best so far (one is not enough: a real point can dip by chance).
Runs are without faults and without replicas (see :func:`closed_loop`): capacity is what the strategy costs the primary,
drift is measured by `countdrift run`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from sim import __version__, backends
from sim.runner import ProgressFactory, run_scenario
from sim.scenario import Scenario, with_driver
from sim.traffic import generate

CAPACITY_SCHEMA = 1
RAMP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FLAT = 0.02   # a doubling of the clients that adds less than this is saturation
SHORT_S = 1.0  # a real point shorter than this is mostly noise


def closed_loop(scenario: Scenario, clients: int) -> Scenario:
    """The scenario without its faults, closed loop, with ``clients``
    clients, against its primary alone: its replicas (and Sentinel) are left
    out, because on one machine they compete with the driver and the primary
    for the cores. Measured here, alternating, at 16 clients on quick (median of 3),
    a replica took 51% off naive's throughput, 40% off lua's and 32% off
    lock's: that is what a machine of two cores costs, not what a strategy does."""
    return dataclasses.replace(
        scenario, faults=(), fault_rates=(),
        clients=dataclasses.replace(scenario.clients, count=clients),
        server=dataclasses.replace(scenario.server, replicas=0, min_replicas_to_write=0),
        sentinel=dataclasses.replace(scenario.sentinel, enabled=False),
        run=dataclasses.replace(scenario.run, load="closed", timeline_points=0))


def ramp(scenario: Scenario, strategy: str, backend: str, slo_p99_ms: float, counts: Iterable[int],
         progress: ProgressFactory | None = None) -> dict:
    """One strategy's points, and its capacity under the objective."""
    trace = generate(scenario.traffic, scenario.seed)
    points: list[dict] = []
    over = stale = 0
    best_so_far = 0.0
    for count in counts:
        run = run_scenario(closed_loop(scenario, count), [strategy], trace, progress, backend,
                           explain=False)["runs"][0]
        point = {"clients": count, "throughput_ops_per_s": run["throughput_ops_per_s"],
                 "p50_ms": run["latency_ms"]["p50"], "p99_ms": run["latency_ms"]["p99"],
                 "errors": run["errors"], "duration_s": run["duration_s"],
                 "retries_per_op": round(run["retries"] / max(run["operations"], 1), 4)}
        for share in ("server_cpu_share", "driver_cpu_share"):   # how busy Redis and the clients' process were
            if run.get(share) is not None:
                point[share] = run[share]
        if run.get("driver_wakes") is not None:   # how often the clients' process was idle when an event came
            point["driver_wakes_per_op"] = round(run["driver_wakes"] / max(run["operations"], 1), 4)
        points.append(point)
        over = over + 1 if point["p99_ms"] > slo_p99_ms else 0
        stale = stale + 1 if point["throughput_ops_per_s"] < best_so_far * (1 + FLAT) else 0
        best_so_far = max(best_so_far, point["throughput_ops_per_s"])
        if over >= 2 or stale >= 2:
            break
    within = [point for point in points if point["p99_ms"] <= slo_p99_ms]
    best = max(within, key=lambda point: point["throughput_ops_per_s"], default=None)
    return {"capacity_ops_per_s": best["throughput_ops_per_s"] if best else 0.0,
            "clients": best["clients"] if best else None, "points": points}


def measure(scenario: Scenario, strategies: Iterable[str], backend: str, slo_p99_ms: float,
            counts: Iterable[int] = RAMP, progress: ProgressFactory | None = None,
            driver: dict[str, float] | None = None) -> dict:
    """Every strategy's ramp; ``driver`` (the simulation only) models the
    redis backend's driver, from a calibration's ``[driver]``."""
    counts = tuple(counts)
    document = {"capacity_schema": CAPACITY_SCHEMA, "tool_version": __version__, "backend": backend,
                "deterministic": backends.get(backend).deterministic,
                "scenario": {"name": scenario.name, "path": str(scenario.path), "sha256": scenario.sha256},
                "seed": scenario.seed, "slo_p99_ms": slo_p99_ms, "load": "closed"}
    if driver is not None:
        document["driver_model"] = driver
        scenario = with_driver(scenario, driver)
    document["strategies"] = {name: ramp(scenario, name, backend, slo_p99_ms, counts, progress)
                              for name in strategies}
    return document


def format_capacity(document: dict) -> str:
    modelled = " (the redis backend's driver modelled)" if "driver_model" in document else ""
    lines = [f"capacity of {document['scenario']['name']} on {document['backend']}{modelled}: the highest "
             f"throughput with p99 <= {document['slo_p99_ms']:g} ms (closed loop, no faults, the primary alone)",
             f"{'strategy':<16}{'capacity ops/s':>15}{'clients':>9}{'redis busy':>12}{'driver busy':>13}"
             "   points (clients: ops/s, p99 ms)"]
    for name, result in document["strategies"].items():
        points = "  ".join(f"{p['clients']}: {p['throughput_ops_per_s']:,.0f}, {p['p99_ms']:.2f}"
                           for p in result["points"])
        chosen = next((p for p in result["points"] if p["clients"] == result["clients"]), {})
        busy = [f"{chosen[share]:.0%}" if share in chosen else "-"
                for share in ("server_cpu_share", "driver_cpu_share")]
        lines.append(f"{name:<16}{result['capacity_ops_per_s']:>15,.0f}{str(result['clients']):>9}{busy[0]:>12}"
                     f"{busy[1]:>13}   {points}")
    lines.append("redis busy, driver busy: Redis's CPU time and the clients' process's over the run's time, at the "
                 "capacity point; the one near 100% bounds the throughput (driver: - when not modelled)")
    if not document["deterministic"]:
        short = min((p["duration_s"] for result in document["strategies"].values() for p in result["points"]),
                    default=SHORT_S)
        if short < SHORT_S:
            lines.append(f"warning: a point lasted {short:.2f} s; wall-clock points under {SHORT_S:g} s move a lot "
                         "between runs: give the scenario more traffic.messages")
    return "\n".join(lines)
