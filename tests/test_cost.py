"""`countdrift cost`: what an operation costs, the same count on both backends."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim import backends
from sim.experiments.cost import (
    HEAVY_BADGE,
    HEAVY_CONVERSATIONS,
    HEAVY_OPEN,
    KINDS,
    RECONCILE,
    Scale,
    format_cost,
    measure,
)
from strategies import STRATEGIES

REPEATS = 20
# The real comparison fills users less far than `countdrift cost` does, for the suite's time
# (the heavy user's 10,000 deliveries and the memory at 10,000 unread took 30 of its 33 s).
SMALL = Scale(heavy_conversations=100, heavy_unread=1_000, unread_levels=(10, 100, 2_000))


@pytest.fixture(scope="module")
def simulated() -> dict:
    return measure(list(STRATEGIES), backends.get("sim").cost_target, "sim", REPEATS)


def test_round_trips_and_commands_follow_each_strategys_requests(simulated):
    rows = {name: row["kinds"] for name, row in simulated["strategies"].items()}
    assert rows["naive"]["deliver 1:1"]["round_trips"] == 1 and rows["naive"]["deliver 1:1"]["commands"] == 2
    assert rows["naive"]["open conversation (5 unread)"]["round_trips"] == 3   # HGET, HDEL, DECRBY
    assert rows["lock"]["deliver 1:1"]["round_trips"] == 2                     # SET NX, then the writes and release
    # One EVALSHA per recipient, each running HINCRBY and INCRBY: commandstats counts 3 per recipient.
    assert rows["lua"]["deliver group 100"]["commands"] == 300
    assert rows["lua"]["deliver group 100"]["round_trips"] == 1
    # Read positions: one script of two commands (HINCRBY, INCR) whatever the group's size.
    pointer = rows.pop("read_pointer")
    assert {pointer[kind]["commands"] for kind in ("deliver 1:1", "deliver group 10", "deliver group 100")} == {3}
    assert pointer["deliver group 100"]["round_trips"] == 1
    assert pointer["deliver group 100"]["bytes_in"] < 1.1 * pointer["deliver group 10"]["bytes_in"]   # ids' digits
    assert pointer["fetch badge"]["commands"] == 2   # GET the count and HGET the position: one conversation
    assert pointer[HEAVY_BADGE]["commands"] == 2 * HEAVY_CONVERSATIONS   # and for each of a heavy user's
    assert pointer[HEAVY_BADGE]["round_trips"] == 1
    # What walks a user's data costs per element: HVALS over 1,000 conversations, the ids of 10,000 unread.
    assert rows["derived"][HEAVY_BADGE]["server_us"] > 5 * rows["derived"]["fetch badge"]["server_us"]
    assert rows["idset"][HEAVY_OPEN]["server_us"] > 10 * rows["idset"]["open conversation (5 unread)"]["server_us"]
    assert rows["lua"][HEAVY_BADGE]["server_us"] == rows["lua"]["fetch badge"]["server_us"]   # a GET is a GET
    # Background work is shared by the operations that caused it: a flush, a recount.
    assert rows["write_behind"]["deliver 1:1"]["commands"] > 2 and rows["async_total"]["deliver 1:1"]["commands"] > 3
    for name, kinds in rows.items():
        group = kinds["deliver group 100"]
        assert group["server_us"] > kinds["deliver group 10"]["server_us"] > 0, name   # work grows with the fan-out
        assert group["bytes_in"] > 50 * kinds["deliver 1:1"]["bytes_in"], name
    assert all(row["memory_bytes_per_user"] == {"10": None, "100": None, "10000": None}
               for row in simulated["strategies"].values())     # the simulation does not model memory
    assert "not modelled" in format_cost(simulated)


def test_cost_command_writes_its_table(tmp_path):
    out = tmp_path / "cost"
    done = subprocess.run([sys.executable, "-m", "sim.cli", "cost", "--strategies", "lua,idset", "--repeats", "3",
                           "--out", str(out), "-q"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "cost.json").read_text())
    assert set(document["strategies"]) == {"lua", "idset"}
    assert set(document["strategies"]["lua"]["kinds"]) == {kind.label for kind in KINDS} | {HEAVY_BADGE, HEAVY_OPEN,
                                                                                              RECONCILE}
    assert RECONCILE not in document["strategies"]["idset"]["kinds"]   # it keeps no total
    assert "deliver group 100" in done.stdout


@pytest.mark.real
def test_real_server_counts_what_the_simulation_counts():
    """Round trips, commands (INFO commandstats) and bytes each way agree
    with the simulation for every strategy and operation kind; memory grows
    with unread messages only where the strategy keeps one key or field per
    message."""
    simulated = measure(list(STRATEGIES), backends.get("sim").cost_target, "sim", REPEATS, scale=SMALL)
    real = measure(list(STRATEGIES), backends.get("redis").cost_target, "redis", REPEATS, scale=SMALL)
    for name in STRATEGIES:
        for label, expected in simulated["strategies"][name]["kinds"].items():
            measured = real["strategies"][name]["kinds"][label]
            # (a stream entry's id takes each server's clock: async_total's bytes differ by their digits)
            for figure in ("round_trips", "commands", *(("bytes_in", "bytes_out") if name != "async_total" else ())):
                assert measured[figure] == expected[figure], (name, label, figure, measured, expected)
            assert measured["server_us"] > 0, (name, label)
    memory = {name: row["memory_bytes_per_user"] for name, row in real["strategies"].items()}
    for name in ("idset", "lua_idempotent"):     # an id, or a dedup key, per unread message
        assert memory[name]["2000"] > 10 * memory[name]["100"] > 0, (name, memory[name])
    for name in ("naive", "lua", "lock"):        # ten counts and a total, whatever their values
        assert memory[name]["2000"] < 2 * memory[name]["10"], (name, memory[name])
