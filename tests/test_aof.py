"""A torn AOF tail, in the simulation and on redis-server 7: what the
restart after the tear loads, and what every later restart loads.

The simulation's file (sim/backends/model/aof.py) is checked against the
behaviour measured on redis-server 7.0.15, then the same sequences run on a
real server through the harness's power-loss emulation (kill, truncate,
restart) must give the same counters."""
from __future__ import annotations

import pytest

from sim.backends.model.aof import AppendOnlyFile
from sim.backends.model.store import Store
from sim.commands import wire_size

SCRIPT_WRITES = [("HINCRBY", "h", "f", "1"), ("INCRBY", "t", "1")]   # one lua delivery's effects


def counters(store: Store) -> tuple[int, int]:
    return int(store.data.get("h", {}).get("f", 0)), int(store.data.get("t", 0))


def file_with_scripts(count: int) -> AppendOnlyFile:
    aof = AppendOnlyFile()
    for index in range(count):
        aof.append(float(index), SCRIPT_WRITES)
    return aof


def into_the_last_block(aof: AppendOnlyFile, extra: int) -> int:
    """A length that keeps the last block's MULTI and HINCRBY, and ``extra`` bytes of its INCRBY."""
    before = aof.size
    block = wire_size(("MULTI",)) + sum(map(wire_size, SCRIPT_WRITES)) + wire_size(("EXEC",))
    return before - block + wire_size(("MULTI",)) + wire_size(SCRIPT_WRITES[0]) + extra


def test_a_tear_inside_a_block_loads_correctly_but_leaves_a_dangling_multi():
    aof = file_with_scripts(3)
    aof.cut(into_the_last_block(aof, 10))
    store = Store()
    effects = aof.load(store)
    assert counters(store) == (2, 2) and effects["aof_truncated"] == 1
    assert [line.words[0] for line in aof.lines[-2:]] == ["MULTI", "HINCRBY"]   # dangling on disk


def dangling() -> tuple[AppendOnlyFile, Store]:
    """Three scripts, the last torn inside its block, loaded once: a dangling MULTI on disk."""
    aof = file_with_scripts(3)
    aof.cut(into_the_last_block(aof, 10))
    store = Store()
    aof.load(store)
    return aof, store


def test_after_a_dangling_multi_a_later_script_resurrects_half_of_the_torn_one():
    aof, store = dangling()
    aof.append(10.0, SCRIPT_WRITES)          # one more delivery after the restart
    effects = aof.load(store)                # a plain crash and restart: nothing cut
    assert counters(store) == (4, 3)         # the torn script's HINCRBY came back without its INCRBY
    assert effects["aof_nested_multi"] == 1
    assert counters(Store()) == (0, 0)
    again = Store()
    aof.load(again)
    assert counters(again) == (4, 3)         # and at every later restart


def test_after_a_dangling_multi_plain_writes_are_reverted_at_the_next_restart():
    aof, store = dangling()
    aof.append(10.0, [("INCRBY", "t", "100")])   # acknowledged after the restart
    effects = aof.load(store)
    assert counters(store) == (2, 2)             # gone from memory...
    assert effects["aof_multi_reverted"] == 1
    assert [line.words[0] for line in aof.lines][-1] == "EXEC"   # ...and from disk: back to before the MULTI


def test_a_tear_on_a_command_boundary_inside_a_block_is_reverted_at_once():
    aof = file_with_scripts(3)
    aof.cut(into_the_last_block(aof, 0))
    store = Store()
    effects = aof.load(store)
    assert counters(store) == (2, 2) and effects["aof_multi_reverted"] == 1
    aof.append(10.0, [("INCRBY", "t", "100")])
    aof.load(store)
    assert counters(store) == (2, 102)           # clean from then on


def test_a_tear_inside_a_plain_command_drops_only_that_command():
    aof = AppendOnlyFile()
    for index in range(3):
        aof.append(float(index), [("INCRBY", "t", "1")])
    aof.cut(aof.offset_at(2.0) - 5)
    store = Store()
    aof.load(store)
    assert counters(store) == (0, 2)
    aof.append(10.0, [("INCRBY", "t", "100")])
    aof.load(store)
    assert counters(store) == (0, 102)


@pytest.mark.real
@pytest.mark.parametrize("then, expected", [("script", (4, 3)), ("plain", (2, 2))])
def test_redis_server_does_what_the_simulation_predicts(tmp_path, then, expected):
    """The same sequence on redis-server 7, torn by the harness's emulation."""
    from sim.backends.real.nemesis import growing_aof
    from sim.backends.real.processes import RedisServer
    from strategies.lua import DELIVER

    server = RedisServer("torn", tmp_path / "torn", {"appendonly": "yes", "appendfsync": "always"})
    server.start()
    try:
        client = server.client()
        sha = client.script_load(DELIVER.source)
        for _ in range(2):
            client.evalsha(sha, 2, "h", "t", "f")
        aof, before = growing_aof(server.aof_folder)
        client.evalsha(sha, 2, "h", "t", "f")
        server.kill()
        with open(aof, "r+b") as handle:     # MULTI and HINCRBY whole, 10 bytes of INCRBY
            handle.truncate(before + wire_size(("MULTI",)) + wire_size(("HINCRBY", "h", "f", "1")) + 10)
        server.start()
        client = server.client()
        assert (int(client.hget("h", "f")), int(client.get("t"))) == (2, 2)
        if then == "script":
            client.eval(DELIVER.source, 2, "h", "t", "f")   # the script cache did not survive the restart
        else:
            client.incrby("t", 100)
        server.kill()
        server.start()
        client = server.client()
        assert (int(client.hget("h", "f")), int(client.get("t"))) == expected
        server.kill()
        server.start()
        assert (int(server.client().hget("h", "f")), int(server.client().get("t"))) == expected
    finally:
        server.stop()


def test_the_growing_aof_is_found_while_a_rewrite_removes_files(tmp_path, monkeypatch):
    """A rewrite may remove an incremental file between the listing and its
    stat (a fidelity run died of it): the file that is gone is skipped."""
    import os
    from pathlib import Path

    from sim.backends.real.nemesis import growing_aof

    old, new = tmp_path / "appendonly.aof.1.incr.aof", tmp_path / "appendonly.aof.2.incr.aof"
    old.write_bytes(b"x" * 10)
    new.write_bytes(b"y" * 7)
    os.utime(old, (1, 1))
    stat = Path.stat

    def removed_meanwhile(path, *args, **kwargs):
        if path.name == old.name:
            raise FileNotFoundError(path)
        return stat(path, *args, **kwargs)

    assert growing_aof(tmp_path) == (new, 7)
    monkeypatch.setattr(Path, "stat", removed_meanwhile)
    assert growing_aof(tmp_path) == (new, 7)
    new.unlink()
    assert growing_aof(tmp_path) is None
