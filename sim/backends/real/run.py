"""One strategy's run on real redis-server processes."""
from __future__ import annotations

import time

import uvloop

from sim.backends.real.deployment import Deployment
from sim.backends.real.driver import RealDriver
from sim.backends.real.nemesis import RealNemesis
from sim.faults import Fault
from sim.runner import ProgressFactory, run_record
from sim.scenario import Scenario
from sim.traffic import Trace
from strategies import make_strategy


def run_strategy_on_redis(scenario: Scenario, trace: Trace, name: str, schedule: list[Fault],
                          progress: ProgressFactory | None = None, direct: bool = False) -> dict:
    """A fresh deployment for each strategy: nothing carries over between them."""
    strategy = make_strategy(name, **scenario.strategy_options.get(name, {}))
    server = scenario.server
    needs_replica = any(fault.kind == "failover" or (fault.kind == "server_crash" and server.auto_failover)
                        for fault in schedule)
    with Deployment(server.appendonly, server.appendfsync, server.rdb_interval_s,
                    replicas=server.replicas if needs_replica else 0) as deployment:
        driver = RealDriver(trace, strategy, scenario.clients,
                            deployment.direct_address if direct else deployment.client_address,
                            lambda: deployment.direct_address, scenario.run.timeline_points,
                            progress=progress(name, trace) if progress else None)
        nemesis = RealNemesis(driver, deployment, schedule, trace.seed, server.replication_lag_ms,
                              server.failover_detection_s if server.auto_failover else None)
        nemesis.add_replication_lag()
        deployment.wait_for_replicas()
        started = time.perf_counter()
        uvloop.run(driver.run(tuple(nemesis.coroutines())))
        wall = time.perf_counter() - started
        info = deployment.primary.client().info("commandstats")
        drift = driver.drift()
        record = run_record(scenario, trace, strategy, driver, nemesis.applied, drift)
    record.update({
        # INFO commandstats of the last primary (a restart resets it)
        "redis_commands": sum(stats["calls"] for stats in info.values()),
        "wall_seconds": round(wall, 3),
    })
    return record
