"""The remedies beside the weaknesses they fix: a fenced lock against two
holders, a lock that rolls its first write back when the second fails, a
reconciler that re-sums the totals of changed users."""
from __future__ import annotations

import dataclasses
import re

import pytest

from sim.backends.model.backend import simulate
from sim.backends.model.server import Connection, Server
from sim.backends.real.connection import SyncConnection
from sim.backends.real.deployment import Servers
from sim.commands import CommandError, run_now
from sim.lua import load_command
from sim.runner import run_scenario, schedule_for
from sim.scenario import Scenario, load, parse
from strategies import keys, make_strategy
from strategies.base import StrategyOptionError
from strategies.reconciler import mark

from conftest import ROOT, short_trace

PAUSES = ROOT / "scenarios" / "faults_client_pause.toml"


def model_of(strategy) -> tuple[Server, callable]:
    server, connection = Server(), Connection()
    for code in strategy.code:
        server.run(connection, load_command(code))
    return server, lambda request: server.run(connection, request)


def test_a_stale_lock_holder_is_refused_and_starts_over():
    """A reads user 1's conversation under token 1; its lock expires; B
    takes the lock (token 2) and delivers; A's clear is refused (it would
    erase B's message and subtract only what A read), so A takes the lock
    again and clears what is there now."""
    strategy = make_strategy("lock_fenced")
    server, execute = model_of(strategy)
    run_now(strategy.deliver(1, 7, 0, [1]), execute)
    reader = strategy.open_conversation(1, 7)
    assert execute(next(reader)) == 2              # token 2 (the delivery took 1)
    assert reader.send(2) == ("HGET", keys.unread(1), "7")
    clear = reader.send(execute(("HGET", keys.unread(1), "7")))
    execute(("DEL", keys.lock(1)))                 # its TTL ran out while it was paused
    run_now(strategy.deliver(2, 7, 0, [1]), execute)   # a second holder, token 3
    assert execute(clear) == [0, 0]                # refused; the release found the lock not its own
    again = reader.send([0, 0])                    # it starts over
    assert run_now(_resumed(reader, again), execute) == 2
    assert keys.unread(1) not in server.store.data
    assert server.store.data[keys.total(1)] == "0"
    assert server.store.data[keys.fence(1)]["refused"] == "1"


def _resumed(operation, first_request):
    """An operation already started, its next request ``first_request``."""
    reply = yield first_request
    while True:
        try:
            reply = yield operation.send(reply)
        except StopIteration as stop:
            return stop.value


@pytest.mark.parametrize("on_failure, consistent", [("rollback", True), ("retry", False)])
def test_a_lock_holder_whose_second_write_fails(on_failure, consistent):
    """The total is not a number (a planted wrong value): every delivery's
    INCRBY is refused. Retried three times, then the value is mended: with
    rollback the conversation's count went back each time, with retry it
    kept each attempt's HINCRBY."""
    strategy = make_strategy("lock", on_failure=on_failure)
    server, execute = model_of(strategy)
    execute(("SET", keys.total(1), "not a number"))
    replies = []

    def recorded(request):
        replies.append(execute(request))
        return replies[-1]
    for _ in range(3):
        try:
            run_now(strategy.deliver(1, 7, 0, [1]), recorded)
        except CommandError:
            pass
    assert sum(isinstance(item, CommandError) for reply in replies if isinstance(reply, list) for item in reply) == 3
    execute(("SET", keys.total(1), "0"))
    counts, total, _ = run_now(strategy.counters(1), execute)
    assert (sum(counts.values()) == total) is consistent, (counts, total)
    assert keys.lock(1) not in server.store.data   # released every time


def test_a_fenced_lock_keeps_every_user_consistent_through_pauses_longer_than_its_ttl():
    """faults_client_pause (pauses of 2 s, the lock's TTL 1 s): lock leaves
    users inconsistent through two holders at once; lock_fenced has two
    holders too (its fences refused stale writes) and no user inconsistent."""
    scenario = load(PAUSES)
    trace = short_trace(scenario)
    schedule = schedule_for(scenario, trace)
    driver, _ = simulate(scenario, trace, make_strategy("lock_fenced"), schedule)
    refused = sum(int(value.get("refused", 0)) for key, value in driver.server.store.data.items()
                  if key.startswith("lock:fence:"))
    assert refused > 0
    document = run_scenario(scenario, ["lock", "lock_fenced"], trace, explain=False)
    runs = {run["strategy"]: run for run in document["runs"]}
    assert runs["lock"]["drift"]["users_inconsistent"] > 0
    assert runs["lock_fenced"]["drift"]["users_inconsistent"] == 0
    assert runs["lock_fenced"]["strategy_figures"] == {"fenced_off": refused}   # results say it too
    assert "strategy_figures" not in runs["lock"]


@pytest.mark.real
def test_a_fenced_lock_keeps_every_user_consistent_on_real_servers():
    scenario = load(PAUSES)
    document = run_scenario(scenario, ["lock_fenced"], short_trace(scenario), backend="redis", explain=False)
    run = document["runs"][0]
    assert [fault["effects"]["applied"] for fault in run["faults"]] == [True] * len(run["faults"])
    assert run["drift"]["users_inconsistent"] == 0, run["drift"]
    assert run["strategy_figures"]["fenced_off"] >= 0   # read back from the real fences


@pytest.mark.real
@pytest.mark.parametrize("on_failure, consistent", [("rollback", True), ("retry", False)])
def test_a_lock_holder_whose_second_write_fails_on_a_real_server(on_failure, consistent):
    strategy = make_strategy("lock", on_failure=on_failure)
    with Servers(appendonly=False) as servers:
        connection = SyncConnection("127.0.0.1", servers.primary.port)
        connection.load(strategy.code)
        connection.execute(("SET", keys.total(1), "not a number"))
        for _ in range(3):
            try:
                run_now(strategy.deliver(1, 7, 0, [1]), connection.execute)
            except CommandError:
                pass
        connection.execute(("SET", keys.total(1), "0"))
        counts, total, _ = run_now(strategy.counters(1), connection.execute)
        connection.close()
    assert (sum(counts.values()) == total) is consistent, (counts, total)


def test_the_reconciler_overwrites_the_totals_of_the_users_that_changed():
    """A total left wrong (a change cut in half) is put right by the next
    pass, once an operation on that user marked it changed; users nobody
    marked are left as they are."""
    strategy = make_strategy("naive", reconcile_every_s=1.0)
    server, execute = model_of(strategy)
    (reconciler,) = strategy.shared_jobs()
    for user in (1, 2):
        run_now(strategy.deliver(1, 7, 0, [user]), execute)
        execute(("INCRBY", keys.total(user), 5))       # the total gone wrong, as half a change leaves it
    execute(mark([1]))
    assert run_now(reconciler.step(), execute) == 1
    assert run_now(reconciler.step(), execute) == 0   # nothing left to take
    assert [run_now(strategy.counters(user), execute)[1] for user in (1, 2)] == [1, 6]


@pytest.mark.parametrize("name, options, allowed", [
    ("lua", {"reconcile_every_s": -1.0}, "must be between 0 and 3600"),
    ("lua", {"reconcile_every_s": float("nan")}, "must be between 0 and 3600"),
    ("lua", {"reconcile_every_s": 0.001}, "must be 0 (off) or at least 0.01"),
    ("derived", {"reconcile_every_s": 1.0}, "it keeps no total to reconcile"),
    ("lock", {"on_failure": "undo"}, "must be one of retry, rollback"),
])
def test_a_remedy_option_out_of_bounds_is_refused_in_one_line(name, options, allowed):
    with pytest.raises(StrategyOptionError) as refused:
        make_strategy(name, **options)
    message = str(refused.value)
    assert allowed in message and f"'{name}'" in message and "\n" not in message


def halved(path) -> Scenario:
    """The scenario at half its length (messages and every fault's time)."""
    text = path.read_text().replace("messages = 10000", "messages = 5000")
    text = re.sub(r"(?m)^at = ([\d.]+)$", lambda found: f"at = {float(found.group(1)) / 2:g}", text)
    return parse(path, text)


def test_a_reconciler_leaves_only_the_drift_it_cannot_repair():
    """faults_mixed at half length, simulated: with a reconciler every
    second naive has no inconsistent user left and less drift; what
    remains for both is in the counts themselves (messages lost from both
    counters), which re-summing cannot bring back."""
    scenario = halved(ROOT / "scenarios" / "faults_mixed.toml")
    trace = short_trace(scenario)
    runs = {}
    for every in (0.0, 1.0):
        scenario = dataclasses.replace(scenario, strategy_options={name: {"reconcile_every_s": every}
                                                                   for name in ("naive", "lua")})
        document = run_scenario(scenario, ["naive", "lua"], trace, explain=False)
        runs[every] = {run["strategy"]: run for run in document["runs"]}
    before, after = runs[0.0], runs[1.0]
    assert before["naive"]["drift"]["users_inconsistent"] > 0
    assert after["naive"]["drift"]["users_inconsistent"] == 0
    assert after["naive"]["drift"]["abs_drift_sum"] < before["naive"]["drift"]["abs_drift_sum"]
    for name in ("naive", "lua"):
        assert after[name]["workers"]["passes"] > 0 and after[name]["workers"]["items"] > 0
        assert after[name]["drift"]["abs_drift_sum"] > 0   # lost from the counts: nothing to re-sum
