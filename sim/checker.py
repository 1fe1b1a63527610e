"""Drift: the counters a strategy left in Redis against the truth.

For each user: is the total equal to the sum of that user's conversation
counts (consistency), is it inside the true range (correctness); for each
(user, conversation): is the count inside the true range. A counter outside
its range drifts by its distance to the nearest end.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np

from sim.commands import Request, run_batch
from sim.truth import Memberships, TruthRanges
from strategies.base import Strategy


@dataclass(frozen=True)
class Counters:
    """What a strategy's keys say, flattened: one row per stored conversation count."""

    entry_user: np.ndarray
    entry_conv: np.ndarray
    entry_value: np.ndarray
    total: np.ndarray          # per user
    bad_values: int = 0        # fields or values that are not integers
    stray_keys: int = 0        # keys of no user of the trace

    @classmethod
    def collect(cls, users: int, per_user: Iterable[tuple[int, dict[int, int], int, int]],
                stray_keys: int = 0) -> "Counters":
        entry_user: list[int] = []
        entry_conv: list[int] = []
        entry_value: list[int] = []
        total = np.zeros(users, np.int64)
        bad_values = 0
        for user, counts, user_total, bad in per_user:
            total[user] = user_total
            bad_values += bad
            if counts:
                entry_user.extend([user] * len(counts))
                entry_conv.extend(counts.keys())
                entry_value.extend(counts.values())
        return cls(np.array(entry_user, np.int64), np.array(entry_conv, np.int64),
                   np.array(entry_value, np.int64), total, bad_values, stray_keys)


@dataclass(frozen=True)
class Drift:
    users: int
    users_inconsistent: int
    users_wrong_total: int
    convs_wrong: int
    abs_drift_sum: int
    max_abs_drift: int
    overcount: int
    undercount: int
    bad_values: int = 0      # counter fields or values that are not integers
    stray_keys: int = 0      # keys that belong to no user of the trace
    total_over: int = 0      # sum of totals above their true range
    total_under: int = 0     # sum of totals below it (as a positive number)
    hidden_max: int = 0      # the most drift the truth's ranges could hide: the sum of users' range widths

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_TAG = re.compile(r"\{([uc])(\d+)\}|^total:u(\d+)$")   # the last: option untagged_total
# key -> its tag: ("u", user) or ("c", conversation); ("", -1): none. The
# same keys are listed at every timeline point (about two a user): a dict
# lookup instead of a regular expression each time.
_KEY_TAG: dict[str, tuple[str, int]] = {}
_KEY_TAG_MAX = 1 << 18


def stray_keys(keys: list[str], users: int, conversations: int) -> int:
    """Keys that carry no tag of a user (ids 0 .. users - 1) or of a
    conversation (0 .. conversations - 1) of the trace."""
    stray = 0
    known = _KEY_TAG
    limit = {"u": users, "c": conversations, "": 0}
    for key in keys:
        tag = known.get(key)
        if tag is None:
            found = _TAG.search(key)
            if found is None:
                tag = ("", -1)
            elif found.group(3) is not None:
                tag = ("u", int(found.group(3)))
            else:
                tag = (found.group(1), int(found.group(2)))
            if len(known) < _KEY_TAG_MAX:
                known[key] = tag
        if not 0 <= tag[1] < limit[tag[0]]:
            stray += 1
    return stray


def read_counters(strategy: Strategy, users: int, conversations: int, execute: Callable[[Request], Any],
                  batch: int = 1000) -> Counters:
    """Read every user's counters back through a backend's ``execute``,
    ``batch`` users per round trip, and count the keys that belong to no
    user of the trace (the whole keyspace is listed)."""
    rows = []
    for first in range(0, users, batch):
        chunk = range(first, min(users, first + batch))
        replies = run_batch([strategy.counters(user) for user in chunk], execute)
        rows.extend((user, *reply) for user, reply in zip(chunk, replies))
    keys = execute(("KEYS", "*"))
    own = set(strategy.shared_keys)   # the strategy's keys of no one user (a queue, a set of users)
    keys = [key for key in keys if key not in own] if isinstance(keys, list) else []
    return Counters.collect(users, rows, stray_keys(keys, users, conversations))


def _outside(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Signed distance from value to [lo, hi]; 0 inside."""
    return np.where(value > hi, value - hi, np.where(value < lo, value - lo, 0))


def check(pairs: Memberships, truth: TruthRanges, counters: Counters) -> Drift:
    users = len(counters.total)
    pair = pairs.lookup(counters.entry_user, counters.entry_conv)
    member = pair >= 0
    stored = np.zeros(len(pairs), np.int64)
    stored[pair[member]] = counters.entry_value[member]
    conv_drift = _outside(stored, truth.lo, truth.hi)
    # A count stored for a conversation the user is not in is all drift.
    stray = counters.entry_value[~member]

    conv_sum = np.bincount(counters.entry_user, weights=counters.entry_value, minlength=users)
    inconsistent = counters.total != conv_sum.astype(np.int64)
    total_drift = _outside(counters.total, truth.user_lo, truth.user_hi)
    return Drift(
        users=users,
        users_inconsistent=int(inconsistent.sum()),
        users_wrong_total=int(np.count_nonzero(total_drift)),
        convs_wrong=int(np.count_nonzero(conv_drift) + np.count_nonzero(stray)),
        abs_drift_sum=int(np.abs(total_drift).sum()),
        max_abs_drift=int(np.abs(total_drift).max()) if users else 0,
        overcount=int(conv_drift[conv_drift > 0].sum() + stray[stray > 0].sum()),
        undercount=int(-conv_drift[conv_drift < 0].sum() - stray[stray < 0].sum()),
        bad_values=counters.bad_values,
        stray_keys=counters.stray_keys,
        total_over=int(total_drift[total_drift > 0].sum()),
        total_under=int(-total_drift[total_drift < 0].sum()),
        hidden_max=int((truth.user_hi - truth.user_lo).sum()),
    )


def drift_by_shard(truth: TruthRanges, counters: Counters, shard_of_user: np.ndarray) -> dict[str, dict[str, int]]:
    """On a cluster, per shard (named as results name shards: ``shard0``...):
    its users, those whose total is outside the truth, the sum of how far,
    and those whose total differs from the sum of their conversations. A
    fault on one shard should leave the others' figures alone."""
    total_drift = np.abs(_outside(counters.total, truth.user_lo, truth.user_hi))
    conv_sum = np.bincount(counters.entry_user, weights=counters.entry_value, minlength=len(counters.total))
    inconsistent = counters.total != conv_sum.astype(np.int64)
    out = {}
    for shard in range(int(shard_of_user.max()) + 1 if len(shard_of_user) else 0):
        mine = shard_of_user == shard
        out[f"shard{shard}"] = {"users": int(mine.sum()),
                                "users_wrong_total": int(np.count_nonzero(total_drift[mine])),
                                "abs_drift_sum": int(total_drift[mine].sum()),
                                "users_inconsistent": int(inconsistent[mine].sum())}
    return out
