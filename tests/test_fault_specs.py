"""One specification per fault kind: scenarios are checked against it, every
backend implements every kind and reads every one of its parameters, and
records the same effects (names and types)."""
from __future__ import annotations

import math

import pytest

from sim import backends
from sim.backends.model.nemesis import SimNemesis
from sim.backends.real.nemesis import RealNemesis
from sim.faults import COMMON_EFFECTS, SPECS, Fault, faults_markdown
from sim.runner import run_scenario
from sim.scenario import ScenarioError, parse

from conftest import ROOT

# A value other than the default, within bounds, for every parameter.
PROBE_VALUES = {"clients": 2, "tear_bytes": 40, "within_s": 0.5, "stall_ms": 10.0, "lag_ms": 30.0,
                "delay_ms": 5.0, "jitter_ms": 2.0, "probability": 0.4, "clients_share": 0.5,
                "shard": 1, "to_shard": 0, "slots": 4, "workers": 2}

PROBE = """
name = "spec_probe"
seed = 5

[traffic]
users = 200
messages = 1200
message_rate = 1000.0
groups = 10
max_group_size = 30
read_probability = 0.8
read_delay_mean_s = 0.1
badge_probability = 0.3

[clients]
count = 4
timeout_ms = 200.0
retries = 3
backoff_ms = 5.0

[server]
replicas = 1
replication_lag_ms = 10.0

[run]
timeline_points = 5

[[faults]]
kind = "{kind}"
at = 0.4
duration = 0.2
params = {{ {params} }}
"""


def probe_scenario(kind: str):
    params = ", ".join(f"{param.name} = {PROBE_VALUES[param.name]}" for param in SPECS[kind].params)
    text = PROBE.format(kind=kind, params=params)
    if kind == "split_brain":   # Sentinel, so that it may promote a replica (not within 0.2 s)
        text = text.replace("[run]", "[sentinel]\nenabled = true\n\n[run]")
    if any(param.name == "shard" for param in SPECS[kind].params):   # a fault on one shard of a cluster
        text = text.replace("replicas = 1\nreplication_lag_ms = 10.0", 'topology = "cluster"\ncluster_primaries = 2\n'
                            "replication_lag_ms = 0.0\ncluster_node_timeout_ms = 300.0")
    if kind == "minority_partition":   # a majority of primaries on the other side
        text = text.replace("cluster_primaries = 2", "cluster_primaries = 3")
    return parse(ROOT / "scenarios" / "spec_probe.toml", text)


def test_every_parameter_has_a_probe_value_within_its_bounds():
    for spec in SPECS.values():
        for param in spec.params:
            assert param.check(PROBE_VALUES[param.name]) != param.default, (spec.kind, param.name)


@pytest.mark.parametrize("nemesis", [SimNemesis, RealNemesis], ids=["sim", "redis"])
def test_every_backend_implements_every_kind(nemesis):
    missing = [kind for kind in SPECS if not callable(getattr(nemesis, kind, None))]
    assert not missing, f"{nemesis.__name__} lacks {missing}"


def _reads_every_parameter(backend: str, kind: str, monkeypatch) -> None:
    """Run one fault of ``kind`` on ``backend``; fail if it left a parameter
    unread or recorded effects other than its specification's."""
    read: set[str] = set()
    original = Fault.param

    def tracking(self: Fault, name: str):
        read.add(name)
        return original(self, name)

    monkeypatch.setattr(Fault, "param", tracking)
    results = run_scenario(probe_scenario(kind), ["lua"], backend=backend)
    run = results["runs"][0]
    assert read >= {param.name for param in SPECS[kind].params}, f"{backend} ignores {kind}'s " \
        f"{sorted({param.name for param in SPECS[kind].params} - read)}"
    (fault,) = run["faults"]
    assert fault["effects"]["applied"], fault
    assert list(fault["effects"]) == [*COMMON_EFFECTS, *SPECS[kind].effects]
    return fault["effects"]


EFFECT_TYPES = {"applied": bool, "reason": (str, type(None)), "struck_at": float, "ended_at": (float, type(None)),
                "operations_in_flight": int, "writes_lost_s": float, "acknowledged_writes_lost": int,
                "wait_confirmed_writes_lost": int, "promoted": bool, "target": str,
                "target_operation": (str, type(None)), "clients": list, "replies_lost": (int, type(None)),
                "promoted_at": (float, type(None)), "clients_on_old_primary_s": (float, type(None)),
                "clients_left": int, "old_primary_acknowledged": int, "demoted_at": (float, type(None)),
                "shard": int, "slots": str, "failed_at": float, "to_shard": int, "keys_moved": int,
                "refused_at": (float, type(None)), "workers": list}


def _check_types(effects: dict) -> None:
    for name, value in effects.items():
        assert isinstance(value, EFFECT_TYPES[name]) or (EFFECT_TYPES[name] is float and isinstance(value, int)), \
            (name, value)


@pytest.mark.parametrize("kind", list(SPECS))
def test_the_simulation_reads_every_parameter_of(kind, monkeypatch):
    _check_types(_reads_every_parameter("sim", kind, monkeypatch))


@pytest.mark.real
@pytest.mark.parametrize("kind", list(SPECS))
def test_the_real_backend_reads_every_parameter_of(kind, monkeypatch):
    _check_types(_reads_every_parameter("redis", kind, monkeypatch))


@pytest.mark.parametrize("params, key, fragment", [
    ("probability = 1.5", "params.probability", "between 0 and 1"),
    ("probability = nan", "params.probability", "between 0 and 1"),
    ("probability = inf", "params.probability", "between 0 and 1"),
    ("probabilty = 0.5", "params.probabilty", "not a parameter of reset_peer"),
    ("probability = \"half\"", "params.probability", "must be a number"),
])
def test_fault_parameters_are_checked_when_the_scenario_loads(params, key, fragment, tmp_path):
    text = PROBE.format(kind="reset_peer", params=params)
    with pytest.raises(ScenarioError) as error:
        parse(tmp_path / "bad.toml", text)
    assert f"faults[0].{key}" in str(error.value) and fragment in str(error.value)
    assert str(tmp_path / "bad.toml") in str(error.value)


@pytest.mark.parametrize("kind, params, fragment", [
    ("failover", "lag_ms = -50.0", "between -1 and 600,000"),
    ("client_crash", "clients = 0", "between 1 and 100,000"),
    ("power_loss", "tear_bytes = -10", "between 0 and 1,048,576"),
    ("latency", "delay_ms = -50.0", "between 0 and 60,000"),
])
def test_out_of_bounds_parameters_name_their_bounds(kind, params, fragment, tmp_path):
    with pytest.raises(ScenarioError) as error:
        parse(tmp_path / "bad.toml", PROBE.format(kind=kind, params=params))
    assert fragment in str(error.value)


@pytest.mark.parametrize("timing", ["at = nan", "at = inf", "at = -1.0", "duration = inf"])
def test_fault_times_must_be_finite(timing, tmp_path):
    key = timing.split(" ")[0]
    text = PROBE.format(kind="partition", params="").replace(f"\n{key} = ", f"\n{key}_old = ")
    text = text.replace(f"{key}_old = ", f"{timing}\n# ")
    with pytest.raises(ScenarioError) as error:
        parse(tmp_path / "bad.toml", text)
    assert f"faults[0].{key}" in str(error.value)


def test_the_readme_holds_the_specification():
    assert faults_markdown() in (ROOT / "README.md").read_text()


def test_the_registry_names_each_backend_once():
    assert set(backends.BACKENDS) == {"sim", "redis"}
    for name in backends.BACKENDS:
        assert backends.get(name).name == name
    with pytest.raises(backends.UnknownBackend):
        backends.get("cluster")
    assert math.isfinite(SPECS["failover"].param("lag_ms").high)
