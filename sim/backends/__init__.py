"""The registry of backends, by name.

Each backend is one package here whose module exposes ``BACKEND``, an
instance of :class:`sim.backend.Backend`. The engine reaches a backend only
through :func:`get`, and imports it only then, so adding one (a cluster,
another server) is a new package plus one line in ``BACKENDS``.
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.backend import Backend

# name -> the module that defines BACKEND
BACKENDS: dict[str, str] = {
    "sim": "sim.backends.model",
    "redis": "sim.backends.real",
}
# Their roles: the simulation (the default), and real servers, which the
# simulation is calibrated against (`calibrate`) and checked against (`fidelity`).
SIMULATION = "sim"
REAL = "redis"
DEFAULT = SIMULATION


class UnknownBackend(ValueError):
    pass


def loaded() -> list["Backend"]:
    """The backends this process has loaded so far (none is loaded by asking)."""
    return [importlib.import_module(module).BACKEND for module in BACKENDS.values() if module in sys.modules]


def get(name: str) -> "Backend":
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).BACKEND
