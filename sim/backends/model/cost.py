"""The simulated server as a cost target (sim/experiments/cost.py): server time is the
calibrated service time, bytes are the RESP sizes of requests and replies."""
from __future__ import annotations

from typing import Any

from sim.backend import CostTarget, Meter
from sim.backends.model.server import Connection, Server, ServiceTimes
from sim.commands import Request, reply_size, wire_size
from sim.lua import load_command
from strategies.base import Strategy


class SimCostTarget(CostTarget):
    def __init__(self, strategy: Strategy, service: ServiceTimes) -> None:
        self.strategy = strategy
        self.service = service
        self.reset()

    def reset(self) -> None:
        self.server = Server(self.service)
        self.connection = Connection()
        for code in self.strategy.code:
            self.server.run(self.connection, load_command(code))
        self.begin()

    def begin(self) -> None:
        self._commands = self.server.commands
        self._server_s = 0.0
        self._bytes_in = self._bytes_out = 0

    def execute(self, request: Request) -> Any:
        self._server_s += self.server.service_time(request)
        self._bytes_in += wire_size(request)
        reply = self.server.run(self.connection, request)
        self._bytes_out += reply_size(request, reply)
        return reply

    def end(self) -> Meter:
        return Meter(self.server.commands - self._commands, self._server_s * 1e6, self._bytes_in, self._bytes_out)
