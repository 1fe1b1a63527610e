"""The registry of backends, by name.

Each backend is one package here whose module exposes ``BACKEND``, an
instance of :class:`sim.backend.Backend`. The engine reaches a backend only
through :func:`get`, and imports it only then, so adding one (a cluster,
another server) is a new package plus one line in ``BACKENDS``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.backend import Backend

# name -> the module that defines BACKEND
BACKENDS: dict[str, str] = {
    "sim": "sim.backends.model",
    "redis": "sim.backends.real",
}


class UnknownBackend(ValueError):
    pass


def get(name: str) -> "Backend":
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND
