"""Fault kinds: one specification each, shared by scenarios, backends and results.

A scenario lists faults explicitly (``[[faults]]`` with kind, at, duration,
params) or gives per-kind rates (``[[fault_rates]]``) from which a schedule
is drawn with the run's seed. Each kind's :class:`FaultSpec` says what its
parameters mean (type, unit, bounds, default), what its duration means, and
which effects every backend records when it applies it. Scenarios are
checked against the specification once, when they load; every backend's
nemesis implements every kind and reads its parameters through
:meth:`Fault.param`, and writes its effects through :func:`effects_record`,
so the same fault means the same thing on every backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np


class FaultSpecError(ValueError):
    """A fault's parameter is missing from its kind's specification, of the
    wrong type, or out of bounds."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


def number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Param:
    name: str
    type: type            # int or float
    unit: str
    default: Any
    low: float
    high: float
    doc: str

    def describe(self) -> str:
        return (f"{self.type.__name__}, {self.unit}, {number(self.low)} to {number(self.high)}, "
                f"default {number(self.default)}: {self.doc}")

    def check(self, value: Any) -> Any:
        """The value, converted to the parameter's type; raises FaultSpecError."""
        if self.type is float and type(value) is int:
            value = float(value)
        if type(value) is not self.type:
            kind = "an integer" if self.type is int else "a number"
            raise FaultSpecError(f"must be {kind}, got {value!r}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise FaultSpecError(f"must be between {number(self.low)} and {number(self.high)} ({self.unit}), "
                                 f"got {value!r}")
        return value


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    summary: str
    duration: str              # what the fault's duration means for this kind
    default_duration: float
    params: tuple[Param, ...] = ()
    effects: dict[str, str] = field(default_factory=dict)   # effect -> what it counts
    network: bool = False      # strikes the clients' links (real: needs each client behind a proxy)
    # What it does, for every place that asks (the nemeses' bookkeeping,
    # drift attribution, scenario checks, charts), so that none names kinds:
    promotes: str = ""         # "always": a replica is made the primary; "with_sentinel": when Sentinel is on
    rolls_back: str = ""       # "unfsynced": writes not yet on disk are lost (AOF off: since the last RDB
                               # save); "unsaved": only with the AOF off, since the last RDB save
    strands_clients: bool = False   # clients left with an old primary whose writes are then lost
    pauses_clients: bool = False    # clients stop in the middle of an operation (a lock can expire under them)
    crashes_processes: bool = False   # application processes die: what their memory held is lost
    strikes: str = ""          # whom it strikes, by its count parameter: "clients" or "workers"
    needs: tuple[str, ...] = ()     # what the deployment must have: "replica", "sentinel"
    topologies: tuple[str, ...] = ("single", "cluster")   # where it can strike
    instead: str = ""          # what to schedule on the other topology
    colour: str = "#cccccc"    # its band in charts

    @property
    def param_names(self) -> set[str]:
        return {param.name for param in self.params}

    @property
    def tears(self) -> bool:
        """Whether it may leave a torn AOF tail (it takes tear_bytes)."""
        return any(param.name == "tear_bytes" for param in self.params)

    @property
    def on_a_shard(self) -> bool:
        """Whether on a cluster it strikes one shard (it takes shard)."""
        return any(param.name == "shard" for param in self.params)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(f"{self.kind} has no parameter {name!r}")


# Effects recorded for every fault, applied or not.
COMMON_EFFECTS = {
    "applied": "whether the fault struck at all",
    "reason": "why it did not strike, or why it ended early (null otherwise)",
    "struck_at": "when it struck, in run seconds (null if it did not)",
    "ended_at": "when it was undone (the server back, the network healed), in run seconds",
}
_SERVER_LOSS = {
    "operations_in_flight": "operations with a request at the server when it died (their outcome is unknown)",
    "writes_lost_s": "how far back the surviving copy reaches: seconds of writes it lacks",
    "acknowledged_writes_lost": "operations whose write the server had acknowledged and that did not survive",
    "wait_confirmed_writes_lost": "of those, operations that WAIT had confirmed on enough replicas",
}
_PROMOTION = {
    "promoted_at": "when the promoted replica was named the primary, in run seconds (null: none was)",
    "clients_on_old_primary_s": "per client, on average, how long from the fault until its first request "
                                "on the promoted replica (until the run's end for one that never got there)",
}
_SHARD = Param("shard", int, "shard", 0, 0, 15,
               "on a cluster, the shard whose primary it strikes (below server.cluster_primaries); 0 on one server")
_WHERE = {
    "shard": "on a cluster, the shard struck (null on one server)",
    "slots": "on a cluster, the struck shard's slot ranges, as first-last[,first-last] (null on one server)",
}
_TEAR = Param("tear_bytes", int, "bytes", 0, 0, 1 << 20,
              "bytes of the first unsynced AOF write that reach the disk anyway (a torn tail)")

SPECS: dict[str, FaultSpec] = {spec.kind: spec for spec in (
    FaultSpec("client_crash", "the app process dies between two requests of one operation; nobody retries it",
              "how long the crashed client stays down", 0.5,
              (Param("clients", int, "clients", 1, 1, 100_000, "virtual clients that crash"),),
              {"clients": "the virtual clients struck"},
              crashes_processes=True, strikes="clients", colour="#aec7e8"),
    FaultSpec("worker_crash",
              "a background worker's process (a flusher, a queue's consumer) dies between two requests of a "
              "pass: what it held in memory is lost, a queue's entries it read stay pending; it starts again "
              "on a new connection after the duration (nothing to strike for a strategy without workers)",
              "how long the crashed worker stays down", 0.5,
              (Param("workers", int, "workers", 1, 1, 1_000, "workers that crash"),),
              {"workers": "the workers struck (their client numbers: after the virtual clients')"},
              crashes_processes=True, strikes="workers", colour="#dadaeb"),
    FaultSpec("client_pause", "a stop-the-world pause (GC, SIGSTOP) of clients in the middle of an operation",
              "how long the pause lasts", 2.0,
              (Param("clients", int, "clients", 1, 1, 100_000, "virtual clients that pause"),),
              {"clients": "the virtual clients struck"},
              pauses_clients=True, strikes="clients", colour="#ffbb78"),
    FaultSpec("server_crash", "redis-server is killed (SIGKILL); the OS page cache survives",
              "how long the server stays down (with Sentinel on, it promotes a replica if that is long "
              "enough, and the old primary rejoins as a replica; on a cluster, shorter than "
              "server.cluster_node_timeout_ms: longer is a cluster_failover)", 0.5,
              (_SHARD,), {**_SERVER_LOSS, "promoted": "whether a replica was promoted instead of a restart",
                          **_PROMOTION, **_WHERE},
              promotes="with_sentinel", rolls_back="unsaved", colour="#98df8a"),
    FaultSpec("power_loss", "the machine loses power: what was not fsynced is lost",
              "how long the machine stays down (on a cluster, shorter than server.cluster_node_timeout_ms)", 1.0,
              (_TEAR, _SHARD), {**_SERVER_LOSS, **_WHERE},
              rolls_back="unfsynced", colour="#ff9896"),
    FaultSpec("mid_script_power_loss",
              "power fails while an operation is between two of its writes: inside a script or a "
              "MULTI/EXEC, or between two requests (naive); strikes anyway when the window ends",
              "how long the machine stays down", 1.0,
              (Param("within_s", float, "s", 5.0, 0.0, 3600.0, "how long to wait for an operation to strike"),
               Param("stall_ms", float, "ms", 20.0, 1.0, 1000.0,
                     "how long the struck operation holds the server between its two writes"),
               _TEAR),
              {**_SERVER_LOSS, "target": "what it struck: Script, Transaction, Pipeline, between requests, "
                                         "or none (the window ended)",
               "target_operation": "the kind of operation struck (deliver, open_conversation), or null"},
              rolls_back="unfsynced", topologies=("single",), colour="#c5b0d5"),
    FaultSpec("failover", "the primary dies; a replica that lacks the last `lag_ms` of writes is promoted",
              "how long until the replica is promoted (with Sentinel on: Sentinel promotes it when it "
              "decides, and the old primary stays down at least this long)", 1.0,
              (Param("lag_ms", float, "ms", -1.0, -1.0, 600_000.0,
                     "how far the replica is behind (-1: the scenario's replication_lag_ms)"),),
              {**_SERVER_LOSS, **_PROMOTION},
              promotes="always", needs=("replica",), topologies=("single",), colour="#c49c94"),
    FaultSpec("cluster_failover",
              "a cluster shard's primary dies (SIGKILL) and the cluster itself promotes its replica: the other "
              "nodes flag it FAIL after server.cluster_node_timeout_ms and gossip, every node answers "
              "CLUSTERDOWN until the replica wins its election (500 ms + random 0-500 ms after it learns of the "
              "FAIL); the writes the replica lacked are lost (needs topology cluster and a replica per primary)",
              "how long the old primary stays down, at least until the promotion (it rejoins as a replica)", 5.0,
              (_SHARD,),
              {**_SERVER_LOSS, **_PROMOTION,
               "failed_at": "when the cluster flagged the primary FAIL (every node answered CLUSTERDOWN from "
                            "then until the promotion), in run seconds",
               **_WHERE},
              promotes="always", topologies=("cluster",), instead="one server: use failover", colour="#f7b6d2"),
    FaultSpec("slot_migration",
              "live resharding while traffic flows: `slots` slots of a shard (those of its lowest-numbered "
              "users) are marked MIGRATING there and IMPORTING on `to_shard`, then each slot's keys move "
              "(MIGRATE) and the slot is given to `to_shard` (CLUSTER SETSLOT NODE), one after the other at an "
              "even pace; meanwhile a request for an open slot is served where all of its keys are, and gets "
              "ASK (the client follows it with ASKING) or TRYAGAIN (some of its keys moved) (needs topology "
              "cluster)",
              "how long the migration takes, from opening the slots to the last one's move", 2.0,
              (Param("shard", int, "shard", 0, 0, 15, "the shard the slots leave (below server.cluster_primaries)"),
               Param("to_shard", int, "shard", 1, 0, 15, "the shard they go to (another one)"),
               Param("slots", int, "slots", 16, 1, 16384, "how many slots move")),
              {"shard": "the shard the slots left", "to_shard": "the shard they went to",
               "slots": "the slots moved, comma-separated", "keys_moved": "keys MIGRATE moved"},
              topologies=("cluster",), colour="#c7c7c7"),
    FaultSpec("minority_partition",
              "a cluster shard's primary is cut off from the rest of the cluster (the other nodes, its replica "
              "and most clients: the cluster bus, the replication link and their client links cut both ways); a "
              "share of the clients stays with it and can reach no other node. It takes their writes until it "
              "has missed a majority of primaries for server.cluster_node_timeout_ms, then answers CLUSTERDOWN; "
              "on the majority side its replica is promoted as in a cluster_failover; when the partition heals "
              "the old primary becomes a replica of the promoted one, and what it took after the cut is lost "
              "(needs topology cluster and a replica per primary)",
              "how long the partition lasts, at least until the promotion", 5.0,
              (_SHARD, Param("clients_share", float, "share of clients", 0.25, 0.0, 1.0,
                             "the clients left on the old primary's side")),
              {"clients_left": "how many virtual clients were left with the old primary",
               "promoted": "whether the cluster promoted the replica on the majority side",
               **_PROMOTION,
               "failed_at": "when the majority flagged the primary FAIL (every node there answered CLUSTERDOWN "
                            "from then until the promotion), in run seconds",
               "refused_at": "when the old primary, in the minority, began answering CLUSTERDOWN, in run seconds",
               "old_primary_acknowledged": "operations whose write the old primary acknowledged after the cut",
               "acknowledged_writes_lost": "operations whose acknowledged write did not survive: those, when "
                                           "the replica was promoted, and what the replica lacked at the cut",
               "demoted_at": "when the old primary became a replica of the promoted one (null: not before "
                             "the run ended)",
               **_WHERE},
              network=True,
              promotes="always", strands_clients=True, topologies=("cluster",), instead="one server: use split_brain",
              colour="#dbdb8d"),
    FaultSpec("partition", "clients are cut from the primary: connections refused and reset",
              "how long the partition lasts", 1.0, network=True,
              colour="#9edae5"),
    FaultSpec("latency", "added network delay and jitter on every request, each way",
              "how long the delay lasts", 2.0,
              (Param("delay_ms", float, "ms", 20.0, 0.0, 60_000.0, "added one-way delay"),
               Param("jitter_ms", float, "ms", 5.0, 0.0, 60_000.0, "added one-way delay, uniform in [0, jitter)")),
              network=True,
              colour="#1f77b4"),
    FaultSpec("reset_peer", "a request reaches the server and runs; the connection is reset before the reply",
              "how long requests are exposed", 1.0,
              (Param("probability", float, "probability", 0.5, 0.0, 1.0, "chance that a request's reply is lost"),),
              {"replies_lost": "requests that ran and whose reply the reset took"}, network=True,
              colour="#ff7f0e"),
    FaultSpec("blackhole", "requests vanish without an answer; clients time out",
              "how long requests vanish", 1.0, network=True,
              colour="#7f7f7f"),
    FaultSpec("split_brain",
              "the primary is cut off from the sentinels, its replicas and most clients; a share of the "
              "clients stays with it, and it takes their writes while Sentinel promotes a replica on the "
              "other side; those writes are lost when it rejoins as a replica (needs Sentinel)",
              "how long the partition lasts (Sentinel demotes the old primary some seconds after it heals)", 5.0,
              (Param("clients_share", float, "share of clients", 0.25, 0.0, 1.0,
                     "the clients left on the old primary's side"),),
              {"clients_left": "how many virtual clients were left with the old primary",
               "promoted": "whether Sentinel promoted a replica on the other side",
               **_PROMOTION,
               "old_primary_acknowledged": "operations whose write the old primary acknowledged after the cut",
               "acknowledged_writes_lost": "operations whose acknowledged write did not survive: those, when "
                                           "a replica was promoted, and what the replica lacked at the cut",
               "demoted_at": "when Sentinel made the old primary a replica (null: not before the run ended)"},
              network=True,
              promotes="always", strands_clients=True, needs=("replica", "sentinel"), topologies=("single",),
              colour="#d62728"),
)}

FAULT_KINDS = tuple(SPECS)


def strikes_network(schedule: Iterable[Fault]) -> bool:
    """Whether a fault of the schedule strikes the clients' links."""
    return any(SPECS[fault.kind].network for fault in schedule)


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Any:
        """A parameter's value (its default when the scenario left it out)."""
        return self.params.get(name, SPECS[self.kind].param(name).default)

    @property
    def end(self) -> float:
        return self.at + self.duration

    def to_dict(self) -> dict:
        return {"kind": self.kind, "at": round(self.at, 9), "duration": self.duration,
                "params": {param.name: self.param(param.name) for param in SPECS[self.kind].params}}


@dataclass(frozen=True)
class FaultRate:
    kind: str
    per_minute: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)


def check_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters checked against the kind's specification; raises
    FaultSpecError naming the parameter."""
    spec = SPECS[kind]
    allowed = {param.name: param for param in spec.params}
    checked = {}
    for name, value in params.items():
        if name not in allowed:
            raise FaultSpecError(f"is not a parameter of {kind}; allowed: {', '.join(allowed) or 'none'}", name)
        try:
            checked[name] = allowed[name].check(value)
        except FaultSpecError as error:
            raise FaultSpecError(str(error), name) from None
    return checked


def effects_record(kind: str, **effects: Any) -> dict[str, Any]:
    """A fault's effects as results.json holds them: every field of the
    kind's specification (None where the fault did not get that far), in
    the specification's order, and nothing else."""
    names = [*COMMON_EFFECTS, *SPECS[kind].effects]
    unknown = set(effects) - set(names)
    if unknown:
        raise KeyError(f"effects {sorted(unknown)} are not in the specification of {kind}")
    return {name: effects.get(name) for name in names}


def faults_markdown() -> str:
    """The specification as a Markdown table (README.md holds it; a test
    keeps the two the same)."""
    lines = ["| kind | what it does | duration | parameters (type, unit, bounds, default) | effects recorded |",
             "|---|---|---|---|---|"]
    for spec in SPECS.values():
        params = "<br>".join(f"`{p.name}`: {p.describe()}" for p in spec.params) or "none"
        effects = ", ".join(f"`{name}`" for name in spec.effects) or "the common ones only"
        lines.append(f"| `{spec.kind}` | {spec.summary} | {spec.duration} (default {spec.default_duration:g} s) "
                     f"| {params} | {effects} |")
    return "\n".join(lines)


def draw_schedule(rates: list[FaultRate], span_s: float, seed: int) -> list[Fault]:
    """A Poisson process per kind over the trace's span, seeded by the run."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA17]))
    faults = []
    for rate in rates:
        t = 0.0
        while rate.per_minute > 0:
            t += rng.exponential(60.0 / rate.per_minute)
            if t >= span_s:
                break
            faults.append(Fault(rate.kind, t, rate.duration, dict(rate.params)))
    return sorted(faults, key=lambda fault: (fault.at, fault.kind))
