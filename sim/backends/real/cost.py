"""A real redis-server as a cost target (sim/experiments/cost.py), persistence off.

Counting: CONFIG RESETSTAT before the operations, then INFO after them.
Commands are commandstats' calls (the RESETSTAT itself, counted after it
ran, left out; INFO is counted only after its reply is built). Bytes are
total_net_input_bytes (less the INFO request, read before it ran) and
total_net_output_bytes (less RESETSTAT's +OK). Server time is the process's
CPU (used_cpu_user + used_cpu_sys) between two INFO readings, less what one
INFO cpu costs (measured at start); memory is MEMORY USAGE of every key
holding the user's hash tag (SAMPLES 0: every element counted).
"""
from __future__ import annotations

from typing import Any

from sim.backend import CostTarget, Meter
from sim.backends.real.connection import SyncConnection
from sim.backends.real.processes import RedisServer
from sim.commands import Request, wire_size
from sim.watchdog import remove_scratch, scratch_folder, signals_held
from strategies.base import Strategy

_INFO = ("INFO", "stats", "commandstats", "cpu")
_NOT_COUNTED = ("config|resetstat", "info")


class RedisCostTarget(CostTarget):
    measures_memory = True

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.folder = scratch_folder("countdrift-cost-")
        self.server = RedisServer("cost", self.folder / "cost", {"appendonly": "no", "save": ""})
        self.connection: SyncConnection | None = None
        try:
            self.server.start()
            self.connection = SyncConnection("127.0.0.1", self.server.port)
            self.admin = SyncConnection("127.0.0.1", self.server.port)
            for connection in (self.connection, self.admin):   # connect now: its handshake is not metered
                connection.execute(("PING",))
            readings = [self._cpu_us(self._info()) for _ in range(7)]
            self._info_cpu_us = sorted(b - a for a, b in zip(readings, readings[1:]))[3]   # the median
        except BaseException:
            self.close()
            raise
        self._cpu_at_begin = 0.0

    def _info(self) -> dict[str, str]:
        text = self.admin.execute(_INFO)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    @staticmethod
    def _cpu_us(info: dict[str, str]) -> float:
        return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6

    def reset(self) -> None:
        self.admin.execute(("FLUSHALL",))
        self.connection.load(self.strategy.code)

    def begin(self) -> None:
        self._cpu_at_begin = self._cpu_us(self._info())
        self.admin.execute(("CONFIG", "RESETSTAT"))

    def execute(self, request: Request) -> Any:
        return self.connection.execute(request)

    def end(self) -> Meter:
        info = self._info()
        commands = sum(int(value.split("calls=")[1].split(",")[0]) for key, value in info.items()
                       if key.startswith("cmdstat_") and key.removeprefix("cmdstat_") not in _NOT_COUNTED)
        # RESETSTAT's reply and this INFO's request; two INFO cpu readings
        return Meter(commands, max(0.0, self._cpu_us(info) - self._cpu_at_begin - 2 * self._info_cpu_us),
                     int(info["total_net_input_bytes"]) - wire_size(_INFO),
                     int(info["total_net_output_bytes"]) - 5)

    def memory(self, tag: str) -> int | None:
        total, cursor = 0, "0"
        while True:
            cursor, keys = self.admin.execute(("SCAN", cursor, "MATCH", f"*{tag}*", "COUNT", 1000))
            for key in keys:
                total += int(self.admin.execute(("MEMORY", "USAGE", key, "SAMPLES", "0")) or 0)
            if cursor == "0":
                return total

    def close(self) -> None:
        with signals_held():   # stopped and removed whole, an interrupt delivered after
            for connection in (self.connection, getattr(self, "admin", None)):
                if connection is not None:
                    connection.close()
            self.server.stop()
            remove_scratch(self.folder)
