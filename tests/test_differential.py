"""The same requests against the simulated Redis and a real redis-server end
in the same keys, values and replies (DESIGN.md's facts, checked at the source)."""
from __future__ import annotations

import pytest

from sim.backends.model.server import Server
from sim.backends.real.connection import SyncConnection
from sim.backends.real.deployment import Servers
from sim.commands import CommandError, Pipeline, Script, Transaction, run_now
from sim.differential import Both, normalise
from sim.lua import LuaLibrary, LuaScript, load_command
from strategies import STRATEGIES, make_strategy

pytestmark = pytest.mark.real


class BothServers(Both):
    """A fresh simulated server and the session's redis-server (emptied),
    every strategy's code loaded on both."""

    def __init__(self, real: SyncConnection) -> None:
        self.server = Server()
        self.connection = real
        real.execute(("FLUSHALL",))
        real.execute(("FUNCTION", "FLUSH"))
        for strategy in STRATEGIES.values():
            for code in (*strategy.scripts, *strategy.libraries):
                self.server.inspect(load_command(code))
                real.execute(load_command(code))
        super().__init__(self.sim_execute, real.execute)

    def sim_execute(self, request):
        if type(request) is Script and not request.script.library:
            self.server.scripts.load(request.script)
        return self.server.inspect(request)


@pytest.fixture
def both(redis_server):
    connection = SyncConnection("127.0.0.1", redis_server.port)
    yield BothServers(connection)
    connection.close()


@pytest.mark.parametrize("name, options", [*((name, {}) for name in STRATEGIES if not make_strategy(name).jobs()
                                             and not make_strategy(name).buffers),
                                           ("read_pointer", {"diffuse_above": 3}),
                                           ("lock", {"on_failure": "rollback"})], ids=str)
def test_each_strategy_ends_in_the_same_keys(both, name, options):
    strategy = make_strategy(name, **options)
    strategy.prepare([[]] * 7 + [[0, 1, 2], [0, 1, 2, 3], [0, 2]], 4)
    sequence = [
        lambda: strategy.deliver(1, 7, 0, [1, 2]),
        lambda: strategy.deliver(2, 7, 0, [1]),
        lambda: strategy.deliver(3, 8, 0, [1, 2, 3]),
        lambda: strategy.fetch_badge(1),
        lambda: strategy.open_conversation(1, 7),
        lambda: strategy.deliver(3, 8, 0, [1, 2, 3]),   # a retried delivery
        lambda: strategy.open_conversation(2, 9),    # nothing to clear
        lambda: strategy.fetch_badge(2),
        lambda: strategy.counters(1),
        lambda: strategy.open_conversation(3, 8),
        lambda: strategy.counters(3),
    ]
    for step in sequence:
        both.run(step)
    both.assert_same_state()


@pytest.mark.parametrize("name, options", [("write_behind", {"buffer_in": "app"}), ("write_behind", {}),
                                           ("async_total", {"consumers": 2, "batch": 2})], ids=str)
def test_each_background_strategy_ends_in_the_same_keys(both, name, options):
    """Two application processes and the strategy's jobs, the same steps on
    each server (each side its own strategy: a buffer in a process's memory
    is that side's); the same replies, the same keys after the last pass."""
    sides = []
    for _ in range(2):
        strategy = make_strategy(name, **options)
        strategy.prepare([[]] * 7 + [[0, 1, 2], [0, 1, 2, 3], [0, 2]], 4)
        views = [strategy.in_process(process, 2) for process in range(2)]
        jobs = [job for view in {id(view): view for view in views}.values() for job in view.jobs()]
        sides.append((strategy, views, jobs))

    def step(make):
        replies = [run_now(make(*side), execute)
                   for side, execute in zip(sides, (both.sim, both.real))]
        assert normalise(replies[0]) == normalise(replies[1])

    sequence = [
        lambda s, v, j: s.deliver(1, 7, 0, [1, 2]),
        lambda s, v, j: v[1].deliver(2, 7, 0, [1]),
        lambda s, v, j: v[0].deliver(3, 8, 0, [1, 2, 3]),
        lambda s, v, j: v[1].fetch_badge(1),
        lambda s, v, j: v[0].fetch_badge(2),
        *(lambda s, v, j, index=index: j[index].step() for index in range(len(sides[0][2]))),
        lambda s, v, j: v[1].open_conversation(1, 7),
        lambda s, v, j: v[0].deliver(4, 8, 0, [1, 2, 3]),
        lambda s, v, j: v[1].fetch_badge(3),
        lambda s, v, j: v[0].open_conversation(2, 9),
        *(lambda s, v, j, index=index: j[index].step() for index in range(len(sides[0][2]))),
        *(lambda s, v, j, index=index: j[index].step() for index in range(len(sides[0][2]))),
        lambda s, v, j: s.counters(1),
        lambda s, v, j: s.counters(3),
    ]
    for make in sequence:
        step(make)
    both.assert_same_state()


def one(request):
    def operation():
        try:
            return (yield request)
        except CommandError as error:
            return error
    return operation


def test_redis_semantics_match(both):
    error_after_write = LuaScript("half", 'redis.call("INCRBY", KEYS[1], 5)\n'
                                          'redis.call("HSET", KEYS[2], "f", "v")\nreturn 1')
    conversions = LuaScript("conv", 'return {1, "two", false, 4, 3.7, redis.call("GET", "nope")}')
    cut = LuaScript("cut", 'return {1, nil, 3}')
    requests = [
        ("SET", "s", "text"),
        Transaction((("INCRBY", "a", 1), ("HSET", "s", "f", "v"), ("INCRBY", "b", 1))),  # no rollback
        Transaction((("INCRBY", "a", 1), ("INCRBY", "b"))),                                # EXECABORT
        Script(error_after_write, ("c", "s")),                                              # keeps INCRBY
        Script(conversions, ()),
        Script(cut, ()),
        Pipeline((("HINCRBY", "h", "f", 2), ("HINCRBY", "s", "f", 1), ("HGET", "h", "f"))),
        ("HSET", "h", "g", "x"),
        ("HINCRBY", "h", "g", 1),
        ("INCRBY", "n", "1.5"),
        ("SET", "lock", "a", "NX", "PX", 100000),
        ("SET", "lock", "b", "NX", "PX", 100000),
        ("HDEL", "h", "f", "g"),
        ("SADD", "set", "x", "y"),
    ]
    for request in requests:
        both.run(one(request))
    both.assert_same_state()


def test_functions_are_data_and_scripts_a_cache():
    """FUNCTION LOAD, FCALL and FUNCTION LIST give the same replies on both
    servers; after the primary restarts from its AOF and after its replica is
    promoted, FCALL still finds the function without a reload, while EVALSHA
    answers NOSCRIPT (the simulated server: a crash, then a failover)."""
    increment = LuaScript("bump", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    library = LuaLibrary("differential", (increment,))
    function = Script(library.function(increment), ("n",), ("2",))
    cached = Script(increment, ("n",), ("3",))
    sim, connection = Server(), None
    requests = [
        ("FCALL", "bump", "1", "n", "1"),                         # not loaded yet
        load_command(library),
        load_command(library),                                    # already there
        ("FUNCTION", "LOAD", "REPLACE", library.source),
        ("FUNCTION", "LOAD", "#!lua name=other\nredis.register_function('bump', function() return 1 end)"),
        ("FUNCTION", "LOAD", "no header"),
        ("FCALL", "bump", "x", "n"),
        ("FCALL", "bump", "2", "n"),
        function,
        ("FUNCTION", "LIST", "LIBRARYNAME", "diff*"),
        ("FUNCTION", "DELETE", "nothing"),
        ("SCRIPT", "LOAD", increment.source),
        cached,
        ("FLUSHALL",),                                            # the keys go, the library stays
        function,
    ]
    with Servers(replicas=1) as servers:
        connection = SyncConnection("127.0.0.1", servers.primary.port)
        for request in requests:
            real = connection.raw(request) if type(request) is Script else connection.execute(request)
            assert normalise(sim.inspect(request)) == normalise(real), request
        servers.wait_for_replicas()
        connection.close()
        servers.primary.kill()
        servers.primary.start()
        sim.crash(1.0, 0.1, 1.0)
        connection = SyncConnection("127.0.0.1", servers.primary.port)
        for request in (function, cached, ("FUNCTION", "LIST")):
            assert normalise(sim.inspect(request)) == normalise(connection.raw(request)), request
        connection.close()
        servers.wait_for_replicas()
        servers.primary.kill()
        promoted = servers.promote()
        sim.fail_over(2.0, 0.1, 2.0)
        connection = SyncConnection("127.0.0.1", promoted.port)
        for request in (function, cached, ("FUNCTION", "LIST")):
            assert normalise(sim.inspect(request)) == normalise(connection.raw(request)), request
        assert sim.inspect(("GET", "n")) == connection.execute(("GET", "n")) == "6"   # 2 per FCALL since FLUSHALL
        connection.close()
