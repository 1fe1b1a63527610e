"""One client connection to a real redis-server, sync or asyncio.

redis-py's own retry is turned off (``Retry(NoBackoff(), 0)``): the driver
owns every retry, so a non-idempotent command is sent again only when the
strategy's retry policy says so. Replies are raw (no response callbacks):
the same shapes the simulated server returns.
"""
from __future__ import annotations

import redis
import redis.asyncio
from hiredis import pack_command
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from sim.backends.real.protocol import assemble, flatten
from sim.commands import CommandError, Request, Script
from sim.lua import LuaScript


def _no_retry(module) -> object:
    return module.retry.Retry(NoBackoff(), 0)


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, CommandError) and str(reply).startswith("NOSCRIPT")


class SyncConnection:
    """For reading counters back, loading scripts, and the differential tests."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.connection = redis.Connection(host=host, port=port, decode_responses=True, protocol=2,
                                           retry=_no_retry(redis), socket_timeout=timeout,
                                           socket_connect_timeout=timeout)

    def execute(self, request: Request) -> object:
        commands = flatten(request)
        self.connection.send_packed_command(self.connection.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(self.connection.read_response())
            except ResponseError as error:
                replies.append(error)
        reply = assemble(request, replies)
        if type(request) is Script and _is_noscript(reply):
            self.execute(("SCRIPT", "LOAD", request.script.source))
            return self.execute(request)
        return reply

    def load(self, scripts: tuple[LuaScript, ...]) -> None:
        for script in scripts:
            self.execute(("SCRIPT", "LOAD", script.source))

    def close(self) -> None:
        self.connection.disconnect()


class AsyncConnection:
    """One virtual client's connection: WATCH, MULTI and EXEC stay on it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.connection = redis.asyncio.Connection(host=host, port=port, decode_responses=True, protocol=2,
                                                   retry=_no_retry(redis.asyncio), socket_timeout=None,
                                                   socket_connect_timeout=timeout)
        self.noscript = 0

    async def connect(self, scripts: tuple[LuaScript, ...]) -> None:
        await self.connection.connect()
        for script in scripts:
            await self.execute(("SCRIPT", "LOAD", script.source))

    async def execute(self, request: Request) -> object:
        commands = flatten(request)
        # hiredis packs in C: several times faster than redis-py's Python packer.
        await self.connection.send_packed_command(b"".join(map(pack_command, commands)), check_health=False)
        replies = []
        for _ in commands:
            try:
                replies.append(await self.connection.read_response())
            except ResponseError as error:
                replies.append(error)
        reply = assemble(request, replies)
        if type(request) is Script and _is_noscript(reply):
            # The script cache was emptied (restart, failover): load, send again.
            self.noscript += 1
            await self.execute(("SCRIPT", "LOAD", request.script.source))
            return await self.execute(request)
        return reply

    async def close(self) -> None:
        await self.connection.disconnect(nowait=True)
