"""`countdrift bench --backend redis`: the asyncio driver's rate against one
local redis-server, next to redis-benchmark's for the same commands, measured
in the same run, as a ratio; and what the toxiproxy hop costs.

The workload is deliveries only, in 1:1 conversations (one recipient each):
for lua one EVALSHA of strategies/deliver.lua per delivery, for naive one
pipelined HINCRBY + INCRBY. The driver runs closed-loop (each virtual client
starts its next delivery as soon as the last one is done), like
redis-benchmark's clients, on uvloop as in every real run.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import time
from typing import Callable

from sim.backends.real import event_loop
from sim.backends.real.deployment import Servers
from sim.backends.real.driver import RealDriver
from sim.backends.real.processes import find_binary
from sim.backends.real.routes import FixedRoutes
from sim.scenario import ClientConfig
from sim.traffic import TrafficConfig, generate
from strategies import make_strategy
from strategies.lua import DELIVER


def redis_benchmark(port: int, clients: int, requests: int, command: list[str], pipeline: int = 1,
                    keyspace: int = 0) -> float:
    """Requests per second that redis-benchmark reports for ``command``
    (with ``keyspace``, each ``__rand_int__`` in it is a random number below it)."""
    binary = find_binary("redis-benchmark", "COUNTDRIFT_REDIS_BENCHMARK")
    spread = ["-r", str(keyspace)] if keyspace else []
    output = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", str(clients),
                             "-P", str(pipeline), *spread, "-q", *command], capture_output=True, text=True,
                            timeout=300, check=True).stdout
    found = re.findall(r"([\d.]+) requests per second", output)
    if not found:
        raise RuntimeError(f"unexpected redis-benchmark output: {output!r}")
    return float(found[-1])


def driver_rate(trace, name: str, address: Callable[[int], tuple[str, int]], direct: tuple[str, int],
                clients: int) -> float:
    """Deliveries per second of the asyncio driver, closed loop."""
    driver = RealDriver(trace, make_strategy(name), ClientConfig(count=clients, timeout_ms=5000),
                        FixedRoutes(address, direct), paced=False)
    started = time.perf_counter()
    event_loop.run(driver.run())
    return len(trace.t) / (time.perf_counter() - started)


def main(args: argparse.Namespace) -> int:
    clients, requests = args.clients, args.requests
    trace = generate(TrafficConfig(users=10_000, messages=args.operations, message_rate=1e6, groups=0,
                                   dm_per_user=2.0, read_probability=0.0, badge_probability=0.0), seed=1)
    print(f"{args.operations} deliveries (1 recipient each), {clients} clients; "
          f"redis-benchmark -n {requests} -c {clients}")
    print(f"{'strategy':<8}{'redis-benchmark/s':>19}{'driver direct/s':>17}{'ratio':>7}"
          f"{'driver via toxiproxy/s':>24}{'hop cost':>10}")
    with Servers(appendonly=False, clients=clients) as servers:
        port = servers.primary.port
        sha = servers.primary.client().script_load(DELIVER.source)
        reference = {
            "lua": redis_benchmark(port, clients, requests, ["EVALSHA", sha, "2", "unread:{u1}", "total:{u1}", "7"]),
            # naive sends HINCRBY and INCRBY in one round trip: two commands per delivery
            "naive": redis_benchmark(port, clients, requests, ["HINCRBY", "unread:{u1}", "7", "1"], pipeline=2) / 2,
        }
        for name in ("naive", "lua"):
            direct = driver_rate(trace, name, lambda index: servers.direct_address, servers.direct_address, clients)
            proxied = driver_rate(trace, name, servers.client_address, servers.direct_address, clients)
            print(f"{name:<8}{reference[name]:>19,.0f}{direct:>17,.0f}{direct / reference[name]:>7.2f}"
                  f"{proxied:>24,.0f}{1 - proxied / direct:>9.0%}")
    return 0
