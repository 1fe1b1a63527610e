"""What a countdrift process starts outlives it no longer than a watchdog lets it.

A harness that is killed outright (SIGKILL, the OOM killer, a CI job
cancelled hard) runs none of its own clean-up, and its servers, each in a
session of its own, would run on. So the first time a harness process
starts a server it also starts this watchdog: a small Python process in a
session of its own (a signal to the harness's process group does not reach
it), reading from a pipe whose other end only the harness holds:

    track PID START     stop this process should the harness die
    forget PID          it was stopped
    folder PATH         remove this folder once those processes are gone
    unfolder PATH       it was removed

At the end of its input (the harness closed it, or died, however it died)
it sends SIGCONT and SIGKILL to every process still watched whose start
time is the one it was told (never a PID that was reused), waits for them
to go, removes the folders that still hold the harness's marker, and exits.
Only the standard library is used: it starts in tens of milliseconds.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

OWNER_FILE = "countdrift-owner.json"   # the marker of a scratch folder (processes.py writes it)


@contextmanager
def signals_held(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Signals that come during the block are delivered when it ends (the
    first of them: each ends the command). Only the main thread receives
    signals: elsewhere (a sweep's worker thread) there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if came:
            signal.raise_signal(came[0])


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), None if it is gone:
    with the PID, it names one process whatever PIDs are reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":   # exited, not yet reaped: nothing left to stop
        return None
    return int(fields[19])


def stop_all(processes: dict[int, int], patience_s: float = 5.0) -> None:
    """SIGKILL every process in ``processes`` (PID -> start time) that is
    still the one it names; wait until they are gone."""
    for pid, started in processes.items():
        if start_time(pid) == started:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):   # gone, or not ours to stop
                    break
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline and any(start_time(pid) == started for pid, started in processes.items()):
        time.sleep(0.02)


def working_in(folder: Path) -> dict[int, int]:
    """Processes (PID -> start time) that work in ``folder`` (their working
    folder is in it) and run a program the harness started there (its
    marker lists them): what a server forked, or a server that daemonized
    itself. A shell of the user's that looks into the folder is neither."""
    try:
        programs = set(json.loads((folder / OWNER_FILE).read_text()).get("programs", []))
    except (OSError, ValueError, AttributeError):
        return {}
    folder = folder.resolve()   # a process's working folder reads resolved (a TMPDIR through a link)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            where, program = Path(os.readlink(entry / "cwd")), os.readlink(entry / "exe")
        except OSError:
            continue
        if (where == folder or folder in where.parents) and program in programs:
            started = start_time(int(entry.name))
            if started is not None:
                found[int(entry.name)] = started
    return found


def remove_folder(folder: Path, patience_s: float = 3.0) -> None:
    """Remove a scratch folder, only when it holds the harness's marker,
    once nothing works in it any more; again while something still writes in
    it (an AOF rewrite's child finishing after its parent was killed)."""
    if not (folder / OWNER_FILE).exists():
        return
    stop_all(working_in(folder))
    deadline = time.monotonic() + patience_s
    while True:
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def watch(lines) -> None:
    """Read the harness's instructions until its end of the pipe closes, then clean up."""
    processes: dict[int, int] = {}
    folders: list[Path] = []
    for line in lines:
        verb, _, rest = line.decode(errors="replace").strip().partition(" ")
        if verb == "track":
            pid, started = rest.split()
            processes[int(pid)] = int(started)
        elif verb == "forget":
            processes.pop(int(rest), None)
        elif verb == "folder":
            folders.append(Path(rest))
        elif verb == "unfolder" and Path(rest) in folders:
            folders.remove(Path(rest))
    stop_all(processes)
    for folder in folders:
        remove_folder(folder)


class _Watchdog:
    """The harness's side: starts the watchdog, tells it what to watch."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.owner = os.getpid()

    def _send(self, line: str) -> None:
        if self.process is None or self.owner != os.getpid():   # none yet, or a forked child's copy
            self.owner = os.getpid()
            with signals_held():   # started whole, whatever interrupt comes meanwhile
                self.process = subprocess.Popen([sys.executable, "-I", __file__], stdin=subprocess.PIPE,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                start_new_session=True)
        try:
            self.process.stdin.write(f"{line}\n".encode())
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):   # it was killed: countdrift clean is left to do its work
            pass

    def watch(self, pid: int, started: int) -> None:
        self._send(f"track {pid} {started}")

    def forget(self, pid: int) -> None:
        if self.process is not None:
            self._send(f"forget {pid}")

    def folder(self, path: Path) -> None:
        self._send(f"folder {path}")

    def unfolder(self, path: Path) -> None:
        if self.process is not None:
            self._send(f"unfolder {path}")

    def close(self) -> None:
        """At the harness's exit: the end of its input, and the watchdog goes
        (once what it still watches is stopped)."""
        if self.process is not None and self.owner == os.getpid():
            try:
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.process = None


WATCHDOG = _Watchdog()
atexit.register(WATCHDOG.close)


def watch_process(pid: int, folder: Path | None, program: str | None = None) -> None:
    """A child process the harness started (its files in ``folder``): the
    watchdog stops it should the harness die, and the marker of the scratch
    folder that holds ``folder`` lists it for `countdrift clean`, with
    ``program``, the server it was meant to run (none for a helper of the
    harness's own, such as a Python relay: a user's Python working there
    must not be taken for it)."""
    started = start_time(pid)
    if started is None:
        return
    WATCHDOG.watch(pid, started)
    scratch = _scratch_of(folder)
    if scratch is not None:
        _SCRATCH_OF[pid] = scratch
        _update_owner(scratch, add=(pid, started), programs=(program,))


def forget_process(pid: int) -> None:
    """The harness stopped it."""
    WATCHDOG.forget(pid)
    scratch = _SCRATCH_OF.pop(pid, None)
    if scratch is not None:
        _update_owner(scratch, remove=pid)


_SCRATCH_OF: dict[int, Path] = {}    # PID -> the scratch folder whose marker lists it


def scratch_folder(prefix: str) -> Path:
    """A private temporary folder, marked as this process's (so that
    `countdrift clean` knows whose it is), and removed by the watchdog
    should this process be killed. An interrupt waits until the folder is
    made, marked and watched: one that came between the folder and its
    marker left a folder with an empty marker, which nothing removed."""
    owner = {"tool": "countdrift", "pid": os.getpid(), "start": start_time(os.getpid()), "processes": [],
             "programs": []}
    with signals_held():
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        (folder / OWNER_FILE).write_text(json.dumps(owner))
        WATCHDOG.folder(folder)
    return folder


def remove_scratch(folder: Path) -> None:
    """Remove a scratch folder (its processes stopped; any other that works
    in it, such as a server that daemonized itself, too)."""
    stop_all(working_in(folder))
    shutil.rmtree(folder, ignore_errors=True)
    if not folder.exists():
        WATCHDOG.unfolder(folder)


def _scratch_of(folder: Path | None) -> Path | None:
    """The scratch folder that holds ``folder``: the nearest with a marker."""
    if folder is None:
        return None
    for candidate in (folder, *folder.parents):
        if (candidate / OWNER_FILE).exists():
            return candidate
    return None


def _update_owner(scratch: Path, add: tuple[int, int] | None = None, remove: int | None = None,
                  programs: tuple[str | None, ...] = ()) -> None:
    """List a process in, or take one off, a scratch folder's marker; and
    the programs ever started there."""
    path = scratch / OWNER_FILE
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return   # the folder is being removed
    listed = [entry for entry in owner["processes"] if entry[0] != remove]
    if add is not None:
        listed.append(list(add))
    owner["processes"] = listed
    for program in programs:
        if program and program not in owner.setdefault("programs", []):
            owner["programs"].append(program)
    partial = path.with_name(f".{OWNER_FILE}.{os.getpid()}")
    try:
        partial.write_text(json.dumps(owner))
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)


def _name_this_process() -> None:
    """Show as countdrift-wdog in ps and top (its command line says python)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write("countdrift-wdog")
    except OSError:
        pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _name_this_process()
    watch(sys.stdin.buffer)
