"""The real driver's event loop closes whole when an interrupt lands while it closes."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from sim.backends.real import event_loop


def test_signals_held_are_delivered_when_the_block_ends():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with event_loop.signals_held():
            signal.raise_signal(signal.SIGINT)   # held: nothing is raised here
            reached = True
    assert reached and signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_while_the_loop_closes_waits_for_the_close(monkeypatch):
    """A thread of asyncio.to_thread is still running when the run's task
    ends, so closing the loop waits for it; Ctrl-C comes in that wait."""
    failures = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: failures.append(hook.exc_value))

    async def leave_a_thread_running():
        asyncio.get_running_loop().create_task(asyncio.to_thread(time.sleep, 0.6))
        await asyncio.sleep(0)   # the thread starts; the run's task ends at once

    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        event_loop.run(leave_a_thread_running())
    timer.join()
    assert time.monotonic() - started >= 0.55   # delivered once the close had joined the thread
    time.sleep(0.2)   # a shutdown thread orphaned by the interrupt would have failed by now
    assert failures == [] and not [thread for thread in threading.enumerate() if "_do_shutdown" in thread.name]
