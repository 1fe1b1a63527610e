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
"""
from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import contextmanager
from typing import Any, Coroutine, Iterator, TypeVar

import uvloop

T = TypeVar("T")


@contextmanager
def signals_held(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Signals that come during the block are delivered when it ends (the
    first of them: each ends the command). Only the main thread receives
    signals: elsewhere (a sweep's worker thread) there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: came.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if came:
            signal.raise_signal(came[0])


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``uvloop.run(coroutine)``, whose loop closes whole even when
    interrupted while closing."""
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        return runner.run(coroutine)
    finally:
        with signals_held():
            runner.close()
