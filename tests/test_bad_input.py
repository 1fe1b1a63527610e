"""Bad input and interruptions: a malformed scenario ends in one line that
names the key (or in a valid run), within a time limit, and writes nothing;
an interrupted run leaves the old output or the new one whole, no server
behind, and says so in one line."""
from __future__ import annotations

import json
import math
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.traffic import Trace

from conftest import ROOT, SMALL_SCENARIO, alive, children, scratch_folders_of, sigint_default

BASE = {
    "name": "fuzz", "seed": 3,
    "traffic": {"users": 120, "messages": 400, "message_rate": 1000.0, "groups": 4, "max_group_size": 20,
                "read_probability": 0.8, "read_delay_mean_s": 0.05, "badge_probability": 0.3},
    "clients": {"count": 4, "timeout_ms": 200.0, "retries": 2},
    "server": {"replicas": 1, "replication_lag_ms": 5.0},
    "run": {"timeline_points": 3},
    "faults": [{"kind": "reset_peer", "at": 0.1, "duration": 0.1, "params": {"probability": 0.3}}],
    "fault_rates": [{"kind": "client_crash", "per_minute": 30.0, "duration": 0.1, "params": {"clients": 1}}],
}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"


def to_toml(document: dict) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in document.items()
             if not isinstance(value, (dict, list))
             or (isinstance(value, list) and key not in ("faults", "fault_rates"))]
    for key, value in document.items():
        if isinstance(value, dict):
            lines += [f"\n[{key}]"] + [f"{name} = {toml_value(item)}" for name, item in value.items()]
        elif key in ("faults", "fault_rates") and isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    lines += [f"\n[[{key}]]"] + [f"{name} = {toml_value(item)}" for name, item in entry.items()]
                else:
                    lines.append(f"{key} = {toml_value(value)}")
                    break
    return "\n".join(lines) + "\n"


def leaves(document: dict, prefix: str = "") -> list[str]:
    """Every key path of the document, as the scenario errors name them."""
    found = []
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found += leaves(value, f"{path}.")
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                found += leaves(item, f"{path}[{index}].")
        else:
            found.append(path)
    return found


def replace(document: dict, path: str, value) -> dict:
    import copy
    import re

    document = copy.deepcopy(document)
    parts = [part for part in re.split(r"\.|\[(\d+)\]\.?", path) if part]
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return document


DELETE = object()
ODD_VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, -1.5, 10 ** 12, -10 ** 12, 1e300, True, "",
                     "many", [1, 2], {"a": 1}, [], 2 ** 63, DELETE]),
    # Numbers of a size a valid run can take in a test's time; the extremes above are out of bounds.
    st.floats(min_value=-1e4, max_value=1e4), st.integers(-2000, 2000), st.text(max_size=20))


@st.composite
def mutated(draw):
    """A valid scenario with one thing wrong (or, by chance, still right),
    its encoding, and the key the error should name (None: any)."""
    document = BASE
    kind = draw(st.sampled_from(["value", "value", "value", "unknown_key", "encoding", "size"]))
    key = None
    if kind == "value":
        key = draw(st.sampled_from(leaves(BASE)))
        document = replace(BASE, key, draw(ODD_VALUES))
    elif kind == "unknown_key":
        section = draw(st.sampled_from(["", "traffic.", "clients.", "server.", "run."]))
        name = draw(st.sampled_from(["userz", "sead", "timeout", "x", "replicas_count"]))
        key = f"{section}{name}"
        document = replace(BASE, key, 1)
    text = to_toml(document)
    if kind == "size":
        text = "# padding\n" * draw(st.integers(1, 200_000)) + text
    data = text.encode()
    if kind == "encoding":
        encoding = draw(st.sampled_from(["latin-1", "utf-16", "garbage"]))
        text = text.replace('name = "fuzz"', 'name = "fuzz"\ndescription = "caf\u00e9"')
        garbage = b"\xff" + draw(st.binary(min_size=8, max_size=64))
        data = garbage + data if encoding == "garbage" else text.encode(encoding)
    return data, key


@settings(max_examples=70, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutated())
def test_a_malformed_scenario_ends_in_one_line_that_names_the_key_or_a_valid_run(case, tmp_path_factory, capsys):
    data, key = case
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "scenario.toml"
    path.write_bytes(data)
    out = folder / "out"

    def too_slow(signum, frame):
        raise TimeoutError("the run took longer than 60 s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    memory = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, memory[1]))   # a runaway fails here, not the machine
    signal.alarm(60)
    try:
        status = main(["run", str(path), "--strategies", "lua", "--out", str(out), "-q"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, memory)
    error = capsys.readouterr().err
    if status == 0:
        results = json.loads((out / "results.json").read_text(), parse_constant=lambda name: pytest.fail(name))
        assert results["runs"] and (out / "trace.npz").exists()
        return
    assert status == 2, error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("countdrift: error:"), error
    assert str(path) in lines[0]
    if key is not None and "memberships" not in lines[0] and "not valid TOML" not in lines[0]:
        assert key.split(".")[-1].split("[")[0] in lines[0], (key, lines[0])
    assert not out.exists() and not list(folder.glob(".out.partial-*"))


def test_a_bad_out_is_refused_before_any_work(small_scenario, tmp_path, capsys):
    existing = tmp_path / "file"
    existing.write_text("x")
    for out in (existing, existing / "under"):
        started = time.perf_counter()
        assert main(["run", str(small_scenario), "--out", str(out), "-q"]) == 2
        assert time.perf_counter() - started < 5
        assert "--out" in capsys.readouterr().err
    assert existing.read_text() == "x"


def test_a_trace_made_from_another_scenario_or_seed_is_refused(small_scenario, tmp_path, capsys):
    trace = tmp_path / "trace.npz"
    other = tmp_path / "other.toml"
    other.write_text(small_scenario.read_text().replace("users = 300", "users = 310"))
    assert main(["trace", str(other), "--out", str(trace)]) == 0
    assert main(["run", str(small_scenario), "--trace", str(trace), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "traffic.users" in capsys.readouterr().err
    assert main(["trace", str(small_scenario), "--out", str(trace), "--seed", "8"]) == 0
    capsys.readouterr()
    assert main(["run", str(small_scenario), "--trace", str(trace), "--seed", "9", "--out", str(tmp_path / "o"),
                 "-q"]) == 2
    assert "seed 8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".hidden", ""])
def test_a_scenario_name_cannot_leave_the_results_folder(name, small_scenario, tmp_path, capsys):
    small_scenario.write_text(small_scenario.read_text().replace('name = "small"', f"name = {json.dumps(name)}"))
    assert main(["run", str(small_scenario), "-q"]) == 2
    assert "'name'" in capsys.readouterr().err


def test_compare_refuses_a_tolerance_that_is_not_a_fraction(tmp_path, capsys):
    for tolerance in ("nan", "inf", "-1"):
        assert main(["compare", str(tmp_path), str(tmp_path), "--tolerance", tolerance]) == 2
        assert "--tolerance" in capsys.readouterr().err


def test_the_checker_reads_stray_keys_and_odd_values_as_drift():
    from sim.backends.model.server import Server
    from sim.checker import check, read_counters
    from sim.history import History
    from sim.traffic import TrafficConfig, generate
    from sim.truth import Memberships, truth_ranges
    from strategies import make_strategy

    trace = generate(TrafficConfig(users=20, messages=1), 1)
    server = Server()
    store = server.store
    store.data["unread:{u999}"] = {"3": "1"}          # a user the trace does not have
    store.data["stray"] = "1"                          # no user at all
    store.data["unread:{u1}"] = {"x": "1", "2": "y"}   # not integers
    store.data["total:{u2}"] = "lots"
    # A conversation id beyond the trace's must not land on another user's pair.
    store.data["unread:{u0}"] = {str(trace.conversations + 5): "1"}
    counters = read_counters(make_strategy("lua"), trace.users, trace.conversations, server.inspect)
    pairs = Memberships(trace)
    history = History(len(trace.t))
    drift = check(pairs, truth_ranges(trace, history, pairs), counters)
    assert drift.stray_keys == 2 and drift.bad_values == 3
    assert drift.convs_wrong == 1 and drift.overcount == 1


# -- interruptions ---------------------------------------------------------------------

def _whole_run(out: Path) -> int:
    """The seed of the run the folder holds, checking that it is whole."""
    results = json.loads((out / "results.json").read_text())
    assert Trace.load(out / "trace.npz").sha256() == results["trace"]["sha256"]
    return results["seed"]


def _interrupt_many(scenario: Path, tmp_path: Path, backend: str, times: int) -> dict[int, int]:
    """Run once whole, then ``times`` more interrupted at random moments of a run's length."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sim.cli", "run", str(scenario), "--strategies", "lua,lua_idempotent", "-q",
               "--backend", backend, "--out", str(out)]
    started = time.monotonic()
    assert subprocess.run(command + ["--seed", "1"], cwd=ROOT, capture_output=True).returncode == 0
    longest = time.monotonic() - started
    rng = np.random.default_rng(7)
    outcomes = {0: 0, 130: 0}
    before = set(Path(tempfile.gettempdir()).glob("countdrift-*"))
    for attempt in range(times):
        run = subprocess.Popen(command + ["--seed", str(2 + attempt)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
        deadline = time.monotonic() + float(rng.uniform(0.3, longest))   # after Python itself has started
        servers: dict[int, str] = {}
        while time.monotonic() < deadline and run.poll() is None:
            servers.update(children(run.pid))
            time.sleep(0.01)
        run.send_signal(signal.SIGINT if attempt % 3 else signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        assert run.returncode in (0, 130), (run.returncode, err)
        outcomes[run.returncode] += 1
        if run.returncode == 130:
            assert len(err.strip().splitlines()) == 1 and err.startswith("countdrift: interrupted;"), err
        # A process the harness stopped as it exited may take a moment to be gone; one it left behind stays.
        grace = time.monotonic() + 3.0
        while any(alive(pid) for pid in servers) and time.monotonic() < grace:
            time.sleep(0.05)
        survivors = {pid: name for pid, name in servers.items() if alive(pid)}
        assert not survivors, f"a server outlived the run: {survivors}"
        seed = _whole_run(out)
        assert seed in (1, *range(2, 3 + attempt)), seed
        assert not list(tmp_path.glob(".out.partial-*")), "a partial folder was left"
        assert not scratch_folders_of({run.pid}), "a server folder was left"
        half_marked = [folder for folder in set(Path(tempfile.gettempdir()).glob("countdrift-*")) - before
                       if (folder / "countdrift-owner.json").is_file()
                       and not (folder / "countdrift-owner.json").read_text().strip()]
        assert not half_marked, f"a folder with an empty marker was left: {half_marked}"
    return outcomes


def test_interrupted_simulated_runs_leave_the_old_output_or_the_new_one_whole(small_scenario, tmp_path):
    outcomes = _interrupt_many(small_scenario, tmp_path, "sim", times=12)
    assert outcomes[130] >= 6, outcomes


def test_sigterm_ends_a_run_whose_sigint_is_ignored(tmp_path):
    """A run started as a shell's background job ignores Ctrl-C; `kill PID`
    still ends it cleanly, in one line."""
    scenario = tmp_path / "long.toml"
    scenario.write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 200000"))   # about 10 s of wall here
    command = [sys.executable, "-m", "sim.cli", "run", str(scenario), "--strategies", "lua",
               "-q", "--out", str(tmp_path / "out")]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".out.partial-*")) and time.monotonic() < deadline:   # the run has begun
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be stopped"
    run.send_signal(signal.SIGINT)   # ignored, as a background job's Ctrl-C
    time.sleep(0.2)
    assert run.poll() is None
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("countdrift: interrupted;"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.real
def test_interrupted_real_runs_leave_no_server_and_a_whole_output(tmp_path):
    scenario = tmp_path / "real.toml"
    scenario.write_text(to_toml({**BASE, "name": "real"}))
    outcomes = _interrupt_many(scenario, tmp_path, "redis", times=8)
    assert outcomes[130] >= 4, outcomes


def test_the_membership_bound_counts_groups_at_their_mean_size(tmp_path):
    """The review scenario (5,000 groups up to 10,000 members, mostly small)
    loads; groups that would all be huge are refused before anything runs."""
    from sim.scenario import ScenarioError, load, parse
    from sim.traffic import expected_memberships, generate

    review = load(ROOT / "scenarios" / "review.toml")
    assert expected_memberships(review.traffic) < 1_000_000
    small = parse(tmp_path / "small.toml", to_toml(BASE))
    assert expected_memberships(small.traffic) == pytest.approx(len(generate(small.traffic, 1).conv_members),
                                                                rel=0.05)
    huge = {**BASE, "traffic": {**BASE["traffic"], "users": 1_000_000, "groups": 100_000,
                                "max_group_size": 1_000_000, "group_size_alpha": 0.01}}
    with pytest.raises(ScenarioError, match="conversation memberships"):
        parse(tmp_path / "huge.toml", to_toml(huge))
