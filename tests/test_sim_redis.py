"""The simulated Redis keeps the semantics DESIGN.md lists (checked against a
real redis-server by the differential tests of the real backend)."""
from __future__ import annotations

import pytest

from sim.backends.model.server import Connection, Server, ServiceTimes
from sim.commands import CommandError, Pipeline, Script, Transaction
from sim.lua import LuaScript


@pytest.fixture
def server():
    return Server()


def run(server, request, connection=None):
    return server.run(connection or Connection(), request)


def script(server, source, keys=(), args=()):
    lua = LuaScript("test", source)
    server.scripts.load(lua)
    return run(server, Script(lua, tuple(keys), tuple(args)))


def test_multi_exec_has_no_rollback(server):
    run(server, ("SET", "s", "text"))
    replies = run(server, Transaction((("INCRBY", "a", 1), ("HSET", "s", "f", "v"), ("INCRBY", "b", 1))))
    assert replies[0] == 1 and replies[2] == 1
    assert isinstance(replies[1], CommandError) and str(replies[1]).startswith("WRONGTYPE")
    assert server.store.data["a"] == "1" and server.store.data["b"] == "1"


def test_queue_time_error_aborts_the_whole_transaction(server):
    reply = run(server, Transaction((("INCRBY", "a", 1), ("INCRBY", "b"))))
    assert isinstance(reply, CommandError) and str(reply).startswith("EXECABORT")
    assert "a" not in server.store.data


def test_script_error_after_a_write_keeps_the_write(server):
    run(server, ("SET", "s", "text"))
    reply = script(server, 'redis.call("INCRBY", KEYS[1], 5)\nredis.call("HSET", KEYS[2], "f", "v")\nreturn 1',
                   keys=("a", "s"))
    assert isinstance(reply, CommandError) and str(reply).startswith("WRONGTYPE")
    assert server.store.data["a"] == "5"


def test_pcall_returns_the_error_as_a_table(server):
    run(server, ("SET", "s", "text"))
    reply = script(server, 'local r = redis.pcall("HGET", KEYS[1], "f")\nreturn r.err', keys=("s",))
    assert reply.startswith("WRONGTYPE")


def test_lua_conversions(server):
    assert script(server, "return 3.7") == 3
    # Checked against redis-server 7.0: false is a nil element, a real nil ends the array.
    assert script(server, 'return {1, "two", false, 4}') == [1, "two", None, 4]
    assert script(server, 'return {1, "two", nil, 4}') == [1, "two"]
    assert script(server, 'return redis.call("GET", "missing") == false') == 1
    assert script(server, 'return redis.call("SET", KEYS[1], 2.0)', keys=("k",)) == "OK"
    assert server.store.data["k"] == "2"
    assert script(server, 'return redis.call("INCRBY", KEYS[1], "3")', keys=("k",)) == 5
    assert isinstance(script(server, "return {err='MY failure'}"), CommandError)


def test_evalsha_answers_noscript_after_the_cache_is_flushed(server):
    lua = LuaScript("one", "return 1")
    server.scripts.load(lua)
    assert run(server, Script(lua, ())) == 1
    run(server, ("SCRIPT", "FLUSH"))
    reply = run(server, Script(lua, ()))
    assert isinstance(reply, CommandError) and str(reply).startswith("NOSCRIPT")
    assert run(server, ("SCRIPT", "LOAD", "return 1")) == lua.sha
    assert run(server, Script(lua, ())) == 1


def test_watch_aborts_exec_when_another_client_writes(server):
    mine, theirs = Connection(), Connection()
    run(server, ("WATCH", "h"), mine)
    run(server, ("HINCRBY", "h", "f", 1), theirs)
    assert run(server, Transaction((("HDEL", "h", "f"),)), mine) is None
    assert server.store.data["h"] == {"f": "1"}
    # The failed EXEC unwatched: a second try goes through.
    run(server, ("WATCH", "h"), mine)
    assert run(server, Transaction((("HDEL", "h", "f"),)), mine) == [1]


def test_set_nx_px_expires(server):
    assert run(server, ("SET", "lock", "a", "NX", "PX", 100)) == "OK"
    assert run(server, ("SET", "lock", "b", "NX", "PX", 100)) is None
    server.store.now = 0.2
    assert run(server, ("SET", "lock", "b", "NX", "PX", 100)) == "OK"
    assert run(server, ("GET", "lock")) == "b"


def test_integer_errors(server):
    run(server, ("HSET", "h", "f", "x"))
    assert str(run(server, ("HINCRBY", "h", "f", 1))) == "ERR hash value is not an integer"
    assert str(run(server, ("INCRBY", "n", "1.5"))) == "ERR value is not an integer or out of range"


def test_fifo_queue_serialises_requests():
    server = Server(ServiceTimes(request=0.5, command=1.0, script=2.0, script_call=0.25))
    first = server.submit(Connection(), ("INCRBY", "a", 1), arrival=0.0)
    second = server.submit(Connection(), ("GET", "a"), arrival=0.5)
    third = server.submit(Connection(), Pipeline((("GET", "a"), ("GET", "a"))), arrival=5.0)
    assert (first.start, first.end) == (0.0, 1.5)         # a round trip, and a command
    assert (second.start, second.end) == (1.5, 3.0)       # waited for the first
    assert (third.start, third.end) == (5.0, 7.5)         # one round trip, two commands
    server.advance(2.0)
    assert first.reply == 1 and second.reply is None      # not committed yet
    server.advance(3.0)
    assert second.reply == "1"


def test_a_scripts_service_time_grows_with_the_calls_it_makes():
    from sim.lua import LuaScript

    server = Server(ServiceTimes(request=0.0, command=1.0, script=2.0, script_call=0.5))
    loop = LuaScript("loop", "for i = 1, tonumber(ARGV[1]) do redis.call('HINCRBY', KEYS[1], 'f', 1) end return 1")
    server.scripts.load(loop)
    request = Script(loop, ("h",), ("8",))
    assert server.service_time(request) == 2.0 + 1 * 0.5    # before it ran: the calls its text holds
    server.run(Connection(), request)
    assert server.service_time(request) == 2.0 + 8 * 0.5    # then what its runs made, on average


def test_what_a_command_walks_costs_per_element():
    """HGETALL of 10,000 fields costs 10,000 elements more than of none, and
    a script that walks a hash (HVALS) costs what its runs walked."""
    server = Server(ServiceTimes(request=1.0, command=1.0, script=1.0, script_call=0.0, element=0.01))
    connection = Connection()
    server.run(connection, ("HSET", "small", *("f", "1") * 1))
    server.run(connection, ("HSET", "big", *(str(i) for pair in range(10_000) for i in (pair, 1))))
    assert server.service_time(("HGETALL", "missing")) == 2.0
    assert server.service_time(("HGETALL", "small")) == pytest.approx(2.01)
    assert server.service_time(("HGETALL", "big")) == pytest.approx(102.0)
    assert server.service_time(("HLEN", "big")) == 2.0                      # O(1) in Redis
    assert server.service_time(Pipeline((("HVALS", "big"), ("GET", "x")))) == pytest.approx(103.0)
    summed = LuaScript("sum", "local s = 0 for _, v in ipairs(redis.call('HVALS', KEYS[1])) do s = s + v end "
                              "return s")
    server.scripts.load(summed)
    request = Script(summed, ("big",), ())
    assert server.service_time(request) == pytest.approx(2.0)                # before it ran: nothing walked
    assert server.run(connection, request) == 10_000
    assert server.service_time(request) == pytest.approx(102.0)
