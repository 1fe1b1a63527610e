"""Scenarios: TOML files that say what traffic to replay, against which
strategies, with which clients and server, checked before anything runs.

A bad scenario fails with a :class:`ScenarioError` that names the file, the
key and what is allowed, before any output is written.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import stat
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sim.faults import FAULT_KINDS, SPECS, Fault, FaultRate, FaultSpecError, check_params
from sim.traffic import TrafficConfig, expected_memberships
from strategies import STRATEGIES
from strategies.base import StrategyOptionError


class ScenarioError(ValueError):
    pass


CALIBRATION = Path(__file__).with_name("calibration.toml")   # the committed one (see its header)
SERVICE_KEYS = ("request_us", "command_us", "script_us", "script_call_us", "fsync_always_us", "element_us",
                "stream_read_us", "stream_ack_us", "stream_delete_us")
# The redis backend's driver on the calibrated machine: its loopback round
# trip, its CPU per request, per command, per array item of a reply and per
# timed wait, and what waking
# up costs it and the server (`countdrift capacity --model-driver`).
DRIVER_KEYS = ("rtt_us", "request_us", "command_us", "element_us", "sleep_us", "wake_us", "server_wake_us")


def load_calibration(path: Path, section: str = "server", keys: tuple[str, ...] = SERVICE_KEYS) -> dict[str, float]:
    """The microseconds a calibration file (`countdrift calibrate`) holds in one section."""
    try:
        table = tomllib.loads(path.read_bytes().decode("utf-8")).get(section, {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ScenarioError(f"{path}: not a readable calibration file ({error})") from None
    values = {}
    for key in keys:
        value = table.get(key)
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise ScenarioError(f"{path}: key '{section}.{key}' must be a number of microseconds >= 0, "
                                f"got {value!r}; write the file with `countdrift calibrate`")
        values[key] = float(value)
    return values


_DEFAULT_SERVICE = load_calibration(CALIBRATION)


@dataclass(frozen=True)
class ClientConfig:
    count: int = 32
    rtt_ms: float = 0.2           # the simulated network's round trip
    timeout_ms: float = 1000.0    # from sending a request to giving up on its reply
    retries: int = 2              # re-runs of an operation that failed to reach Redis or lost a reply
    backoff_ms: float = 5.0       # doubled at each retry...
    max_backoff_ms: float = 1000.0  # ...up to this
    wait_timeout_ms: float = 10.0
    # Which client sends an operation: each in turn ("round_robin"), or the
    # one of its user ("by_user": user % count), so that a user's operations
    # go over one connection in order, and a buffer in a client process is
    # seen by that user's reads.
    route: str = "round_robin"
    # The CPU of one client process that every client shares, per request
    # and per command it sends, and per array item of the replies it reads
    # (0: not modelled, every client as if on a machine of its own). The
    # simulation only: `countdrift capacity --model-driver` sets them from
    # the calibration, to model the redis backend's driver (one Python
    # process) on this machine.
    driver_request_us: float = 0.0
    driver_command_us: float = 0.0
    driver_element_us: float = 0.0
    # What a reply costs that process on top when it finds it idle (waking up
    # from its wait for the network): busy, replies are picked up on the way.
    driver_wake_us: float = 0.0
    # What each timed wait (a backoff, a start time) costs it: the timer, and
    # the extra turn of the client's task when it fires.
    driver_sleep_us: float = 0.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
        return min(self.max_backoff_ms, self.backoff_ms * 2 ** min(attempt - 1, 30)) / 1000.0


@dataclass(frozen=True)
class ServerConfig:
    """The Redis deployment: service times (microseconds: from a calibration
    file, the committed one by default, or given key by key), persistence,
    replication and Sentinel."""

    calibration: str = ""   # a calibration file, relative to the scenario's folder
    request_us: float = _DEFAULT_SERVICE["request_us"]
    command_us: float = _DEFAULT_SERVICE["command_us"]
    script_us: float = _DEFAULT_SERVICE["script_us"]
    script_call_us: float = _DEFAULT_SERVICE["script_call_us"]
    fsync_always_us: float = _DEFAULT_SERVICE["fsync_always_us"]
    # Each element a command walks (a field HGETALL returns, a set's member,
    # a stream entry read): what makes HGETALL of 10,000 cost more than of 5.
    element_us: float = _DEFAULT_SERVICE["element_us"]
    # Each stream entry a read returns, each id XACK acknowledges, each XDEL deletes.
    stream_read_us: float = _DEFAULT_SERVICE["stream_read_us"]
    stream_ack_us: float = _DEFAULT_SERVICE["stream_ack_us"]
    stream_delete_us: float = _DEFAULT_SERVICE["stream_delete_us"]
    # What a request that finds the server idle costs it on top (the process
    # waking up): 0, except when `countdrift capacity --model-driver` models this machine.
    wake_us: float = 0.0
    appendonly: bool = True
    appendfsync: str = "everysec"
    rdb_interval_s: float = 60.0
    replicas: int = 1
    replication_lag_ms: float = 5.0
    min_replicas_to_write: int = 0     # Redis refuses writes with fewer connected replicas (0: off)
    min_replicas_max_lag: int = 10     # seconds: a replica silent longer does not count
    # "single": one primary and its `replicas`; "cluster": Redis Cluster, `cluster_primaries`
    # shards of one primary and `cluster_replicas_per_primary` replicas each (sim/cluster.py).
    topology: str = "single"
    cluster_primaries: int = 3
    cluster_replicas_per_primary: int = 1
    # Redis's cluster-node-timeout (its default): how long a primary is unreachable before the
    # others flag it PFAIL, then FAIL, and its replica starts an election (cluster_failover).
    cluster_node_timeout_ms: float = 15_000.0


@dataclass(frozen=True)
class SentinelConfig:
    """Redis Sentinel watching the primary: when it stays unreachable for
    ``down_after_ms`` and a ``quorum`` of the ``count`` sentinels agree, they
    elect a leader that promotes a replica, and clients follow the switch.
    The defaults are Sentinel's own (sentinel.c, sentinel.conf)."""

    enabled: bool = False
    count: int = 3
    quorum: int = 2
    down_after_ms: float = 30_000.0
    failover_timeout_ms: float = 180_000.0
    parallel_syncs: int = 1


@dataclass(frozen=True)
class RunConfig:
    timeline_points: int = 20
    # open: each operation starts at its time in the trace (the offered rate);
    # closed: each client starts its next operation when its last one is done,
    # after think_time_ms (the rate the strategy sustains with that many clients).
    load: str = "open"
    think_time_ms: float = 0.0


@dataclass(frozen=True)
class Scenario:
    path: Path
    sha256: str
    name: str
    description: str
    seed: int
    strategies: tuple[str, ...]
    traffic: TrafficConfig
    clients: ClientConfig
    server: ServerConfig
    sentinel: SentinelConfig
    run: RunConfig
    strategy_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Strategies from outside the package: name -> {"path": a file} or {"module": a module's name}.
    strategy_code: dict[str, dict[str, str]] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    fault_rates: tuple[FaultRate, ...] = ()

    @property
    def driver_modelled(self) -> bool:
        """Whether its clients model the real driver's process (``with_driver``)."""
        clients = self.clients
        return bool(clients.driver_request_us or clients.driver_command_us or clients.driver_element_us
                    or clients.driver_wake_us or clients.driver_sleep_us or self.server.wake_us)

    def throughput_basis(self, deterministic: bool) -> str:
        """What a run's throughput is, run on a backend that is ``deterministic``
        or not: the offered rate an open loop asks for and gets below
        saturation; in a closed loop, what Redis alone sustains (the model, each
        client as if on a machine of its own), what the real driver's one
        process sustains (the model with it modelled), or what was measured."""
        if self.run.load == "open":
            return "offered"
        if self.driver_modelled:
            return "driver_modelled"
        return "redis_alone" if deterministic else "measured"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "path": str(self.path),
            "sha256": self.sha256, "seed": self.seed, "strategies": list(self.strategies),
            "traffic": asdict(self.traffic), "clients": asdict(self.clients),
            "server": asdict(self.server), "sentinel": asdict(self.sentinel), "run": asdict(self.run),
            "strategy_options": self.strategy_options, "strategy_code": self.strategy_code,
            "faults": [fault.to_dict() for fault in self.faults],
            "fault_rates": [asdict(rate) for rate in self.fault_rates],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Scenario":
        """A scenario as a results.json stores it (``to_dict``), rebuilt; the
        strategies it names from outside the package are loaded again."""
        path = Path(data["path"])
        code = load_strategy_code(path, data.get("strategy_code", {}))
        return cls(path=path, sha256=data["sha256"], name=data["name"],
                   description=data["description"], seed=data["seed"], strategies=tuple(data["strategies"]),
                   **{name: config(**data[name]) for name, config in SECTIONS.items()},
                   strategy_options=data["strategy_options"], strategy_code=code,
                   faults=tuple(Fault(fault["kind"], fault["at"], fault["duration"], fault["params"])
                                for fault in data["faults"]),
                   fault_rates=tuple(FaultRate(**rate) for rate in data["fault_rates"]))

    def to_toml(self, header: str = "") -> str:
        """The scenario as a file ``load`` reads back to an equal scenario
        (the keys that differ from their defaults; the faults explicit, none drawn)."""
        lines = [f"# {line}" if line else "#" for line in header.splitlines()]
        lines += [f"name = {_toml(self.name)}", f"description = {_toml(self.description)}", f"seed = {self.seed}",
                  f"strategies = {_toml(list(self.strategies))}"]
        for name in SECTIONS:
            lines += ["", f"[{name}]"]
            config = getattr(self, name)
            lines += [f"{key} = {_toml(value)}" for key, value in asdict(config).items()
                      if value != getattr(type(config)(), key) and (name != "traffic" or not self.traffic.file
                                                                     or key == "file")]
        for strategy, where in self.strategy_code.items():
            lines += ["", f"[strategy_code.{strategy}]", *(f"{key} = {_toml(value)}" for key, value in where.items())]
        for strategy, options in self.strategy_options.items():
            if options:
                lines += ["", f"[strategy_options.{strategy}]", *(f"{key} = {_toml(value)}"
                                                                  for key, value in options.items())]
        for fault in self.faults:
            lines += ["", "[[faults]]", f"kind = {_toml(fault.kind)}", f"at = {_toml(float(fault.at))}",
                      f"duration = {_toml(float(fault.duration))}"]
            if fault.params:
                lines.append(f"params = {_toml(fault.params)}")
        return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """One TOML value (strings, numbers, booleans, lists and inline tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


SECTIONS = {"traffic": TrafficConfig, "clients": ClientConfig, "server": ServerConfig, "sentinel": SentinelConfig,
            "run": RunConfig}
# Keys that were replaced: a scenario naming one is told what to write instead.
REPLACED = {"server.auto_failover": "write [sentinel] enabled = true (real redis-sentinel processes on the real "
                                    "backend, their model in the simulation)",
            "server.failover_detection_s": "write [sentinel] down_after_ms (Sentinel's down-after-milliseconds)"}
TOP_LEVEL = {"name": str, "description": str, "seed": int, "strategies": list,
             "strategy_options": dict, "strategy_code": dict, "faults": list, "fault_rates": list,
             **{name: dict for name in SECTIONS}}
APPENDFSYNC = ("always", "everysec", "no")
TOPOLOGIES = ("single", "cluster")
LOADS = ("open", "closed")
ROUTES = ("round_robin", "by_user")
# Bounds of a fault's timing: seconds, and faults per minute.
FAULT_TIMING = {"at": (0.0, 1e6), "duration": (0.0, 3600.0), "per_minute": (0.0, 600.0)}

# Bounds a value must respect: (low, high), inclusive. Every number has
# both, so that no scenario can ask for more than a machine holds.
BOUNDS: dict[str, tuple[float, float]] = {
    "traffic.users": (2, 2_000_000), "traffic.messages": (1, 5_000_000),
    "traffic.message_rate": (0.001, 10_000_000), "traffic.dm_per_user": (0, 1000),
    "traffic.daily_amplitude": (0, 0.99), "traffic.day_s": (1, 31_536_000), "traffic.peak_at_s": (0, 31_536_000),
    "traffic.burst_every_s": (0, 31_536_000), "traffic.burst_s": (0.001, 31_536_000),
    "traffic.burst_factor": (0.01, 1000),
    "traffic.groups": (0, 1_000_000), "traffic.group_size_min": (3, 1_000_000),
    "traffic.group_size_alpha": (0.001, 100), "traffic.max_group_size": (3, 1_000_000),
    "traffic.activity_zipf": (0, 10), "traffic.group_weight_exponent": (0, 10),
    "traffic.read_probability": (0, 1), "traffic.read_delay_mean_s": (0, 86_400),
    "traffic.badge_probability": (0, 1), "traffic.badge_delay_s": (0, 3600),
    "traffic.dm_partner_zipf": (0, 10), "traffic.logins_per_s": (0, 1e7),
    "clients.count": (1, 100_000), "clients.rtt_ms": (0.000001, 60_000), "clients.timeout_ms": (0.001, 3_600_000),
    "clients.retries": (0, 1000), "clients.backoff_ms": (0, 3_600_000), "clients.max_backoff_ms": (0, 3_600_000),
    "clients.wait_timeout_ms": (0, 3_600_000), "clients.driver_request_us": (0, 1_000_000),
    "clients.driver_command_us": (0, 1_000_000), "clients.driver_element_us": (0, 1_000_000),
    "clients.driver_wake_us": (0, 1_000_000),
    "clients.driver_sleep_us": (0, 1_000_000),
    "server.wake_us": (0, 1_000_000),
    "server.request_us": (0, 1_000_000), "server.command_us": (0, 1_000_000), "server.script_us": (0, 1_000_000),
    "server.script_call_us": (0, 1_000_000), "server.fsync_always_us": (0, 1_000_000),
    "server.element_us": (0, 1_000_000), "server.stream_read_us": (0, 1_000_000),
    "server.stream_ack_us": (0, 1_000_000), "server.stream_delete_us": (0, 1_000_000),
    "server.rdb_interval_s": (0.001, 86_400), "server.replicas": (0, 5),
    "server.min_replicas_to_write": (0, 5), "server.min_replicas_max_lag": (1, 3600),
    "server.replication_lag_ms": (0, 600_000),
    "server.cluster_primaries": (1, 16), "server.cluster_replicas_per_primary": (0, 3),
    "server.cluster_node_timeout_ms": (100, 3_600_000),
    "sentinel.count": (1, 9), "sentinel.quorum": (1, 9), "sentinel.down_after_ms": (1, 3_600_000),
    "sentinel.failover_timeout_ms": (1, 3_600_000), "sentinel.parallel_syncs": (1, 5),
    "run.timeline_points": (0, 10_000), "run.think_time_ms": (0, 3_600_000),
    "seed": (0, 2 ** 63 - 1),
}
MAX_SCENARIO_BYTES = 1_000_000
MAX_MEMBERSHIPS = 20_000_000    # 1:1 and group memberships a trace may hold (a few GiB to check)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def with_driver(scenario: Scenario, driver: dict[str, float]) -> Scenario:
    """The scenario as the redis backend runs it here, for the simulation:
    the loopback round trip instead of the scenario's, every client in one
    process whose CPU the calibration measured (``[driver]``), and the CPU
    that process and the server spend waking up when a message finds them
    idle, which load amortizes. Real capacity on a machine this size is the
    driver's; so is this one."""
    return replace(
        scenario, clients=replace(
            scenario.clients, rtt_ms=driver["rtt_us"] / 1000.0, driver_request_us=driver["request_us"],
            driver_command_us=driver["command_us"], driver_element_us=driver["element_us"],
            driver_sleep_us=driver["sleep_us"], driver_wake_us=driver["wake_us"]),
        server=replace(scenario.server, wake_us=driver["server_wake_us"]))


def _suggest(word: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _typename(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list", dict: "a table"}[kind]


def _limits(low: float, high: float) -> str:
    return f"between {low:,} and {high:,}" if max(abs(low), abs(high)) >= 1000 else f"between {low} and {high}"


def _check_type(path: Path, key: str, value: Any, kind: type) -> Any:
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ScenarioError(f"{path}: key '{key}' must be {_typename(kind)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ScenarioError(f"{path}: key '{key}' must be a finite number, got {value!r}")
    if key in BOUNDS:
        low, high = BOUNDS[key]
        if not low <= value <= high:
            raise ScenarioError(f"{path}: key '{key}' must be {_limits(low, high)}, got {value!r}")
    return value


def _section(path: Path, name: str, table: dict, config: type) -> Any:
    allowed = {f.name: type(f.default) for f in fields(config)}
    values = {}
    for key, value in table.items():
        if f"{name}.{key}" in REPLACED:
            raise ScenarioError(f"{path}: key '{name}.{key}' was replaced: {REPLACED[f'{name}.{key}']}")
        if key not in allowed:
            raise ScenarioError(
                f"{path}: key '{name}.{key}' is unknown{_suggest(key, list(allowed))}; "
                f"allowed in [{name}]: {', '.join(allowed)}")
        values[key] = _check_type(path, f"{name}.{key}", value, allowed[key])
    return config(**values)


def parse(path: Path, text: str) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    for key, value in data.items():
        if key not in TOP_LEVEL:
            raise ScenarioError(f"{path}: key '{key}' is unknown{_suggest(key, list(TOP_LEVEL))}; "
                                f"allowed at the top level: {', '.join(TOP_LEVEL)}")
        _check_type(path, key, value, TOP_LEVEL[key])
    tables = {name: data.get(name, {}) for name in SECTIONS}
    calibration = tables["server"].get("calibration", "")
    if calibration and isinstance(calibration, str):
        given = {key: value for key, value in tables["server"].items()}
        tables["server"] = {**load_calibration(path.parent / calibration), **given}
    sections = {name: _section(path, name, tables[name], config) for name, config in SECTIONS.items()}
    if sections["run"].load not in LOADS:
        raise ScenarioError(f"{path}: key 'run.load' must be one of {', '.join(LOADS)}, "
                            f"got {sections['run'].load!r}")
    if sections["clients"].route not in ROUTES:
        raise ScenarioError(f"{path}: key 'clients.route' must be one of {', '.join(ROUTES)}, "
                            f"got {sections['clients'].route!r}")
    if sections["server"].appendfsync not in APPENDFSYNC:
        raise ScenarioError(f"{path}: key 'server.appendfsync' must be one of {', '.join(APPENDFSYNC)}, "
                            f"got {sections['server'].appendfsync!r}")
    traffic: TrafficConfig = sections["traffic"]
    if traffic.file:
        traffic = sections["traffic"] = _traffic_file(path, traffic, tables["traffic"])
    else:
        _check_drawn_traffic(path, traffic)
    clients = sections["clients"]
    if clients.timeout_ms <= clients.rtt_ms:
        raise ScenarioError(f"{path}: key 'clients.timeout_ms' ({clients.timeout_ms:g}) must be above "
                            f"'clients.rtt_ms' ({clients.rtt_ms:g}): every request would time out before its reply "
                            f"could come back, and be sent again {clients.retries} time(s)")
    memberships = expected_memberships(traffic)
    if memberships > MAX_MEMBERSHIPS:
        raise ScenarioError(f"{path}: keys 'traffic.users' x 'traffic.dm_per_user' + 'traffic.groups' x the mean "
                            f"group size (from 'traffic.group_size_min', 'group_size_alpha' and 'max_group_size') "
                            f"ask for about {memberships:,.0f} conversation memberships; at most "
                            f"{MAX_MEMBERSHIPS:,} fit in memory")
    scenario_name = data.get("name", path.stem)
    if not SAFE_NAME.fullmatch(scenario_name):
        raise ScenarioError(f"{path}: key 'name' must be a plain file name (letters, digits, '.', '_', '-', "
                            f"not starting with '.' or '-', at most 100), got {scenario_name!r}: results are written "
                            f"to results/<name>-s<seed>")

    code = load_strategy_code(path, data.get("strategy_code", {}))
    names = data.get("strategies", list(STRATEGIES))
    strategies = tuple(_strategy_name(path, "strategies", name) for name in names)
    if not strategies:
        raise ScenarioError(f"{path}: key 'strategies' is empty; name at least one of: {', '.join(STRATEGIES)}")
    options = data.get("strategy_options", {})
    for name, table in options.items():
        _strategy_name(path, "strategy_options", name)
        if not isinstance(table, dict):
            raise ScenarioError(f"{path}: key 'strategy_options.{name}' must be a table")
        try:
            STRATEGIES[name](**table)
        except StrategyOptionError as error:
            raise ScenarioError(f"{path}: key 'strategy_options.{name}': {error}") from None
    faults = tuple(_fault(path, f"faults[{i}]", table, Fault) for i, table in enumerate(data.get("faults", [])))
    rates = tuple(_fault(path, f"fault_rates[{i}]", table, FaultRate)
                  for i, table in enumerate(data.get("fault_rates", [])))
    kinds = {f.kind for f in faults + rates}
    sentinel: SentinelConfig = sections["sentinel"]
    server: ServerConfig = sections["server"]
    if server.topology not in TOPOLOGIES:
        raise ScenarioError(f"{path}: key 'server.topology' must be one of {', '.join(TOPOLOGIES)}, "
                            f"got {server.topology!r}")
    if server.topology == "cluster":
        _check_cluster(path, tables["server"], sentinel, kinds)
        _check_shards(path, server, faults, rates)
    else:
        for kind in sorted(kind for kind in kinds if "single" not in SPECS[kind].topologies):
            instead = f" ({SPECS[kind].instead})" if SPECS[kind].instead else ""
            raise ScenarioError(f"{path}: fault kind {kind} needs a Redis Cluster: set 'server.topology' "
                                f"to \"cluster\"{instead}")
        for where, fault in _numbered(faults, rates):
            if fault.params.get("shard", 0):
                raise ScenarioError(f"{path}: key '{where}.params.shard' is for topology = \"cluster\"; one "
                                    f"server has only shard 0")
    for kind in sorted(kinds):
        if "replica" in SPECS[kind].needs and server.topology == "single" and server.replicas < 1:
            raise ScenarioError(f"{path}: a {kind} needs a replica to promote: set 'server.replicas' to 1 or more")
        if "sentinel" in SPECS[kind].needs and not sentinel.enabled:
            raise ScenarioError(f"{path}: a {kind} needs Sentinel to promote a replica on the other side: "
                                f"set 'sentinel.enabled' to true")
    if sentinel.quorum > sentinel.count:
        raise ScenarioError(f"{path}: key 'sentinel.quorum' ({sentinel.quorum}) must be at most 'sentinel.count' "
                            f"({sentinel.count}): with fewer sentinels than the quorum none can ever fail over")
    return Scenario(
        path=path, sha256=hashlib.sha256(text.encode()).hexdigest(),
        name=scenario_name, description=data.get("description", ""),
        seed=data.get("seed", 1), strategies=strategies, strategy_options=options, strategy_code=code,
        faults=faults, fault_rates=rates, **sections)


def _check_drawn_traffic(path: Path, traffic: TrafficConfig) -> None:
    if traffic.burst_every_s and traffic.burst_s >= traffic.burst_every_s:
        raise ScenarioError(f"{path}: key 'traffic.burst_s' ({traffic.burst_s:g}) must be below "
                            f"'traffic.burst_every_s' ({traffic.burst_every_s:g}): a burst that never ends is a "
                            f"higher message_rate")
    if traffic.max_group_size < traffic.group_size_min:
        raise ScenarioError(f"{path}: key 'traffic.max_group_size' ({traffic.max_group_size}) must be >= "
                            f"'traffic.group_size_min' ({traffic.group_size_min})")
    if round(traffic.users * traffic.dm_per_user / 2) < 1 and traffic.groups == 0:
        raise ScenarioError(f"{path}: key 'traffic.dm_per_user' ({traffic.dm_per_user:g}) with 'traffic.groups' = 0 "
                            f"gives no conversation to send to; raise one of them")


def _traffic_file(path: Path, traffic: TrafficConfig, table: dict) -> TrafficConfig:
    """``[traffic] file``: a trace to replay (from the scenario's folder),
    checked now; the other traffic keys would be unused, so they are refused."""
    from sim.traffic import Trace, TraceError

    others = sorted(set(table) - {"file"})
    if others:
        raise ScenarioError(f"{path}: key 'traffic.{others[0]}' has no effect with 'traffic.file' (the trace is "
                            f"replayed as it is); remove it, or remove 'traffic.file' to draw traffic")
    trace_path = (path.parent / traffic.file).resolve()
    try:
        trace = Trace.load(trace_path)
    except TraceError as error:
        raise ScenarioError(f"{path}: key 'traffic.file': {error} (make one with `countdrift trace import`)") from None
    return replace(trace.config, file=str(trace_path))


def load_strategy_code(path: Path, tables: dict) -> dict[str, dict[str, str]]:
    """Load the strategies ``[strategy_code.<name>]`` names (``path``: a
    Python file, relative to the scenario's folder; or ``module``: an
    importable module's name), each of which must define strategy <name>;
    the tables with every path made absolute."""
    from sim import strategy_code

    code = {}
    for name, table in tables.items():
        where = f"strategy_code.{name}"
        if not isinstance(table, dict) or len(table) != 1 or not isinstance(next(iter(table.values())), str) \
                or next(iter(table)) not in ("path", "module"):
            raise ScenarioError(f"{path}: key '{where}' must be a table of one key, path = \"a file.py\" (from the "
                                f"scenario's folder) or module = \"a.module\", got {table!r}")
        (kind, value), = table.items()
        try:
            if kind == "path":
                value = str((path.parent / value).resolve())
                found = strategy_code.load_file(value)
            else:
                found = strategy_code.load_module(value)
        except strategy_code.StrategyCodeError as error:
            raise ScenarioError(f"{path}: key '{where}.{kind}': {error}") from None
        if name not in {cls.name for cls in found}:
            raise ScenarioError(f"{path}: key '{where}.{kind}': {value} defines strategy "
                                f"{', '.join(repr(cls.name) for cls in found)}, not {name!r}; name the table after "
                                f"the strategy's name")
        code[name] = {kind: value}
    return code


def _check_cluster(path: Path, server: dict, sentinel: SentinelConfig, kinds: set[str]) -> None:
    """What a cluster run cannot take yet, refused rather than run wrong."""
    if "replicas" in server:
        raise ScenarioError(f"{path}: key 'server.replicas' is for topology = \"single\"; a cluster gives each "
                            f"primary 'server.cluster_replicas_per_primary' replicas: write that instead")
    if sentinel.enabled:
        raise ScenarioError(f"{path}: key 'sentinel.enabled': a cluster fails over by itself, without Sentinel; "
                            f"set it to false or remove it, or set 'server.topology' to \"single\"")
    refused = sorted(kind for kind in kinds if "cluster" not in SPECS[kind].topologies)
    if refused:
        allowed = [kind for kind, spec in SPECS.items() if "cluster" in spec.topologies]
        raise ScenarioError(f"{path}: fault kind(s) {', '.join(refused)} cannot strike a cluster yet (which "
                            f"shard they strike is not modelled); on a cluster use only "
                            f"{', '.join(allowed)}, or set 'server.topology' to \"single\"")


def _numbered(faults: tuple, rates: tuple):
    yield from ((f"faults[{i}]", fault) for i, fault in enumerate(faults))
    yield from ((f"fault_rates[{i}]", rate) for i, rate in enumerate(rates))


def _check_shards(path: Path, server: ServerConfig, faults: tuple, rates: tuple) -> None:
    """A fault on one shard names a shard of the cluster; a crash or a power
    loss must end before the cluster would fail the shard over (that is
    cluster_failover, whose replica must exist and be as current as the
    real cluster's: its replication links carry no added lag)."""
    for where, fault in _numbered(faults, rates):
        if not SPECS[fault.kind].on_a_shard:
            continue
        shard = fault.params.get("shard", 0)
        if shard >= server.cluster_primaries:
            raise ScenarioError(f"{path}: key '{where}.params.shard' is {shard}, but the cluster has "
                                f"{server.cluster_primaries} shard(s) (server.cluster_primaries): 0 to "
                                f"{server.cluster_primaries - 1}")
        if fault.kind == "slot_migration":
            _check_migration(path, where, server, fault)
        elif SPECS[fault.kind].promotes == "always":   # the cluster promotes the shard's replica
            if SPECS[fault.kind].strands_clients and server.cluster_primaries < 3:
                raise ScenarioError(f"{path}: {where}: a {fault.kind} needs 'server.cluster_primaries' of 3 "
                                    f"or more: with {server.cluster_primaries}, the primaries left on the other "
                                    f"side are no majority, and no replica can win an election")
            if server.cluster_replicas_per_primary < 1:
                raise ScenarioError(f"{path}: {where}: a {fault.kind} needs a replica to promote: set "
                                    f"'server.cluster_replicas_per_primary' to 1 or more")
            if server.replication_lag_ms > 0:
                raise ScenarioError(f"{path}: {where}: a {fault.kind}'s replica lag is not emulated on real "
                                    f"servers yet (a cluster's replication links are direct): set "
                                    f"'server.replication_lag_ms' to 0")
        elif fault.duration * 1000.0 >= server.cluster_node_timeout_ms:
            raise ScenarioError(f"{path}: key '{where}.duration' ({fault.duration:g} s) must be shorter than "
                                f"'server.cluster_node_timeout_ms' ({server.cluster_node_timeout_ms:g} ms): a "
                                f"primary down that long is failed over by the cluster: schedule a "
                                f"cluster_failover instead")
    migrations = sorted((fault.at, fault.end, where) for where, fault in _numbered(faults, ())
                        if fault.kind == "slot_migration")
    for (_, end, first), (at, _, second) in zip(migrations, migrations[1:]):
        if at < end:
            raise ScenarioError(f"{path}: {second} starts at {at:g} s, before {first} ends ({end:g} s): one "
                                f"slot_migration at a time")


def _check_migration(path: Path, where: str, server: ServerConfig, fault: Fault | FaultRate) -> None:
    """A slot migration goes to another shard of the cluster, and is scheduled:
    one at a time (the harness's migration of a slot is not interleaved with another's)."""
    if isinstance(fault, FaultRate):
        raise ScenarioError(f"{path}: {where}: slot_migration cannot be drawn at a rate (two would overlap): "
                            f"schedule it in [[faults]]")
    source, target = fault.params.get("shard", 0), fault.param("to_shard")
    if target >= server.cluster_primaries or target == source:
        raise ScenarioError(f"{path}: key '{where}.params.to_shard' is {target}: it must be another shard than "
                            f"'shard' ({source}), below 'server.cluster_primaries' ({server.cluster_primaries})")


def _fault(path: Path, where: str, table: Any, kind_of: type) -> Fault | FaultRate:
    """One [[faults]] or [[fault_rates]] entry, checked."""
    if not isinstance(table, dict):
        raise ScenarioError(f"{path}: {where} must be a table")
    timing = {"at": float} if kind_of is Fault else {"per_minute": float}
    allowed = {"kind": str, **timing, "duration": float, "params": dict}
    for key, value in table.items():
        if key not in allowed:
            raise ScenarioError(f"{path}: key '{where}.{key}' is unknown{_suggest(key, list(allowed))}; "
                                f"allowed: {', '.join(allowed)}")
        _check_type(path, f"{where}.{key}", value, allowed[key])
    for key in ("kind", *timing):
        if key not in table:
            raise ScenarioError(f"{path}: {where} needs '{key}'")
    kind = table["kind"]
    if kind not in FAULT_KINDS:
        raise ScenarioError(f"{path}: key '{where}.kind' names unknown fault {kind!r}"
                            f"{_suggest(kind, list(FAULT_KINDS))}; allowed: {', '.join(FAULT_KINDS)}")
    try:
        params = check_params(kind, table.get("params", {}))
    except FaultSpecError as error:
        raise ScenarioError(f"{path}: key '{where}.params.{error.param}' {error}; "
                            f"see `countdrift list`") from None
    numbers = {key: float(table[key]) for key in timing}
    duration = float(table.get("duration", SPECS[kind].default_duration))
    for key, value in (*numbers.items(), ("duration", duration)):
        low, high = FAULT_TIMING[key]
        if not math.isfinite(value) or not low <= value <= high:
            raise ScenarioError(f"{path}: key '{where}.{key}' must be between {low:g} and {high:g}, got {value!r}")
    return kind_of(kind=kind, duration=duration, params=params, **numbers)


def _strategy_name(path: Path, key: str, name: Any) -> str:
    if not isinstance(name, str):
        raise ScenarioError(f"{path}: key '{key}' must list strategies by name (strings), got {name!r}; their "
                            f"options go in [strategy_options.<name>]")
    if name not in STRATEGIES:
        raise ScenarioError(f"{path}: key '{key}' names unknown strategy {name!r}"
                            f"{_suggest(str(name), list(STRATEGIES))}; allowed: {', '.join(STRATEGIES)}")
    return name


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ScenarioError(f"{path}: not a regular file; a scenario is a TOML file")
        if info.st_size > MAX_SCENARIO_BYTES:
            raise ScenarioError(f"{path}: {info.st_size:,} bytes; a scenario is a TOML file of at most "
                                f"{MAX_SCENARIO_BYTES:,}")
        raw = path.read_bytes()
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read the scenario: {error.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {error.start}); save the scenario as UTF-8") from None
    return parse(path, text)
