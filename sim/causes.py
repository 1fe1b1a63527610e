"""Drift by cause: why the counters went wrong.

The simulation can switch off each mechanism by which a fault corrupts the
counters, one at a time, and replay the same trace and schedule:

- ``gave_up``: an operation that failed at the connection and whose retries
  ran out: never applied; off: the client retries until it goes through;
- ``retry_applied_twice``: a request was applied but its reply was lost
  (reset, timeout), so the retry applied it again, or the operation could not
  finish; off: the reply of a request that reached Redis always arrives;
- ``lost_unfsynced``: acknowledged writes that power loss took back; off:
  power loss keeps what a process crash keeps;
- ``lost_on_failover``: acknowledged writes the promoted replica never got;
  off: the replica has everything;
- ``lost_in_split_brain``: writes the old primary took from the clients left
  on its side of a split brain (or of a cluster's minority partition), gone
  when it rejoined as a replica; off: no client is left on its side (all
  wait for the promoted replica);
- ``two_lock_holders``: a lock that expired under a paused holder, or vanished
  in a failover; off: pauses fall between operations, lock keys survive;
- ``lost_in_buffer`` (a strategy that buffers, write_behind): changes an
  application process held in memory, lost when it crashed (a client_crash
  or a worker_crash); off: a crash keeps its buffer;
- ``repaired`` (a strategy that repairs, lua_repair): what the repair put
  right; off: no repair;
- ``repaired_by_reconciler`` (a strategy run with a reconciler,
  ``reconcile_every_s``): what its passes put right; off: no reconciler.

With all of them off, what drift remains comes from operations cut in half:
a client crash, a fault or a racing client between the two halves of a
non-atomic operation (``cut_in_half``). Switching the mechanisms back on in
the order above, each one's share is the drift it adds to the ones before
it, so the shares add up exactly to the drift of the real run. (A sequential
attribution: with interacting causes, another order could split differently;
the order is fixed so that runs compare.)
"""
from __future__ import annotations

from sim.checker import Drift
from sim.client import CAUSES
from sim.faults import SPECS, Fault
from strategies.base import Strategy

REPAIRS = ("repaired", "repaired_by_reconciler")
ORDER = ("cut_in_half",) + CAUSES + REPAIRS
EVERY = frozenset(CAUSES + REPAIRS)   # every mechanism on: the run itself
ATTRIBUTED = ("abs_drift_sum", "users_wrong_total", "overcount", "undercount")


def relevant(strategy: Strategy, schedule: list[Fault], gave_up: int, ambiguous: int,
             failover: bool) -> list[str]:
    """The switchable causes that can change this run's drift (the others add
    0); ``failover``: whether a fault of the schedule may promote a replica."""
    specs = [SPECS[fault.kind] for fault in schedule]
    causes = []
    if gave_up:
        causes.append("gave_up")
    if ambiguous:
        causes.append("retry_applied_twice")
    if any(spec.rolls_back == "unfsynced" for spec in specs):
        causes.append("lost_unfsynced")
    if failover:
        causes.append("lost_on_failover")
    if any(spec.strands_clients for spec in specs):
        causes.append("lost_in_split_brain")
    if strategy.holds_lock and (any(spec.pauses_clients for spec in specs) or failover):
        causes.append("two_lock_holders")
    if strategy.buffers and any(spec.crashes_processes for spec in specs):
        causes.append("lost_in_buffer")
    if strategy.repairs and (schedule or causes):
        # Without a fault or a failed request, lua_repair is lua, atomic and
        # exact: its repair finds nothing to put right, and the replay
        # without it (a whole run again: 55 s at review scale) would say so.
        causes.append("repaired")
    if strategy.reconcile_every_s and (schedule or causes):
        causes.append("repaired_by_reconciler")
    return causes


def steps(switchable: list[str]) -> list[frozenset[str]]:
    """The causes on in each replay that ``attribute`` needs: none of the
    switchable ones, then one more at a time, in order (all of them on is
    the real run, not replayed). The replays are independent of each other."""
    base = set(CAUSES) - set(switchable)
    return [frozenset(base.union(switchable[:index])) for index in range(len(switchable))]


def attribute(full: Drift, switchable: list[str], replayed: list[Drift]) -> dict[str, dict[str, int]]:
    """Split ``full`` (the real run's drift) by cause; ``replayed``: the
    drift of each replay of ``steps(switchable)``, in that order."""
    steps_drift = list(zip(["cut_in_half"] + switchable, replayed + [full]))
    split: dict[str, dict[str, int]] = {}
    for metric in ATTRIBUTED:
        shares = {cause: 0 for cause in ORDER}
        previous = 0
        for cause, drift in steps_drift:
            value = getattr(drift, metric)
            shares[cause] = value - previous
            previous = value
        split[metric] = shares
    return split
