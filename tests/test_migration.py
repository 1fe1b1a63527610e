"""Live slot migration on a cluster (the slot_migration fault): what a node
answers while a slot moves, checked against redis-server 7.0, the keys it
moves, and the fault's run on both backends."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from sim.backends.model.backend import make_server
from sim.backends.model.migration import SCRIPT_NON_LOCAL, SlotMigration
from sim.backends.model.server import Connection
from sim.cluster import SlotMap, key_slot, migrating_slots
from sim.commands import CommandError, Pipeline, Script, Transaction
from sim.lua import LuaScript
from sim.runner import run_scenario
from sim.scenario import ScenarioError, ServerConfig, load, parse
from strategies import keys, make_strategy

from conftest import ROOT

pytestmark = pytest.mark.cluster

MIGRATION = ROOT / "scenarios" / "cluster_migration.toml"
DELIVER = make_strategy("lua").scripts[0]
# deletes its key, then reads it: the second call is checked on its own (script.c)
DELETE_THEN_READ = LuaScript("delete_then_read", "redis.call('DEL', KEYS[1]) return redis.call('GET', KEYS[1])")
MOVING = next(user for user in range(1000) if SlotMap.even(2).shard_of_key(keys.total(user)) == 0)
SLOT = key_slot(keys.total(MOVING))
SPARE = f"spare:{{u{MOVING}}}"


def requests_while_the_slot_is_open() -> list[tuple[str, str, object]]:
    """(node, what, request): node "source" or "target", what "plain" or
    "asking" (ASKING first, on the same connection). The user has a total
    and no unread hash (every conversation read)."""
    unread, total = keys.unread(MOVING), keys.total(MOVING)
    return [
        ("source", "plain", ("GET", total)),                                  # it has the key: served
        ("source", "plain", ("HGET", unread, "7")),                            # it lacks it: ASK
        ("source", "plain", Script(DELIVER, (unread, total), ("7",))),         # one of two: TRYAGAIN
        ("source", "plain", Transaction((("HINCRBY", unread, "7", 1), ("INCRBY", total, 1)))),  # EXECABORT
        ("source", "plain", Script(DELETE_THEN_READ, (SPARE,), ())),          # the script's own GET
        ("target", "plain", ("GET", total)),                                  # not without ASKING: MOVED
        ("target", "asking", ("HINCRBY", unread, "7", 1)),                     # one key: served, created there
        ("target", "asking", Script(DELIVER, (unread, total), ("7",))),        # lacks the total: TRYAGAIN
    ]


def comparable(reply: object) -> object:
    """A redirection without its address (the simulation names shards,
    redis-server host:port), the script error without its sha and line."""
    if isinstance(reply, CommandError):
        words = str(reply).split()
        if words[0] in ("ASK", "MOVED"):
            return " ".join(words[:2])
        if str(reply).startswith(SCRIPT_NON_LOCAL):
            return SCRIPT_NON_LOCAL
        return str(reply)
    return reply


def simulated_replies() -> list[object]:
    cluster = make_server(ServerConfig(topology="cluster", cluster_primaries=2, cluster_replicas_per_primary=0))
    for shard in cluster.shards:
        for script in (DELIVER, DELETE_THEN_READ):
            shard.scripts.load(script)
    cluster.inspect(("SET", keys.total(MOVING), "3"))
    cluster.inspect(("SET", SPARE, "1"))
    cluster.migration = SlotMigration(cluster, 0, 1, [SLOT])
    replies = []
    for node, what, request in requests_while_the_slot_is_open():
        shard = cluster.shards[0 if node == "source" else 1]
        if what == "asking":
            replies.append(shard.run(Connection(shard), Pipeline((("ASKING",), request)))[1])
        else:
            replies.append(shard.run(Connection(shard), request))
    # the total alone: the script deleted the spare key, ASKING made the unread hash on the target
    assert cluster.migration.move(SLOT, 1.0) == 1
    assert (cluster.inspect(("GET", keys.total(MOVING))) == "3"
            and cluster.inspect(("HGET", keys.unread(MOVING), "7")) == "1")
    assert cluster.slots.shard_of(SLOT) == 1 and cluster.migration is None
    return [comparable(reply) for reply in replies]


def test_the_simulated_nodes_answer_by_the_keys_each_holds():
    assert simulated_replies() == [
        "3", f"ASK {SLOT}", "TRYAGAIN Multiple keys request during rehashing of slot",
        "EXECABORT Transaction discarded because of previous errors.", SCRIPT_NON_LOCAL,
        f"MOVED {SLOT}", 1, "TRYAGAIN Multiple keys request during rehashing of slot"]


@pytest.mark.real
def test_redis_server_answers_what_the_simulated_nodes_answer():
    from sim.backends.real.cluster import ClusterServers
    from sim.backends.real.connection import SyncConnection

    with ClusterServers(2, 0) as servers:
        source, target = servers.primaries
        ids = servers.node_ids
        links = {"source": SyncConnection("127.0.0.1", source.port), "target": SyncConnection("127.0.0.1", target.port)}
        try:
            for link in links.values():
                link.load((DELIVER, DELETE_THEN_READ))
            links["source"].execute(("SET", keys.total(MOVING), "3"))
            links["source"].execute(("SET", SPARE, "1"))
            target.client().execute_command("CLUSTER", "SETSLOT", SLOT, "IMPORTING", ids[source.name])
            source.client().execute_command("CLUSTER", "SETSLOT", SLOT, "MIGRATING", ids[target.name])
            replies = []
            for node, what, request in requests_while_the_slot_is_open():
                if what == "asking":
                    replies.append(links[node].execute(Pipeline((("ASKING",), request)))[1])
                else:
                    replies.append(links[node].execute(request))
        finally:
            for link in links.values():
                link.close()
    assert [comparable(reply) for reply in replies] == simulated_replies()


def test_the_slots_moved_are_those_of_the_shards_lowest_users():
    slots = SlotMap.even(3)
    moved = migrating_slots(300, slots, 0, 4)
    assert len(moved) == 4 and all(slots.shard_of(slot) == 0 for slot in moved)
    first = next(user for user in range(300) if slots.shard_of_key(keys.total(user)) == 0)
    assert moved[0] == key_slot(keys.total(first))
    assert migrating_slots(3, slots, 0, 100) == [slot for slot in (key_slot(f"{{u{user}}}") for user in range(3))
                                                 if slots.shard_of(slot) == 0]
    given = SlotMap.even(3)
    given.give(moved[0], 2)
    assert given.shard_of(moved[0]) == 2 and given.shard_of(moved[0] - 1) == 0 == given.shard_of(moved[0] + 1)


BASE = MIGRATION.read_text()


@pytest.mark.parametrize("change, message", [
    ("params = { shard = 0, to_shard = 1, slots = 32 }", None),
    ("params = { shard = 1, to_shard = 1, slots = 32 }", "'faults[0].params.to_shard' is 1"),
    ("params = { shard = 0, to_shard = 3, slots = 32 }", "below 'server.cluster_primaries' (3)"),
])
def test_a_migration_goes_to_another_shard_of_the_cluster(tmp_path, change, message):
    path = tmp_path / "migration.toml"
    path.write_text(BASE.replace("params = { shard = 0, to_shard = 1, slots = 32 }", change))
    if message is None:
        assert load(path).faults[0].kind == "slot_migration"
        return
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load(path)


def test_a_migration_needs_a_cluster_and_one_at_a_time(tmp_path):
    single = BASE.replace('topology = "cluster"', 'topology = "single"').replace(
        "cluster_primaries = 3\ncluster_replicas_per_primary = 1\n", "")
    with pytest.raises(ScenarioError, match="slot_migration needs a Redis Cluster"):
        parse(tmp_path / "single.toml", single)
    twice = BASE + '\n[[faults]]\nkind = "slot_migration"\nat = 2.0\nduration = 1.0\n'
    with pytest.raises(ScenarioError, match="one slot_migration at a time"):
        parse(tmp_path / "twice.toml", twice)
    drawn = BASE + '\n[[fault_rates]]\nkind = "slot_migration"\nper_minute = 1.0\nduration = 1.0\n'
    with pytest.raises(ScenarioError, match="cannot be drawn at a rate"):
        parse(tmp_path / "drawn.toml", drawn)


def test_a_simulated_migration_moves_the_keys_and_a_split_user_fails_not_drifts():
    """lua on the migration scenario: every key of the moved slots ends on
    the target, scripts on a user split across the two nodes fail with
    TRYAGAIN (known failures: no drift), and the fault says what it moved."""
    run = run_scenario(load(MIGRATION), ["lua"], explain=False)["runs"][0]
    (fault,) = run["faults"]
    effects = fault["effects"]
    assert effects["applied"] and effects["ended_at"] == pytest.approx(3.0)
    assert len(effects["slots"].split(",")) == 32 and effects["keys_moved"] > 32
    assert set(run["errors_by_kind"]) == {"TRYAGAIN"} and run["errors"] > 0
    assert run["drift"]["abs_drift_sum"] == 0
    # Its users are counted on the shard that holds their keys when the run ends.
    scenario = load(MIGRATION)
    moved = set(migrating_slots(scenario.traffic.users, SlotMap.even(3), effects["shard"], 32))
    users = sum(key_slot(keys.total(user)) in moved for user in range(scenario.traffic.users))
    even = {f"shard{shard}": count for shard, count in enumerate(
        np.bincount([SlotMap.even(3).shard_of_key(keys.total(user)) for user in range(scenario.traffic.users)]))}
    shard = f"shard{effects['shard']}"
    assert users > 0 and run["shard_drift"][shard]["users"] == even[shard] - users
    assert run["shard_drift"][f"shard{effects['to_shard']}"]["users"] == even[f"shard{effects['to_shard']}"] + users


@pytest.mark.real
@pytest.mark.slow   # 26 s of the suite's time; the migration's mechanics are compared on both backends above
def test_fidelity_covers_the_migration_scenario(tmp_path):
    """`countdrift fidelity` on the migration scenario: both backends move
    the same keys (give or take the few that a delivery racing a slot's move
    creates on one side first: 43 vs 44 was seen on a loaded machine), fail
    about as many operations the same way (within 2x: each slot's move falls
    a few ms apart from the traffic), and agree."""
    from sim.experiments.fidelity import run_fidelity

    scenario = load(MIGRATION)
    document = run_fidelity([scenario], ["lua", "multi"], None, tmp_path)
    assert document["disagreements"] == 0, document["cells"]
    runs = {backend: {run["strategy"]: run for run in json.loads(
        (tmp_path / f"cluster_migration-s{scenario.seed}" / backend / "results.json").read_text())["runs"]}
        for backend in ("sim", "redis")}
    # fidelity judges the simulation's users' values as a client could (a real run is judged so already)
    assert all("seen_client_view" in run for run in runs["sim"].values())
    assert not any("seen_client_view" in run for run in runs["redis"].values())
    for name in ("lua", "multi"):
        sim, real = runs["sim"][name], runs["redis"][name]
        moved = sim["faults"][0]["effects"]["keys_moved"], real["faults"][0]["effects"]["keys_moved"]
        assert min(moved) > 0 and abs(moved[0] - moved[1]) <= max(2, 0.05 * moved[0]), moved
        kind = {"lua": "TRYAGAIN", "multi": "EXECABORT"}[name]
        assert set(sim["errors_by_kind"]) == {kind}, sim["errors_by_kind"]
        # on real servers nearly all of that kind (a redirection's race with a slot's move may add one)
        assert real["errors_by_kind"].get(kind, 0) >= 0.95 * real["errors"], real["errors_by_kind"]
        assert real["errors"] / 2 <= sim["errors"] <= real["errors"] * 2
