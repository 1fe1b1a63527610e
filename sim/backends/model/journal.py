"""The recent past of the keyspace, so that a fault can take it back.

Power loss keeps only what was fsynced; a promoted replica holds only what
replication had carried to it. Both are "the keyspace as it was at time t".
The journal keeps, for each epoch of ``epoch_s`` seconds, every key's value
as it was when the epoch began (copy on the first write in the epoch); rolling
back to t restores the epochs from the newest down to the one that starts at
t, so t is rounded down to an epoch boundary (1 ms by default: a fault may
lose up to that much more than the exact figure).
"""
from __future__ import annotations

import copy
import math
from collections import deque
from typing import Any

_ABSENT = object()


def _copy(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return dict(value)
    if kind is set:
        return set(value)
    if hasattr(value, "copy"):   # a stream
        return value.copy()
    return value


class Journal:
    def __init__(self, epoch_s: float = 0.001, keep_s: float = 2.0) -> None:
        self.epoch_s = epoch_s
        self.keep_s = keep_s          # how far back a rollback may reach
        self.epochs: deque[tuple[float, dict[str, tuple[Any, Any]]]] = deque()
        self._current: dict[str, tuple[Any, Any]] | None = None
        self._current_end = -math.inf

    def copy(self) -> "Journal":
        """An independent copy (for a replica forked from this keyspace)."""
        return copy.deepcopy(self, {id(_ABSENT): _ABSENT})

    def before_write(self, data: dict, expires: dict, key: str, now: float) -> None:
        if now >= self._current_end:
            self._new_epoch(now)
        current = self._current
        if key not in current:
            current[key] = (_copy(data.get(key, _ABSENT)), expires.get(key))

    def _new_epoch(self, now: float) -> None:
        start = math.floor(now / self.epoch_s) * self.epoch_s
        self._current = {}
        self._current_end = start + self.epoch_s
        self.epochs.append((start, self._current))
        horizon = now - self.keep_s
        while len(self.epochs) > 1 and self.epochs[1][0] <= horizon:
            self.epochs.popleft()

    def rollback(self, data: dict, expires: dict, to: float) -> set[str]:
        """Restore the keyspace as it was at ``to`` (rounded down to an epoch
        boundary); returns the keys that changed."""
        changed: set[str] = set()
        while self.epochs and self.epochs[-1][0] + self.epoch_s > to + 1e-12:
            _, saved = self.epochs.pop()
            for key, (value, expire) in saved.items():
                changed.add(key)
                if value is _ABSENT:
                    data.pop(key, None)
                else:
                    data[key] = value
                if expire is None:
                    expires.pop(key, None)
                else:
                    expires[key] = expire
        self._current = None
        self._current_end = -math.inf
        return changed
