from __future__ import annotations

import dataclasses
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL_SCENARIO = """
name = "small"
seed = 7

[traffic]
users = 300
messages = 3000
message_rate = 1500.0
groups = 20
max_group_size = 60
include_max_group = true
read_probability = 0.9
read_delay_mean_s = 0.2
badge_probability = 0.3

[clients]
count = 16

[run]
timeline_points = 5
"""

# faults_failover, shorter: the primary dies at 1 s, a replica 50 ms behind is promoted 1 s later.
SHORT_FAILOVER = ((Path(__file__).parent.parent / "scenarios" / "faults_failover.toml").read_text()
                  .replace("messages = 5000", "messages = 2500").replace("at = 2.0", "at = 1.0")
                  .replace("timeline_points = 50", "timeline_points = 5"))


def short_trace(scenario):
    """The scenario's trace without the reads that trail its last message by
    more than half a second: a real run lasts as long as its trace, and the
    last 1% of the operations (reads drawn far into the exponential tail of
    their delays) can stretch it by half (the fidelity matrix's runs: from
    3 to 5.2 s)."""
    from sim.traffic import DELIVER, generate

    trace = generate(scenario.traffic, scenario.seed)
    end = int(np.searchsorted(trace.t, trace.t[trace.kind == DELIVER][-1] + 0.5))
    return dataclasses.replace(trace, t=trace.t[:end], kind=trace.kind[:end], user=trace.user[:end],
                               conv=trace.conv[:end], message=trace.message[:end])


def sigint_default() -> None:
    """For a child's preexec_fn: Ctrl-C's default in the child even when the
    tests run as a shell's background job, which ignores SIGINT (and so
    would the child, and the interrupt tests would see runs go to their end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def small_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCENARIO)
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of our own for the session, stopped by its PID at the end."""
    from sim.backends.real.processes import RedisServer

    server = RedisServer("test", tmp_path_factory.mktemp("redis"), {"appendonly": "no"})
    server.start()
    yield server
    server.stop()


def children(parent: int, names: tuple[str, ...] = ("",)) -> list[tuple[int, str]]:
    """The child processes of ``parent`` whose name starts with one of ``names`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if int(stat[stat.rindex(")") + 2:].split()[1]) == parent and name.startswith(names):
            found.append((int(entry.name), name))
    return found


def alive(pid: int) -> bool:
    """Whether the process still runs: one that has exited but whose parent
    has not reaped it yet (a zombie; this machine's init reaps orphans late,
    seconds after) runs no more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def scratch_folders_of(harnesses: set[int]) -> list[Path]:
    """The scratch folders (``countdrift-*`` in the temp folder) that the
    harness processes ``harnesses`` made and are still there. Another run
    beside the suite (a fidelity sweep, a second checkout's tests) makes
    folders of its own, which are not the test's to judge."""
    from sim.watchdog import OWNER_FILE

    left = []
    for folder in Path(tempfile.gettempdir()).glob("countdrift-*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue   # being made or removed by its harness, or not a harness's
        if owner in harnesses:
            left.append(folder)
    return left


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_tests():
    """Whatever a test did, no redis-server or toxiproxy-server it started
    survives the session: stop any leftover by its PID, and say so."""
    from sim.backends.real.processes import REGISTRY

    yield
    REGISTRY.stop_all()
    leftovers = children(os.getpid(), ("redis-server", "redis-sentinel", "toxiproxy"))
    for pid, _ in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left running by the tests: {leftovers}"
