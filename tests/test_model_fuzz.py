"""The simulated Redis against redis-server, command by command: sequences
of every command the model implements, drawn by Hypothesis over a small
keyspace (wrong types, numbers that are not integers or overflow, MULTI/EXEC
with a command Redis refuses, small scripts), must give the same replies
(an error by its prefix) and leave the same keys on both.

CI draws FUZZ_EXAMPLES sequences (default 40); ``scripts/fuzz_model``
draws many more and prints how many of each command it ran."""
from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.backends.model.server import Server
from sim.backends.real.connection import SyncConnection
from sim.commands import CommandError, Script, Transaction, run_now
from sim.lua import LuaScript

pytestmark = pytest.mark.real

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
RAN: Counter[str] = Counter()     # commands run, by name (the long run prints them)

KEYS = st.sampled_from(["a", "b", "c"])
FIELDS = st.sampled_from(["f", "g"])
VALUES = st.sampled_from(["1", "-3", "0", "x", "", "2.5", "9223372036854775807", "-9223372036854775808"])
AMOUNTS = st.sampled_from(["1", "-1", "7", "x", "1.5", "9223372036854775807", "-9223372036854775808"])
SECONDS = st.sampled_from(["100", "0", "-1", "x"])
IDS = st.sampled_from(["1-1", "1-2", "2", "3-0", "0-0", "1-*", "x"])
GROUPS = st.sampled_from(["g", "h"])
CONSUMERS = st.sampled_from(["c1", "c2"])

COMMANDS = st.one_of(
    st.tuples(st.just("GET"), KEYS),
    st.tuples(st.just("SET"), KEYS, VALUES),
    st.tuples(st.just("SET"), KEYS, VALUES, st.sampled_from(["NX", "XX"])),
    st.tuples(st.just("SET"), KEYS, VALUES, st.just("PX"), st.sampled_from(["100000", "0", "x"])),
    # Options two at a time, of one kind or two (NX with XX, EX with PX or KEEPTTL: a syntax error), and GET.
    st.tuples(st.just("SET"), KEYS, VALUES, st.sampled_from(["NX", "XX", "GET", "KEEPTTL", "EX", "PX"]),
              st.sampled_from(["NX", "XX", "GET", "KEEPTTL"])),
    st.tuples(st.just("SET"), KEYS, VALUES, st.sampled_from(["EX", "PX"]), st.just("100000"),
              st.sampled_from(["PX", "KEEPTTL", "GET", "NX"]), st.just("100000")),

    st.tuples(st.just("INCR"), KEYS),
    st.tuples(st.just("INCRBY"), KEYS, AMOUNTS),
    st.tuples(st.just("DECRBY"), KEYS, AMOUNTS),
    st.tuples(st.just("DEL"), KEYS),
    st.tuples(st.just("DEL"), KEYS, KEYS),
    st.tuples(st.just("EXISTS"), KEYS, KEYS),
    st.tuples(st.just("TYPE"), KEYS),
    st.tuples(st.just("EXPIRE"), KEYS, SECONDS),
    st.tuples(st.just("PEXPIRE"), KEYS, SECONDS),
    st.tuples(st.just("HGET"), KEYS, FIELDS),
    st.tuples(st.just("HSET"), KEYS, FIELDS, VALUES),
    st.tuples(st.just("HSET"), KEYS, FIELDS, VALUES, FIELDS, VALUES),
    st.tuples(st.just("HDEL"), KEYS, FIELDS),
    st.tuples(st.just("HDEL"), KEYS, FIELDS, FIELDS),
    st.tuples(st.just("HINCRBY"), KEYS, FIELDS, AMOUNTS),
    st.tuples(st.just("HGETALL"), KEYS),
    st.tuples(st.just("HVALS"), KEYS),
    st.tuples(st.just("HKEYS"), KEYS),
    st.tuples(st.just("HLEN"), KEYS),
    st.tuples(st.just("HEXISTS"), KEYS, FIELDS),
    st.tuples(st.just("SADD"), KEYS, VALUES),
    st.tuples(st.just("SADD"), KEYS, VALUES, VALUES),
    st.tuples(st.just("SREM"), KEYS, VALUES),
    st.tuples(st.just("SISMEMBER"), KEYS, VALUES),
    st.tuples(st.just("SMEMBERS"), KEYS),
    st.tuples(st.just("SCARD"), KEYS),
    st.tuples(st.just("SPOP"), KEYS, st.sampled_from(["10", "0", "-1", "x"])),   # all of it: random order otherwise
    # Streams and consumer groups, with ids given (a "*" id takes each server's clock).
    st.tuples(st.just("XADD"), KEYS, IDS, FIELDS, VALUES),
    st.tuples(st.just("XADD"), KEYS, st.just("NOMKSTREAM"), IDS, FIELDS, VALUES),
    st.tuples(st.just("XADD"), KEYS, st.just("MAXLEN"), st.sampled_from(["1", "2", "x"]), IDS, FIELDS, VALUES),
    st.tuples(st.just("XLEN"), KEYS),
    st.tuples(st.just("XRANGE"), KEYS, st.just("-"), st.just("+")),
    st.tuples(st.just("XRANGE"), KEYS, IDS, st.just("+"), st.just("COUNT"), st.sampled_from(["1", "0"])),
    st.tuples(st.just("XDEL"), KEYS, IDS),
    st.tuples(st.just("XGROUP"), st.just("CREATE"), KEYS, GROUPS, st.sampled_from(["0", "$", "1-1", "x"])),
    st.tuples(st.just("XGROUP"), st.just("CREATE"), KEYS, GROUPS, st.sampled_from(["0", "$"]), st.just("MKSTREAM")),
    st.tuples(st.just("XGROUP"), st.just("DESTROY"), KEYS, GROUPS),
    st.tuples(st.just("XREADGROUP"), st.just("GROUP"), GROUPS, CONSUMERS, st.just("COUNT"),
              st.sampled_from(["1", "2", "0"]), st.just("STREAMS"), KEYS, st.sampled_from([">", "0", "1-1"])),
    st.tuples(st.just("XREADGROUP"), st.just("GROUP"), GROUPS, CONSUMERS, st.just("STREAMS"), KEYS, st.just(">")),
    st.tuples(st.just("XACK"), KEYS, GROUPS, IDS),
    st.tuples(st.just("XACK"), KEYS, GROUPS, IDS, IDS),
    st.tuples(st.just("XAUTOCLAIM"), KEYS, GROUPS, CONSUMERS, st.just("0"), st.sampled_from(["0-0", "1-2", "x"]),
              st.just("COUNT"), st.sampled_from(["1", "5", "0"])),
    st.tuples(st.just("XAUTOCLAIM"), KEYS, GROUPS, CONSUMERS, st.just("0"), st.just("0-0"), st.just("JUSTID")),
    st.tuples(st.just("XAUTOCLAIM"), KEYS, GROUPS, CONSUMERS, st.just("3600000"), st.just("0-0")),
    st.tuples(st.just("XPENDING"), KEYS, GROUPS),
)
# A script runs one drawn command through redis.call (an error inside it ends
# the script with what ran so far kept), or two, returning the last reply.
ONE_CALL = LuaScript("one_call", "return redis.call(unpack(ARGV))")
TWO_CALLS = LuaScript("two_calls", 'redis.call(ARGV[1], KEYS[1], ARGV[2])\nreturn redis.call("TYPE", KEYS[1])')
# Lua bodies beyond one call: how numbers come back (NaN, out of range,
# fractions), what pcall and error() give, an argument that is a number, the
# helpers Redis's Lua has; each may run a drawn command first.
LUA_BODIES = st.sampled_from([
    "return 0/0", "return 1/0", "return -1e20", "return 3.99", "return {1, 2.5, -3.9, 'x', false}",
    "return type(ARGV[1])", "return tonumber(ARGV[1]) or -1", "return redis.call()",
    "local ok, e = pcall(redis.call, 'INCR', KEYS[1]) return {ok and 1 or 0, type(e)}",
    "local ok, e = pcall(redis.call, 'INCR', KEYS[1]) if ok then return e end return redis.error_reply(e)",
    "error({err = 'MYCODE failed on purpose'})", "error('a script of its own')",
    "return redis.pcall('INCR', KEYS[1])", "return redis.sha1hex(ARGV[1])",
    "return redis.status_reply('FINE')", "return redis.call('TYPE', KEYS[1])",
])
LUA = st.tuples(LUA_BODIES, KEYS, st.one_of(VALUES, st.integers(-3, 3)), st.booleans()).map(
    lambda drawn: Script(LuaScript("body", ("redis.call('INCR', KEYS[1])\n" if drawn[3] else "") + drawn[0]),
                         (drawn[1],), (drawn[2],)))
# The server's own commands inside MULTI: WATCH refused at once (the rest runs), UNWATCH and SCRIPT queued.
SERVER_IN_MULTI = st.sampled_from([("WATCH", "a"), ("UNWATCH",), ("SCRIPT", "LOAD", "return 1"), ("watch", "b")])
REQUESTS = st.one_of(
    COMMANDS,
    LUA,
    st.tuples(COMMANDS, SERVER_IN_MULTI, COMMANDS).map(lambda drawn: Transaction(drawn)),
    st.lists(COMMANDS, min_size=1, max_size=3).map(lambda commands: Transaction(tuple(commands))),
    st.lists(COMMANDS, min_size=1, max_size=3).map(
        lambda commands: Transaction((*commands, ("INCRBY", "a")))),          # a command Redis refuses: EXECABORT
    COMMANDS.map(lambda command: Script(ONE_CALL, (), command)),
    st.tuples(KEYS, st.sampled_from(["INCR", "HLEN", "SCARD", "GET"]), VALUES).map(
        lambda drawn: Script(TWO_CALLS, (drawn[0],), (drawn[1], drawn[2])) if drawn[1] != "INCR"
        else Script(TWO_CALLS, (drawn[0],), ("INCRBY", drawn[2]))),
)
# Redis's order is its encoding's (or random: SPOP), not part of the contract.
UNORDERED = {"HGETALL", "HVALS", "HKEYS", "SMEMBERS", "SPOP"}


def normalise(reply, command: tuple | None = None):
    if isinstance(reply, CommandError):
        return ("error", str(reply).split(" ", 1)[0])
    if isinstance(reply, list):
        items = [normalise(item) for item in reply]
        if command and command[0] == "HGETALL":
            return sorted(zip(items[::2], items[1::2]))
        return sorted(items, key=repr) if command and command[0] in UNORDERED else items
    return reply


def normalise_reply(request, reply):
    """A request's reply, each command's part in its own terms."""
    if type(request) is Transaction and isinstance(reply, list):
        return [normalise(item, command) for item, command in zip(reply, request.commands)]
    return normalise(reply, request if type(request) is tuple else request.args if type(request) is Script else None)


def keyspace(execute) -> dict:
    """Every key's type, value and whether it has a TTL; a stream's entries
    and what its groups have pending (XPENDING's summary: ids and owners)."""
    state = {}
    for key in sorted(execute(("KEYS", "*"))):
        kind = execute(("TYPE", key))
        read = {"string": ("GET", key), "hash": ("HGETALL", key), "set": ("SMEMBERS", key),
                "stream": ("XRANGE", key, "-", "+")}[kind]
        value = normalise(execute(read), read)
        if kind == "stream":
            value = [value, *(normalise(reply_of(("XPENDING", key, group), execute)) for group in ("g", "h"))]
        state[key] = (kind, value, execute(("PTTL", key)) > 0)
    return state


def reply_of(request, execute):
    def operation():
        try:
            return (yield request)
        except CommandError as error:
            return error
    return run_now(operation(), execute)


def name_of(request) -> str:
    if type(request) is tuple:
        return request[0]
    if type(request) is Transaction:
        return "MULTI/EXEC"
    return f"script {request.script.name}"


def compare(sim: Server, real: SyncConnection, requests: list) -> None:
    real.execute(("UNWATCH",))   # (the connection is shared: an earlier sequence may have left a WATCH)
    real.execute(("FLUSHALL",))
    sim.inspect(("FLUSHALL",))
    for request in requests:
        RAN[name_of(request)] += 1
        if type(request) is Script:
            sim.scripts.load(request.script)
        expected = normalise_reply(request, reply_of(request, real.execute))
        assert normalise_reply(request, reply_of(request, sim.inspect)) == expected, (request, requests)
    assert keyspace(sim.inspect) == keyspace(real.execute), requests


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A redis-server of this module's own (a test that stops every server
    the session started, as an interrupted run does, stops the session's)."""
    from sim.backends.real.processes import RedisServer

    server = RedisServer("fuzz", tmp_path_factory.mktemp("fuzz"), {"appendonly": "no"})
    server.start()
    connection = SyncConnection("127.0.0.1", server.port)
    for script in (ONE_CALL, TWO_CALLS):
        connection.execute(("SCRIPT", "LOAD", script.source))
    yield connection
    connection.close()
    server.stop()


@pytest.mark.parametrize("requests", [
    [("SET", "a", "1", "PX", "100000"), ("SET", "a", "2", "KEEPTTL", "GET"), ("GET", "a")],
    [("SET", "a", "1", "NX", "XX"), ("SET", "a", "1", "EX", "1", "PX", "1"), ("SET", "a", "1", "KEEPTTL", "EX", "1")],
    [("SADD", "b", "x"), ("SET", "b", "1", "GET"), ("SET", "c", "1", "NX", "GET"), ("SET", "c", "2", "NX", "GET")],
    [("watch", "a"), ("unwatch",), ("Watch", "a", "b")],
    [Script(ONE_CALL, (), ("WATCH", "a")), Script(ONE_CALL, (), ("unwatch",)), ("SET", "a", "1")],
])
def test_set_options_and_commands_in_lower_case_as_redis_server_takes_them(real, requests):
    compare(Server(), real, requests)


@pytest.mark.parametrize("requests", [
    [Script(LuaScript("nan", "return 0/0"), (), ()), Script(LuaScript("none", "return redis.call()"), (), ())],
    [Script(LuaScript("arg", "return {type(ARGV[1]), ARGV[1]}"), (), (5,)),
     Script(LuaScript("arg", "return {type(ARGV[1]), ARGV[1]}"), (), (0.1,))],
    [("SADD", "s", "x"), Script(LuaScript("pcall", "local ok, e = pcall(redis.call, 'INCR', KEYS[1]) "
                                                   "return {ok and 1 or 0, type(e)}"), ("s",), ())],
    [Script(LuaScript("table", "error({err = 'MYCODE boom'})"), (), ()),
     Script(LuaScript("sha", "return redis.sha1hex('abc')"), (), ())],
    [("SET", "a", "1"), Transaction((("INCR", "a"), ("WATCH", "a"), ("UNWATCH",), ("SCRIPT", "LOAD", "return 1"))),
     ("GET", "a")],
    [Script(LuaScript("arity", "return redis.call('GET')"), (), ()),
     Script(LuaScript("unknown", "return redis.call('NOSUCH', 'a')"), (), ()),
     Script(LuaScript("coded", "error('MYCODE x', 0)"), (), ()), Script(LuaScript("plain", "error('boom', 0)"), (), ()),
     Script(LuaScript("caught", "local ok, e = pcall(function() error(redis.error_reply('XY z')) end) return e"),
            (), ())],
])
def test_the_lua_and_multi_cases_the_fuzz_found_answer_as_redis_server_does(real, requests):
    compare(Server(), real, requests)


@pytest.mark.parametrize("request_, refused", [
    (("INCRBYFLOAT", "a", "1.5"), "INCRBYFLOAT: a Redis command the simulated server does not have"),
    (Script(LuaScript("json", "return cjson.encode({1, 2})"), (), ()), "the Lua library cjson"),
    (Script(LuaScript("bits", "local ok = pcall(function() return bit.band(1, 3) end) return 1"), (), ()),
     "the Lua library bit"),
    (Script(LuaScript("float", "return redis.pcall('INCRBYFLOAT', 'a', '1')"), (), ()), "INCRBYFLOAT"),
    (Script(LuaScript("repl", "redis.set_repl(redis.REPL_ALL) return 1"), (), ()), "redis.set_repl"),
    (("SELECT", "1"), "SELECT 1: databases other than 0"),
])
def test_what_the_model_lacks_is_refused_as_not_modelled_never_answered_otherwise(request_, refused):
    from sim.errors import NotModelled

    server = Server()
    if type(request_) is Script:
        server.scripts.load(request_.script)
    with pytest.raises(NotModelled, match=refused):
        server.inspect(request_)
    assert str(Server().inspect(("NOSUCHCOMMAND", "a"))) == "ERR unknown command 'NOSUCHCOMMAND'"


def test_a_set_at_a_wall_clock_moment_is_refused_as_not_modelled():
    from sim.errors import NotModelled

    with pytest.raises(NotModelled, match="not modelled by the simulation: SET ... EXAT"):
        Server().inspect(("SET", "a", "1", "EXAT", "99999999999"))


def test_the_model_answers_as_redis_server_does(real):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(REQUESTS, min_size=1, max_size=12))
    def same(requests):
        compare(Server(), real, requests)

    same()
    if os.environ.get("FUZZ_EXAMPLES"):
        print("\n" + "\n".join(f"  {name:<20}{count:>8}" for name, count in sorted(RAN.items())))
