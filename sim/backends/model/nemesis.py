"""The nemesis: applies a fault schedule to the simulated server, network
and clients, and records what each fault did. Every fault kind is one method
named after it."""
from __future__ import annotations

from typing import Any

import numpy as np

from sim.backends.model.driver import SimDriver
from sim.backends.model.persistence import ReplicationLag
from sim.commands import Pipeline, Script, Transaction
from sim.client import strike_clients
from sim.faults import Fault
from strategies import keys

_MID_OPERATION_POLL_S = 0.0005
_PROMOTION_S = 0.1  # from Sentinel's decision to clients reaching the new primary


class Nemesis:
    def __init__(self, driver: SimDriver, schedule: list[Fault], seed: int,
                 lag: ReplicationLag | None, auto_failover_s: float | None) -> None:
        self.driver = driver
        self.server = driver.server
        self.schedule = schedule
        self.lag = lag
        self.auto_failover_s = auto_failover_s
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E3E]))
        self.applied: list[dict] = []

    def processes(self) -> list:
        return [self._apply(fault) for fault in self.schedule]

    def _apply(self, fault: Fault):
        env = self.driver.env
        if fault.at > env.now:
            yield env.timeout(fault.at - env.now)
        record: dict[str, Any] = fault.to_dict()
        effects = yield from getattr(self, fault.kind)(fault)
        record["effects"] = effects or {}
        self.applied.append(record)

    # -- the server -------------------------------------------------------------
    def _crash(self, at: float, down_for: float, keep_until: float, preserve_locks: bool = False) -> dict:
        effects = self.server.crash(at, down_for, keep_until, keys.LOCK_PREFIX if preserve_locks else None)
        effects["writes_lost_s"] = round(at - keep_until, 6)
        return effects

    def server_crash(self, fault: Fault):
        env = self.driver.env
        keep = self.server.persistence.survives_crash(env.now)
        effects = self._crash(env.now, fault.duration, keep)
        if self.auto_failover_s is not None and self.lag is not None and fault.duration > self.auto_failover_s:
            # Sentinel notices the primary is down and promotes a replica first.
            yield env.timeout(self.auto_failover_s)
            effects["auto_failover"] = self._promote(env.now, fault.at, _PROMOTION_S)
        return effects
        yield  # a generator even when it does not wait

    def power_loss(self, fault: Fault):
        now = self.driver.env.now
        if "lost_unfsynced" in self.driver.causes:
            keep = self.server.persistence.survives_power_loss(now)
        else:
            keep = self.server.persistence.survives_crash(now)  # counterfactual: as a process crash
        return self._crash(now, fault.duration, keep)
        yield

    def mid_script_power_loss(self, fault: Fault):
        """Wait for a script, a transaction or a non-atomic pair to be running,
        then cut the power in its middle."""
        env = self.driver.env
        deadline = fault.at + fault.param("within_s")
        while env.now < deadline:
            target = next((entry for entry in self.server.queue
                           if entry.end > env.now and _is_compound(entry.request)), None)
            if target is not None:
                middle = max(env.now, (target.start + target.end) / 2)
                if middle > env.now:
                    yield env.timeout(middle - env.now)
                if not target.committed and not target.lost:
                    effects = self.power_loss(Fault(fault.kind, env.now, fault.duration))
                    effects = yield from effects
                    effects["hit"] = {"t": round(env.now, 9), "request": _describe(target.request)}
                    return effects
            yield env.timeout(_MID_OPERATION_POLL_S)
        return {"hit": None}

    def failover(self, fault: Fault):
        env = self.driver.env
        return self._promote(env.now, env.now, fault.duration, fault.param("lag_ms"))
        yield

    def _promote(self, now: float, died_at: float, down_for: float, lag_ms: float = -1.0) -> dict:
        """The primary is gone: a replica becomes primary, holding what had
        reached it by ``died_at``."""
        if "lost_on_failover" not in self.driver.causes:
            keep = died_at
        elif lag_ms >= 0:
            keep = died_at - lag_ms / 1000.0
        elif self.lag is not None:
            keep = self.lag.replica_has_until(died_at)
        else:
            keep = died_at
        preserve = "two_lock_holders" not in self.driver.causes
        return self._crash(now, down_for, keep, preserve_locks=preserve)

    # -- the clients ----------------------------------------------------------------
    def client_crash(self, fault: Fault):
        return strike_clients(fault, self.driver.clients, self.rng, self.driver.env.now)
        yield

    client_pause = client_crash

    # -- the network ------------------------------------------------------------------
    def _network(self, fault: Fault):
        self.driver.network.open(fault)
        return {}
        yield

    partition = latency = reset_peer = blackhole = _network


def _is_compound(request: Any) -> bool:
    kind = type(request)
    return kind is Script or kind is Transaction or (kind is Pipeline and len(request.commands) > 1)


def _describe(request: Any) -> str:
    kind = type(request)
    if kind is Pipeline:
        return f"Pipeline of {len(request.commands)}"
    return kind.__name__ if kind is not tuple else str(request[0])
