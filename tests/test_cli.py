"""The command line: a good run writes results.json and a table; a bad
scenario names the file, the key and what is allowed, and writes nothing."""
from __future__ import annotations

import json

import pytest

from sim.cli import main
from strategies import STRATEGIES


def test_run_writes_results_and_prints_a_table(small_scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(small_scenario), "--strategies", "naive,lua", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "lua" in printed and "inconsistent" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["backend"] == "sim"
    assert [run["strategy"] for run in results["runs"]] == ["naive", "lua"]
    for key in ("messages", "operations", "duration_s", "throughput_ops_per_s", "latency_ms",
                "faults", "drift", "retries", "ambiguous", "errors", "timeline"):
        assert key in results["runs"][0]
    assert (out / "trace.npz").exists()
    # The saved trace replays to the same results.
    again = tmp_path / "again"
    assert main(["run", str(small_scenario), "--strategies", "naive,lua", "--out", str(again),
                 "--trace", str(out / "trace.npz"), "-q"]) == 0
    replay = json.loads((again / "results.json").read_text())
    assert replay["runs"][0]["drift"] == results["runs"][0]["drift"]


BAD = [
    ("[traffic]\nuserz = 10\n", ["traffic.userz", "did you mean 'users'", "allowed in [traffic]"]),
    ("[traffic]\nusers = \"many\"\n", ["traffic.users", "must be an integer", "'many'"]),
    ("[traffic]\nread_probability = 1.5\n", ["traffic.read_probability", "between 0 and 1"]),
    ("strategies = [\"lua\", \"luaa\"]\n", ["strategies", "'luaa'", "did you mean 'lua'", "allowed: naive"]),
    ("[clients]\ncount = 0\n", ["clients.count", "between 1 and 100,000"]),
    ("[[strategies]]\nname = \"lua\"\n", ["strategies", "by name", "[strategy_options.<name>]"]),
    ("[strategy_options.write_behind]\nflush_ms = 0\n", ["strategy_options.write_behind", "flush_ms", "between"]),
    ("[strategy_options.write_behind]\nbuffer_in = \"disk\"\n", ["write_behind", "buffer_in", "app, redis"]),
    ("[strategy_options.async_total]\nconsumers = 0\n", ["async_total", "consumers", "between 1 and 64"]),
    ("[strategy_options.lock]\nttl = 5\n", ["strategy_options.lock", "ttl", "allowed: backoff_ms"]),
    ("sead = 3\n", ["'sead'", "did you mean 'seed'"]),
    ("[traffic\n", ["not valid TOML"]),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_bad_scenario_is_explained_and_writes_nothing(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    error = capsys.readouterr().err
    assert str(path) in error
    for fragment in expected:
        assert fragment in error
    assert not out.exists()


def test_unknown_strategy_on_the_command_line(small_scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(small_scenario), "--strategies", "lua,paxos", "--out", str(out)]) == 2
    assert "paxos" in capsys.readouterr().err
    assert not out.exists()


def test_missing_scenario_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_list_names_every_strategy_and_fault(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name in STRATEGIES:
        assert name in printed
    for kind in ("client_crash", "mid_script_power_loss", "failover", "blackhole"):
        assert kind in printed


def test_a_scenario_keeps_its_name_whatever_its_strategy_options(tmp_path):
    from sim.scenario import parse

    text = 'name = "mine"\n[strategy_options.lock]\nttl_ms = 500\n[strategy_options.watch]\nmax_attempts = 3\n'
    assert parse(tmp_path / "s.toml", text).name == "mine"


def test_bench_prints_each_strategy_against_bare_simpy_and_the_structure_alone(small_scenario, capsys):
    assert main(["bench", "--scenario", str(small_scenario), "--strategies", "naive,lua", "--events", "20000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bare = next(line for line in lines if line.startswith("bare SimPy:"))
    assert "(16 processes)" in bare   # the scenario's clients
    floor = next(line for line in lines if line.startswith("the driver's structure alone"))
    assert float(floor.rsplit("ratio ", 1)[1]) > 0
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["naive"], ["lua"])}
    assert set(rows) == {"naive", "lua"}
    for name, (wall, requests, request_ratio, commands, _command_ratio) in rows.items():
        assert float(wall) > 0 and float(request_ratio) > 0
        # A script's redis.call commands count as commands: more of them than requests for lua.
        more = int(commands.replace(",", "")) > int(requests.replace(",", ""))
        assert more == (name == "lua"), (name, requests, commands)


def test_the_bench_floor_does_every_operation_it_times():
    from sim.backends.model.bench import time_structure

    done, seconds = time_structure(1003, 7)   # operations dealt unevenly to the processes
    assert done == 1003 and seconds > 0
