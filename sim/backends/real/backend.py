"""The real backend: redis-server processes the harness starts itself, with
network faults through a toxiproxy-server, on 127.0.0.1.

Each strategy's run gets a fresh deployment (a primary, the scenario's
replicas, a proxy per virtual client): nothing carries over between runs,
and everything is stopped by PID when the run ends, fails or is
interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time

from sim.backend import Backend, BackendRefused, CostTarget, Deployment, Execution, Progress
from sim.backends.real import event_loop
from sim.backends.real.deployment import Servers
from sim.backends.real.driver import RealDriver
from sim.backends.real.nemesis import RealNemesis
from sim.backends.real.processes import ProcessError, find_binary
from sim.backends.real.routes import ClientRoutes
from sim.backends.real.toxics import Toxics
from sim.faults import SPECS, Fault, strikes_network
from sim.nemesis import StallTarget, ack_log
from sim.scenario import Scenario
from sim.traffic import Trace
from sim.workload import most_workers
from strategies.base import Strategy

MAX_SPAN_S = 3600


def _waits() -> int:
    """The times this thread (the event loop's) has blocked so far: its
    voluntary context switches, each a wait in epoll that ended in a wake-up."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


def missing_programs(*also: tuple[str, str]) -> str | None:
    """What this machine lacks to run real servers, or None."""
    try:
        for name, variable in (("redis-server", "COUNTDRIFT_REDIS_SERVER"),
                               ("toxiproxy-server", "COUNTDRIFT_TOXIPROXY"), *also):
            find_binary(name, variable)
    except ProcessError as missing:
        return str(missing)
    return None


class RedisDeployment(Deployment):
    def __init__(self, scenario: Scenario, schedule: list[Fault]) -> None:
        self.scenario = scenario
        self.schedule = schedule
        server = scenario.server
        self.servers = Servers(server.appendonly, server.appendfsync, server.rdb_interval_s,
                               replicas=server.replicas, clients=scenario.clients.count + most_workers(scenario),
                               replication_lag_ms=server.replication_lag_ms,
                               client_proxies=strikes_network(schedule),
                               min_replicas_to_write=server.min_replicas_to_write,
                               min_replicas_max_lag=server.min_replicas_max_lag, sentinel=scenario.sentinel)

    def __enter__(self) -> "RedisDeployment":
        self.servers.__enter__()
        return self

    def close(self) -> None:
        self.servers.close()

    def run(self, strategy: Strategy, trace: Trace, progress: Progress | None) -> Execution:
        self.servers.wait_for_replicas()
        server_before = self._server_cpu()
        started, driver_cpu, waits = time.perf_counter(), time.process_time(), _waits()
        driver, nemesis = event_loop.run(self._run(strategy, trace, progress))
        wall = time.perf_counter() - started
        driver_cpu, waits = time.process_time() - driver_cpu, _waits() - waits
        server_after = self._server_cpu()
        counters = driver.counters()
        own = driver.strategy_figures()
        info = self.servers.primary.client().info("commandstats")
        return Execution(
            history=driver.history, timeline=driver.timeline, faults=nemesis.records(), counters=counters,
            reconnects=driver.reconnects, script_loads=driver.script_loads, noscript=driver.noscript,
            operations_cut_by_client_crash=driver.loop.crashed_operations, wait_replies=driver.loop.wait_replies,
            workers=driver.worker_stats.as_dict(len(driver.workers), driver.loop.lost_in_buffer),
            figures={
                **({"strategy_figures": own} if own else {}),
                # INFO commandstats of the last primary (a restart or a failover resets it)
                "redis_commands": sum(stats["calls"] for stats in info.values()),
                "resets_missed": driver.resets_missed,
                "client_path": "toxiproxy" if self.servers.proxied else "direct",
                # How busy the primary was: near 1, Redis bounds the run; well below, the harness does
                # (None when the primary died or changed during the run).
                "server_cpu_share": (round((server_after[1] - server_before[1]) / wall, 3)
                                     if server_before[0] == server_after[0] and wall > 0 else None),
                # How busy the driver's process was (the nemesis's work included); near 1, it bounds the run.
                "driver_cpu_share": round(driver_cpu / wall, 3) if wall > 0 else None,
                "driver_requests": driver.requests_sent,
                "driver_commands": driver.commands_sent,
                "driver_elements": driver.elements_read,
                # How often the event loop found nothing to do and slept in epoll (each time it pays a
                # wake-up), and how many timed waits the clients made: `countdrift calibrate` prices both.
                "driver_wakes": waits,
                "driver_sleeps": driver.sleeps,
                "wall_seconds": round(wall, 3),
            })

    def _server_cpu(self) -> tuple[str, float]:
        """The primary process's run id and CPU seconds so far."""
        info = self.servers.primary.client().info("all")
        return info["run_id"], float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def _run(self, strategy: Strategy, trace: Trace, progress: Progress | None):
        scenario, servers = self.scenario, self.servers
        acks = ack_log(scenario.server, scenario.sentinel, self.schedule)
        target = StallTarget()
        async with Toxics(servers.toxiproxy.port) as toxics:
            routes = ClientRoutes(servers, toxics)
            driver = RealDriver(trace, strategy, scenario.clients, routes, scenario.run.timeline_points,
                                progress=progress, paced=scenario.run.load == "open", acks=acks, target=target,
                                seed=trace.seed, toxics=toxics,
                                proxies=[proxy.name for proxy in servers.client_proxies],
                                think_s=scenario.run.think_time_ms / 1000.0)
            nemesis = RealNemesis(driver, servers, toxics, routes, self.schedule, trace.seed, scenario.server, acks,
                                  target)
            try:
                await driver.run(tuple(nemesis.coroutines()))
            finally:
                if servers.sentinels is not None:
                    await servers.sentinels.close_connections()
        return driver, nemesis


class ClusterDeployment(Deployment):
    """A Redis Cluster (sim/backends/real/cluster.py) for one strategy's run:
    the same driver with a cluster-aware connection per client, and the
    nemesis with the server faults aimed at one shard (cluster_nemesis.py)."""

    def __init__(self, scenario: Scenario, schedule: list[Fault]) -> None:
        from sim.backends.real.cluster import ClusterServers

        self.scenario = scenario
        self.schedule = schedule
        server = scenario.server
        self.servers = ClusterServers(server.cluster_primaries, server.cluster_replicas_per_primary,
                                      server.appendonly, server.appendfsync, server.rdb_interval_s,
                                      min_replicas_to_write=server.min_replicas_to_write,
                                      min_replicas_max_lag=server.min_replicas_max_lag,
                                      client_proxies=strikes_network(schedule),
                                      clients=scenario.clients.count + most_workers(scenario),
                                      node_timeout_ms=server.cluster_node_timeout_ms,
                                      bus_relay=any(fault.kind == "minority_partition" for fault in schedule))

    def __enter__(self) -> "ClusterDeployment":
        self.servers.__enter__()
        return self

    def close(self) -> None:
        self.servers.close()

    def run(self, strategy: Strategy, trace: Trace, progress: Progress | None) -> Execution:
        started = time.perf_counter()
        driver, nemesis, routes = event_loop.run(self._run(strategy, trace, progress))
        wall = time.perf_counter() - started
        counters = driver.counters()
        own = driver.strategy_figures()
        shard_commands = {}
        for index, primary in enumerate(self.servers.primaries):   # named as the simulation names its shards
            info = primary.client().info("commandstats")
            shard_commands[f"shard{index}"] = sum(stats["calls"] for stats in info.values())
        return Execution(
            history=driver.history, timeline=driver.timeline, faults=nemesis.records(), counters=counters,
            reconnects=driver.reconnects, script_loads=driver.script_loads, noscript=driver.noscript,
            operations_cut_by_client_crash=driver.loop.crashed_operations, wait_replies=driver.loop.wait_replies,
            workers=driver.worker_stats.as_dict(len(driver.workers), driver.loop.lost_in_buffer),
            figures={**({"strategy_figures": own} if own else {}), "topology": "cluster",
                     "redis_commands": sum(shard_commands.values()),
                     "shard_commands": shard_commands,
                     "client_path": "toxiproxy" if self.servers.proxied else "direct",
                     "resets_missed": driver.resets_missed,
                     "wall_seconds": round(wall, 3)})

    async def _run(self, strategy: Strategy, trace: Trace, progress: Progress | None):
        from sim.backends.real.cluster import ClusterRoutes
        from sim.backends.real.cluster_nemesis import ClusterNemesis
        from sim.cluster import SlotMap, request_shards

        scenario = self.scenario
        acks = ack_log(scenario.server, scenario.sentinel, self.schedule)
        shards = scenario.server.cluster_primaries
        slots = SlotMap.even(shards)
        acks.locate = lambda request: request_shards(request, slots, shards)   # a fault on one shard counts its writes
        target = StallTarget()
        routes = await asyncio.to_thread(ClusterRoutes, self.servers)
        async with contextlib.AsyncExitStack() as stack:
            toxics = None
            if self.servers.toxiproxy is not None:   # network faults: each client reaches each node by a proxy
                toxics = await stack.enter_async_context(Toxics(self.servers.toxiproxy.port))
            driver = RealDriver(trace, strategy, scenario.clients, routes, scenario.run.timeline_points,
                                progress=progress, paced=scenario.run.load == "open", acks=acks, target=target,
                                seed=trace.seed, toxics=toxics, proxies=routes.proxies(),
                                think_s=scenario.run.think_time_ms / 1000.0)
            nemesis = ClusterNemesis(driver, self.servers, toxics, routes, self.schedule, trace.seed, scenario.server,
                                     acks, target)
            await driver.run(tuple(nemesis.coroutines()))
        return driver, nemesis, routes


class RedisBackend(Backend):
    name = "redis"
    summary = ("real redis-server processes on 127.0.0.1 (a primary, or a Redis Cluster), network faults "
               "through toxiproxy-server")

    def refuse(self, scenario: Scenario) -> str | None:
        span = scenario.traffic.messages / scenario.traffic.message_rate
        if span > MAX_SPAN_S:
            return (f"it replays the trace in real time, and this one lasts about {span:,.0f} s "
                    f"(traffic.messages / traffic.message_rate); at most {MAX_SPAN_S:,} s")
        if scenario.server.topology == "cluster":
            if any(SPECS[fault.kind].network for fault in (*scenario.faults, *scenario.fault_rates)):
                return missing_programs()
            try:   # toxiproxy only for network faults
                find_binary("redis-server", "COUNTDRIFT_REDIS_SERVER")
            except ProcessError as missing:
                return str(missing)
            return None
        if scenario.sentinel.enabled:
            return missing_programs(("redis-sentinel", "COUNTDRIFT_REDIS_SENTINEL"))
        return missing_programs()

    def deploy(self, scenario: Scenario, schedule: list[Fault]) -> Deployment:
        if scenario.server.topology == "cluster":
            return ClusterDeployment(scenario, schedule)
        return RedisDeployment(scenario, schedule)

    def cost_target(self, strategy: Strategy) -> CostTarget:
        missing = missing_programs()
        if missing:
            raise BackendRefused(f"cost on real servers: {missing}")
        from sim.backends.real.cost import RedisCostTarget
        return RedisCostTarget(strategy)

    def bench(self, args: argparse.Namespace) -> int:
        from sim.backends.real.bench import main
        return main(args)

    def stop_all(self) -> None:
        from sim.backends.real.processes import REGISTRY

        REGISTRY.stop_all()

    def measure_service(self, requests: int) -> dict:
        from sim.backends.real.service import measure

        missing = missing_programs(("redis-benchmark", "COUNTDRIFT_REDIS_BENCHMARK"))
        if missing:
            raise BackendRefused(f"calibrate needs real servers: {missing}")
        return measure(requests)
