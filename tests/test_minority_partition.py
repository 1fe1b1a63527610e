"""A cluster primary cut off in a minority (the minority_partition fault):
the bus relay that cuts it on real servers, the model's timing, and the
fault's run on both backends: the old primary takes the writes of the
clients left with it until it misses a majority, and they are lost."""
from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from sim.backends.model.cluster import CUT_PING_S, minority_refusal_time
from sim.backends.real.bus_relay import HEADER_BYTES, SIGNATURE
from sim.backends.real.processes import BusRelayProcess
from sim.cluster import SlotMap
from sim.nemesis import left_with_old_primary
from sim.runner import run_scenario
from sim.scenario import ScenarioError, load, parse
from strategies import keys

from conftest import ROOT
from test_cluster import SHARD_FAULT, lua_run

pytestmark = pytest.mark.cluster

PARTITION = ROOT / "scenarios" / "cluster_partition.toml"
X, Y = "a" * 40, "b" * 40   # two node ids


def header(sender: str) -> bytes:
    """The start of a cluster bus message from ``sender`` (cluster.h's clusterMsg)."""
    return (SIGNATURE + bytes(36) + sender.encode()).ljust(HEADER_BYTES, b"\0")


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


def talks(port: int, sender: str) -> bool:
    """Whether a link opened by ``sender`` through the relay's ``port`` carries bytes both ways."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as link:
        link.sendall(header(sender) + b"ping")
        received = b""
        try:
            while len(received) < HEADER_BYTES + 4:
                chunk = link.recv(4096)
                if not chunk:
                    return False
                received += chunk
        except (ConnectionError, socket.timeout):
            return False
        return received.endswith(b"ping")


def test_the_bus_relay_cuts_a_node_off_both_ways(tmp_path):
    """Node X behind relay port x, node Y behind y (two echo servers stand
    for their bus ports): cut X off, and the links X opens to Y and those
    Y opens to X die, open ones included; Y's links to a third node live
    on; healed, all talk again."""
    echoes = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) for _ in range(3)]
    for echo in echoes:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
    relay = BusRelayProcess([echo.server_address[1] for echo in echoes], tmp_path)
    relay.start()
    x, y, z = relay.ports
    try:
        assert talks(y, X) and talks(x, Y) and talks(z, Y)
        open_link = socket.create_connection(("127.0.0.1", y), timeout=2.0)
        open_link.sendall(header(X))
        assert open_link.recv(4096).startswith(SIGNATURE)
        relay.cut(X, x)
        assert open_link.recv(4096) == b""   # closed by the cut
        assert not talks(y, X) and not talks(x, Y)
        assert talks(z, Y)   # the majority's own links
        relay.heal()
        assert talks(y, X) and talks(x, Y)
    finally:
        relay.stop()
        for echo in echoes:
            echo.shutdown()
            echo.server_close()
    assert relay.process.poll() is not None


def test_the_cut_primary_refuses_once_a_majority_is_unreachable():
    """cluster.c's rule: with 3 primaries it refuses once both others are
    PFAIL (the later of the two), with 5 once 3 of 4 are; alone, never."""
    assert minority_refusal_time(1.0, 3, [0.2, 0.9, 0.5]) == pytest.approx(1.0 + 0.9 * CUT_PING_S)
    assert minority_refusal_time(1.0, 5, [0.1, 0.2, 0.3, 0.4, 0.0]) == pytest.approx(1.0 + 0.3 * CUT_PING_S)
    assert minority_refusal_time(1.0, 1, [0.5]) == float("inf")


def test_a_minority_partition_needs_three_primaries(tmp_path):
    text = PARTITION.read_text().replace("cluster_primaries = 3", "cluster_primaries = 2")
    with pytest.raises(ScenarioError, match="cluster_primaries' of 3 or more"):
        parse(tmp_path / "two.toml", text)
    with pytest.raises(ScenarioError, match="needs a Redis Cluster.*use split_brain"):
        parse(tmp_path / "one.toml", PARTITION.read_text().split("[server]")[0] + '[[faults]]\n'
              'kind = "minority_partition"\nat = 1.0\n')


def partition_run(tmp_path, backend: str, share: float = 0.5):
    """One lua run of tests/test_cluster.py's 1:1 scenario (every operation
    touches one user, so one shard) with the partition of shard 1: its
    fault's effects, and the shards of the users whose total ended outside
    its true range."""
    path = tmp_path / f"minority-{share}.toml"
    # Traffic for 4 s: the run goes on past the heal (2.9 s) until the old primary is a replica.
    path.write_text(SHARD_FAULT.format(kind="minority_partition", duration=2.5, retries=1,
                                       params=f", clients_share = {share}")
                    .replace("messages = 1500", "messages = 4000"))
    execution, drifting = lua_run(path, backend)
    slots = SlotMap.even(3)
    (fault,) = execution.faults
    return fault["effects"], {slots.shard_of_key(keys.total(int(user))) for user in drifting}, len(drifting)


def check_partition(effects: dict, shards: set[int], drifting: int, backend: str) -> None:
    """What both backends must show: the old primary took writes after the
    cut and lost them all, it refused once it had missed the other
    primaries for about a node timeout, its replica was promoted after the
    majority flagged it FAIL, and shard 1's users drift (the others' too:
    the clients left with the old primary give up what needs another shard)."""
    left = left_with_old_primary(3, 0, 16, 0.5)   # the scenario's seed, its one fault, its clients
    assert effects["applied"] and effects["clients_left"] == len(left) > 0 and effects["promoted"], (backend, effects)
    assert effects["old_primary_acknowledged"] > 0, (backend, effects)
    assert effects["acknowledged_writes_lost"] == effects["old_primary_acknowledged"], (backend, effects)
    struck = effects["struck_at"]
    assert 1.0 <= effects["refused_at"] - struck <= 1.3, (backend, effects)
    assert struck + 1.0 < effects["failed_at"] < effects["promoted_at"] < struck + 3.0, (backend, effects)
    assert effects["demoted_at"] is not None and effects["demoted_at"] >= effects["ended_at"], (backend, effects)
    assert drifting > 0 and 1 in shards, (backend, shards, drifting)


def test_the_simulated_minority_loses_the_writes_of_its_clients(tmp_path):
    effects, shards, drifting = partition_run(tmp_path, "sim")
    check_partition(effects, shards, drifting, "sim")
    alone, _, _ = partition_run(tmp_path, "sim", share=0.0)   # nobody reaches it: nothing to lose
    assert alone["clients_left"] == 0 and alone["old_primary_acknowledged"] == alone["acknowledged_writes_lost"] == 0


def test_the_scenario_attributes_the_loss_to_the_split_brain():
    """cluster_partition.toml: naive's drift by cause names the writes the
    old primary took; the record says when each side noticed."""
    run = run_scenario(load(PARTITION), ["naive"])["runs"][0]
    assert "lost_in_split_brain" in run["drift_by_cause"]["abs_drift_sum"]
    (fault,) = run["faults"]
    assert fault["kind"] == "minority_partition" and fault["effects"]["slots"] == "5461-10922"


@pytest.mark.real
def test_a_real_minority_loses_the_writes_of_its_clients(tmp_path):
    """The same run on a real cluster (the bus through the relay, the
    replica refused, the clients' proxies cut): the same story."""
    effects, shards, drifting = partition_run(tmp_path, "redis")
    check_partition(effects, shards, drifting, "redis")


@pytest.mark.real
def test_a_run_interrupted_during_the_partition_leaves_no_process(tmp_path):
    """SIGINT while shard 1's primary is cut off (its cluster_state is
    fail): the 6 servers and the bus relay are gone, and their folder."""
    import signal
    import time
    from pathlib import Path

    import redis

    from conftest import alive, children, scratch_folders_of
    from test_cluster import start_real_cluster_run

    run, servers = start_real_cluster_run(PARTITION, tmp_path)
    deadline = time.monotonic() + 30
    relays: set[int] = set()
    while not relays and run.poll() is None and time.monotonic() < deadline:   # it starts once the nodes are up
        relays = {pid for pid, _ in children(run.pid, ("python",))}
        time.sleep(0.01)
    assert len(relays) == 1, relays
    # Each node runs in its own folder, and its process title says its address ("redis-server 127.0.0.1:port").
    primary = next(pid for pid in servers if Path(f"/proc/{pid}/cwd").resolve().name == "shard1-primary")
    port = int(Path(f"/proc/{primary}/cmdline").read_bytes().split()[1].split(b":")[1])
    node = redis.Redis(port=port, decode_responses=True, socket_timeout=1.0)
    for state in ("ok", "fail"):   # the cluster joins, then the cut 1 s into the run
        while run.poll() is None and time.monotonic() < deadline and node.cluster("INFO")["cluster_state"] != state:
            time.sleep(0.01)
    node.close()
    assert run.poll() is None, "the run ended before the partition"
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err.strip().startswith("countdrift: interrupted;"), err
    assert not any(alive(pid) for pid in servers | relays), "a process outlived the run"
    assert not scratch_folders_of({run.pid}), "a server folder was left"
