"""Redis Cluster as a target (issue #12, first slice): slot routing, the
scenario keys, CROSSSLOT from the untagged option, the simulated and the
real cluster giving identical counters, and no process left behind."""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from sim.backends.model.backend import make_server
from sim.backends.model.cluster import ClusterServer
from sim.checker import read_counters
from sim.cluster import (
    CROSSSLOT,
    EXECABORT,
    SLOTS,
    SlotMap,
    even_split,
    key_slot,
    node_error,
    promotion_times,
    route,
    split_pipeline,
)
from sim.commands import CommandError, Pipeline, Script, Transaction, run_now
from sim.history import OK
from sim.runner import run_scenario
from sim.scenario import ScenarioError, ServerConfig, load, parse
from sim.traffic import generate
from sim.truth import Memberships, truth_ranges
from sim.workload import Workload
from strategies import keys, make_strategy

from conftest import ROOT, alive, children, scratch_folders_of, sigint_default

pytestmark = pytest.mark.cluster

CLUSTER_QUICK = ROOT / "scenarios" / "cluster_quick.toml"

SMALL = """
name = "cluster_small"
seed = 5

[traffic]
users = 150
messages = 500
message_rate = 1000.0
groups = 8
max_group_size = 30
read_probability = 0.8
read_delay_mean_s = 0.1
badge_probability = 0.3

[clients]
count = 4
timeout_ms = 10000.0   # a shared machine's stall must not make a real client retry

[server]
topology = "{topology}"
{extra}

[run]
timeline_points = 2
"""


def small(tmp_path: Path, topology: str = "cluster", extra: str = "", options: str = "") -> Path:
    path = tmp_path / f"{topology}.toml"
    path.write_text(SMALL.format(topology=topology, extra=extra) + options)
    return path


UNTAGGED = "".join(f"\n[strategy_options.{name}]\nuntagged_total = true\n" for name in ("naive", "multi", "lua"))


def user_on_same_node_other_slot(slots: SlotMap) -> int:
    """A user whose tagged hash and untagged total live on one node, in two slots."""
    return next(user for user in range(100_000)
                if slots.shard_of_key(keys.unread(user)) == slots.shard_of_key(keys.total_untagged(user)))


def user_on_other_node(slots: SlotMap) -> int:
    return next(user for user in range(100_000)
                if slots.shard_of_key(keys.unread(user)) != slots.shard_of_key(keys.total_untagged(user)))


# -- slot math and routing (no server) ---------------------------------------------------------

def test_key_slots_are_redis_clusters():
    # CLUSTER KEYSLOT on redis 7.0.15: foo 12182, bar 5061; a hash tag hashes only its content
    assert key_slot("foo") == 12182 and key_slot(b"bar") == 5061
    assert key_slot(keys.unread(42)) == key_slot(keys.total(42)) == key_slot(keys.lock(42)) == key_slot("u42")
    assert key_slot(keys.total_untagged(42)) == key_slot("total:u42") != key_slot("u42")
    assert key_slot("a{}b") == key_slot("a{}b")          # an empty tag: the whole key
    assert key_slot("{x}{y}") == key_slot("x")           # the first tag counts


@pytest.mark.parametrize("primaries", [1, 2, 3, 5, 7, 16])
def test_slots_split_evenly_as_redis_cli_does(primaries):
    ranges = even_split(primaries)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1
    if primaries == 3:   # redis-cli --cluster create
        assert ranges == [(0, 5460), (5461, 10922), (10923, 16383)]
    slots = SlotMap.even(primaries)
    assert [slots.shard_of(first) for first, _ in ranges] == list(range(primaries))
    assert slots.shard_of(SLOTS - 1) == primaries - 1


def test_the_errors_a_node_answers():
    slots = SlotMap.even(3)
    names = ["a:1", "b:2", "c:3"]
    user = 42
    home = slots.shard_of_key(keys.unread(user))
    tagged = Script(make_strategy("lua").deliver_script, (keys.unread(user), keys.total(user)), ("7",))
    untagged = Script(tagged.script, (keys.unread(user), keys.total_untagged(user)), ("7",))
    assert node_error(tagged, slots, home, names) is None
    assert node_error(untagged, slots, home, names) == CROSSSLOT      # before MOVED, on any node
    assert node_error(untagged, slots, (home + 1) % 3, names) == CROSSSLOT
    assert node_error(("GET", keys.total(user)), slots, (home + 1) % 3, names) == \
        f"MOVED {key_slot(keys.total(user))} {names[home]}"
    assert node_error(("WATCH", keys.unread(user), keys.total_untagged(user)), slots, home, names) == CROSSSLOT
    # MULTI: a queued command of another node is answered MOVED and EXEC aborts;
    # on one node but in two slots each is QUEUED and EXEC answers CROSSSLOT.
    far, near = user_on_other_node(slots), user_on_same_node_other_slot(slots)
    for user, expected in ((far, EXECABORT), (near, CROSSSLOT)):
        transaction = Transaction((("HINCRBY", keys.unread(user), "1", 1), ("INCRBY", keys.total_untagged(user), 1)))
        shard = route(transaction, slots)
        assert shard == slots.shard_of_key(keys.unread(user))
        assert node_error(transaction, slots, shard, names) == expected


def test_a_pipeline_splits_by_shard_and_keyless_commands_go_everywhere():
    slots = SlotMap.even(3)
    users = list(range(40))
    pipeline = Pipeline((("PING",), *(("INCRBY", keys.total(user), 1) for user in users)))
    parts = split_pipeline(pipeline, slots, 3)
    assert set(parts) == {0, 1, 2} and all(indices[0] == 0 for indices in parts.values())
    for shard, indices in parts.items():
        assert all(slots.shard_of_key(keys.total(users[index - 1])) == shard for index in indices[1:])


# -- scenarios --------------------------------------------------------------------------------

def test_cluster_keys_are_read_and_checked(tmp_path):
    scenario = load(CLUSTER_QUICK)
    assert (scenario.server.topology, scenario.server.cluster_primaries,
            scenario.server.cluster_replicas_per_primary) == ("cluster", 3, 1)
    assert load(ROOT / "scenarios" / "quick.toml").server.topology == "single"
    bad = {
        'topology = "ring"': "key 'server.topology' must be one of single, cluster",
        'topology = "cluster"\ncluster_primaries = 0': "key 'server.cluster_primaries' must be between 1 and 16",
        'topology = "cluster"\ncluster_replicas_per_primary = 9':
            "key 'server.cluster_replicas_per_primary' must be between 0 and 3",
        'topology = "cluster"\nreplicas = 2': "write that instead",
        'topology = "cluster"\ncluster_primaries = "3"': "key 'server.cluster_primaries' must be an integer",
    }
    for server, message in bad.items():
        text = SMALL.replace('topology = "{topology}"\n{extra}', server)
        with pytest.raises(ScenarioError, match=message) as raised:
            parse(tmp_path / "bad.toml", text)
        assert str(raised.value).startswith(f"{tmp_path / 'bad.toml'}: ")
    text = SMALL.format(topology="cluster", extra="")
    for refused in ("failover", "mid_script_power_loss"):
        with pytest.raises(ScenarioError, match=f"{refused} cannot strike a cluster yet"):
            parse(tmp_path / "f.toml", text + f'\n[[faults]]\nkind = "{refused}"\nat = 0.1\n')
    parse(tmp_path / "ok.toml", text + '\n[[faults]]\nkind = "client_crash"\nat = 0.1\n')
    # A fault on one shard names a shard of the cluster; a crash is shorter than the node timeout.
    shard_faults = {
        'kind = "server_crash"\nat = 0.1\nparams = { shard = 3 }': r"has 3 shard\(s\).*0 to 2",
        'kind = "power_loss"\nat = 0.1\nduration = 20.0': "must be shorter than 'server.cluster_node_timeout_ms'",
        'kind = "cluster_failover"\nat = 0.1': "set 'server.replication_lag_ms' to 0",
    }
    for fault, message in shard_faults.items():
        with pytest.raises(ScenarioError, match=message):
            parse(tmp_path / "f.toml", text + f"\n[[faults]]\n{fault}\n")
    lagless = text.replace("[server]\n", "[server]\nreplication_lag_ms = 0.0\n")
    parsed = parse(tmp_path / "ok.toml", lagless + '\n[[faults]]\nkind = "cluster_failover"\nat = 0.1\n'
                   'params = { shard = 2 }\n[[faults]]\nkind = "server_crash"\nat = 0.1\nparams = { shard = 1 }\n')
    assert [fault.param("shard") for fault in parsed.faults] == [2, 1]
    with pytest.raises(ScenarioError, match="needs a replica"):
        parse(tmp_path / "f.toml", lagless.replace("[server]\n", "[server]\ncluster_replicas_per_primary = 0\n")
              + '\n[[faults]]\nkind = "cluster_failover"\nat = 0.1\n')
    single = SMALL.format(topology="single", extra="")
    with pytest.raises(ScenarioError, match="cluster_failover needs a Redis Cluster"):
        parse(tmp_path / "f.toml", single + '\n[[faults]]\nkind = "cluster_failover"\nat = 0.1\n')
    with pytest.raises(ScenarioError, match="one server has only shard 0"):
        parse(tmp_path / "f.toml", single + '\n[[faults]]\nkind = "server_crash"\nat = 0.1\nparams = { shard = 1 }\n')
    with pytest.raises(ScenarioError, match="without Sentinel"):
        parse(tmp_path / "s.toml", text + "\n[sentinel]\nenabled = true\n")


# -- the simulated cluster -----------------------------------------------------------------------

def test_simulated_cluster_serves_every_shard_with_zero_drift_and_the_same_counters(tmp_path):
    """Atomic strategies end at the truth on a cluster as on one server,
    every shard takes a share, and the results say the topology."""
    cluster = run_scenario(load(small(tmp_path)), ["lua", "multi", "idset"], explain=False)
    single = run_scenario(load(small(tmp_path, "single")), ["lua", "multi", "idset"], explain=False)
    for on_cluster, on_single in zip(cluster["runs"], single["runs"]):
        assert on_cluster["topology"] == "cluster" and "topology" not in on_single
        assert on_cluster["drift"]["abs_drift_sum"] == on_single["drift"]["abs_drift_sum"] == 0
        assert on_cluster["drift"]["convs_wrong"] == 0 and on_cluster["errors"] == 0
        shares = on_cluster["shard_commands"]
        assert len(shares) == 3 and min(shares.values()) > 0.2 * sum(shares.values())
    assert cluster["scenario"]["server"]["topology"] == "cluster"
    from sim.report.summary import _section
    from sim.report.table import format_topology

    printed = format_topology(cluster)
    assert printed.startswith("Redis Cluster: 3 primaries x 1 replica(s)") and "shard2" in printed
    assert format_topology(single) == ""
    assert "| strategy | shard0 | shard1 | shard2 |" in _section(cluster)


def test_untagged_total_errors_and_drifts_on_a_cluster_not_on_one_server(tmp_path):
    cluster = {run["strategy"]: run for run in
               run_scenario(load(small(tmp_path, options=UNTAGGED)), ["naive", "multi", "lua"], explain=False)["runs"]}
    single = {run["strategy"]: run for run in
              run_scenario(load(small(tmp_path, "single", options=UNTAGGED)), ["naive", "multi", "lua"],
                           explain=False)["runs"]}
    for name in ("multi", "lua"):
        assert single[name]["errors"] == 0 and single[name]["drift"]["abs_drift_sum"] == 0
        assert cluster[name]["errors"] > 0 and cluster[name]["drift"]["abs_drift_sum"] > 0
        assert cluster[name]["drift"]["undercount"] > 0
    assert set(cluster["lua"]["errors_by_kind"]) == {"CROSSSLOT"}              # every script, before it runs
    assert set(cluster["multi"]["errors_by_kind"]) <= {"CROSSSLOT", "EXECABORT"}   # a delivery's transactions
    assert cluster["naive"]["errors"] == 0   # no multi-key request: nothing to refuse


# -- the real cluster -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_cluster():
    from sim.backends.real.cluster import ClusterServers

    with ClusterServers(3, 1) as servers:
        yield servers


def flush(servers) -> None:
    for primary in servers.primaries:
        primary.client().flushall()


def sim_cluster(strategy) -> ClusterServer:
    server = make_server(ServerConfig(topology="cluster"))
    for shard in server.shards:
        for script in strategy.scripts:
            shard.scripts.load(script)
    return server


@pytest.mark.real
@pytest.mark.parametrize("name, untagged", [*((name, False) for name in ("naive", "multi", "watch", "lua", "lock",
                                                                         "lua_idempotent", "read_pointer")),
                                             *((name, True) for name in ("naive", "multi", "lua"))])
def test_one_operation_at_a_time_both_clusters_end_identical(real_cluster, name, untagged):
    """The same trace through the same strategy, one operation at a time, on
    the simulated and the real cluster: the same replies, the same counters,
    the same keys on the same shard."""
    from sim.backends.real.cluster import ClusterReader

    flush(real_cluster)
    trace = generate(load(small(Path(tempfile.mkdtemp()))).traffic, 5)
    strategy = make_strategy(name, untagged_total=untagged)
    sim = sim_cluster(strategy)
    reader = ClusterReader(real_cluster.slot_map(), strategy.scripts)
    workload = Workload(trace, strategy)
    errors: dict[str, list[str]] = {"sim": [], "real": []}   # every error reply, in order

    def counting(execute, side):
        def run(request):
            reply = execute(request)
            flat = reply if isinstance(reply, list) else [reply]
            errors[side] += [str(item) for item in flat if isinstance(item, CommandError)]
            return reply
        return run

    try:
        for op in range(len(trace.t)):
            for side, execute in (("sim", sim.inspect), ("real", reader.execute)):
                try:
                    run_now(workload.operation(op), counting(execute, side))
                except CommandError:   # a strategy that does not catch an error reply gives up
                    pass
        on_sim = read_counters(strategy, trace.users, trace.conversations, sim.inspect)
        on_real = read_counters(strategy, trace.users, trace.conversations, reader.execute)
        for field in ("entry_user", "entry_conv", "entry_value", "total"):
            assert np.array_equal(getattr(on_sim, field), getattr(on_real, field)), field
        assert on_sim.stray_keys == on_real.stray_keys == 0
        assert errors["sim"] == errors["real"]   # the same error replies, word for word
        assert bool(errors["sim"]) == (untagged and name in ("multi", "lua"))
        if name == "multi" and untagged:   # both ways a cross-slot MULTI/EXEC fails on redis 7.0
            assert set(errors["sim"]) == {CROSSSLOT, EXECABORT}
        for index, shard in enumerate(sim.shards):   # the same keys on the same shard
            address = reader.cluster.addresses[index]
            real_keys = sorted(reader._link(address).execute(("KEYS", "*")))
            assert sorted(shard.inspect(("KEYS", "*"))) == real_keys
    finally:
        reader.close()


@pytest.mark.real
def test_a_run_on_both_clusters_gives_identical_counters_and_the_same_crossslot_errors(tmp_path):
    """Whole timed runs (4 clients, pipelines split over the shards): an
    atomic strategy's counters are identical on both backends (for every
    user whose order of operations the real run pins down: nearly all), and
    so are the untagged option's errors, in number and kind."""
    from sim import backends
    from sim.runner import schedule_for

    scenario = load(small(tmp_path, options=UNTAGGED.replace("naive", "watch")))
    trace = generate(scenario.traffic, scenario.seed)
    for name, untagged in (("multi", False), ("lua", True)):   # tagged lua: the fidelity test's lua_idempotent
        strategy = make_strategy(name, untagged_total=untagged)
        executions = {}
        for backend in ("sim", "redis"):
            with backends.get(backend).deploy(scenario, schedule_for(scenario, trace)) as deployment:
                executions[backend] = deployment.run(strategy, trace, None)
        sim, real = executions["sim"].counters, executions["redis"].counters
        assert executions["redis"].history.ambiguous == 0, "a reply was lost: the real run's counters may differ"
        # Identical for every user whose truth the real run pins down; a user
        # whose delivery and read overlapped in real time (a stall of the
        # shared machine) may end either way on real servers: it is left out.
        pairs = Memberships(trace)
        truth = truth_ranges(trace, executions["redis"].history, pairs)
        pinned = truth.user_lo == truth.user_hi
        assert pinned.mean() > 0.95, f"{(~pinned).sum()} users' truth is a range"
        assert np.array_equal(sim.total[pinned], real.total[pinned]), (name, untagged)
        def entries(counters, pinned=pinned):
            keep = pinned[counters.entry_user]
            return sorted(zip(counters.entry_user[keep], counters.entry_conv[keep], counters.entry_value[keep]))
        assert entries(sim) == entries(real), (name, untagged)
        assert executions["sim"].history.errors == executions["redis"].history.errors, (name, untagged)
        assert bool(executions["sim"].history.errors) == untagged
        shards = executions["redis"].figures["shard_commands"]
        assert list(shards) == list(executions["sim"].figures["shard_commands"]) == ["shard0", "shard1", "shard2"]
        assert all(shards.values())


@pytest.mark.real
def test_a_cluster_that_fails_to_start_or_a_run_that_fails_leaves_no_process(monkeypatch):
    from sim.backends.real.cluster import ClusterServers
    from sim.backends.real.processes import ProcessError

    before = set(Path(tempfile.gettempdir()).glob("countdrift-cluster-*"))
    pids: list[int] = []

    def never_ready(self) -> bool:   # the nodes are up and joined; the cluster fails to get ready
        pids.extend(node.process.pid for node in self.nodes)
        raise ProcessError("the cluster did not come up (injected)")

    monkeypatch.setattr(ClusterServers, "ready", never_ready)
    with pytest.raises(ProcessError, match="the cluster did not come up"):
        with ClusterServers(3, 1):
            pass
    monkeypatch.undo()
    assert len(set(pids)) == 6 and not any(alive(pid) for pid in pids)
    with pytest.raises(KeyError):
        with ClusterServers(3, 1) as servers:
            pids = [node.process.pid for node in servers.nodes]
            raise KeyError("the run failed")
    assert len(pids) == 6 and not any(alive(pid) for pid in pids)
    assert set(Path(tempfile.gettempdir()).glob("countdrift-cluster-*")) <= before


def start_real_cluster_run(scenario: Path, tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    """`countdrift run` of lua on a real cluster, in a process of its own,
    once its 6 redis-servers are up: the process and their PIDs."""
    run = subprocess.Popen([sys.executable, "-m", "sim.cli", "run", str(scenario), "--backend", "redis",
                            "--strategies", "lua", "-q", "--out", str(tmp_path / "out")], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    servers: set[int] = set()
    deadline = time.monotonic() + 30
    while len(servers) < 6 and time.monotonic() < deadline and run.poll() is None:
        servers.update(pid for pid, _ in children(run.pid, ("redis-server",)))
        time.sleep(0.01)
    assert len(servers) == 6, servers
    return run, servers


@pytest.mark.real
def test_an_interrupted_cluster_run_leaves_no_server(tmp_path):
    harnesses = set()
    for signum in (signal.SIGINT, signal.SIGTERM):
        run, servers = start_real_cluster_run(CLUSTER_QUICK, tmp_path)
        harnesses.add(run.pid)
        time.sleep(0.5 if signum == signal.SIGINT else 3.0)   # while it starts, and while it runs
        run.send_signal(signum)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        assert err.strip().startswith("countdrift: interrupted;"), err
        assert not any(alive(pid) for pid in servers), "a server outlived the run"
    assert not scratch_folders_of({run.pid}), "a server folder was left"


@pytest.mark.real
def test_the_client_follows_moved_and_ask(real_cluster):
    """A client whose slot map is stale is answered MOVED, refreshes it and
    sends again; a key of a slot being migrated is answered ASK, and ASKING
    then the request runs on the importing node."""
    import asyncio

    from sim.backends.real.cluster import ClusterConnection, ClusterMap

    flush(real_cluster)
    addresses = real_cluster.addresses
    ids = [real_cluster.node_ids[primary.name] for primary in real_cluster.primaries]
    truth = SlotMap.even(3)
    far = next(user for user in range(1000) if truth.shard_of_key(keys.total(user)) == 2)
    near = next(user for user in range(1000) if truth.shard_of_key(keys.total(user)) == 0)
    moving = next(user for user in range(1000) if truth.shard_of_key(keys.total(user)) == 1)
    slot = key_slot(keys.total(moving))

    async def scenario() -> None:
        stale = ClusterMap(SlotMap([(0, SLOTS - 1, 0)]), [addresses[0]])   # "node 0 has every slot"
        client = ClusterConnection(stale)
        await client.connect(())
        try:
            assert await client.execute(("INCRBY", keys.total(far), 5)) == 5          # MOVED, followed
            assert client.redirects == 1 and stale.addresses == addresses          # the map was read again
            assert await client.execute(Pipeline((("INCRBY", keys.total(far), 1), ("INCRBY", keys.total(near), 1)))) \
                == [6, 1]
            assert client.redirects == 1                                           # no redirect with a fresh map
            # slot of `moving` leaves node 1 for node 2: a key node 1 does not hold is answered ASK
            real_cluster.primaries[2].client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[1])
            real_cluster.primaries[1].client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[2])
            assert await client.execute(("INCRBY", keys.total(moving), 7)) == 7
            assert client.redirects == 2
            on_target = real_cluster.primaries[2].client()
            assert on_target.execute_command("ASKING") and on_target.execute_command("GET", keys.total(moving)) == "7"
        finally:
            await client.close()
            for primary in real_cluster.primaries[1:]:
                primary.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            flush(real_cluster)

    asyncio.run(scenario())


def test_a_simulated_node_answers_moved_for_a_slot_it_does_not_own():
    strategy = make_strategy("lua")
    server = sim_cluster(strategy)
    user = next(user for user in range(1000) if server.slots.shard_of_key(keys.total(user)) == 1)
    assert server.inspect(("INCRBY", keys.total(user), 2)) == 2
    server.slots = SlotMap([(0, SLOTS - 1, 0)])           # as if every slot had moved to shard 0
    wrong = server.shards[1]
    reply = node_error(("GET", keys.total(user)), server.slots, 1, server.addresses)
    assert reply == f"MOVED {key_slot(keys.total(user))} shard0"
    assert wrong.inspect(("GET", keys.total(user))) == "2"    # the data has not moved: only the map


@pytest.mark.real
def test_a_pipeline_over_a_closed_link_is_refused_whole(real_cluster):
    """When one node's link is closed, a pipeline that needs it sends nothing
    anywhere (refused: surely not applied), rather than applying its other parts."""
    import asyncio

    from sim.backends.real.cluster import ClusterConnection
    from sim.client import ConnectionRefused

    flush(real_cluster)
    slots = SlotMap.even(3)
    users = [next(user for user in range(1000) if slots.shard_of_key(keys.total(user)) == shard) for shard in range(3)]

    async def scenario() -> None:
        client = ClusterConnection(real_cluster.slot_map())
        await client.connect(())
        try:
            client.links[real_cluster.addresses[2]].protocol.transport.abort()   # the link to node 2 is gone
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionRefused):
                await client.execute(Pipeline(tuple(("INCRBY", keys.total(user), 1) for user in users)))
            assert await client.execute(("GET", keys.total(users[0]))) is None   # node 0's part was not sent
        finally:
            await client.close()

    asyncio.run(scenario())


WAIT_ONE = "\n[strategy_options.lua]\nwait_replicas = 1\n"


def test_wait_on_a_simulated_cluster_asks_every_primary():
    from sim.backends.model.server import Connection

    server = make_server(ServerConfig(topology="cluster", cluster_replicas_per_primary=1, replication_lag_ms=5.0))
    client = Connection(server)
    user = 3
    shard = server.slots.shard_of_key(keys.total(user))
    entry = server.submit(client, ("INCRBY", keys.total(user), 1), 0.0)
    ready, confirmed = server.wait(client, entry.end, 1, 0.010)
    assert confirmed == 1 and ready == pytest.approx(entry.end + 0.005)   # the written shard's replica, after the lag
    server.advance(ready)
    assert server.shards[shard].requests == 2 and all(other.requests == 1 for index, other in
                                                      enumerate(server.shards) if index != shard)
    later, confirmed = server.wait(client, ready, 2, 0.010)                # more replicas than a shard has:
    assert confirmed == 1 and later == pytest.approx(ready + 0.010)        # its timeout, with the one it has


def test_wait_replicas_runs_on_a_simulated_cluster(tmp_path):
    """WAIT after each write reaches every primary; every write confirmed by one replica."""
    scenario = load(small(tmp_path, options=WAIT_ONE))
    sim = run_scenario(scenario, ["lua"], explain=False)["runs"][0]
    assert set(sim["wait_replies"]) == {"1"} and sim["errors"] == 0 and sim["drift"]["abs_drift_sum"] == 0


@pytest.mark.real
def test_wait_replicas_on_a_real_cluster(tmp_path):
    """The same on real servers: one WAIT per write, as many as simulated, nearly all confirmed."""
    scenario = load(small(tmp_path, options=WAIT_ONE))
    sim = run_scenario(scenario, ["lua"], explain=False)["runs"][0]
    real = run_scenario(scenario, ["lua"], backend="redis", explain=False)["runs"][0]
    assert real["errors"] == 0 and real["drift"]["abs_drift_sum"] == 0
    assert set(real["wait_replies"]) <= {"0", "1"}
    assert real["wait_replies"].get("1", 0) >= 0.9 * sum(real["wait_replies"].values())
    assert sum(real["wait_replies"].values()) == sum(sim["wait_replies"].values())   # one WAIT per write, both


def min_replicas(tmp_path: Path, count: int) -> Path:
    return small(tmp_path, extra=f"min_replicas_to_write = {count}")


def test_min_replicas_to_write_holds_on_every_shard(tmp_path):
    """With more replicas required than each primary has, every write is
    refused (NOREPLICAS) on every shard; with as many, none."""
    refused = run_scenario(load(min_replicas(tmp_path, 2)), ["lua", "multi"], explain=False)["runs"]
    for run in refused:
        assert set(run["errors_by_kind"]) <= {"NOREPLICAS", "EXECABORT"} and run["errors"] > 0
        assert run["drift"]["undercount"] > 0
    served = run_scenario(load(min_replicas(tmp_path, 1)), ["lua"], explain=False)["runs"][0]
    assert served["errors"] == 0 and served["drift"]["abs_drift_sum"] == 0


@pytest.mark.real
def test_min_replicas_to_write_on_a_real_cluster(tmp_path):
    scenario = load(min_replicas(tmp_path, 2))
    sim = run_scenario(scenario, ["lua"], explain=False)["runs"][0]
    real = run_scenario(scenario, ["lua"], backend="redis", explain=False)["runs"][0]
    assert real["errors_by_kind"] == sim["errors_by_kind"] and real["errors"] > 0
    # Every write is refused, so the drift is the truth's unread count at the
    # end, which depends on how reads and messages interleave: real timing
    # moves it by a unit or two (37 real against 36 simulated, once in CI).
    assert real["drift"]["overcount"] == sim["drift"]["overcount"] == 0
    assert abs(real["drift"]["abs_drift_sum"] - sim["drift"]["abs_drift_sum"]) <= 0.1 * sim["drift"]["abs_drift_sum"]


NETWORK_FAULTS = """
[[faults]]
kind = "latency"
at = 0.15
duration = 0.15
params = { delay_ms = 5.0, jitter_ms = 2.0 }
[[faults]]
kind = "partition"
at = 0.35
duration = 0.1
[[faults]]
kind = "reset_peer"
at = 0.5
duration = 0.3
params = { probability = 0.3 }
[[faults]]
kind = "blackhole"
at = 0.85
duration = 0.05
"""


def network(tmp_path: Path, options: str = "") -> Path:
    """The small cluster scenario over 1 s, with every network fault, and
    clients that time out after 200 ms and retry."""
    path = small(tmp_path, options=options + NETWORK_FAULTS)
    text = path.read_text().replace("messages = 500", "messages = 1000").replace(
        "timeout_ms = 10000.0", "timeout_ms = 200.0\nretries = 6\nbackoff_ms = 10.0")
    path.write_text(text)
    return path


def test_network_faults_strike_a_simulated_cluster(tmp_path):
    runs = run_scenario(load(network(tmp_path)), ["lua", "lua_idempotent"], explain=False)["runs"]
    for run in runs:
        assert [fault["kind"] for fault in run["faults"]] == ["latency", "partition", "reset_peer", "blackhole"]
        assert all(fault["effects"]["applied"] for fault in run["faults"])
        assert run["faults"][2]["effects"]["replies_lost"] > 0 and run["retries"] > 0
    assert runs[1]["drift"]["abs_drift_sum"] == 0   # lua_idempotent: a retried delivery counts once


@pytest.mark.real
def test_fidelity_covers_a_cluster_scenario_with_network_faults(tmp_path):
    """`countdrift fidelity` on a cluster scenario with every network fault
    (toxiproxy, a proxy from each client to each node): both backends' cells
    agree, the untagged option's CROSSSLOT drift included."""
    from sim.experiments.fidelity import run_fidelity

    scenario = load(network(tmp_path, UNTAGGED))
    document = run_fidelity([scenario], ["lua", "lua_idempotent"], None, tmp_path / "fidelity")
    assert document["disagreements"] == 0, document["cells"]
    classes = {cell["strategy"]: cell["redis"]["class"] for cell in document["cells"]}
    assert classes["lua_idempotent"] == "none" and classes["lua"] != "none"
    real = {run["strategy"]: run for run in load_json(tmp_path / "fidelity", "redis")["runs"]}
    assert real["lua_idempotent"]["client_path"] == "toxiproxy"
    assert real["lua_idempotent"]["faults"][2]["effects"]["replies_lost"] > 0


def load_json(folder: Path, backend: str) -> dict:
    import json

    return json.loads(next(folder.glob(f"*/{backend}/results.json")).read_text())


def test_the_cluster_scenarios_load_and_run():
    """scenarios/cluster_*.toml: the network one's faults all strike, and a
    strategy that counts a retried delivery once ends at zero drift."""
    network_run = run_scenario(load(ROOT / "scenarios" / "cluster_network.toml"), ["lua_idempotent"],
                               explain=False)["runs"][0]
    assert all(fault["effects"]["applied"] for fault in network_run["faults"]) and len(network_run["faults"]) == 4
    assert network_run["drift"]["abs_drift_sum"] == 0 and network_run["retries"] > 0
    assert load(CLUSTER_QUICK).strategies == tuple(STRATEGY_NAMES)
    failover = run_scenario(load(ROOT / "scenarios" / "cluster_failover.toml"), ["lua"], explain=False)["runs"][0]
    (fault,) = failover["faults"]
    effects = fault["effects"]
    assert fault["kind"] == "cluster_failover" and effects["shard"] == 1 and effects["slots"] == "5461-10922"
    low, _ = promotion_times(1.0, (0.0, 0.0, 0.0))
    _, high = promotion_times(1.0, (1.0, 1.0, 1.0))
    assert low <= effects["promoted_at"] - effects["struck_at"] <= high
    assert effects["struck_at"] + 1.0 < effects["failed_at"] < effects["promoted_at"]
    mixed = run_scenario(load(ROOT / "scenarios" / "cluster_mixed.toml"), ["lua_idempotent"], explain=False)["runs"][0]
    struck = {(fault["kind"], fault["effects"].get("shard")) for fault in mixed["faults"]
              if fault["effects"]["applied"]}
    assert {("server_crash", 0), ("power_loss", 2), ("cluster_failover", 1), ("server_crash", 2)} <= struck
    assert {kind for kind, _ in struck} >= {"client_crash", "partition", "latency", "reset_peer", "blackhole"}
    by_shard = failover["shard_drift"]   # lua: what drift there is, is on the failed shard's users
    assert list(by_shard) == ["shard0", "shard1", "shard2"]
    assert sum(figures["users"] for figures in by_shard.values()) == 300
    assert by_shard["shard0"]["abs_drift_sum"] == by_shard["shard2"]["abs_drift_sum"] == 0
    assert by_shard["shard1"]["abs_drift_sum"] == failover["drift"]["abs_drift_sum"]


STRATEGY_NAMES = ("naive", "multi", "watch", "lock", "lua", "lua_repair", "derived", "idset", "lua_idempotent")


# -- faults on one shard (issue #12, second slice) -------------------------------------------------

SHARD_FAULT = """
name = "cluster_shard_fault"
seed = 3

[traffic]
users = 150
messages = 1500
message_rate = 1000.0
groups = 0              # 1:1 conversations only: every operation touches one user, so one shard
dm_per_user = 3.0
read_probability = 0.2   # few reads: a delivery that gave up stays drift (a read would clear it)
read_delay_mean_s = 0.1
badge_probability = 0.3

[clients]
count = 16
timeout_ms = 1000.0
retries = {retries}
backoff_ms = 50.0

[server]
topology = "cluster"
cluster_node_timeout_ms = 1000.0
replication_lag_ms = 0.0

[run]
timeline_points = 2

[[faults]]
kind = "{kind}"
at = 0.4
duration = {duration}
params = {{ shard = 1{params} }}
"""


def shard_fault_run(tmp_path: Path, kind: str, backend: str) -> tuple:
    """One lua run of the small 1:1 scenario with ``kind`` on shard 1: the
    execution, and the users whose total ended outside its true range."""
    path = tmp_path / f"{kind}.toml"
    # A failover: retries for 50 + 100 + ... + 800 ms, through the cluster's CLUSTERDOWN window
    # (under 1.2 s), not through the shard's outage (over 1.6 s). A crash: the shard alone is down.
    retries = 5 if kind == "cluster_failover" else 1
    path.write_text(SHARD_FAULT.format(kind=kind, duration=2.5 if kind == "cluster_failover" else 0.5, retries=retries,
                                       params=""))
    return lua_run(path, backend)


def lua_run(path: Path, backend: str) -> tuple:
    """One lua run of the scenario at ``path``: the execution, and the
    users whose total ended outside its true range."""
    from sim import backends
    from sim.runner import schedule_for

    scenario = load(path)
    trace = generate(scenario.traffic, scenario.seed)
    with backends.get(backend).deploy(scenario, schedule_for(scenario, trace)) as deployment:
        execution = deployment.run(make_strategy("lua"), trace, None)
    truth = truth_ranges(trace, execution.history, Memberships(trace))
    total = execution.counters.total
    drifting = np.flatnonzero((total < truth.user_lo) | (total > truth.user_hi))
    return execution, drifting


@pytest.mark.real
@pytest.mark.parametrize("kind", ["server_crash", "power_loss", "cluster_failover"])
def test_a_shard_down_loses_only_its_users_writes_on_both_backends(tmp_path, kind):
    """Shard 1's primary dies (a crash and a restart; a power loss; or the
    cluster fails it over to its replica). On both backends: requests to
    shards 0 and 2 go on while it is down (their links are independent),
    the users who drift are all on shard 1 (its requests were refused until
    it was back; the cluster's CLUSTERDOWN window, which every node
    answers, is retried through), acknowledged writes are lost only by the
    power loss (the same number on both here: 120, since the last fsync),
    and the record names the shard and its slots."""
    slots = SlotMap.even(3)
    lost = {}
    for backend in ("sim", "redis"):
        execution, drifting = shard_fault_run(tmp_path, kind, backend)
        (fault,) = execution.faults
        effects = fault["effects"]
        assert effects["applied"] and effects["shard"] == 1 and effects["slots"] == "5461-10922", (backend, effects)
        lost[backend] = effects["acknowledged_writes_lost"]
        assert (lost[backend] > 0) == (kind == "power_loss"), (backend, effects)
        shards = {slots.shard_of_key(keys.total(int(user))) for user in drifting}
        assert shards <= {1}, (backend, kind, sorted(drifting), shards)
        history = execution.history
        # Shard 1's requests were refused until it was back: operations gave up (drift, unless a
        # read cleared it: under a failover 2 users of 16 operations given up, on both backends).
        assert history.outcomes()["fail"] > 10, (backend, history.outcomes())
        if backend == "sim" or kind == "server_crash":
            assert shards == {1}, (backend, kind)
        # Until the cluster flags it FAIL (a crash: until it is back), only shard 1 is down.
        until = effects["failed_at"] if kind == "cluster_failover" else effects["ended_at"]
        down = (history.complete >= effects["struck_at"]) & (history.complete < until)
        assert ((history.outcome == OK) & down).sum() > 10, (backend, "the other shards stopped serving")
        if kind == "cluster_failover":
            promotion = effects["promoted_at"] - effects["struck_at"]
            assert effects["struck_at"] < effects["failed_at"] < effects["promoted_at"], (backend, effects)
            assert 1.0 < promotion < 3.5, (backend, promotion)   # node timeout 1 s; modelled 1.66-2.76 s
    assert lost["sim"] / 2 <= lost["redis"] <= lost["sim"] * 2, lost


@pytest.mark.real
def test_a_run_interrupted_during_a_failover_leaves_no_server(tmp_path):
    """SIGINT while shard 1's primary is dead and its replica not yet
    promoted (the nemesis starts the old one again as it stops): every one
    of the 6 servers, and any restarted since, is gone, and its folder."""
    run, servers = start_real_cluster_run(ROOT / "scenarios" / "cluster_failover.toml", tmp_path)
    deadline = time.monotonic() + 30
    # The cluster joins, the run starts, the fault kills shard 1's primary 1 s into it: wait for that,
    # then interrupt half a second later (the promotion comes 1.6 s or more after the kill).
    while all(alive(pid) for pid in servers) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    assert sum(alive(pid) for pid in servers) == 5, "the fault did not kill a primary"
    time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    started = len(servers)
    while run.poll() is None and time.monotonic() < deadline + 60:   # the old primary, started again as it stops
        servers.update(pid for pid, _ in children(run.pid, ("redis-server",)))
        time.sleep(0.005)
    _, err = run.communicate(timeout=60)
    assert len(servers) >= started   # here: 7, the old primary started again as the run stopped
    assert run.returncode == 130, err
    assert err.strip().startswith("countdrift: interrupted;"), err
    assert not any(alive(pid) for pid in servers), "a server outlived the run"
    assert not scratch_folders_of({run.pid}), "a server folder was left"
