"""Closed-loop load and capacity: what a strategy sustains, not what the
trace offered."""
from __future__ import annotations

import dataclasses
import json

import pytest

from sim.cli import main
from sim.experiments.capacity import closed_loop, measure
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
    for result in document["strategies"].values():
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


def test_capacity_leaves_replicas_and_sentinel_out(tmp_path):
    text = SMALL_SCENARIO.replace("[clients]", "[server]\nreplicas = 2\nmin_replicas_to_write = 1\n\n"
                                               "[sentinel]\nenabled = true\n\n[clients]")
    scenario = closed_loop(parse(tmp_path / "small.toml", text), 8)
    assert (scenario.server.replicas, scenario.server.min_replicas_to_write, scenario.sentinel.enabled) == (0, 0, False)
    assert scenario.clients.count == 8 and scenario.faults == ()


def test_every_request_shape_counts_the_commands_the_client_sends():
    from sim.backends.real.protocol import flatten
    from sim.commands import Pipeline, Script, Stall, Transaction, sent_commands
    from strategies import make_strategy

    script = make_strategy("lua").scripts[0]
    requests = [("PING",), Script(script, ("a",), ("1",)), Stall(0.001),
                Pipeline((("HINCRBY", "h", "f", 1), ("INCRBY", "t", 1), Script(script, ("b",)))),
                Transaction((("HINCRBY", "h", "f", 1), ("INCRBY", "t", 1))),
                Pipeline((("WATCH", "h"), Transaction((("DEL", "h"),))))]
    assert [sent_commands(request) for request in requests] == [len(flatten(request)) for request in requests]


def test_a_modelled_driver_bounds_the_simulated_capacity(tmp_path):
    """Every client in one process: the process's CPU per request caps the
    throughput, whatever the number of clients, and it shows as busy."""
    scenario = closed_loop(parse(tmp_path / "small.toml", SMALL_SCENARIO), 16)
    free = run_scenario(scenario, ["lua"], explain=False)["runs"][0]
    slow = dataclasses.replace(scenario, clients=dataclasses.replace(scenario.clients, driver_request_us=100.0,
                                                                     driver_command_us=10.0))
    bound = run_scenario(slow, ["lua"], explain=False)["runs"][0]
    commands = bound["redis_requests"]   # as the clients sent them: each passed through the driver's process
    assert "driver_cpu_share" not in free and 0 < free["server_cpu_share"] <= 1
    assert bound["driver_cpu_share"] > 0.95 and bound["server_cpu_share"] < free["server_cpu_share"]
    assert bound["throughput_ops_per_s"] < free["throughput_ops_per_s"] / 2
    # each operation at least one round trip (100 us of the driver), each command 10 us more
    most = bound["operations"] / (bound["operations"] * 100e-6 + commands * 10e-6)
    assert most * 0.8 < bound["throughput_ops_per_s"] <= most * 1.01


def test_a_replys_array_items_are_counted_as_the_client_reads_them():
    """A stream read's entries and their fields, HVALS's values: each array
    item, however deep; a pipeline's own list of replies is no item, nor is
    a number or an error."""
    from sim.commands import CommandError, Pipeline, Transaction, reply_elements

    # XREADGROUP: the streams (1), a stream and its entries (2), the entries (2), each an id and its fields (2x2)
    entries = [["stream", [["1-0", ["user", "7"]], ["2-0", ["user", "8"]]]]]
    assert reply_elements(("XREADGROUP",), entries) == 1 + 2 + 2 + 2 * 2 + 2 * 2 == 13
    assert reply_elements(("HVALS", "h"), ["1", "2", "3"]) == 3 and reply_elements(("GET", "k"), "5") == 0
    pipeline = Pipeline((("HVALS", "h"), ("INCR", "k"), ("HVALS", "g")))
    assert reply_elements(pipeline, [["1", "2"], 3, CommandError("WRONGTYPE")]) == 2
    assert reply_elements(Transaction((("HVALS", "h"),)), [["1", "2"]]) == 3   # EXEC's array and its items
    assert reply_elements(pipeline, None) == 0
    # the real driver counts the same from its commands' replies as they came, before assembling them
    from sim.backends.real.protocol import assemble, flatten
    from sim.commands import array_items

    raw = [["1", "2"], 3, ["x"]]
    assert array_items(raw) == reply_elements(pipeline, assemble(pipeline, raw)) == 3
    exec_raw = ["OK", "QUEUED", [["1", "2"]]]
    transaction = Transaction((("HVALS", "h"),))
    assert len(flatten(transaction)) == 3 and array_items(exec_raw) == reply_elements(
        transaction, assemble(transaction, exec_raw)) == 3


def test_the_modelled_driver_pays_for_the_stream_entries_it_reads(tmp_path):
    """async_total's consumers read their stream back: with a cost per
    reply item the driver is busier and the run slower; lua, whose replies
    are numbers, costs the same."""
    scenario = closed_loop(parse(tmp_path / "small.toml", SMALL_SCENARIO), 16)

    def run(strategy, element_us):
        clients = dataclasses.replace(scenario.clients, driver_request_us=20.0, driver_command_us=2.0,
                                      driver_element_us=element_us)
        return run_scenario(dataclasses.replace(scenario, clients=clients), [strategy], explain=False)["runs"][0]

    free, paid = run("async_total", 0.0), run("async_total", 5.0)
    assert paid["driver_cpu_share"] > free["driver_cpu_share"]
    assert paid["throughput_ops_per_s"] < free["throughput_ops_per_s"]
    assert run("lua", 0.0)["throughput_ops_per_s"] == run("lua", 5.0)["throughput_ops_per_s"]


def test_each_timed_wait_is_an_event_the_modelled_driver_spends_its_sleep_cost_on(tmp_path):
    """One client with a think time between operations: every reply and
    every timer finds the driver idle, so each think time (a sleep) delays
    the client by exactly the sleep's cost, and the driver spends it."""
    scenario = parse(tmp_path / "small.toml", SMALL_SCENARIO)

    def run(sleep_us):
        modelled = dataclasses.replace(
            closed_loop(scenario, 1),
            clients=dataclasses.replace(scenario.clients, count=1, rtt_ms=0.01, driver_request_us=20.0,
                                        driver_sleep_us=sleep_us),
            run=dataclasses.replace(closed_loop(scenario, 1).run, think_time_ms=1.0))
        return run_scenario(modelled, ["naive"], explain=False)["runs"][0]

    free, charged = run(0.0), run(30.0)
    sleeps = free["operations"] - 1   # a think time before every operation but the first
    assert charged["duration_s"] - free["duration_s"] == pytest.approx(sleeps * 30e-6, rel=1e-6)
    rounding = 0.0005 * (charged["duration_s"] + free["duration_s"])   # the shares have three decimals
    assert charged["driver_cpu_share"] * charged["duration_s"] == pytest.approx(
        free["driver_cpu_share"] * free["duration_s"] + sleeps * 30e-6, abs=rounding)


def test_waking_up_costs_an_idle_process_and_load_amortizes_it(tmp_path):
    """One client leaves the driver and the server idle between requests:
    each pays its wake-up, in CPU and in latency. Sixteen keep the driver
    busy: its wake-ups are gone, and the throughput is what its CPU per
    request allows, as without them."""
    from sim.backends.model.server import Server, ServiceTimes

    server = Server(ServiceTimes(request=10e-6, command=0.0, wake=5e-6))
    first = server.submit(_connection(server), ("PING",), 0.0)
    queued = server.submit(_connection(server), ("PING",), 0.0)   # found it busy
    soon = server.submit(_connection(server), ("PING",), queued.end + 3e-6)   # idle too briefly to sleep
    later = server.submit(_connection(server), ("PING",), soon.end + 1e-3)
    assert [round((entry.end - entry.start) * 1e6, 3) for entry in (first, queued, soon, later)] == [10, 10, 10, 15]
    assert round(server.busy_s * 1e6, 3) == 45

    scenario = parse(tmp_path / "small.toml", SMALL_SCENARIO)

    def run(clients, wake_us):
        modelled = dataclasses.replace(
            closed_loop(scenario, clients),
            clients=dataclasses.replace(scenario.clients, count=clients, rtt_ms=0.01, driver_request_us=20.0,
                                        driver_wake_us=wake_us),
            server=dataclasses.replace(scenario.server, replicas=0, wake_us=wake_us))
        return run_scenario(modelled, ["lua"], explain=False)["runs"][0]

    alone, woken = run(1, 0.0), run(1, 15.0)
    assert woken["throughput_ops_per_s"] < alone["throughput_ops_per_s"] * 0.8

    def cpu_us_per_operation(run, share):
        return run[share] / run["throughput_ops_per_s"] * 1e6

    for share in ("driver_cpu_share", "server_cpu_share"):   # a wake-up at each request at least (15 us)
        assert cpu_us_per_operation(woken, share) > cpu_us_per_operation(alone, share) + 14, share
    busy, busy_woken = run(16, 0.0), run(16, 15.0)
    assert busy_woken["driver_cpu_share"] > 0.95
    assert busy_woken["throughput_ops_per_s"] > busy["throughput_ops_per_s"] * 0.95


def _connection(server):
    from sim.backends.model.server import Connection
    return Connection(server)


def test_model_driver_reads_the_calibrations_driver_section(tmp_path, capsys):
    from sim.scenario import CALIBRATION, DRIVER_KEYS, load_calibration

    committed = load_calibration(CALIBRATION, "driver", DRIVER_KEYS)
    assert committed["request_us"] > 0 and committed["rtt_us"] > 0
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCENARIO)
    out = tmp_path / "capacity"
    assert main(["capacity", str(path), "--strategies", "lua", "--clients", "4", "--model-driver", "--out", str(out),
                 "-q"]) == 0
    document = json.loads((out / "capacity.json").read_text())
    assert document["driver_model"] == committed
    assert "driver modelled" in capsys.readouterr().out
    server_only = tmp_path / "server-only.toml"
    server_only.write_text(CALIBRATION.read_text().split("\n# the redis backend's driver")[0])
    assert main(["capacity", str(path), "--model-driver", str(server_only), "--out", str(out), "-q"]) == 2
    assert "'driver.rtt_us'" in capsys.readouterr().err
    assert main(["capacity", str(path), "--backend", "redis", "--model-driver", "--out", str(out), "-q"]) == 2
    assert "--model-driver" in capsys.readouterr().err


# Two strategies whose capacities are closer than this on either backend are a tie.
TIE = 1.15


def agreeing_order(left: dict[str, float], right: dict[str, float]) -> list[str]:
    """The pairs of strategies that both backends separate by more than a
    tie, in opposite orders."""
    names = sorted(left)
    disagreements = []
    for index, a in enumerate(names):
        for b in names[index + 1:]:
            orders = []
            for capacity in (left, right):
                high, low = max(capacity[a], capacity[b]), min(capacity[a], capacity[b])
                orders.append(None if high <= low * TIE else capacity[a] > capacity[b])
            if None not in orders and orders[0] != orders[1]:
                disagreements.append(f"{a} vs {b}: {left[a]:,.0f}/{left[b]:,.0f} against "
                                     f"{right[a]:,.0f}/{right[b]:,.0f}")
    return disagreements


def test_ties_and_orders_of_capacities():
    assert agreeing_order({"a": 100, "b": 50}, {"a": 90, "b": 40}) == []
    assert agreeing_order({"a": 100, "b": 95}, {"a": 50, "b": 90}) == []          # a tie on one side
    assert agreeing_order({"a": 100, "b": 50}, {"a": 40, "b": 90}) == ["a vs b: 100/50 against 40/90"]


@pytest.mark.real
@pytest.mark.slow   # 38 s of the suite's time (real capacity points); `countdrift report` compares capacities
def test_the_capacity_ranking_agrees_between_backends():
    """naive, lua, watch and lock on quick: the simulation with the redis
    backend's driver modelled (committed calibration) and real servers order
    them alike, pairs within 15% of each other on either side counting as
    ties. Real points last about a second each; the capacity is the best of
    two client counts, which absorbs one slow point."""
    from sim.scenario import CALIBRATION, DRIVER_KEYS, load_calibration

    scenario = load(ROOT / "scenarios" / "quick.toml")
    strategies, counts = ["naive", "lua", "watch", "lock"], (8, 16)
    real = measure(scenario, strategies, "redis", slo_p99_ms=50.0, counts=counts)
    sim = measure(scenario, strategies, "sim", slo_p99_ms=50.0, counts=counts,
                  driver=load_calibration(CALIBRATION, "driver", DRIVER_KEYS))
    capacities = [{name: result["capacity_ops_per_s"] for name, result in document["strategies"].items()}
                  for document in (sim, real)]
    assert all(capacity > 0 for capacity in (*capacities[0].values(), *capacities[1].values()))
    assert agreeing_order(*capacities) == [], capacities
    separated = [name for name in strategies if capacities[0]["lua"] > capacities[0][name] * TIE
                 and capacities[1]["lua"] > capacities[1][name] * TIE]
    assert "lock" in separated, capacities   # not a ranking of ties: lua is well above lock on both
