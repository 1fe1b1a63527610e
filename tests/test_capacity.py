"""Closed-loop load and capacity: what a strategy sustains, not what the
trace offered."""
from __future__ import annotations

import dataclasses

import pytest

from sim.capacity import closed_loop, measure
from sim.cli import main
from sim.runner import run_scenario
from sim.scenario import load, parse

from conftest import ROOT, SMALL_SCENARIO


def test_a_closed_loop_runs_as_fast_as_its_clients_can(tmp_path):
    scenario = parse(tmp_path / "small.toml", SMALL_SCENARIO)
    offered = run_scenario(scenario, ["lua"], explain=False)["runs"][0]
    fast = run_scenario(closed_loop(scenario, 16), ["lua"], explain=False)["runs"][0]
    slow = run_scenario(closed_loop(scenario, 2), ["lua"], explain=False)["runs"][0]
    assert fast["options"]["load"] == "closed" and fast["faults"] == []
    assert fast["operations"] == offered["operations"]
    assert fast["throughput_ops_per_s"] > 5 * offered["throughput_ops_per_s"]   # not the offered rate
    assert fast["throughput_ops_per_s"] > 4 * slow["throughput_ops_per_s"]
    assert fast["latency_ms"]["p50"] < 1.0   # from invocation: no backlog counted as latency
    assert fast["drift"]["abs_drift_sum"] == 0


def test_think_time_slows_a_closed_loop(tmp_path):
    scenario = closed_loop(parse(tmp_path / "small.toml", SMALL_SCENARIO), 4)
    thinking = dataclasses.replace(scenario, run=dataclasses.replace(scenario.run, think_time_ms=5.0))
    busy = run_scenario(scenario, ["lua"], explain=False)["runs"][0]["throughput_ops_per_s"]
    idle = run_scenario(thinking, ["lua"], explain=False)["runs"][0]["throughput_ops_per_s"]
    assert idle < busy / 5
    assert 4 / 0.0052 * 0.8 < idle < 4 / 0.005   # about clients / think time


def test_capacity_is_the_best_throughput_under_the_objective(tmp_path):
    scenario = parse(tmp_path / "small.toml", SMALL_SCENARIO)
    document = measure(scenario, ["lua", "lock"], "sim", slo_p99_ms=2.0, counts=(1, 2, 4, 8, 16, 32, 64))
    for name, result in document["strategies"].items():
        within = [point for point in result["points"] if point["p99_ms"] <= 2.0]
        assert result["capacity_ops_per_s"] == max(point["throughput_ops_per_s"] for point in within)
        assert len(result["points"]) >= 3
    assert document["strategies"]["lua"]["capacity_ops_per_s"] > document["strategies"]["lock"]["capacity_ops_per_s"]


def test_capacity_command_writes_its_table(tmp_path, capsys):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCENARIO)
    out = tmp_path / "capacity"
    assert main(["capacity", str(path), "--strategies", "lua", "--clients", "1,4", "--out", str(out), "-q"]) == 0
    assert "capacity of small on sim" in capsys.readouterr().out
    assert (out / "capacity.json").exists()
    assert main(["capacity", str(path), "--slo-p99-ms", "nan", "--out", str(out), "-q"]) == 2
    assert "--slo-p99-ms" in capsys.readouterr().err


def test_a_scenario_says_open_or_closed(tmp_path):
    from sim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="run.load"):
        parse(tmp_path / "bad.toml", SMALL_SCENARIO.replace("[run]", '[run]\nload = "sideways"'))
    assert load(ROOT / "scenarios" / "quick.toml").run.load == "open"
