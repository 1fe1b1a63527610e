"""redis-server and toxiproxy-server processes that the harness owns.

Every process listens on 127.0.0.1 on a port picked free, keeps its files in
a private temporary folder, and is registered so that it is stopped, by its
PID, when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM, or the
interpreter exiting).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sim.backend import BackendRefused
from sim.watchdog import forget_process, signals_held, watch_process

ROOT = Path(__file__).resolve().parents[3]


class ProcessError(BackendRefused):
    """A server that is not there or did not start: why, in one line."""


class _Registry:
    """Every child process started, so that none outlives the harness: the
    harness stops them when it ends, fails or is interrupted; the watchdog
    when the harness is killed outright; `countdrift clean` should the
    watchdog be killed too (each scratch folder's marker lists its processes)."""

    def __init__(self) -> None:
        self.processes: dict[int, subprocess.Popen] = {}
        atexit.register(self.stop_all)

    def start(self, command: list[str], folder: Path, program: str | None = None,
              **options: Any) -> subprocess.Popen:
        """Start a child in a session of its own and register it, with Ctrl-C
        and SIGTERM held meanwhile: one that came between the fork and the
        registration left a child that nothing knew of, and it outlived the
        harness (CI saw a server do so once). ``program``: the server it is
        meant to run (its name on PATH), so that a copy of it left working in
        ``folder`` (a server that daemonized itself) is stopped with the
        folder; none for a helper of the harness's own."""
        if not self.processes and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # Nobody handles SIGTERM (the CLI does, as an interrupt): stop the servers on it.
            try:
                signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread: atexit still covers us
                pass
        meant = shutil.which(program) if program else None
        with signals_held():
            process = subprocess.Popen(command, start_new_session=True, **options)
            self.processes[process.pid] = process
            watch_process(process.pid, folder, os.path.realpath(meant) if meant else None)
        return process

    def remove(self, process: subprocess.Popen) -> None:
        if self.processes.pop(process.pid, None) is not None:
            forget_process(process.pid)

    def stop_all(self) -> None:
        for process in list(self.processes.values()):
            stop_process(process)
        self.processes.clear()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_all()
        raise SystemExit(128 + signum)


REGISTRY = _Registry()


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a child by its PID: SIGCONT (in case it is paused), SIGTERM, then SIGKILL."""
    if process.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                break
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    REGISTRY.remove(process)


def _listening_ports() -> range:
    """Ports for servers outside the kernel's ephemeral range: a port the
    kernel may hand to an outgoing connection (a client's, a replica's) can
    be taken between the probe and the server's bind."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(10000, low) if low > 11000 else range(high + 1, 65536)


_HANDED_OUT: set[int] = set()
_PICK = random.Random()


def free_port() -> int:
    """A port of 127.0.0.1 free now, outside the ephemeral range, and not
    handed out before in this process."""
    ports = _listening_ports()
    for _ in range(200):
        port = _PICK.choice(ports)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise ProcessError(f"no free port on 127.0.0.1 for a server in {ports.start}-{ports.stop - 1}")


def find_binary(name: str, env_var: str) -> str:
    """An explicit path in ``env_var``, else PATH, else the project's tools/."""
    explicit = os.environ.get(env_var)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise ProcessError(f"{env_var}={explicit} is not an executable file")
        return explicit
    tool = ROOT / "tools" / name
    found = shutil.which(name) or (str(tool) if tool.is_file() and os.access(tool, os.X_OK) else None)
    if not found:
        raise ProcessError(f"{name} not found: run scripts/setup, put it on PATH, or set {env_var}")
    return found


def _wait_until(check, what: str, timeout: float = 10.0, process: subprocess.Popen | None = None,
                logs: tuple[Path, ...] = ()) -> None:
    """Until ``check()`` is true; a process that exits meanwhile, or one that
    is not up by the deadline, is a ProcessError that says why: its exit
    status and the last lines of its logs."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ProcessError(f"{what} exited at start with status {process.returncode}{_tail(logs)}")
        try:
            if check():
                return
        except Exception as error:  # the process is still coming up
            last = error
        time.sleep(0.02)
    raise ProcessError(f"{what} did not come up within {timeout:.0f} s ({last}){_tail(logs)}")


def _tail(logs: tuple[Path, ...], lines: int = 3) -> str:
    """The last lines of a process's logs, for the line that says why it failed."""
    said = []
    for log in logs:
        try:
            said += [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            continue
    return f"; its log ends: {' | '.join(said[-lines:])}" if said else ""


def _start(command: list[str], folder: Path, what: str, log: Path, program: str) -> subprocess.Popen:
    """Start a server (``program``: its name) in a session of its own, its output in ``log``."""
    try:
        with open(log, "ab") as output:
            return REGISTRY.start(command, folder, program, stdout=output, stderr=output)
    except OSError as error:
        raise ProcessError(f"{what}: cannot start {command[0]}: {error.strerror}") from None


def _quoted(path: Path) -> str:
    """A path as a Redis configuration file takes it: quoted, so that a space does not split it."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer:
    """One redis-server process with its own folder and port."""

    def __init__(self, name: str, folder: Path, config: dict[str, str]) -> None:
        self.name = name
        self.folder = folder
        self.port = free_port()
        self.config = config
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def aof_folder(self) -> Path:
        return self.folder / "appendonlydir"

    def _write_config(self) -> Path:
        lines = {
            "bind": "127.0.0.1", "port": str(self.port), "dir": _quoted(self.folder),
            "daemonize": "no", "protected-mode": "yes", "logfile": _quoted(self.folder / "redis.log"),
            "dbfilename": "dump.rdb", "appenddirname": "appendonlydir",
            "aof-load-truncated": "yes", "auto-aof-rewrite-percentage": "0",
            "aof-use-rdb-preamble": "yes", "save": '""',
            # A new replica syncs at once (Redis 7 waits 5 s for others to share a diskless sync).
            "repl-diskless-sync-delay": "0", **self.config,
        }
        path = self.folder / "redis.conf"
        path.write_text("".join(f"{key} {value}\n" for key, value in lines.items()))
        return path

    def start(self) -> None:
        """Start it; a restart keeps the configuration file as the node left
        it (Sentinel rewrites it when it makes the node a replica or a primary)."""
        binary = find_binary("redis-server", "COUNTDRIFT_REDIS_SERVER")
        config = self.folder / "redis.conf"
        if not config.exists():
            config = self._write_config()
        what = f"redis-server {self.name} on port {self.port} ({binary}, files in {self.folder})"
        output = self.folder / "redis.out"
        self.process = _start([binary, str(config)], self.folder, what, output, "redis-server")
        _wait_until(lambda: self.client().ping(), what, process=self.process,
                    logs=(output, self.folder / "redis.log"))

    def reconfigure(self, *command: str) -> None:
        """Run a configuration command (REPLICAOF) and write it to the
        configuration file, as Sentinel does, so that it survives a restart."""
        client = self.client()
        client.execute_command(*command)
        client.config_rewrite()

    def client(self, **options: Any) -> redis.Redis:
        """A direct client; like the driver's, it never retries on its own."""
        return redis.Redis(**{"host": "127.0.0.1", "port": self.port, "decode_responses": True,
                              "socket_timeout": 5, "retry": Retry(NoBackoff(), 0), **options})

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies at once; the OS keeps what it had written."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process is not None:
            REGISTRY.remove(self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class SentinelProcess:
    """One redis-sentinel process watching the primary named ``master``
    (which it reaches at ``address``), with its own folder and port; it
    rewrites its configuration file as it learns."""

    def __init__(self, name: str, folder: Path, master: str, address: str, quorum: int,
                 settings: dict[str, str]) -> None:
        self.name = name
        self.folder = folder
        self.port = free_port()
        self.myid = hashlib.sha1(str(folder).encode()).hexdigest()   # Sentinel's run id: 40 hex digits
        self.master = master
        self.address = address
        self.quorum = quorum
        self.settings = settings   # sentinel <setting> <master> <value>: down-after-milliseconds...
        self.peers: list["SentinelProcess"] = []   # the other sentinels, known from the start
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        binary = find_binary("redis-sentinel", "COUNTDRIFT_REDIS_SENTINEL")
        host, port = self.address.split(":")
        lines = ["bind 127.0.0.1", f"port {self.port}", f"dir {_quoted(self.folder)}", "daemonize no",
                 f"logfile {_quoted(self.folder / 'sentinel.log')}", f"sentinel myid {self.myid}",
                 f"sentinel monitor {self.master} {host} {port} {self.quorum}",
                 *(f"sentinel {setting} {self.master} {value}" for setting, value in self.settings.items()),
                 # As Sentinel writes them itself once it has met them through hello messages
                 # (every 2 s): known from the start, no failover waits for that.
                 *(f"sentinel known-sentinel {self.master} 127.0.0.1 {peer.port} {peer.myid}"
                   for peer in self.peers)]
        config = self.folder / "sentinel.conf"
        config.write_text("".join(line + "\n" for line in lines))
        what = f"redis-sentinel {self.name} on port {self.port} ({binary}, files in {self.folder})"
        output = self.folder / "sentinel.out"
        self.process = _start([binary, str(config)], self.folder, what, output, "redis-sentinel")
        _wait_until(lambda: self.client().ping(), what, process=self.process,
                    logs=(output, self.folder / "sentinel.log"))

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(**{"host": "127.0.0.1", "port": self.port, "decode_responses": True,
                              "socket_timeout": 2, "retry": Retry(NoBackoff(), 0), **options})

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class ToxiproxyServer:
    """A toxiproxy-server on 127.0.0.1, driven with toxiproxy-python."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from toxiproxy import Toxiproxy

        binary = find_binary("toxiproxy-server", "COUNTDRIFT_TOXIPROXY")
        what = f"toxiproxy-server on port {self.port} ({binary})"
        log = self.folder / "toxiproxy.log"
        self.process = _start([binary, "-host", "127.0.0.1", "-port", str(self.port)], self.folder, what, log,
                              "toxiproxy-server")
        self.api = Toxiproxy()
        self.api.update_api_consumer("127.0.0.1", self.port)
        _wait_until(self.api.running, what, process=self.process, logs=(log,))

    def proxy(self, name: str, upstream: str):
        """A proxy listening on a free port of 127.0.0.1 to ``upstream``."""
        return self.api.create(upstream=upstream, name=name, listen=f"127.0.0.1:{free_port()}")

    def set_upstream(self, name: str, upstream: str) -> None:
        from toxiproxy.api import APIConsumer

        APIConsumer.post(f"/proxies/{name}", json={"upstream": upstream})

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class BusRelayProcess:
    """The cluster bus's relay (sim/backends/real/bus_relay.py), a Python
    process of its own, in front of the bus ports ``targets``; once started,
    ``ports`` are its ports for them, in the same order."""

    def __init__(self, targets: list[int], folder: Path) -> None:
        self.targets = targets
        self.ports: list[int] = []
        self.log = folder / "bus_relay.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        script = Path(__file__).with_name("bus_relay.py")
        with open(self.log, "wb") as log:
            self.process = REGISTRY.start([sys.executable, str(script), *map(str, self.targets)], self.log.parent,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        self.ports = [int(port) for port in self._expect("ready")]

    def cut(self, node_id: str, port: int) -> None:
        """Cut the node with this id (reached at relay ``port``) off from every other node."""
        self._send(f"cut {node_id} {port}")

    def heal(self) -> None:
        self._send("heal")

    def _send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self._expect("ok")

    def _expect(self, answer: str) -> list[str]:
        """The rest of its next line, which must start with ``answer``."""
        words = self.process.stdout.readline().split()
        if words[:1] != [answer]:
            said = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.exists() else []
            raise ProcessError(f"the cluster bus relay answered {' '.join(words)!r} instead of {answer!r}"
                               + (f": {said[0]}" if said else ""))
        return words[1:]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stdin.close()   # it stops by itself at the end of its input
            stop_process(self.process)
            self.process.stdout.close()
