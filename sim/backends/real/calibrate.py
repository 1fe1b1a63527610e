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
  redis.call against one that makes 1: a script costs what it does;
- ``byte_ns``: each byte of a request: HSET of a 1,000-byte value against a 10-byte one;
- ``fsync_always_us``: the wall-clock time ``appendfsync always`` adds to a
  write (the fsync holds the server; it is not CPU time): HINCRBY's rate
  with and without it.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

from sim.backends.real.bench import redis_benchmark
from sim.backends.real.deployment import Servers

CLIENTS = 50
LOOP = ("for i = 1, tonumber(ARGV[1]) do redis.call('HINCRBY', KEYS[1], 'f', 1) end return 1")


def _cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def probe(servers: Servers, command: list[str], requests: int, pipeline: int = 1) -> dict:
    """Server CPU per round trip (microseconds) and requests per second for one probe."""
    client = servers.primary.client()
    before = _cpu(client)
    rate = redis_benchmark(servers.primary.port, CLIENTS, requests, command, pipeline)
    spent = _cpu(client) - before
    return {"command": " ".join(command[:1]), "pipeline": pipeline, "requests": requests,
            "cpu_us_per_round_trip": round(spent * 1e6 / (requests / pipeline), 4),
            "requests_per_s": rate}


def measure(requests: int) -> dict:
    with Servers(appendonly=False) as servers:
        client = servers.primary.client()
        sha = client.script_load(LOOP)
        probes = {
            "ping": probe(servers, ["PING"], requests),
            "hincrby": probe(servers, ["HINCRBY", "h", "f", "1"], requests),
            "hincrby_x32": probe(servers, ["HINCRBY", "h", "f", "1"], requests * 8, pipeline=32),
            "script_1_call": probe(servers, ["EVALSHA", sha, "1", "h", "1"], requests),
            "script_8_calls": probe(servers, ["EVALSHA", sha, "1", "h", "8"], requests),
            "hset_10_bytes": probe(servers, ["HSET", "s", "f", "x" * 10], requests),
            "hset_1000_bytes": probe(servers, ["HSET", "s", "f", "x" * 1000], requests),
        }
        version = client.info("server")["redis_version"]
    with Servers(appendonly=True, appendfsync="always") as servers:
        probes["hincrby_always"] = probe(servers, ["HINCRBY", "h", "f", "1"], requests // 4)
    cpu = {name: result["cpu_us_per_round_trip"] for name, result in probes.items()}
    command = (cpu["hincrby_x32"] - cpu["hincrby"]) / 31
    request = max(cpu["ping"], cpu["hincrby"] - command)
    call = (cpu["script_8_calls"] - cpu["script_1_call"]) / 7
    script = cpu["script_1_call"] - request - call
    byte = (cpu["hset_1000_bytes"] - cpu["hset_10_bytes"]) / 990
    fsync = 1e6 / probes["hincrby_always"]["requests_per_s"] - 1e6 / probes["hincrby"]["requests_per_s"]
    return {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": _cpus(), "redis_version": version,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": f"redis-benchmark -c {CLIENTS}, server CPU per round trip (INFO cpu)",
        "server": {"request_us": round(request, 3), "command_us": round(max(command, 0.001), 3),
                   "script_us": round(max(script, 0.001), 3), "script_call_us": round(max(call, 0.0), 3),
                   "byte_ns": round(max(byte * 1000, 0.0), 3), "fsync_always_us": round(max(fsync, 0.0), 3)},
        "probes": probes,
    }


def _cpus() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    calibration = measure(args.requests)
    text = as_toml(calibration)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(text)
    partial.replace(out)
    print(text, end="")
    print(f"calibration: {out} ({time.perf_counter() - started:.0f} s)")
    return 0
