"""The truth, asserted literally on a hand-built trace and history."""
from __future__ import annotations

import numpy as np

from sim.history import OK, History
from sim.traffic import BADGE, DELIVER, READ, Trace, TrafficConfig
from sim.truth import Memberships, truth_ranges


def hand_trace():
    # conversation 0: users 0 and 1 (1:1); conversation 1: group of 0, 1, 2.
    offsets = np.array([0, 2, 5])
    members = np.array([0, 1, 0, 1, 2], np.int32)
    #        (t,    kind,    user, conv, message, invoke, complete)
    ops = [(1.0, DELIVER, 0, 0, 0, 1.0, 1.1),   # u0 -> u1 in the DM
           (2.0, DELIVER, 0, 0, 1, 2.0, 2.1),   # u0 -> u1 again
           (3.0, READ, 1, 0, -1, 3.0, 3.1),     # u1 reads the DM: both read
           (4.0, DELIVER, 0, 0, 2, 4.0, 4.1),   # unread for u1
           (5.0, DELIVER, 1, 1, 3, 5.0, 5.5),   # u1 -> group: u0 and u2
           (5.2, READ, 0, 1, -1, 5.2, 5.3),     # u0 reads while message 3 is in flight
           (6.0, DELIVER, 2, 1, 4, 6.0, 6.1),   # u2 -> group: u0 and u1
           (7.0, BADGE, 1, -1, -1, 7.0, 7.1)]
    t, kind, user, conv, message, invoke, complete = map(np.array, zip(*ops))
    trace = Trace(TrafficConfig(users=3), 0, offsets, members, t.astype(float), kind.astype(np.int8),
                  user.astype(np.int32), conv.astype(np.int32), message.astype(np.int32))
    history = History(len(ops))
    for op in range(len(ops)):
        history.record(op, invoke[op], complete[op], OK)
    return trace, history


def ranges(trace, history, at=np.inf):
    pairs = Memberships(trace)
    truth = truth_ranges(trace, history, pairs, at)
    return {(int(u), int(c)): (int(lo), int(hi))
            for u, c, lo, hi in zip(pairs.user, pairs.conv, truth.lo, truth.hi)}, truth


def test_final_truth_literal():
    trace, history = hand_trace()
    got, truth = ranges(trace, history)
    assert got == {
        (0, 0): (0, 0),   # u0 only sent in the DM
        (1, 0): (1, 1),   # two read, message 2 after the read
        (0, 1): (1, 2),   # message 3 overlapped u0's read: either; message 4 unread
        (1, 1): (1, 1),   # message 4 from u2; u1's own message 3 never counts
        (2, 1): (1, 1),   # message 3 from u1; own message 4 never counts
    }
    assert truth.user_lo.tolist() == [1, 2, 1]
    assert truth.user_hi.tolist() == [2, 2, 1]


def test_truth_at_a_time_counts_only_what_happened_by_then():
    trace, history = hand_trace()
    got, _ = ranges(trace, history, at=2.05)
    # Message 1 is stored but its delivery is still in flight: 1 or 2 unread.
    assert got[(1, 0)] == (1, 2)
    assert got[(0, 1)] == (0, 0)
    got, _ = ranges(trace, history, at=3.05)
    # The read is in flight: anything from 0 to 2 is right.
    assert got[(1, 0)] == (0, 2)


def test_a_read_that_never_ran_clears_nothing():
    trace, history = hand_trace()
    history.invoke[2] = np.nan
    history.complete[2] = np.nan
    got, _ = ranges(trace, history)
    assert got[(1, 0)] == (3, 3)


def test_a_delivery_no_client_had_sent_yet_is_not_unread_yet():
    trace, history = hand_trace()
    history.invoke[1] = 2.5                       # the client was busy: message 1 sent late
    history.complete[1] = 2.6
    got, _ = ranges(trace, history, at=2.2)
    assert got[(1, 0)] == (1, 1)                  # only message 0 counts at 2.2
    got, _ = ranges(trace, history, at=2.55)
    assert got[(1, 0)] == (1, 2)                  # in flight


def test_the_read_window_starts_at_the_last_reads_own_invocation():
    trace, history = hand_trace()
    # u1 reads the DM twice, overlapping: 2.0-3.5 and 3.0-3.1 (the last to begin).
    history.record(1, 2.0, 2.9, OK)               # message 1's delivery completes inside the first read
    trace.kind[1], trace.user[1], trace.message[1] = READ, 1, -1
    history.record(2, 3.0, 3.1, OK)
    history.record(0, 1.0, 2.95, OK)              # message 0 completes before the last read began
    got, _ = ranges(trace, history)
    assert got[(1, 0)] == (1, 1)                  # message 0 surely read; message 2 after the reads


def test_where_the_server_says_when_it_applied_an_operation_the_truth_is_exact():
    trace, history = hand_trace()
    got, truth = ranges(trace, history)
    assert got[(0, 1)] == (1, 2) and int((truth.user_hi - truth.user_lo).sum()) == 1
    history.applied(5, 5.25)                      # u0's read took effect at 5.25...
    history.applied(4, 5.4)                       # ...and message 3's delivery after it
    got, truth = ranges(trace, history)
    assert got[(0, 1)] == (2, 2) and int((truth.user_hi - truth.user_lo).sum()) == 0
    history.applied_at[4] = 5.22                  # before it: read
    got, _ = ranges(trace, history)
    assert got[(0, 1)] == (1, 1)
    history.spread[4] = True                      # its writes in two requests: no single moment, a range
    got, _ = ranges(trace, history)
    assert got[(0, 1)] == (1, 2)


def test_a_request_that_timed_out_may_still_apply_to_the_end():
    """On a real server (commits not known), a timed-out request's operation
    stays open; where the backend knows every commit, it does not."""
    trace, history = hand_trace()
    history.timed_out[3] = True                        # message 2's delivery timed out at 4.1
    got, _ = ranges(trace, history)
    assert got[(1, 0)] == (0, 1)                  # it may not have applied yet: 0 or 1
    history.timed_out[3] = False
    history.timed_out[2] = True                   # the read timed out: message 2 may have come before it
    got, _ = ranges(trace, history)
    assert got[(1, 0)] == (0, 3)
    history.commits_known = True                  # the simulation: it knows the read ran before 3.1
    got, _ = ranges(trace, history)
    assert got[(1, 0)] == (1, 1)
