"""toxiproxy's HTTP API from inside a run's event loop.

toxiproxy-python (used to set the proxies up) is synchronous and opens a
connection per call; during a run the nemesis and the driver change toxics
while clients are waiting, and a reset of one chosen reply is armed and
disarmed around one request, so these calls go through one aiohttp
keep-alive session instead.
"""
from __future__ import annotations

from typing import Any

import aiohttp


class ToxicError(RuntimeError):
    pass


class Toxics:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Toxics":
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.session.close()

    async def _call(self, method: str, path: str, body: dict | None = None) -> None:
        async with self.session.request(method, self.base + path, json=body) as response:
            if response.status >= 300 and not (method == "DELETE" and response.status == 404):
                raise ToxicError(f"toxiproxy {method} {path}: {response.status} {await response.text()}")

    async def add(self, proxy: str, name: str, kind: str, stream: str, attributes: dict,
                  toxicity: float = 1.0) -> None:
        await self._call("POST", f"/proxies/{proxy}/toxics",
                         {"name": name, "type": kind, "stream": stream, "toxicity": toxicity,
                          "attributes": attributes})

    async def remove(self, proxy: str, name: str) -> None:
        await self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    async def enable(self, proxy: str, enabled: bool) -> None:
        """Disabled, a proxy closes its links and refuses new ones."""
        await self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    async def upstream(self, proxy: str, address: str) -> None:
        """Where the proxy's new links go from now on."""
        await self._call("POST", f"/proxies/{proxy}", {"upstream": address})
