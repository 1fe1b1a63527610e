"""`countdrift calibrate`: what one request costs a real redis-server on this
machine, in the terms of the simulation's service times.

Load comes from redis-benchmark (a C client that keeps the server busy,
where the Python driver could not), against a fresh redis-server the
harness starts; for each probe, the server's own CPU time (INFO's
used_cpu_user + used_cpu_sys) over its requests is the service time. The
simulation's costs are fitted from pairs of probes:

- ``request_us``: a round trip's fixed cost (read, parse, reply, write): PING;
- ``command_us``: each command a pipeline adds: HINCRBY 32 to a round trip against 1;
- ``script_us`` and ``script_call_us``: EVALSHA of a script that makes 8
  redis.call against one that makes 1, 32 to a round trip: a script costs
  what it does. HINCRBY and the scripts go to keys spread over 10,000
  names, as a scenario's users' are: over one key, a script's cost was
  half what a group's deliveries cost redis-server (Lua interns each new
  key name), and the simulation of big_groups ran 1.2-1.5x faster than
  the real servers;
- ``byte_ns``: each byte of a request: HSET of a 1,000-byte value against a 10-byte one;
- ``stream_read_us``, ``stream_ack_us``, ``stream_delete_us``: a stream
  entry as a queue's consumer handles it: read (XREADGROUP COUNT 100),
  acknowledged (XACK of 100 ids), deleted (XDEL of 100 ids), on a queue
  kept 1,000 entries long, each call less an XLEN's. Priced as a hash's field (0.07 us),
  a delivery's entry cost the simulated server a fraction of what it costs
  redis-server, and async_total on big_groups ran 2.5x faster simulated;
- ``fsync_always_us``: the wall-clock time ``appendfsync always`` adds to a
  write (the fsync holds the server; it is not CPU time): HINCRBY's rate
  with and without it.

``[driver]`` is the redis backend's own driver (one Python process for
every client), which bounds real capacity on a machine of a few cores, so
that the simulation can model it (`countdrift capacity --model-driver`):

- ``request_us``, ``command_us`` and ``element_us``: the driver process's
  CPU (user and system) per request and per command it sends, and per array
  item of the replies it reads (a stream read's entries and their fields,
  which the strategy walks too), fitted by least squares (none negative)
  over closed-loop runs of every strategy (different mixes of the three),
  and of the representative ones on one group of 1,000 (requests of 999
  commands: a command's cost told from a request's), on the direct path, at
  32 clients, where the driver is busy. Without the third, async_total's
  driver CPU was a third above the fit (1.81 s against 1.34) and its
  simulated capacity on big_groups, where a group's delivery queues a
  stream entry per member, 1.6x the real one;
- ``wake_us`` and ``server_wake_us``: what one client's round trips cost
  the driver's and the server's CPU beyond what they cost under load (the
  fitted ``request_us`` and ``command_us``; the simulated server's time
  with ``[server]``'s costs): a process that waits for the network pays this
  to wake up for each message, a busy one finds messages waiting. Measured
  with the driver itself, one client in a closed loop through four
  strategies (naive, lua, watch, lock), rather than with a bare loop of
  PINGs: the driver does more for each reply (the strategy's generator, the
  history) than such a loop, and one client paid about 15-40 us more per
  operation than a PING's split predicted (quick and hot_user, every
  strategy: the simulation was 1.22-1.36x faster at one client);
- ``rtt_us``: the rest of those runs' wall time, neither side's CPU: the
  kernel's loopback;
- ``sleep_us``: what a client's timed wait (a backoff) costs the driver
  (its timer, the extra turn of the client's task, the strategy's retry)
  beyond the request that follows it: from contended closed-loop runs
  (lock and watch, 8 and 16 clients on one conversation), their CPU less
  what their requests, commands and wake-ups cost (a wake-up is a wait in
  epoll: the loop thread's voluntary context switches), over their sleeps.
  A lock retry cost the driver about 15-25 us more than its one request.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from sim import backends
from sim.errors import UsageError
from sim.experiments.capacity import closed_loop
from sim.report.output import write_text
from sim.runner import run_scenario
from sim.scenario import SERVICE_KEYS, load_calibration, parse
from strategies import REPRESENTATIVE, STRATEGIES

# The traffic the driver probes replay: quick's mix (1:1 and groups up to
# 300, reads, badges), shorter.
DRIVER_TRAFFIC = """
name = "calibrate-driver"
seed = 42

[traffic]
users = 2000
messages = 20000
message_rate = 2000.0
dm_per_user = 3.0
groups = 120
max_group_size = 300
include_max_group = true
read_probability = 0.8
read_delay_mean_s = 0.5
badge_probability = 0.3
"""
DRIVER_CLIENTS = 32
# A group of 1,000 where every message goes: a request of 999 commands. Its
# runs (one per representative strategy) tell a command's cost from a
# request's, which the strategies' own mixes of the two left to chance: fits
# a few minutes apart put a command at 0 to 2.8 us, and big_groups' large
# pipelines moved with them.
BIG_GROUP_TRAFFIC = """
name = "calibrate-big-group"
seed = 42

[traffic]
users = 1000
messages = 150
message_rate = 2000.0
dm_per_user = 0.0
groups = 1
max_group_size = 1000
include_max_group = true
read_probability = 0.0
badge_probability = 0.0
"""
ONE_CLIENT_STRATEGIES = REPRESENTATIVE

# The traffic of the contended runs: hot_user's, two users in one
# conversation, shorter; watch WATCHes deliveries too.
CONTENDED_TRAFFIC = """
name = "calibrate-contended"
seed = 5

[traffic]
users = 2
messages = 15000
message_rate = 10000.0
dm_per_user = 1.0
groups = 0
read_probability = 0.6
read_delay_mean_s = 0.01
badge_probability = 0.3

[strategy_options.watch]
watch_deliveries = true
"""
CONTENDED_RUNS = tuple((name, clients) for name, cls in STRATEGIES.items() if cls.backs_off for clients in (8, 16))


def measure_one_client(server: dict, traffic: str = DRIVER_TRAFFIC,
                       strategies: tuple[str, ...] = ONE_CLIENT_STRATEGIES) -> dict:
    """One client in a closed loop through the real driver, each strategy:
    its round trips and commands, wall time, the driver's CPU and the
    server's; and the server's time in the simulation of the same runs
    (``server``'s costs, no wake-up), which counts the same round trips."""
    scenario = closed_loop(parse(Path("calibrate-driver.toml"), traffic), 1)
    simulated = dataclasses.replace(scenario, server=dataclasses.replace(
        scenario.server, **{key: server[key] for key in SERVICE_KEYS}))
    runs = {}
    for name in strategies:
        real = run_scenario(scenario, [name], backend=backends.REAL, explain=False)["runs"][0]
        model = run_scenario(simulated, [name], backend=backends.SIMULATION, explain=False)["runs"][0]
        runs[name] = {"requests": real["driver_requests"], "commands": real["driver_commands"],
                      "elements": real["driver_elements"], "wall_s": real["wall_seconds"],
                      "driver_cpu_s": round(real["driver_cpu_share"] * real["wall_seconds"], 4),
                      "server_cpu_s": round(real["server_cpu_share"] * real["wall_seconds"], 4),
                      "simulated_server_s": round(model["server_cpu_share"] * model["duration_s"], 4)}
    return runs


def idle_costs(one_client: dict, driver: dict) -> dict[str, float]:
    """One client's round trips split as the model charges them: each
    side's CPU under load, what each side spends waking up beyond it, and
    the loopback that neither side's CPU accounts for. With them the model
    gives one client the wall time measured, and a loaded driver and server
    the costs fitted under load."""
    runs = one_client.values()
    requests = sum(run["requests"] for run in runs)
    driver_loaded = sum(map(partial(loaded_cpu_us, driver), runs)) / 1e6
    wall, driver_cpu, server_cpu = (sum(run[key] for run in runs) for key in ("wall_s", "driver_cpu_s", "server_cpu_s"))
    server_loaded = sum(run["simulated_server_s"] for run in runs)
    per_request = 1e6 / requests
    return {"rtt_us": round(max(wall - driver_cpu - server_cpu, 0.0) * per_request, 3),
            "wake_us": round(max(driver_cpu - driver_loaded, 0.0) * per_request, 3),
            "server_wake_us": round(max(server_cpu - server_loaded, 0.0) * per_request, 3)}


def measure_driver(traffic: str = DRIVER_TRAFFIC, strategies: tuple[str, ...] = tuple(STRATEGIES),
                   big_group: str = BIG_GROUP_TRAFFIC, big_group_strategies: tuple[str, ...] = REPRESENTATIVE) -> dict:
    """The driver's CPU per request, per command and per reply item, from
    closed-loop runs: every strategy on the driver's traffic, and the
    representative ones on one big group."""
    runs = {}
    plans = ((traffic, strategies, ""), (big_group, big_group_strategies, " x1000"))
    for text, names, suffix in plans:
        scenario = closed_loop(parse(Path("calibrate-driver.toml"), text), DRIVER_CLIENTS)
        for name in names:
            run = run_scenario(scenario, [name], backend=backends.REAL, explain=False)["runs"][0]
            runs[name + suffix] = {"operations": run["operations"], "requests": run["driver_requests"],
                                   "commands": run["driver_commands"], "elements": run["driver_elements"],
                                   "cpu_s": round(run["driver_cpu_share"] * run["wall_seconds"], 4),
                                   "throughput_ops_per_s": run["throughput_ops_per_s"]}
    counts = np.array([[run[key] for key in LOADED_COUNTS] for run in runs.values()], dtype=float)
    cpu = np.array([run["cpu_s"] for run in runs.values()])
    costs = nnls(counts, cpu)[0]
    for run, fitted in zip(runs.values(), counts @ costs):
        run["fitted_cpu_s"] = round(float(fitted), 4)
    return {**{key: round(float(cost) * 1e6, 3) for key, cost in zip(LOADED_COSTS, costs)}, "runs": runs}


# What the driver's CPU is fitted on under load, and the costs fitted: a request, a command, a reply's array item.
LOADED_COUNTS = ("requests", "commands", "elements")
LOADED_COSTS = ("request_us", "command_us", "element_us")


def loaded_cpu_us(driver: dict, run: dict) -> float:
    """The driver CPU the loaded fit gives a run, in microseconds."""
    return sum(driver[cost] * run[count] for cost, count in zip(LOADED_COSTS, LOADED_COUNTS))


def measure_contended(traffic: str = CONTENDED_TRAFFIC,
                      runs: tuple[tuple[str, int], ...] = CONTENDED_RUNS) -> dict:
    """Closed-loop runs where clients back off often: each one's driver CPU,
    requests, commands, wake-ups and sleeps."""
    scenario = parse(Path("calibrate-contended.toml"), traffic)
    measured = {}
    for name, clients in runs:
        run = run_scenario(closed_loop(scenario, clients), [name], backend=backends.REAL,
                           explain=False)["runs"][0]
        measured[f"{name} x{clients}"] = {
            "requests": run["driver_requests"], "commands": run["driver_commands"],
            "elements": run["driver_elements"], "wakes": run["driver_wakes"],
            "sleeps": run["driver_sleeps"], "cpu_s": round(run["driver_cpu_share"] * run["wall_seconds"], 4),
            "throughput_ops_per_s": run["throughput_ops_per_s"]}
    return measured


def sleep_cost(contended: dict, driver: dict, wake_us: float) -> float:
    """Microseconds of driver CPU per sleep: what the contended runs cost
    beyond their requests, commands and wake-ups, over their sleeps."""
    rest = sum(run["cpu_s"] * 1e6 - loaded_cpu_us(driver, run) - wake_us * run["wakes"] for run in contended.values())
    sleeps = sum(run["sleeps"] for run in contended.values())
    return round(max(rest / sleeps, 0.0), 3) if sleeps else 0.0


def as_toml(calibration: dict) -> str:
    server = calibration["server"]
    lines = ["# countdrift calibration: what a request costs a redis-server, measured by `countdrift calibrate`.",
             f"# machine: {calibration['machine']} ({calibration['cpus']})",
             f"# redis-server {calibration['redis_version']}, {calibration['measured_at']}",
             f"# method: {calibration['method']}", "", "[server]"]
    lines += [f"{key} = {value}" for key, value in server.items()]
    lines += ["", "# what each probe measured (server CPU per round trip, and redis-benchmark's rate)"]
    for name, result in calibration["probes"].items():
        lines.append(f"# {name:<16} {result['cpu_us_per_round_trip']:>9.3f} us  {result['requests_per_s']:>11,.0f}/s")
    lines.append("# a queue's consumer: server CPU per call of 100 entries (a queue 1,000 long), and an XLEN's")
    for name, result in calibration["stream_probes"].items():
        lines.append(f"# {name:<16} {result['cpu_us_per_call']:>9.3f} us  (XLEN {result['xlen_us_per_call']:.3f} us)")
    return "\n".join(lines) + "\n"


DRIVER_HEADER = "# the redis backend's driver"


def driver_toml(one_client: dict, driver: dict, contended: dict) -> str:
    idle = idle_costs(one_client, driver)
    sleep_us = sleep_cost(contended, driver, idle["wake_us"])
    lines = [f"{DRIVER_HEADER} (one Python process, every client), measured by `countdrift calibrate`,",
             f"# {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}: "
             "`countdrift capacity --model-driver` models it in the simulation", "[driver]",
             *(f"{key} = {value}" for key, value in idle.items()),
             *(f"{key} = {driver[key]}" for key in LOADED_COSTS), f"sleep_us = {sleep_us}", "",
             "# wake_us, server_wake_us: what the driver's and the server's CPU spent per round trip beyond their "
             "cost under load, rtt_us the rest of the wall time, with one client in a closed loop:",
             f"# {'strategy':<16}{'requests':>10}{'wall s':>9}{'driver s':>10}{'server s':>10}{'simulated':>11}"]
    for name, run in one_client.items():
        lines.append(f"# {name:<16}{run['requests']:>10,}{run['wall_s']:>9.3f}{run['driver_cpu_s']:>10.3f}"
                     f"{run['server_cpu_s']:>10.3f}{run['simulated_server_s']:>11.3f}")
    lines += [f"# request_us, command_us, element_us: the driver's CPU, least squares (none negative) over closed-loop "
              f"runs of every strategy ({DRIVER_CLIENTS} clients, direct path):",
              f"# {'strategy':<16}{'requests':>10}{'commands':>10}{'elements':>10}{'cpu s':>9}{'fitted s':>10}"
              f"{'ops/s':>9}"]
    for name, run in driver["runs"].items():
        lines.append(f"# {name:<16}{run['requests']:>10,}{run['commands']:>10,}{run['elements']:>10,}"
                     f"{run['cpu_s']:>9.3f}{run['fitted_cpu_s']:>10.3f}{run['throughput_ops_per_s']:>9,.0f}")
    lines += ["# sleep_us: the driver's CPU per sleep beyond its requests, commands and wake-ups (the loop "
              "thread's voluntary context switches, at wake_us each), contended closed-loop runs:",
              f"# {'run':<16}{'requests':>10}{'commands':>10}{'wakes':>9}{'sleeps':>9}{'cpu s':>9}{'ops/s':>9}"]
    for name, run in contended.items():
        lines.append(f"# {name:<16}{run['requests']:>10,}{run['commands']:>10,}{run['wakes']:>9,}{run['sleeps']:>9,}"
                     f"{run['cpu_s']:>9.3f}{run['throughput_ops_per_s']:>9,.0f}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    if args.driver_only:
        try:
            text = out.read_text()
        except OSError as error:
            raise UsageError(f"--driver-only: {out} must be a calibration file to update ({error.strerror})") from None
        text = text.split(f"\n{DRIVER_HEADER}")[0].rstrip("\n") + "\n"
        server = load_calibration(out)
    else:
        calibration = backends.get(backends.REAL).measure_service(args.requests)
        text, server = as_toml(calibration), calibration["server"]
    driver = measure_driver()
    text += "\n" + driver_toml(measure_one_client(server), driver, measure_contended())
    write_text(out, text)
    print(text, end="")
    print(f"calibration: {out} ({time.perf_counter() - started:.0f} s)")
    return 0
