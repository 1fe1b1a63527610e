"""Each strategy's commands and Lua, run through the simulated Redis (Lua 5.1
via lupa), leave exactly the state a hand-checked sequence predicts."""
from __future__ import annotations

import pytest

from sim.backends.model.server import Connection, Server
from sim.commands import run_now
from strategies import STRATEGIES, make_strategy

COUNTER_STRATEGIES = ["naive", "multi", "watch", "lock", "lua", "lua_repair", "lua_idempotent"]


def play(name: str, **options):
    """Deliver m1 (conv 7) to users 1 and 2, m2 (conv 7) and m3 (conv 8) to
    user 1; user 1 opens conv 7; returns the server and the strategy."""
    server = Server()
    strategy = make_strategy(name, **options)
    for script in strategy.scripts:
        server.scripts.load(script)
    connection = Connection()

    def execute(request):
        return server.run(connection, request)

    run_now(strategy.deliver(1, 7, [1, 2]), execute)
    run_now(strategy.deliver(2, 7, [1]), execute)
    run_now(strategy.deliver(3, 8, [1]), execute)
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
    run_now(strategy.deliver(3, 8, [1]), execute)
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 1, 0)


def test_lua_idempotent_counts_a_retried_delivery_once():
    server, strategy, execute = play("lua_idempotent")
    run_now(strategy.deliver(3, 8, [1]), execute)  # the retry of m3
    assert counter_keys(server)["unread:{u1}"] == {"8": "1"}
    assert server.store.data["total:{u1}"] == "1"
    assert server.store.data["seen:{u1}:3"] == "1"
    assert server.store.expires["seen:{u1}:3"] == pytest.approx(86400)


def test_lua_counts_a_retried_delivery_twice():
    server, strategy, execute = play("lua")
    run_now(strategy.deliver(3, 8, [1]), execute)
    assert server.store.data["total:{u1}"] == "2"


def test_lua_repair_overwrites_a_wrong_total():
    server, strategy, execute = play("lua_repair")
    server.store.data["total:{u1}"] = "40"
    run_now(strategy.deliver(4, 8, [1]), execute)
    assert server.store.data["total:{u1}"] == "2"
    assert server.store.data["unread:{u1}"] == {"8": "2"}


def test_lua_repair_leaves_users_with_many_conversations_alone():
    server, strategy, execute = play("lua_repair", repair_max_conversations=0)
    server.store.data["total:{u1}"] = "40"
    run_now(strategy.deliver(4, 8, [1]), execute)
    assert server.store.data["total:{u1}"] == "41"


def test_every_strategy_is_covered():
    assert set(COUNTER_STRATEGIES) | {"derived", "idset"} == set(STRATEGIES)
