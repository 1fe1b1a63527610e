"""A relay for a Redis Cluster's bus, so that a partition can cut one node off.

Toxiproxy proxies a connection to one upstream, and cannot tell who opened
it; a node cut off from the cluster must lose its links both ways: those
the others open to it and those it opens to them. So each node announces
(``cluster-announce-bus-port``) a port of this relay, which forwards to the
node's own bus port, and the relay reads who opened each link: the first
message on a link is always the opener's PING or MEET, whose header names
the sender (cluster.h, ``clusterMsg``: the signature ``RCmb``, then the
node id in bytes 40-80). While a node is cut off, every link with it at one
end and another node at the other is closed, and a new one is closed as
soon as its first header is read; the node then sees its pings go
unanswered, as the others see theirs.

Run as a process of its own (only the standard library), so that the
driver's load never delays the bus: ``python bus_relay.py TARGET ...`` (the
nodes' bus ports on 127.0.0.1). It listens on a free port of 127.0.0.1 for
each (picked by the kernel as it binds, so none can be taken in between),
prints ``ready`` and those ports in the targets' order, then takes lines
on its standard input, each answered ``ok`` once done: ``cut NODE-ID PORT``
(the node and its relay port) and ``heal``.
"""
from __future__ import annotations

import asyncio
import sys

SIGNATURE = b"RCmb"
HEADER_BYTES = 80
SENDER = slice(40, 80)
_FIRST_HEADER_S = 5.0   # a link whose opener says nothing for this long is dropped


class Link:
    """One relayed connection: who opened it, to which relay port, and its two sockets."""

    __slots__ = ("sender", "port", "writers")

    def __init__(self, sender: str, port: int, writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self.sender = sender
        self.port = port
        self.writers = writers

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class Relay:
    def __init__(self) -> None:
        self.routes: dict[int, int] = {}     # relay port -> the node's bus port
        self.cut: tuple[str, int] | None = None   # the node cut off, and its relay port
        self.links: set[Link] = set()

    def crosses(self, sender: str, port: int) -> bool:
        """Whether a link opened by ``sender`` to the node behind ``port`` crosses the cut."""
        if self.cut is None:
            return False
        node, its_port = self.cut
        return (sender == node) != (port == its_port)

    async def serve(self, targets: list[int]) -> list[asyncio.AbstractServer]:
        """Listen for each target on a port of the kernel's choosing."""
        servers = []
        for target in targets:   # a link's relay port is the port it came in on
            server = await asyncio.start_server(
                lambda reader, writer: self._accept(reader, writer, writer.get_extra_info("sockname")[1]),
                "127.0.0.1", 0)
            self.routes[server.sockets[0].getsockname()[1]] = target
            servers.append(server)
        return servers

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_BYTES), _FIRST_HEADER_S)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        sender = header[SENDER].decode("ascii", "replace") if header[:4] == SIGNATURE else ""
        if self.crosses(sender, port):
            writer.close()
            return
        try:
            node_reader, node_writer = await asyncio.open_connection("127.0.0.1", self.routes[port])
        except OSError:
            writer.close()
            return
        link = Link(sender, port, (writer, node_writer))
        if self.crosses(sender, port):   # cut while the node's side was opening
            link.close()
            return
        self.links.add(link)
        node_writer.write(header)
        try:
            await asyncio.gather(_pump(reader, node_writer), _pump(node_reader, writer))
        finally:
            link.close()
            self.links.discard(link)

    def cut_off(self, node: str, port: int) -> None:
        self.cut = (node, port)
        for link in [link for link in self.links if self.crosses(link.sender, link.port)]:
            link.close()
            self.links.discard(link)

    def heal(self) -> None:
        self.cut = None


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _main(targets: list[int]) -> None:
    relay = Relay()
    servers = await relay.serve(targets)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print("ready", *relay.routes, flush=True)
    while line := await commands.readline():
        words = line.decode().split()
        if words[:1] == ["cut"] and len(words) == 3:
            relay.cut_off(words[1], int(words[2]))
        elif words == ["heal"]:
            relay.heal()
        else:
            print(f"error: unknown command {line.decode().strip()!r}", flush=True)
            continue
        print("ok", flush=True)
    for server in servers:   # the harness closed our input: it is done with us
        server.close()


if __name__ == "__main__":
    asyncio.run(_main([int(target) for target in sys.argv[1:]]))
