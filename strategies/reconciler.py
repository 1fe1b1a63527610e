"""The reconciler: a background job that puts the totals of changed users right.

Any strategy that keeps a total beside its conversation counts can run one
(option ``reconcile_every_s``; 0, the default, runs none), as Zulip's
``fix_unreads`` and Synapse's summaries do: each write request of an
operation carries a mark of the users it changes (``SADD changed``, in the
same round trip: a crash or a lost reply between two writes leaves them
marked), and a worker, every ``reconcile_every_s`` seconds, takes up to
``BATCH`` of them (SPOP) and overwrites each one's total with the sum of
their conversation counts (one script per user, HVALS summed, SET). It
heals a total that disagrees with the counts (a change cut in half by a
crash, a fault or a racing client); it cannot bring back what
the counts themselves lost (a message a power loss took from both, an
increment a racing clear erased), and it races with the writes of a
strategy whose two counters move in separate commands: a pass between
them sets the total that the second command then moves again (the user
changed: the next pass mends it).
"""
from __future__ import annotations

from typing import Callable

from sim.commands import Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys

RECOUNT = load_script(__file__, "recount")
BATCH = 1000   # users a pass takes at most (it runs again at once while it finds some)


def mark(users: list[int]) -> tuple:
    """The mark a client sends with each write of an operation that changes ``users``."""
    return ("SADD", keys.CHANGED, *users)


def reconcile_pass(total_key: Callable[[int], str]) -> Operation:
    """Take changed users; overwrite each one's total with their counts' sum.
    Returns how many users it took."""
    users = yield ("SPOP", keys.CHANGED, str(BATCH))
    if not users:
        return 0
    yield Pipeline(tuple(Script(RECOUNT, (keys.unread(int(user)), total_key(int(user))), ()) for user in users))
    return len(users)
