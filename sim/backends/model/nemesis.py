"""The nemesis of the simulation: applies a fault schedule to the simulated
server, network and clients, and records what each fault did (the effects
of sim/faults.py's specification, through the shared FaultLog). Every
fault kind is one method named after it."""
from __future__ import annotations

import numpy as np

from sim.backends.model.driver import SimDriver
from sim.backends.model.server import REPLICA_CRON_S
from sim.client import in_flight, strike_clients
from sim.faults import Fault
from sim.nemesis import AckLog, FaultLog, StallTarget, uniform
from sim.scenario import ServerConfig
from strategies import keys

_PROMOTION_S = 0.1       # from Sentinel's decision to clients reaching the new primary
_FIND_STALL_S = 0.0001   # how often to look for the stalled request in the server's queue


class Nemesis:
    def __init__(self, driver: SimDriver, schedule: list[Fault], seed: int, server: ServerConfig,
                 acks: AckLog, target: StallTarget) -> None:
        self.driver = driver
        self.env = driver.env
        self.server = driver.server
        self.schedule = schedule
        self.config = server
        self.acks = acks
        self.target = target
        self.log = FaultLog(schedule)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E3E]))
        self.seed = seed

    def processes(self) -> list:
        return [self._apply(index, fault) for index, fault in enumerate(self.schedule)]

    def records(self) -> list[dict]:
        """The schedule as applied, once the run has ended."""
        for index, count in self.driver.network.replies_lost.items():
            self.log.update(index, replies_lost=count)
        return self.log.records(self.driver.run_end)

    def _apply(self, index: int, fault: Fault):
        if fault.at > self.env.now:
            yield self.env.timeout(fault.at - self.env.now)
        yield from getattr(self, fault.kind)(index, fault)

    # -- the server -------------------------------------------------------------
    def _server_down(self, index: int) -> bool:
        if self.env.now < self.server.down_until:
            self.log.not_applied(index, "the server was already down")
            return True
        return False

    def _kill(self, index: int, keep_until: float, down_for: float, tear_bytes: int = 0,
              replica: bool = False) -> None:
        """The primary dies now; what survives reaches back to ``keep_until``:
        on its own disk (it restarts), or on the replica promoted instead."""
        now = self.env.now
        self.log.struck(index, now, operations_in_flight=in_flight(self.driver.clients))
        self._losses(index, now, keep_until)
        if replica:
            self.server.fail_over(now, down_for, keep_until, self._preserved())
        else:
            # The replicas' cron ticks fall anywhere in the second after the restart.
            self.server.crash(now, down_for, keep_until, tear_bytes,
                              replicas_after_s=uniform(self.seed, index, 0x5E1C) * REPLICA_CRON_S)

    def _losses(self, index: int, died_at: float, keep_until: float) -> None:
        acknowledged, confirmed = self.acks.lost(keep_until, died_at)
        self.log.update(index, writes_lost_s=round(died_at - keep_until, 6), acknowledged_writes_lost=acknowledged,
                        wait_confirmed_writes_lost=confirmed)

    def _back_up(self, index: int):
        yield self.env.timeout(max(0.0, self.server.down_until - self.env.now))
        self.log.ended(index, self.env.now)

    def server_crash(self, index: int, fault: Fault):
        if self._server_down(index):
            return
        now = self.env.now
        self._kill(index, self.server.persistence.survives_crash(now), fault.duration)
        self.log.update(index, promoted=False)
        detection = self.config.failover_detection_s
        if self.config.auto_failover and self.server.replicas and fault.duration > detection:
            # Sentinel notices the primary is down and promotes a replica first.
            yield self.env.timeout(detection)
            keep = self._replica_keeps(now, self.config.replication_lag_ms / 1000.0)
            self.server.fail_over(self.env.now, _PROMOTION_S, keep, self._preserved())
            self._losses(index, now, keep)
            self.log.update(index, promoted=True)
        yield from self._back_up(index)

    def power_loss(self, index: int, fault: Fault):
        if self._server_down(index):
            return
        now = self.env.now
        if "lost_unfsynced" in self.driver.causes:
            keep, tear = self.server.persistence.survives_power_loss(now), fault.param("tear_bytes")
        else:
            keep, tear = self.server.persistence.survives_crash(now), 0  # counterfactual: as a process crash
        self._kill(index, keep, fault.duration, tear)
        yield from self._back_up(index)

    def mid_script_power_loss(self, index: int, fault: Fault):
        """Arm the stall (sim/stall.py); when an operation reaches it, cut the
        power while the stall holds the server; strike anyway when the
        window ends."""
        env, target = self.env, self.target
        deadline = env.now + fault.param("within_s")
        while env.now < deadline:
            caught = env.event()
            target.arm(fault.param("stall_ms") / 1000.0, caught.succeed)
            yield caught | env.timeout(deadline - env.now)
            if not caught.triggered:
                break
            entry = yield from self._stalled_entry(target.caught["request"], deadline)
            if entry is not None:
                middle = entry.end - target.stall_s / 2
                if middle > env.now:
                    yield env.timeout(middle - env.now)
                if not entry.committed and not entry.lost:
                    if not self._server_down(index):
                        yield from self._cut_power(index, fault, target.caught)
                    return
        target.disarm()
        if not self._server_down(index):
            yield from self._cut_power(index, fault, {"target": "none", "target_operation": None})

    def _stalled_entry(self, request, deadline: float):
        """The stalled request once it is in the server's queue (None if it
        never arrives: refused, lost on the way)."""
        env = self.env
        give_up = min(deadline, env.now + self.driver.config.timeout_ms / 1000.0)
        while env.now < give_up:
            for entry in self.server.queue:
                if entry.request is request:
                    return entry
            yield env.timeout(_FIND_STALL_S)
        return None

    def _cut_power(self, index: int, fault: Fault, caught: dict):
        self.log.update(index, target=caught["target"], target_operation=caught["target_operation"])
        yield from self.power_loss(index, fault)

    def failover(self, index: int, fault: Fault):
        if self._server_down(index):
            return
        lag_ms = fault.param("lag_ms")
        now = self.env.now
        keep = self._replica_keeps(now, (self.config.replication_lag_ms if lag_ms < 0 else lag_ms) / 1000.0)
        self._kill(index, keep, fault.duration, replica=True)
        yield from self._back_up(index)

    def _replica_keeps(self, died_at: float, lag_s: float) -> float:
        """A replica promoted after the primary died holds its writes up to then."""
        if "lost_on_failover" in self.driver.causes:
            return self.server.replica_has_until(died_at, lag_s)
        return died_at   # counterfactual: the replica has everything

    def _preserved(self) -> str | None:
        """Counterfactual when two_lock_holders is off: lock keys survive a failover."""
        return keys.LOCK_PREFIX if "two_lock_holders" not in self.driver.causes else None

    # -- the clients ----------------------------------------------------------------
    def client_crash(self, index: int, fault: Fault):
        self.log.struck(index, self.env.now,
                        **strike_clients(fault, self.driver.clients, self.rng, self.env.now))
        yield self.env.timeout(fault.duration)
        self.log.ended(index, self.env.now)

    client_pause = client_crash

    # -- the network ------------------------------------------------------------------
    def _network(self, index: int, fault: Fault):
        self.driver.network.open(index, fault)
        self.log.struck(index, self.env.now)
        yield self.env.timeout(fault.duration)
        self.log.ended(index, self.env.now)

    partition = latency = reset_peer = blackhole = _network
