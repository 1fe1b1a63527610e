"""Sleeps to the microsecond on uvloop, for the real driver's clients.

uvloop (libuv) counts timers in whole milliseconds: measured here, 1,000
``asyncio.sleep(0.0005)`` took 2.2 ms in all, and each ``sleep(0.0015)``
about 2.1 ms. A strategy's 0.5 ms backoff (watch, lock) was no backoff on
real servers while the simulation waited it, and the two backends' retry
rates differed twofold on a hot conversation. Spinning until a sleep is due
would be exact, but it burns the driver's CPU, which bounds real capacity
here. A Linux timerfd armed for the earliest sleep due wakes the event loop
at the microsecond instead, as a socket does. Python 3.11's os module has
no timerfd (3.13 has), so libc's is called through ctypes.
"""
from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import math
import os
import time

CLOCK_MONOTONIC = time.CLOCK_MONOTONIC   # time.perf_counter's clock on Linux
TFD_CLOEXEC = os.O_CLOEXEC
TFD_NONBLOCK = os.O_NONBLOCK
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class FineTimer:
    """Every client's sleeps on one timerfd, armed for the earliest due."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        self._loop = loop
        self._due: list[tuple[float, int, asyncio.Future]] = []   # a heap: (when, order, its sleeper)
        self._order = itertools.count()
        self._armed = math.inf
        loop.add_reader(fd, self._fire)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of time.perf_counter's clock."""
        due = time.clock_gettime(CLOCK_MONOTONIC) + seconds
        future = self._loop.create_future()
        heapq.heappush(self._due, (due, next(self._order), future))
        if due < self._armed:
            self._arm(due)
        await future

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

    def _arm(self, due: float) -> None:
        seconds = int(due)
        value = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, max(1, int((due - seconds) * 1e9))))
        if self._libc.timerfd_settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(value), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed = due

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:   # armed again since it expired: not due yet
            pass
        now = time.clock_gettime(CLOCK_MONOTONIC)
        due = self._due
        while due and due[0][0] <= now:
            future = heapq.heappop(due)[2]
            if not future.done():   # a cancelled client leaves its sleep behind
                future.set_result(None)
        self._armed = math.inf
        if due:
            self._arm(due[0][0])
