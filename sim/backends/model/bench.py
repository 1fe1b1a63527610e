"""`countdrift bench`: how fast the simulator runs, against bare SimPy.

Prints the simulated Redis commands executed per wall second for each
strategy, next to the rate of a minimal SimPy loop of timeouts measured in
the same run on the same core, and their ratio. The ratio is what to compare
across machines and commits; the absolute rates vary with the machine's load.
"""
from __future__ import annotations

import argparse
import time

import simpy

from sim.backends.model.driver import SimDriver
from sim.backends.model.target import make_server
from sim.heap import begin_run
from sim.scenario import load
from sim.traffic import generate
from strategies import make_strategy


def bare_simpy_rate(events: int, processes: int) -> float:
    """Timeouts per wall second of `processes` SimPy processes that only sleep."""
    env = simpy.Environment()
    per_process = events // processes

    def sleeper(env: simpy.Environment, period: float):
        for _ in range(per_process):
            yield env.timeout(period)

    for index in range(processes):
        env.process(sleeper(env, 0.001 + index * 1e-6))
    started = time.perf_counter()
    env.run()
    return per_process * processes / (time.perf_counter() - started)


def time_structure(operations: int, processes: int) -> tuple[int, float]:
    """The driver's structure with nothing in it, timed: a SimPy process per
    client resuming a client loop; per operation, a pacing timeout (an open
    loop's client waits for the operation's start) and a strategy's
    generator sending one command, which updates a dict, in one round trip
    (a timeout). No history, server queue, network, connection or retry.
    Returns (operations done, wall seconds)."""
    env = simpy.Environment()
    store: dict[str, int] = {}
    done = 0

    def operation(op: int):
        yield ("INCRBY", f"user:{op % 1000}", 1)

    def client_loop(ops: range):
        for op in ops:
            yield None   # the pacing sleep
            steps, reply = operation(op), None
            try:
                while True:
                    reply = yield steps.send(reply)
            except StopIteration:
                pass

    def client(ops: range):
        nonlocal done
        loop, reply = client_loop(ops), None
        while True:
            try:
                request = loop.send(reply)
            except StopIteration:
                return
            if request is None:
                yield env.timeout(0.0005)
                continue
            reply = store[request[1]] = store.get(request[1], 0) + request[2]
            yield env.timeout(0.0001)
            done += 1

    for index in range(processes):
        env.process(client(range(index, operations, processes)))
    started = time.perf_counter()
    env.run()
    return done, time.perf_counter() - started


def main(args: argparse.Namespace) -> int:
    scenario = load(args.scenario)
    names = args.strategies   # checked by the command line
    trace = generate(scenario.traffic, scenario.seed)
    print(f"scenario {scenario.name}: {len(trace.t)} operations, {trace.deliveries()} deliveries, "
          f"{scenario.clients.count} clients")
    bare = bare_simpy_rate(args.events, scenario.clients.count)
    print(f"bare SimPy: {bare:,.0f} timeouts per wall second ({scenario.clients.count} processes)")
    operations, seconds = time_structure(args.events // 2, scenario.clients.count)
    floor = operations / seconds
    print(f"the driver's structure alone (per operation a pacing timeout and one round trip of one command, "
          f"no model): {floor:,.0f} commands per wall second, ratio {floor / bare:.3f}")
    print("requests: as clients sent them (an EVALSHA is one); commands: as INFO commandstats\n"
          "counts them (the redis.call commands inside a script count too)")
    print(f"{'strategy':<15}{'wall s':>7}{'requests/s':>12}{'ratio':>7}{'commands/s':>12}{'ratio':>7}")
    for name in names:
        begin_run()
        driver = SimDriver(trace, make_strategy(name, **scenario.strategy_options.get(name, {})),
                           scenario.clients, make_server(scenario.server), timeline_points=0)
        started = time.perf_counter()
        driver.run()
        wall = time.perf_counter() - started
        requests, commands = driver.server.requests / wall, driver.server.commands / wall
        print(f"{name:<15}{wall:>7.2f}{requests:>12,.0f}{requests / bare:>7.3f}"
              f"{commands:>12,.0f}{commands / bare:>7.3f}")
    return 0
