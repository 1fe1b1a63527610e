"""What one request costs a real redis-server on this machine: the probes
`countdrift calibrate` fits the simulation's service times from
(sim/experiments/calibrate.py says how). redis-benchmark loads a fresh
redis-server the harness starts; the server's own CPU time (INFO's
used_cpu_user + used_cpu_sys) over a probe's requests is its service time.
"""
from __future__ import annotations

import datetime
import platform
from pathlib import Path

from sim.backends.real.bench import redis_benchmark
from sim.backends.real.deployment import Servers

CLIENTS = 50
ELEMENTS = 1000   # the fields of the hash whose HGETALL prices one element a command walks
# Commands and scripts are priced over keys spread like a scenario's users,
# not over one key: a script pays for each new key name it is handed (Lua
# interns it, and collects it later), which one key hides. Scripts are
# pipelined, like a group's deliveries, so that a round trip's own cost and
# its noise are shared by 32 of them.
KEYSPACE = 10_000
PIPELINE = 32
LOOP = ("for i = 1, tonumber(ARGV[1]) do redis.call('HINCRBY', KEYS[1], 'f', 1) end return 1")


SPREAD_KEY = "h:__rand_int__"
SPREAD_HINCRBY = ("HINCRBY", SPREAD_KEY, "f", "1")


def _cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def probe(servers: Servers, command: list[str], requests: int, pipeline: int = 1, keyspace: int = 0) -> dict:
    """Server CPU per round trip (microseconds) and requests per second for one probe."""
    client = servers.primary.client()
    before = _cpu(client)
    rate = redis_benchmark(servers.primary.port, CLIENTS, requests, command, pipeline, keyspace)
    spent = _cpu(client) - before
    return {"command": " ".join(command[:1]), "pipeline": pipeline, "keyspace": keyspace, "requests": requests,
            "cpu_us_per_round_trip": round(spent * 1e6 / (requests / pipeline), 4),
            "requests_per_s": rate}


STREAM_BATCH = 100   # entries a consumer reads, acknowledges and deletes at a time (async_total's default)
STREAM_BACKLOG = 1000   # entries waiting in the queue as it is drained: a consumer keeps its queue short


def stream_probes(servers: Servers, rounds: int) -> dict:
    """Server CPU per call of STREAM_BATCH entries as a queue's consumer
    handles them, on a queue kept STREAM_BACKLOG long (a long stream costs
    more per entry: deleting from one of 100,000 entries cost 2.6 us an
    entry here): each round appends a batch, then reads it (XREADGROUP
    COUNT), acknowledges it (XACK of its ids) and deletes it (XDEL of its
    ids), each call between two readings of the server's CPU, beside an
    XLEN so read (the round trip and the readings, taken off)."""
    client = servers.primary.client()
    stream, group = "probe:stream", "probe"
    client.execute_command("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")

    def append(count: int) -> None:
        pipeline = client.pipeline(transaction=False)
        for _ in range(count):
            pipeline.execute_command("XADD", stream, "*", "user", "1")
        pipeline.execute()

    append(STREAM_BACKLOG)
    spent = dict.fromkeys(("xlen", "xreadgroup_100", "xack_100", "xdel_100"), 0.0)

    def timed(name: str, *call) -> object:
        before = _cpu(client)
        reply = client.execute_command(*call)
        spent[name] += _cpu(client) - before
        return reply

    for _ in range(rounds):
        append(STREAM_BATCH)
        timed("xlen", "XLEN", stream)
        read = timed("xreadgroup_100", "XREADGROUP", "GROUP", group, "c", "COUNT", str(STREAM_BATCH), "STREAMS",
                     stream, ">")
        ids = [entry[0] for entry in read[0][1]]
        timed("xack_100", "XACK", stream, group, *ids)
        timed("xdel_100", "XDEL", stream, *ids)
    client.delete(stream)
    base = spent.pop("xlen") * 1e6 / rounds
    return {name: {"command": name.split("_")[0].upper(), "batch": STREAM_BATCH, "backlog": STREAM_BACKLOG,
                   "calls": rounds, "cpu_us_per_call": round(total * 1e6 / rounds, 3),
                   "xlen_us_per_call": round(base, 3)}
            for name, total in spent.items()}


def measure(requests: int) -> dict:
    with Servers(appendonly=False) as servers:
        client = servers.primary.client()
        sha = client.script_load(LOOP)
        client.execute_command("HSET", "wide", *(str(i) for pair in range(ELEMENTS) for i in (pair, pair)))
        probes = {
            "ping": probe(servers, ["PING"], requests),
            "hget_wide": probe(servers, ["HGET", "wide", "1"], requests // 4),
            "hgetall_wide": probe(servers, ["HGETALL", "wide"], requests // 4),
            "hincrby": probe(servers, [*SPREAD_HINCRBY], requests, keyspace=KEYSPACE),
            "hincrby_x32": probe(servers, [*SPREAD_HINCRBY], requests * 8, PIPELINE, KEYSPACE),
            "script_1_call_x32": probe(servers, ["EVALSHA", sha, "1", SPREAD_KEY, "1"], requests * 2, PIPELINE,
                                       KEYSPACE),
            "script_8_calls_x32": probe(servers, ["EVALSHA", sha, "1", SPREAD_KEY, "8"], requests, PIPELINE,
                                        KEYSPACE),
            "hset_10_bytes": probe(servers, ["HSET", "s", "f", "x" * 10], requests),
            "hset_1000_bytes": probe(servers, ["HSET", "s", "f", "x" * 1000], requests),
        }
        streams = stream_probes(servers, max(requests // 400, 10))
        version = client.info("server")["redis_version"]
    with Servers(appendonly=True, appendfsync="always") as servers:
        probes["hincrby_always"] = probe(servers, ["HINCRBY", "h", "f", "1"], requests // 4)
    cpu = {name: result["cpu_us_per_round_trip"] for name, result in probes.items()}
    command = (cpu["hincrby_x32"] - cpu["hincrby"]) / (PIPELINE - 1)
    request = max(cpu["ping"], cpu["hincrby"] - command)
    call = (cpu["script_8_calls_x32"] - cpu["script_1_call_x32"]) / PIPELINE / 7
    # a pipelined script is charged script + its calls where a command is charged command
    script = (cpu["script_1_call_x32"] - cpu["hincrby_x32"]) / PIPELINE + command - call
    byte = (cpu["hset_1000_bytes"] - cpu["hset_10_bytes"]) / 990
    element = (cpu["hgetall_wide"] - cpu["hget_wide"]) / ELEMENTS
    fsync = 1e6 / probes["hincrby_always"]["requests_per_s"] - 1e6 / probes["hincrby"]["requests_per_s"]
    per_entry = {name: max((probe["cpu_us_per_call"] - probe["xlen_us_per_call"]) / STREAM_BATCH, 0.0)
                 for name, probe in streams.items()}
    return {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": _cpus(), "redis_version": version,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": f"redis-benchmark -c {CLIENTS}, server CPU per round trip (INFO cpu); HINCRBY and scripts "
                  f"over {KEYSPACE:,} keys (-r), scripts {PIPELINE} to a round trip",
        "server": {"request_us": round(request, 3), "command_us": round(max(command, 0.001), 3),
                   "script_us": round(max(script, 0.001), 3), "script_call_us": round(max(call, 0.0), 3),
                   "byte_ns": round(max(byte * 1000, 0.0), 3), "fsync_always_us": round(max(fsync, 0.0), 3),
                   "element_us": round(max(element, 0.0), 4),
                   "stream_read_us": round(per_entry["xreadgroup_100"], 4),
                   "stream_ack_us": round(per_entry["xack_100"], 4),
                   "stream_delete_us": round(per_entry["xdel_100"], 4)},
        "probes": probes, "stream_probes": streams,
    }




def _cpus() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
