"""A server that does not start says why at once, in one line: the
program, its exit status and the last lines of its log; a temporary folder
with a space in its name works."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, SMALL_SCENARIO

pytestmark = pytest.mark.real


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 300"))
    return path


def _run(scenario, tmp_path, **environment) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.cli", "run", str(scenario), "--backend", "redis",
                           "--strategies", "lua", "--out", str(tmp_path / "out"), "-q"],
                          cwd=ROOT, env={**os.environ, **environment}, capture_output=True, text=True, timeout=120)


def test_a_server_binary_that_exits_is_named_with_its_status_and_log(scenario, tmp_path):
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR (Redis 7.0.15)' >&2\nexit 3\n")
    fake.chmod(0o755)
    for binary, expected in ((fake, "status 3; its log ends: FATAL CONFIG FILE ERROR"),
                             ("/bin/false", "exited at start with status 1")):
        done = _run(scenario, tmp_path, COUNTDRIFT_REDIS_SERVER=str(binary))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert expected in lines[0] and str(binary) in lines[0], lines
        assert not (tmp_path / "out").exists()


def test_a_folder_or_a_file_that_cannot_run_is_refused(scenario, tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("x")
    for binary in (tmp_path, plain):
        done = _run(scenario, tmp_path, COUNTDRIFT_REDIS_SERVER=str(binary))
        assert done.returncode == 2 and "is not an executable file" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_a_temporary_folder_with_a_space_works(scenario, tmp_path):
    spaced = tmp_path / "a folder with spaces"
    spaced.mkdir()
    done = _run(scenario, tmp_path, TMPDIR=str(spaced))
    assert done.returncode == 0, done.stderr
    assert list(spaced.iterdir()) == []


def test_a_server_that_daemonizes_itself_is_stopped_with_its_folder(scenario, tmp_path):
    """A wrapper that makes redis-server a daemon: the process the harness
    started exits at once (one line says so), and the daemon, which left
    the harness's tree of processes, still goes with the run's folder: found
    working there, running the program the harness meant to start."""
    import shutil
    from pathlib import Path

    wrapper = tmp_path / "daemonizing-redis-server"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("redis-server")} "$@" --daemonize yes\n')
    wrapper.chmod(0o755)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = _run(scenario, tmp_path, COUNTDRIFT_REDIS_SERVER=str(wrapper), TMPDIR=str(scratch))
    assert done.returncode == 2 and "exited at start with status 0" in done.stderr, done.stderr
    working = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(entry / "cwd").resolve().is_relative_to(scratch):
                working.append(int(entry.name))
        except OSError:
            continue
    assert not working and list(scratch.iterdir()) == [], working
