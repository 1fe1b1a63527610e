"""The seam between the engine and a backend (where a strategy's requests run).

A backend deploys a target for one strategy's run (a simulated server, or
real redis-server processes), runs the trace through the strategy on it while
its nemesis applies the schedule, reads the counters back, and stops it. It
returns an :class:`Execution`: the same record whatever the backend, from
which the engine computes drift and writes the run's results. Backends are
registered by name in :mod:`sim.backends`; nothing else in the engine imports
one.
"""
from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from sim.causes import EVERY
from sim.checker import Counters, Drift
from sim.commands import Request
from sim.errors import UsageError
from sim.faults import Fault
from sim.history import History
from sim.scenario import Scenario
from sim.story import Tracer
from sim.traffic import Trace
from strategies.base import Strategy

Progress = Callable[[float, int], None]


@dataclass
class Execution:
    """What one strategy's run on a backend produced."""

    history: History
    timeline: list[dict]
    faults: list[dict]                 # the schedule as applied, each with its effects
    counters: Counters                 # read back once the run had ended
    reconnects: int = 0
    script_loads: int = 0
    noscript: int = 0
    operations_cut_by_client_crash: int = 0
    wait_replies: dict[int, int] = field(default_factory=dict)   # replicas a WAIT confirmed -> times
    workers: dict[str, Any] = field(default_factory=dict)   # the strategy's background workers (sim/worker.py)
    figures: dict[str, Any] = field(default_factory=dict)   # the backend's own (wall_ times, commands)


class Deployment(ABC):
    """A target deployed for one strategy's run; a context manager that
    stops everything it started, also when the run fails."""

    @abstractmethod
    def run(self, strategy: Strategy, trace: Trace, progress: Progress | None) -> Execution:
        """Replay the trace through the strategy while the nemesis applies
        the schedule; read the counters back when it is over."""

    def close(self) -> None:
        """Stop whatever the deployment started."""

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BackendRefused(UsageError):
    """The backend cannot run this scenario here (a topology it lacks, a
    program not installed)."""


class Backend(ABC):
    name: str
    summary: str
    # Whether strategies' runs may go in parallel processes (`run --jobs`,
    # several to a sweep's worker): they share nothing, no ports, no server
    # processes, no files, and do not measure each other (no wall clock).
    parallel_runs: bool = False
    # Whether a scenario and seed always give the same figures (but wall_
    # ones): then any change of a figure is a change of the code.
    deterministic: bool = False
    # Whether it can model the real driver's process (`--model-driver`).
    models_driver: bool = False

    def refuse(self, scenario: Scenario) -> str | None:
        """Why this backend cannot run the scenario (a topology it lacks, a
        program not installed), or None."""
        return None

    @abstractmethod
    def deploy(self, scenario: Scenario, schedule: list[Fault]) -> Deployment:
        """A fresh target for one strategy's run: nothing carries over between runs."""

    def explanation(self, scenario: Scenario, strategy_name: str, schedule: list[Fault],
                    execution: Execution) -> list[Any]:
        """The work that explaining a run takes beyond the run (the
        simulation's replays): independent pieces, each done by ``replay``,
        in any process and order; none by default."""
        return []

    def replay(self, scenario: Scenario, trace: Trace, strategy_name: str, schedule: list[Fault],
               piece: Any) -> Any:
        """Do one piece of ``explanation``; its result goes to ``explain``."""
        raise NotImplementedError(f"the {self.name} backend has nothing to replay")

    def explain(self, drift: Drift, pieces: list[Any], results: list[Any]) -> dict[str, Any]:
        """Figures only this backend can add to a run's record (the
        simulation's drift by cause), from the results of its pieces (in
        their order); none by default."""
        return {}

    def rerun(self, scenario: Scenario, trace: Trace, strategy_name: str, schedule: list[Fault],
              causes: frozenset[str] = EVERY, tracer: Tracer | None = None) -> Execution:
        """A deterministic backend's run again, exactly, with only ``causes``
        on (sim/causes.py), and the tracer's operations followed request by
        request (sim/story.py); no timeline. Only a deterministic backend can."""
        raise BackendRefused(f"the {self.name} backend cannot run a run again the same way")

    def stop_all(self) -> None:
        """Stop every process this backend started in this process (a
        command cut short); nothing by default."""

    def measure_service(self, requests: int) -> dict[str, Any]:
        """`countdrift calibrate`: what requests cost this backend's server
        on this machine, in the simulation's service times; only a backend
        of real servers can say."""
        raise BackendRefused(f"the {self.name} backend has no server to measure")

    def cost_target(self, strategy: Strategy) -> CostTarget:
        """A fresh server for `countdrift cost` (sim/experiments/cost.py)."""
        raise BackendRefused(f"the {self.name} backend cannot measure costs")

    def bench(self, args: argparse.Namespace) -> int:
        """`countdrift bench --backend NAME`: how fast this backend runs."""
        raise NotImplementedError(f"the {self.name} backend has no bench")


@dataclass(frozen=True)
class Meter:
    """What the server counted between ``begin`` and ``end``."""

    commands: int = 0
    server_us: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


class CostTarget(ABC):
    """One fresh server of a backend, driven one request at a time."""

    measures_memory: bool = False

    @abstractmethod
    def execute(self, request: Request) -> Any:
        """Send one request (one round trip) and return its reply."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the keyspace and load the strategy's scripts (not metered)."""

    @abstractmethod
    def begin(self) -> None:
        """Start counting."""

    @abstractmethod
    def end(self) -> Meter:
        """What the server counted since ``begin`` (less what reading it cost)."""

    def memory(self, tag: str) -> int | None:
        """Bytes held by the keys whose names contain ``tag`` (None: not measured)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "CostTarget":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
