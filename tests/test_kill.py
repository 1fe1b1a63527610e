"""A harness killed outright (SIGKILL: no clean-up of its own) leaves no
server and no folder behind: its watchdog stops them within seconds, and
`countdrift clean` finds and removes what a killed watchdog left, by the
marker each run writes, never touching a run that is still going.

CI kills one run of each kind (a plain deployment, Sentinel, a Cluster, a
sweep on real servers); `pytest -m slow` kills five of each (the 20 the
issue asks for)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sim.watchdog import OWNER_FILE, start_time

from conftest import ROOT, SMALL_SCENARIO

pytestmark = pytest.mark.real

LONG = SMALL_SCENARIO.replace("messages = 3000", "messages = 30000")   # 20 s at 1,500/s: killed long before
KINDS = {
    "plain": LONG,
    "sentinel": LONG + "\n[server]\nreplicas = 1\n\n[sentinel]\nenabled = true\ndown_after_ms = 1000\n",
    "cluster": LONG + '\n[server]\ntopology = "cluster"\ncluster_primaries = 3\ncluster_replicas_per_primary = 1\n',
}


def _command(kind: str, scenario: Path, out: Path) -> list[str]:
    if kind == "sweep":
        return [sys.executable, "-m", "sim.cli", "sweep", str(scenario), "--backend", "redis", "--strategies", "lua",
                "--seeds", "2", "--out", str(out), "-q"]
    return [sys.executable, "-m", "sim.cli", "run", str(scenario), "--backend", "redis", "--strategies", "lua",
            "--out", str(out), "-q"]


def _listed(scratch: Path) -> dict[int, int]:
    """The processes the markers under ``scratch`` list: PID -> start time."""
    found = {}
    for marker in scratch.glob(f"countdrift-*/{OWNER_FILE}"):
        try:
            found.update({pid: started for pid, started in json.loads(marker.read_text())["processes"]})
        except (OSError, ValueError, KeyError):
            continue   # being rewritten
    return found


def _running(processes: dict[int, int]) -> list[int]:
    return [pid for pid, started in processes.items() if start_time(pid) == started]


def _kill_once(kind: str, tmp_path: Path, rng: np.random.Generator, attempt: int) -> None:
    scratch = tmp_path / f"tmp-{kind}-{attempt}"
    scratch.mkdir()
    scenario = tmp_path / f"{kind}.toml"
    scenario.write_text(KINDS.get(kind, LONG))
    environment = {**os.environ, "TMPDIR": str(scratch)}
    harness = subprocess.Popen(_command(kind, scenario, tmp_path / f"out-{kind}-{attempt}"), cwd=ROOT,
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    seen: dict[int, int] = {}
    while not seen and time.monotonic() < deadline and harness.poll() is None:   # until its first server is up
        seen.update(_listed(scratch))
        time.sleep(0.05)
    assert seen, f"no server came up: {harness.stderr.read().decode() if harness.poll() is not None else ''}"
    until = time.monotonic() + float(rng.uniform(0.0, 3.0))   # a moment of the run, not only its start
    while time.monotonic() < until:
        seen.update(_listed(scratch))
        time.sleep(0.05)
    harness.kill()
    harness.wait()
    killed = time.monotonic()
    while time.monotonic() < killed + 5 and (_running(seen) or list(scratch.glob("countdrift-*"))):
        seen.update(_listed(scratch))
        time.sleep(0.05)
    left = _running(seen)
    folders = [path.name for path in scratch.iterdir()]
    for pid in left:   # never leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left and not folders, f"{kind}: 5 s after SIGKILL, processes {left} and folders {folders} were left"


@pytest.mark.parametrize("kind", ["plain", "sentinel", "cluster", "sweep"])
def test_a_harness_killed_outright_leaves_nothing_within_five_seconds(kind, tmp_path):
    _kill_once(kind, tmp_path, np.random.default_rng(len(kind)), 0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "sentinel", "cluster", "sweep"])
def test_twenty_kills_at_random_moments_leave_nothing(kind, tmp_path):
    rng = np.random.default_rng(11)
    for attempt in range(5):
        _kill_once(kind, tmp_path, rng, attempt)


def test_clean_removes_what_a_killed_watchdog_left_and_spares_a_live_run(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    scenario = tmp_path / "long.toml"
    scenario.write_text(LONG)
    environment = {**os.environ, "TMPDIR": str(scratch)}
    victim = subprocess.Popen(_command("plain", scenario, tmp_path / "victim"), cwd=ROOT, env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_listed(scratch)) < 3 and time.monotonic() < deadline:   # toxiproxy, primary, replica
        time.sleep(0.05)
    listed = _listed(scratch)
    watchdogs = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                 and _parent(int(entry.name)) == victim.pid and b"watchdog" in _cmdline(int(entry.name))]
    assert len(watchdogs) == 1, watchdogs
    os.kill(watchdogs[0], signal.SIGKILL)   # first the watchdog, then the harness: nothing cleans up
    victim.kill()
    victim.wait()
    time.sleep(1)
    assert _running(listed), "its servers should still be running: nothing was left to stop them"

    short = tmp_path / "short.toml"
    short.write_text(SMALL_SCENARIO)
    survivor = subprocess.Popen(_command("plain", short, tmp_path / "survivor"), cwd=ROOT, env=environment,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (set(_listed(scratch)) - set(listed)) and survivor.poll() is None:
        time.sleep(0.05)
    clean = subprocess.run([sys.executable, "-m", "sim.cli", "clean"], cwd=ROOT, env=environment,
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert f"left by countdrift PID {victim.pid}" in clean.stdout and "left alone: 1" in clean.stdout, clean.stdout
    assert not _running(listed)
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    assert sorted(path.name for path in scratch.iterdir()) == [], "the survivor's folder is gone with it"
    again = subprocess.run([sys.executable, "-m", "sim.cli", "clean"], cwd=ROOT, env=environment,
                           capture_output=True, text=True)
    assert "nothing left over" in again.stdout


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_an_interrupt_while_a_child_starts_comes_once_it_is_registered(monkeypatch, tmp_path):
    """Ctrl-C between the fork of a server and its registration used to leave
    a server nothing knew of: it outlived the harness (CI saw it once)."""
    from sim.backends.real import processes

    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_interrupt(*args, **kwargs):
        child = real_popen(*args, **kwargs)
        if args and args[0][0] == "sleep":
            started.append(child)
            os.kill(os.getpid(), signal.SIGINT)   # after the fork, before the harness knows of the child
        return child

    monkeypatch.setattr(processes.subprocess, "Popen", popen_then_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            processes.REGISTRY.start(["sleep", "30"], tmp_path)
        assert started and started[0].pid in processes.REGISTRY.processes
    finally:
        signal.signal(signal.SIGINT, previous)
        for child in started:
            processes.stop_process(child)
    assert started[0].poll() is not None
