"""[server] min_replicas_to_write: Redis refuses writes (NOREPLICAS) while
fewer replicas are connected, on both backends alike."""
from __future__ import annotations

import pytest

from sim.backends.model.server import Connection, Server
from sim.commands import CommandError, Script, Transaction
from sim.runner import run_scenario
from sim.scenario import parse
from strategies import make_strategy

from conftest import SMALL_SCENARIO

pytestmark = pytest.mark.sentinel


def test_writes_are_refused_without_enough_replicas_and_reads_are_not():
    server = Server(replicas=1, min_replicas_to_write=2)
    connection = Connection()
    lua = make_strategy("lua")
    server.run(connection, ("SCRIPT", "LOAD", lua.scripts[0].source))
    assert str(server.run(connection, ("INCR", "x"))).startswith("NOREPLICAS")
    assert server.run(connection, ("GET", "x")) is None
    reply = server.run(connection, Script(lua.scripts[0], ("unread:{u1}", "total:{u1}"), ("7",)))
    assert isinstance(reply, CommandError) and str(reply).startswith("NOREPLICAS")
    reply = server.run(connection, Transaction((("INCR", "x"), ("INCR", "y"))))
    assert isinstance(reply, CommandError) and str(reply).startswith("EXECABORT")
    assert server.store.data == {}


def test_after_a_restart_writes_wait_for_the_replicas_cron_tick():
    server = Server(replicas=1, min_replicas_to_write=1)
    connection = Connection()
    assert server.run(connection, ("INCR", "x")) == 1
    server.crash(at=1.0, down_for=0.5, keep_until=1.0, replicas_after_s=0.3)
    server.store.now = 1.7
    assert str(server.run(connection, ("INCR", "x"))).startswith("NOREPLICAS")
    server.store.now = 1.81
    assert server.run(connection, ("INCR", "x")) == 2


def scenario(tmp_path):
    text = SMALL_SCENARIO.replace("messages = 3000", "messages = 600") + (
        "\n[server]\nreplicas = 1\nmin_replicas_to_write = 2\n")
    return parse(tmp_path / "norep.toml", text)


@pytest.mark.real
def test_every_write_is_refused_on_both_backends(tmp_path):
    """One replica where two are required: every delivery fails (NOREPLICAS,
    or EXECABORT for a transaction; lock's reads too: taking the lock is a
    write), and both backends count the same outcomes and errors."""
    names = ["naive", "lua", "watch", "lock", "lua_idempotent"]
    documents = {backend: run_scenario(scenario(tmp_path), names, backend=backend, explain=False)
                 for backend in ("sim", "redis")}
    messages = documents["sim"]["trace"]["messages"]
    for sim, real in zip(documents["sim"]["runs"], documents["redis"]["runs"]):
        assert sim["outcomes"] == real["outcomes"], sim["strategy"]
        assert sim["outcomes"]["fail"] >= messages and sim["outcomes"]["unknown"] == 0, sim["strategy"]
        assert sim["errors_by_kind"] == real["errors_by_kind"], sim["strategy"]
        assert set(sim["errors_by_kind"]) & {"NOREPLICAS", "EXECABORT"}, sim["strategy"]
