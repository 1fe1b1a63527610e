"""What users were shown, judged against the truth at that moment.

Every push carries the user's total (APNs cannot add badges up, so each
push reads it); every opened conversation shows its count before clearing
it. The history keeps those values (``History.value``); here each is judged
against the truth over the operation's own window, from its earliest to its
latest moment of effect (sim/truth.py's ``moments``: a point where the
backend knows it, else invoke to completion): a value that the truth took
at some moment of the window, as far as the history can tell, is right;
otherwise it is over or under, by its distance to that range.

The range follows ``truth_ranges(at=end, since=start)`` for the user's
conversations, computed for every judged operation at once: for each
(operation, conversation) a message is surely unread all through the
window when it surely took effect before the window began and every read
of the pair that began by the window's end had surely ended before the
message began; it may be unread when it may have taken effect by the
window's end and was not surely read before the window began (it ended
before a read that had ended by then began). An opened conversation is
judged without its own read (the count shown is the one before it cleared
it). A read that ended at the very moment the window began may count as
after it (ties are judged leniently).

A badge fetch's range is the sum of its user's conversations' ranges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.checker import Counters
from sim.history import History
from sim.traffic import BADGE, DELIVER, LOGIN, READ, Trace
from sim.truth import Memberships, TruthRanges, moments

# Judged a part at a time, so that the peak stays small whatever the run's
# size: about this many (operation, conversation) rows, and messages looked
# at one by one.
ROWS_PER_PASS = 250_000
ITEMS_PER_PASS = 1_000_000


@dataclass
class Judged:
    """The judged operations (trace indices, ascending), what each showed,
    and the true range over its window."""

    op: np.ndarray       # int64
    badge: np.ndarray    # bool: a badge fetch (else an opened conversation)
    value: np.ndarray    # int64
    lo: np.ndarray       # int64
    hi: np.ndarray       # int64
    start: np.ndarray    # float64: the window
    end: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """Signed distance from the value to its true range (0: right)."""
        return np.where(self.value > self.hi, self.value - self.hi,
                        np.where(self.value < self.lo, self.value - self.lo, 0))


class _Ranked:
    """Items in groups, each with a time; counts the items of a group whose
    time is below a rank (exact comparisons: every time is ranked among all
    the times of the run)."""

    def __init__(self, group: np.ndarray, rank: np.ndarray, span: int, groups: int) -> None:
        self.span = span
        self.keys = np.sort(group * span + rank)
        self.first = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=groups))])

    def below(self, group: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """How many items of ``group`` have a rank below ``rank`` (fastest
        when the queries come in order of group)."""
        return np.searchsorted(self.keys, group * self.span + rank, "left") - self.first[group]


class _Messages:
    """The messages of a grouping (by conversation, or by sender's pair),
    with what the judge asks of them."""

    def __init__(self, group: np.ndarray, start: np.ndarray, end: np.ndarray, span: int, groups: int) -> None:
        self.span = span
        self.by_start = _Ranked(group, start, span, groups)
        self.by_end = _Ranked(group, end, span, groups)
        order = np.lexsort((start, group))
        self.group, self.start, self.end = group[order], start[order], end[order]
        # Within each group, in order of start: the latest end so far.
        # Within each group, in order of start, the latest end so far (keyed by group: ascending throughout).
        self.latest_end = np.maximum.accumulate(self.group * span + self.end) if len(order) else self.end
        self.first = self.by_start.first

    def spanning(self, group: np.ndarray, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """How many items of ``group`` began at or before rank ``w`` and
        ended after rank ``s`` (w <= s): they were in flight all along."""
        out = np.zeros(len(group), np.int64)
        valid = (group >= 0) & (group < len(self.first) - 1)
        g = np.where(valid, group, 0)
        first = self.first[g]
        upto = first + (self.by_start.below(g, w + 1) if len(self.group) else 0)   # items with start <= w
        # Items before the first whose latest end passes s all ended by s.
        begin = np.searchsorted(self.latest_end, g * self.span + s + 1, "left") if len(self.group) else first
        begin = np.maximum(begin, first)
        todo = np.flatnonzero(valid & (upto > begin))
        for chunk in _chunks(todo, upto - begin, ITEMS_PER_PASS):
            lengths = (upto - begin)[chunk]
            offsets = np.repeat(begin[chunk] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            items = np.arange(int(lengths.sum())) + offsets
            late = (self.end[items] > np.repeat(s[chunk], lengths)).astype(np.int64)
            out[chunk] = np.add.reduceat(late, np.concatenate([[0], np.cumsum(lengths)[:-1]])) if len(items) else 0
        return out


def _chunks(rows: np.ndarray, sizes: np.ndarray, limit: int):
    """``rows`` in chunks whose ``sizes`` add up to about ``limit``."""
    if not len(rows):
        return
    cumulative = np.cumsum(sizes[rows])
    cuts = np.searchsorted(cumulative, np.arange(limit, int(cumulative[-1]) + limit, limit), "right")
    start = 0
    for cut in [*cuts.tolist(), len(rows)]:
        if cut > start:
            yield rows[start:cut]
            start = cut


def judge_values(trace: Trace, history: History, pairs: Memberships, exact: bool = True) -> Judged:
    """Every badge and opened count the history recorded, with its true range."""
    start, end = moments(history, np.inf, exact)
    ran = ~np.isnan(start)
    start = np.where(ran, start, np.inf)
    end = np.where(ran & ~np.isnan(end), end, np.inf)
    shows_badge = (trace.kind == BADGE) | (trace.kind == LOGIN)   # a login shows the badge: judged as one
    shown = ~np.isnan(history.value) & (shows_badge | (trace.kind == READ))
    judged = np.flatnonzero(shown)
    badge = shows_badge[judged]
    s, a = start[judged], end[judged]

    # Every time, ranked: comparisons below are between integers.
    times = np.unique(np.concatenate([start, end]))
    span = len(times) + 1
    rank_start, rank_end = np.searchsorted(times, start), np.searchsorted(times, end)
    del times

    # Reads of each pair: the latest start among those that ended before
    # the window began, and the latest end among those begun by its end.
    own_pair = pairs.of_operations()
    reads = np.flatnonzero((trace.kind == READ) & ran & (own_pair >= 0))
    r_pair = own_pair[reads]
    r_start, r_end = rank_start[reads], rank_end[reads]
    read_started = _LatestSoFar(r_pair, key=r_end, value=r_start, span=span)
    read_ended = _LatestSoFar(r_pair, key=r_start, value=r_end, span=span)

    messages = np.flatnonzero(trace.kind == DELIVER)
    m_start, m_end = rank_start[messages], rank_end[messages]
    in_conv = _Messages(trace.conv[messages].astype(np.int64), m_start, m_end, span, pairs.n_conv)
    sender_pair = own_pair[messages]
    mine = sender_pair >= 0
    own = _Messages(sender_pair[mine], m_start[mine], m_end[mine], span, len(pairs))

    # One row per (judged operation, conversation of its user): a badge
    # sums every conversation of its user, an opened conversation is one.
    by_user = np.argsort(pairs.user, kind="stable")
    user_first = np.searchsorted(pairs.user[by_user], np.arange(trace.users + 1))
    user = trace.user[judged].astype(np.int64)
    widths = np.where(badge, user_first[user + 1] - user_first[user], 1)
    first_pair, judged_pair = user_first[user], own_pair[judged]
    judged_start, judged_end = rank_start[judged], rank_end[judged]
    own_read = np.where(badge, -1, judged)    # an opened conversation's own read, left out of its window
    lo = np.zeros(len(judged), np.int64)
    hi = np.zeros(len(judged), np.int64)
    for part in _chunks(np.arange(len(judged)), widths, ROWS_PER_PASS):
        row_of = np.repeat(part, widths[part])
        within = np.arange(len(row_of)) - np.repeat(np.cumsum(widths[part]) - widths[part], widths[part])
        row_pair = np.where(badge[row_of], by_user[np.minimum(first_pair[row_of] + within, len(by_user) - 1)]
                            if len(by_user) else -1, judged_pair[row_of])
        # In order of pair (and so of conversation), then of start: the
        # searches below then go through their tables in order.
        order = np.lexsort((judged_start[row_of], row_pair))
        row_of, row_pair = row_of[order], row_pair[order]
        member = row_pair >= 0
        pair = np.where(member, row_pair, 0)
        conv = pairs.conv[pair] if len(pairs) else np.zeros(len(pair), np.int64)
        row_s = judged_start[row_of]
        row_a = judged_end[row_of]
        window_start = read_started.latest(pair, row_s)          # rank; -1: none
        window_end = read_ended.latest(pair, row_a + 1, excluding=own_read[row_of], ops=reads)

        lo_conv, hi_conv = _unread(in_conv, conv, row_s, row_a, window_start, window_end)
        lo_own, hi_own = _unread(own, pair, row_s, row_a, window_start, window_end)
        lo[part] = np.bincount(row_of - part[0], weights=np.where(member, lo_conv - lo_own, 0), minlength=len(part))
        hi[part] = np.bincount(row_of - part[0], weights=np.where(member, hi_conv - hi_own, 0), minlength=len(part))
    return Judged(judged.astype(np.int64), badge, history.value[judged].astype(np.int64), lo, hi, s, a)


def _unread(messages: _Messages, group: np.ndarray, s: np.ndarray, a: np.ndarray, window_start: np.ndarray,
            window_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many of a group's messages were surely unread all through each
    window (ranks ``s`` to ``a``), and how many may have been unread in it,
    given the reads' bounds (``window_start``, ``window_end``: -1 none)."""
    present = messages.by_start.below(group, a + 1)                          # began by the window's end
    read_for_sure = messages.by_end.below(group, np.maximum(window_start, 0)) * (window_start >= 0)
    settled = messages.by_end.below(group, s + 1)                            # took effect by its start
    w = np.where(window_end < 0, -1, window_end)
    before_reads = (messages.by_start.below(group, w + 1) - messages.spanning(group, w, s)) * (w >= 0)
    unread_for_sure = np.where(window_end > s, 0, settled - before_reads)    # a read may still clear it: none sure
    return unread_for_sure, present - read_for_sure


class _LatestSoFar:
    """Per group, items sorted by ``key``: the largest ``value`` among the
    items of a group whose key is below a rank (-1: none); optionally
    without one item (an opened conversation's own read)."""

    def __init__(self, group: np.ndarray, key: np.ndarray, value: np.ndarray, span: int) -> None:
        self.span = span
        order = np.lexsort((key, group))
        self.group, self.key, self.value = group[order], key[order], value[order]
        self.sorted_at = np.empty(len(order), np.int64)   # item i (as given) sits at sorted_at[i]
        self.sorted_at[order] = np.arange(len(order))
        keyed = self.group * span + self.value
        self.running = (np.maximum.accumulate(keyed) - self.group * span) if len(order) else keyed
        self.keys = self.group * span + self.key

    def latest(self, group: np.ndarray, below: np.ndarray, excluding: np.ndarray | None = None,
               ops: np.ndarray | None = None) -> np.ndarray:
        if not len(self.keys):
            return np.full(len(group), -1, np.int64)
        first = np.searchsorted(self.keys, group * self.span, "left")
        upto = np.searchsorted(self.keys, group * self.span + below, "left")
        found = np.where(upto > first, self.running[np.maximum(upto - 1, 0)], -1)
        if excluding is None:
            return found
        # An excluded item inside the prefix: the latest of the others,
        # before it (the running maximum) and after it (few: looked at one by one).
        position = np.full(len(group), -1, np.int64)
        at = np.flatnonzero(excluding >= 0)
        if len(at):
            slot = np.searchsorted(ops, excluding[at])
            known = (slot < len(ops)) & (ops[np.minimum(slot, len(ops) - 1)] == excluding[at])
            position[at[known]] = self.sorted_at[slot[known]]
        inside = np.flatnonzero((position >= first) & (position < upto))
        k = position[inside]
        before = np.where(k > first[inside], self.running[np.maximum(k - 1, 0)], -1)
        found[inside] = before
        for row, item in zip(inside[upto[inside] > k + 1].tolist(), k[upto[inside] > k + 1].tolist()):
            # Another read of the pair began within the window (rare): the latest of those too.
            found[row] = max(int(found[row]), int(self.value[item + 1:upto[row]].max()))
        return found


def client_view(trace: Trace, history: History, pairs: Memberships) -> dict | None:
    """The ``seen`` figures as a client could judge them (windows from
    invoke to completion, as on a real server), for a history that knows
    its moments of effect (the simulation's), else None. Fidelity compares
    these; a run does not compute them (they cost as much as its own)."""
    if np.isnan(history.applied_at).all():
        return None
    return figures(trace, history, judge_values(trace, history, pairs, exact=False), detail=False)


RECOVERY_RUN = 10      # right badges in a row after a fault: users see right badges again
TIMELINE_BINS = 50
WORST_USERS = 50


def figures(trace: Trace, history: History, judged: Judged, faults: list[dict] = (),
            detail: bool = True) -> dict:
    """The run's ``seen`` block: what users were shown, judged; with
    ``detail``, per fault and over time as well."""
    error = judged.error
    badge, opened = judged.badge, ~judged.badge
    b_error, o_error = error[badge], error[opened]
    nothing = ((trace.kind == BADGE) | (trace.kind == LOGIN)) & np.isnan(history.value)
    seen = {
        "badges": int(badge.sum()),
        "badges_wrong": int(np.count_nonzero(b_error)),
        "badges_over": int((b_error > 0).sum()),
        "badges_under": int((b_error < 0).sum()),
        "phantom_badges": int((badge & (judged.value >= 1) & (judged.hi == 0)).sum()),
        "missed_badges": int((b_error < 0).sum()),
        "badge_error_max": int(np.abs(b_error).max()) if len(b_error) else 0,
        "badge_error_p99": round(float(np.percentile(np.abs(b_error), 99)), 3) if len(b_error) else 0.0,
        "wrong_badges_per_1000": per_thousand(int(np.count_nonzero(b_error)), int(badge.sum())),
        "badges_unanswered": int(nothing.sum()),
        "opens": int(opened.sum()),
        "opens_wrong": int(np.count_nonzero(o_error)),
        "opens_over": int((o_error > 0).sum()),
        "opens_under": int((o_error < 0).sum()),
        "phantom_opens": int((opened & (judged.value >= 1) & (judged.hi == 0)).sum()),
    }
    if detail:
        at = judged.start[badge]
        seen["faults"] = _per_fault(at, b_error != 0, faults)
        seen["timeline"] = _timeline(at, b_error != 0, float(trace.t[-1]) if len(trace.t) else 0.0)
    return seen


def per_thousand(count: int, out_of: int) -> float:
    return round(1000.0 * count / out_of, 3) if out_of else 0.0


def _per_fault(at: np.ndarray, wrong: np.ndarray, faults: list[dict]) -> list[dict]:
    """For each fault: the badges judged while it held and after it (until
    the next fault struck), how many were wrong, and how long after it
    ended users saw right badges again: the first of ``RECOVERY_RUN`` right
    badges in a row (0: none was wrong; None: not before the next fault or
    the run's end). A fault that did not strike has None for all."""
    order = np.argsort(at, kind="stable")
    at, wrong = at[order], wrong[order]
    struck = [fault["effects"].get("struck_at") for fault in faults]
    out = []
    for index, fault in enumerate(faults):
        entry = {"kind": fault["kind"], "at": fault["at"]}
        start = struck[index]
        if start is None:
            out.append({**entry, "badges_during": None, "wrong_during": None, "badges_after": None,
                        "wrong_after": None, "recovered_after_s": None})
            continue
        end = fault["effects"].get("ended_at")
        end = start + fault["duration"] if end is None else end
        following = [t for t in struck[index + 1:] if t is not None and t > start]
        until = min(following) if following else np.inf
        first, middle, last = np.searchsorted(at, [start, end, until], "left")
        during, after = wrong[first:middle], wrong[middle:last]
        recovered = 0.0 if not (during.any() or after.any()) else _right_again(at[middle:last], after, end)
        out.append({**entry, "badges_during": int(len(during)), "wrong_during": int(during.sum()),
                    "badges_after": int(len(after)), "wrong_after": int(after.sum()),
                    "recovered_after_s": recovered})
    return out


def _right_again(at: np.ndarray, wrong: np.ndarray, since: float) -> float | None:
    """Seconds from ``since`` to the first badge of the first ``RECOVERY_RUN`` right ones in a row."""
    if len(wrong) < RECOVERY_RUN:
        return None
    right_runs = np.convolve(~wrong, np.ones(RECOVERY_RUN, np.int64), "valid") == RECOVERY_RUN
    first = np.flatnonzero(right_runs)
    return round(float(at[first[0]] - since), 6) if len(first) else None


def _timeline(at: np.ndarray, wrong: np.ndarray, span: float) -> list[dict]:
    """Badges judged and wrong ones, in ``TIMELINE_BINS`` slices of the trace's span (by their start)."""
    if span <= 0 or not len(at):
        return []
    edges = np.linspace(0.0, span, TIMELINE_BINS + 1)
    slot = np.clip(np.searchsorted(edges, at, "right") - 1, 0, TIMELINE_BINS - 1)
    badges = np.bincount(slot, minlength=TIMELINE_BINS)
    wrongs = np.bincount(slot, weights=wrong, minlength=TIMELINE_BINS).astype(np.int64)
    return [{"t": round(float(edges[i + 1]), 6), "badges": int(badges[i]), "wrong": int(wrongs[i])}
            for i in range(TIMELINE_BINS)]


def drifted_users(trace: Trace, truth: TruthRanges, counters: Counters, judged: Judged) -> list[dict]:
    """The users whose total ended outside the truth, the worst ``WORST_USERS``
    by how far: their counters, their truth, and when they were first shown
    a wrong badge (None: never)."""
    total = counters.total
    drift = np.where(total > truth.user_hi, total - truth.user_hi,
                     np.where(total < truth.user_lo, total - truth.user_lo, 0))
    worst = np.flatnonzero(drift)
    worst = worst[np.lexsort((worst, -np.abs(drift[worst])))][:WORST_USERS]
    conversations = np.bincount(counters.entry_user, weights=counters.entry_value,
                                minlength=len(total)).astype(np.int64)
    wrong = judged.badge & (judged.error != 0)
    first_wrong = np.full(trace.users, np.inf)
    np.minimum.at(first_wrong, trace.user[judged.op[wrong]], judged.start[wrong])
    return [{"user": int(user), "total": int(total[user]), "conversations_sum": int(conversations[user]),
             "truth_lo": int(truth.user_lo[user]), "truth_hi": int(truth.user_hi[user]),
             "drift": int(drift[user]),
             "first_wrong_badge_at": round(float(first_wrong[user]), 6) if np.isfinite(first_wrong[user]) else None}
            for user in worst.tolist()]
