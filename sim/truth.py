"""The true unread counts, from the trace and the history of what ran.

The ground truth is the message log: a message is unread for a recipient
until that recipient opens the conversation after it arrived. "After" is
decided by when each operation took effect. Where the backend knows it (the
simulation knows when the server applied every request, acknowledged or
not), an operation that applied its writes in one request took effect at
that moment, and the truth is exact. Otherwise its moment is only known to
lie within its real-time interval, as a linearizability checker reasons: a
delivery that completed before a read was invoked was read by it; one
invoked after the read completed is unread; one that overlaps the read may
have been applied on either side of it, so the truth for that pair is a
range [lo, hi] and a counter anywhere inside it is right. An operation that
spread its writes over several requests (naive's HDEL then DECRBY) has no
single moment: its interval. A request whose reply timed out may still run
later on a real server: its operation's completion stays open to the end
(``exact=False`` judges a simulated run the same way, as a client of a real
server would see it).

The message store accepts every message at its trace time, whatever Redis
did with the delivery: a delivery that failed or was lost is still unread
until read, and a read that failed still moved the user's read position.
At a moment of the run (timelines), only the operations that had begun by
then count (had taken effect, where that moment is known): a delivery no
client had sent yet is not yet anybody's unread message.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.history import History
from sim.traffic import DELIVER, READ, Trace


class Memberships:
    """Every (user, conversation) pair; pair p is slot p of ``trace.conv_members``."""

    def __init__(self, trace: Trace) -> None:
        self.n_conv = trace.conversations
        self.n_users = trace.users
        self.conv = np.repeat(np.arange(self.n_conv, dtype=np.int64), np.diff(trace.conv_offsets))
        self.user = trace.conv_members.astype(np.int64)
        keys = self.user * self.n_conv + self.conv
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]
        self._operations = (trace.user, trace.conv)
        self._of_operations: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.conv)

    def of_operations(self) -> np.ndarray:
        """The pair of each operation of the trace, its user's in its
        conversation (or -1): looked up once, for every truth computed."""
        if self._of_operations is None:
            self._of_operations = self.lookup(*self._operations)
        return self._of_operations

    def lookup(self, users: np.ndarray, convs: np.ndarray) -> np.ndarray:
        """Pair index of each (user, conversation), or -1 where the user is no
        member (or either id is out of the trace's range)."""
        users, convs = np.asarray(users, np.int64), np.asarray(convs, np.int64)
        keys = users * self.n_conv + convs
        at = np.searchsorted(self._keys, keys)
        at_clipped = np.minimum(at, len(self._keys) - 1)
        found = ((at < len(self._keys)) & (self._keys[at_clipped] == keys)
                 & (convs >= 0) & (convs < self.n_conv) & (users >= 0) & (users < self.n_users))
        return np.where(found, self._order[at_clipped], -1)


@dataclass
class TruthRanges:
    lo: np.ndarray        # per pair: fewest unread messages that are right
    hi: np.ndarray        # per pair: most unread messages that are right
    user_lo: np.ndarray   # per user
    user_hi: np.ndarray


def moments(history: History, at: float = np.inf, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each operation's earliest and latest moment of effect, as known at
    ``at``: the same moment where it is known (an operation done by then
    whose writes were one request; ``exact=False`` ignores these moments, as
    a client that saw only its replies would), else its invocation and its
    completion (never, while a timed-out request of it may still run)."""
    known = exact and history.commits_known
    exact = ~np.isnan(history.applied_at) & ~history.spread & (history.complete <= at) & exact
    start = np.where(exact, history.applied_at, history.invoke)
    # A timed-out request may run later, unless the backend knows it never did.
    end = np.where(exact, history.applied_at, np.where(history.timed_out & ~known, np.inf, history.complete))
    return start, end


def truth_ranges(trace: Trace, history: History, pairs: Memberships, at: float = np.inf,
                 since: float | None = None, exact: bool = True) -> TruthRanges:
    """The true unread range of every pair at time ``at`` (the end when
    omitted), or at any moment between ``since`` and ``at`` (counters read
    over a while, on a real server).

    Operations not completed by ``since`` count as overlapping everything
    after their start (their effect may or may not have landed yet).
    """
    n_pairs = len(pairs)
    inf = np.inf
    since = at if since is None else since
    start, end = moments(history, since, exact)
    complete = np.where(end <= since, end, inf)
    begun = start <= at

    # The last read window of each pair. A delivery is surely read when it
    # completed before the last completed read began (that read took effect
    # after it). It is surely unread when it began after the window ends:
    # the last completion of any read (never, while one is in flight).
    operation_pairs = pairs.of_operations()
    reads = np.flatnonzero((trace.kind == READ) & begun)
    r_pair = operation_pairs[reads]
    r_start, r_comp = start[reads], complete[reads]
    done = r_comp < inf
    window_start = np.full(n_pairs, -inf)
    np.maximum.at(window_start, r_pair[done], r_start[done])
    window_end = np.full(n_pairs, -inf)
    np.maximum.at(window_end, r_pair, r_comp)

    # Messages the store holds by ``at`` that a client had begun to deliver
    # (at the end: every message); only settled deliveries can be
    # definitely read or definitely unread.
    delivered = (trace.kind == DELIVER) & (begun if at < inf else True)
    messages = np.flatnonzero(delivered)
    m_conv = trace.conv[messages].astype(np.int64)
    settled = complete[messages] < inf
    s_conv = m_conv[settled]
    s_inv = start[messages][settled]
    s_comp = complete[messages][settled]

    # Exact comparisons by rank: turn every time into its rank among all of them.
    values, ranks = np.unique(np.concatenate([s_comp, s_inv, window_start, window_end]),
                              return_inverse=True)
    span = len(values) + 1
    n_settled = len(s_comp)
    rank_comp, rank_inv = ranks[:n_settled], ranks[n_settled:2 * n_settled]
    rank_start, rank_end = ranks[2 * n_settled:2 * n_settled + n_pairs], ranks[2 * n_settled + n_pairs:]

    comp_keys = np.sort(s_conv * span + rank_comp)
    inv_keys = np.sort(s_conv * span + rank_inv)
    base = pairs.conv * span
    read_for_sure = np.searchsorted(comp_keys, base + rank_start, "left") - np.searchsorted(comp_keys, base, "left")
    unread_for_sure = (np.searchsorted(inv_keys, base + span, "left")
                       - np.searchsorted(inv_keys, base + rank_end, "right"))
    in_conv = np.bincount(m_conv, minlength=pairs.n_conv)[pairs.conv]

    # A sender's own messages are never unread for the sender.
    own = operation_pairs[messages]
    in_conv -= np.bincount(own, minlength=n_pairs)
    own_s = own[settled]
    read_own = s_comp < window_start[own_s]
    unread_own = s_inv > window_end[own_s]
    read_for_sure -= np.bincount(own_s[read_own], minlength=n_pairs)
    unread_for_sure -= np.bincount(own_s[unread_own], minlength=n_pairs)

    lo = unread_for_sure
    hi = in_conv - read_for_sure
    return TruthRanges(lo, hi,
                       np.bincount(pairs.user, weights=lo, minlength=trace.users).astype(np.int64),
                       np.bincount(pairs.user, weights=hi, minlength=trace.users).astype(np.int64))
