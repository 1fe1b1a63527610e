"""The real driver's event loop: uvloop, closed with interrupts held.

``uvloop.run`` (an ``asyncio.Runner`` on Python 3.11) cancels the run's task
on the first Ctrl-C. Once that task is done it puts Python's own SIGINT
handler back and closes the loop. Closing joins the threads of
``asyncio.to_thread``: uvloop starts a thread to shut their executor down,
then waits for it. A Ctrl-C or SIGTERM in that moment raised
KeyboardInterrupt out of the wait, and the loop closed under that thread.
The thread then printed two tracebacks ("'NoneType' object has no attribute
'shutdown'", "Event loop is closed") above the one line an interrupt
prints. CI saw it once, on an interrupt between two strategies' runs. Here
the close runs with SIGINT and SIGTERM held, and the first that came is
delivered once the loop is closed: a second Ctrl-C during a slow close (a
server still starting in a thread) waits for it.

Python's cyclic collector is off while the loop runs, as in a simulated
run (sim/heap.py): a full collection of the driver's heap (the trace, the
history) stops every client of the one process at once.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

import uvloop

from sim.heap import begin_run, cyclic_gc_paused
from sim.watchdog import signals_held

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``uvloop.run(coroutine)``, whose loop closes whole even when
    interrupted while closing, with the cyclic collector paused."""
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    begin_run()
    try:
        with cyclic_gc_paused():
            return runner.run(coroutine)
    finally:
        with signals_held():
            runner.close()
