"""The real driver's clients sleep on a timerfd: uvloop's own timers count
whole milliseconds (a 0.5 ms backoff came back at once)."""
from __future__ import annotations

import asyncio
import time

import uvloop

from sim.backends.real.timer import FineTimer


def _run(coroutine_function):
    async def main():
        timer = FineTimer(asyncio.get_running_loop())
        try:
            return await coroutine_function(timer)
        finally:
            timer.close()
    return uvloop.run(main())


def test_a_sub_millisecond_sleep_lasts_at_least_what_was_asked():
    async def sleeps(timer):
        spans = []
        for seconds in (0.0002, 0.0005, 0.0015):
            started = time.perf_counter()
            await timer.sleep(seconds)
            spans.append((seconds, time.perf_counter() - started))
        return spans

    for asked, slept in _run(sleeps):
        assert slept >= asked, (asked, slept)


def test_sleepers_wake_in_the_order_they_are_due_and_a_cancelled_one_is_skipped():
    async def sleepers(timer):
        woken = []

        async def sleeper(name, seconds):
            await timer.sleep(seconds)
            woken.append(name)

        # armed latest first, so that each new sleeper re-arms the timer earlier
        tasks = [asyncio.create_task(sleeper(name, seconds))
                 for name, seconds in (("c", 0.003), ("b", 0.002), ("gone", 0.0015), ("a", 0.001))]
        await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await timer.sleep(0.0001)   # the timer still works after a cancelled sleeper's turn
        return woken

    assert _run(sleepers) == ["a", "b", "c"]
