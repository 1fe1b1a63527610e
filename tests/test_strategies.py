"""Each strategy's commands and Lua, run through the simulated Redis (Lua 5.1
via lupa), leave exactly the state a hand-checked sequence predicts."""
from __future__ import annotations

import pytest

from sim.backends.model.server import Connection, Server
from sim.commands import run_now
from sim.lua import load_command
from strategies import STRATEGIES, make_strategy

COUNTER_STRATEGIES = ["naive", "multi", "watch", "lock", "lua", "lua_repair", "lua_idempotent", "function",
                      "lock_fenced"]


def served(strategy):
    """A simulated server with the strategy's scripts, and a way to run its requests."""
    server = Server()
    connection = Connection()
    for code in strategy.code:
        server.run(connection, load_command(code))

    def execute(request):
        return server.run(connection, request)
    return server, execute


def play(name: str, **options):
    """Deliver m1 (conv 7) to users 1 and 2, m2 (conv 7) and m3 (conv 8) to
    user 1; user 1 opens conv 7; returns the server and the strategy."""
    strategy = make_strategy(name, **options)
    server, execute = served(strategy)
    run_now(strategy.deliver(1, 7, 0, [1, 2]), execute)
    run_now(strategy.deliver(2, 7, 0, [1]), execute)
    run_now(strategy.deliver(3, 8, 0, [1]), execute)
    run_now(strategy.open_conversation(1, 7), execute)
    return server, strategy, execute


def counter_keys(server: Server) -> dict:
    return {key: value for key, value in server.store.data.items()
            if key.startswith(("unread:", "total:", "ids:"))}


@pytest.mark.parametrize("name", COUNTER_STRATEGIES)
def test_counter_strategies_leave_the_expected_keys(name):
    server, strategy, execute = play(name)
    assert counter_keys(server) == {
        "unread:{u1}": {"8": "1"},
        "total:{u1}": "1",
        "unread:{u2}": {"7": "1"},
        "total:{u2}": "1",
    }
    assert run_now(strategy.fetch_badge(1), execute) == 1
    assert run_now(strategy.counters(2), execute) == ({7: 1}, 1, 0)


def test_lock_strategy_releases_its_locks():
    server, _, _ = play("lock")
    assert not [key for key in server.store.data if key.startswith("lock:")]


def test_derived_keeps_no_total():
    server, strategy, execute = play("derived")
    assert counter_keys(server) == {"unread:{u1}": {"8": "1"}, "unread:{u2}": {"7": "1"}}
    assert run_now(strategy.fetch_badge(1), execute) == 1


def test_idset_keeps_message_ids():
    server, strategy, execute = play("idset")
    assert counter_keys(server) == {"ids:{u1}": {"3": "8"}, "ids:{u2}": {"1": "7"}}
    assert run_now(strategy.fetch_badge(1), execute) == 1
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 1, 0)
    # Delivering again sets the same field: counted once.
    run_now(strategy.deliver(3, 8, 0, [1]), execute)
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 1, 0)


def test_lua_idempotent_counts_a_retried_delivery_once():
    server, strategy, execute = play("lua_idempotent")
    run_now(strategy.deliver(3, 8, 0, [1]), execute)  # the retry of m3
    assert counter_keys(server)["unread:{u1}"] == {"8": "1"}
    assert server.store.data["total:{u1}"] == "1"
    assert server.store.data["seen:{u1}:3"] == "1"
    assert server.store.expires["seen:{u1}:3"] == pytest.approx(86400)


def test_lua_counts_a_retried_delivery_twice():
    server, strategy, execute = play("lua")
    run_now(strategy.deliver(3, 8, 0, [1]), execute)
    assert server.store.data["total:{u1}"] == "2"


def test_lua_repair_overwrites_a_wrong_total():
    server, strategy, execute = play("lua_repair")
    server.store.data["total:{u1}"] = "40"
    run_now(strategy.deliver(4, 8, 0, [1]), execute)
    assert server.store.data["total:{u1}"] == "2"
    assert server.store.data["unread:{u1}"] == {"8": "2"}


def test_lua_repair_leaves_users_with_many_conversations_alone():
    server, strategy, execute = play("lua_repair", repair_max_conversations=0)
    server.store.data["total:{u1}"] = "40"
    run_now(strategy.deliver(4, 8, 0, [1]), execute)
    assert server.store.data["total:{u1}"] == "41"


def play_positions(**options):
    """Conversation 7: users 0, 1, 2; conversation 8: users 0 and 1. m1 (7)
    from 0, m2 (7) from 1, m3 (8) from 0; user 1 opens 7."""
    strategy = make_strategy("read_pointer", **options)
    strategy.prepare([[]] * 7 + [[0, 1, 2], [0, 1]], 3)
    server, execute = served(strategy)
    run_now(strategy.deliver(1, 7, 0, [1, 2]), execute)
    run_now(strategy.deliver(2, 7, 1, [0, 2]), execute)
    run_now(strategy.deliver(3, 8, 0, [1]), execute)
    shown = run_now(strategy.open_conversation(1, 7), execute)
    return server, strategy, execute, shown


def test_read_pointer_keeps_a_count_per_conversation_and_a_position_per_member():
    server, strategy, execute, shown = play_positions()
    assert shown == 1   # m1: m2 is its own
    data = server.store.data
    assert {key: value for key, value in data.items() if key.startswith(("seq:", "read:"))} == {
        "seq:{c7}": "2", "read:{c7}": {"0": "1", "1": "2"},   # a sender's position moves past its message
        "seq:{c8}": "1", "read:{c8}": {"0": "1"}}
    assert not [key for key in data if key.startswith(("unread:", "total:"))]
    assert [run_now(strategy.fetch_badge(user), execute) for user in range(3)] == [1, 1, 2]
    assert run_now(strategy.counters(2), execute) == ({7: 2}, 2, 0)
    assert run_now(strategy.counters(0), execute) == ({7: 1}, 1, 0)   # m2 unread, m1 and m3 its own


def test_read_pointer_keeps_counters_for_conversations_up_to_diffuse_above():
    server, strategy, execute, shown = play_positions(diffuse_above=2)
    assert shown == 1
    data = server.store.data
    assert data["unread:{u1}"] == {"8": "1"} and data["total:{u1}"] == "1"   # conversation 8: two members
    assert "seq:{c8}" not in data and data["seq:{c7}"] == "2"
    assert [run_now(strategy.fetch_badge(user), execute) for user in range(3)] == [1, 1, 2]
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 1, 0)
    server.store.data["total:{u1}"] = "5"   # the counters' total wrong: inconsistent, as lua's would be
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 5, 0)


def test_read_pointer_delivers_to_any_group_in_one_script_of_two_commands():
    strategy = make_strategy("read_pointer")
    members = [list(range(size)) for size in (2, 50, 5000)]
    strategy.prepare(members, 5000)
    for conversation, its_members in enumerate(members):
        request = next(strategy.deliver(1, conversation, its_members[0], its_members[1:]))
        assert request.keys == ("seq:{c%d}" % conversation, "read:{c%d}" % conversation)


def test_every_strategy_is_covered():
    assert set(COUNTER_STRATEGIES) | {"derived", "idset", "read_pointer", "write_behind", "async_total"} == \
        set(STRATEGIES)   # (the last two: tests/test_background.py)


@pytest.mark.parametrize("value, allowed", [(-1, "must be between 0 and"), (2.5, "must be int")])
def test_read_pointer_refuses_a_diffuse_above_out_of_bounds_or_of_the_wrong_type(value, allowed):
    from strategies.base import StrategyOptionError

    with pytest.raises(StrategyOptionError, match=f"option 'diffuse_above' of strategy 'read_pointer' {allowed}"):
        make_strategy("read_pointer", diffuse_above=value)


def test_big_groups_costs_read_pointer_fewer_commands_than_lua_and_both_are_exact():
    """scenarios/big_groups.toml at a twentieth of its messages: groups of up
    to 5,000 that talk. A delivery is one script for read_pointer and one
    per recipient for lua; badges sum over conversations; neither drifts
    nor shows a wrong value."""
    from sim.runner import run_scenario
    from sim.scenario import parse

    from conftest import ROOT

    path = ROOT / "scenarios" / "big_groups.toml"
    scenario = parse(path, path.read_text().replace("messages = 10000", "messages = 500"))
    assert scenario.traffic.max_group_size == 5000
    runs = {run["strategy"]: run for run in run_scenario(scenario, ["lua", "read_pointer"], explain=False)["runs"]}
    assert runs["read_pointer"]["redis_commands"] < 0.9 * runs["lua"]["redis_commands"], runs
    for run in runs.values():
        assert run["drift"]["abs_drift_sum"] == 0 and run["seen"]["badges_wrong"] == run["seen"]["opens_wrong"] == 0
