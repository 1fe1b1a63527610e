"""The primary's append-only file, command by command, so that a torn tail
does to the simulation what it does to redis-server 7.

The journal (journal.py) takes the keyspace back to a moment, which is what
a power loss does when the AOF ends on a whole command. When a power loss
tears the tail (``tear_bytes``), what Redis loads at that restart, and at
every later one, depends on where the tear fell. Measured on redis-server
7.0.15 and read in its aof.c (``loadSingleAppendOnlyFile``):

- a script's or a transaction's writes are one MULTI ... EXEC block when
  there are several (server.c ``propagatePendingCommands``); one write is
  written bare;
- a file that ends inside a command (a short read) is truncated on disk at
  the end of the last whole command, even when that command is inside a
  MULTI block: the block's queued commands are not applied, but the file
  keeps a dangling MULTI, and new writes are appended after it;
- a file that ends on a command boundary inside a MULTI block is truncated
  back to before the MULTI ("Revert incomplete MULTI/EXEC");
- while loading, the commands after a dangling MULTI are queued, a nested
  MULTI among them fails, and the next EXEC applies the whole queue: the
  torn block's first writes come back without the rest (a script's HINCRBY
  without its INCRBY). With no EXEC before the end, the queue is dropped and
  the file truncated to before the dangling MULTI: acknowledged writes made
  after the tear are lost, from memory and from disk.

Each restart therefore loads the whole file into a fresh keyspace. The file
starts from ``base`` (the keyspace it was begun from: empty, or a promoted
replica's), and the first write after a start is preceded by SELECT 0, as
Redis writes it. Only runs whose schedule tears a tail keep this file.
"""
from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass
from typing import Any

from sim.commands import CommandError, wire_size

_SELECT = ("SELECT", "0")
_EPOCH_MS = "1700000000000"   # a PXAT timestamp's width, for sizes


@dataclass(slots=True)
class Line:
    at: float      # when the command was applied: its clock on replay (TTLs)
    words: tuple
    size: int      # bytes in the file


def _propagated_size(words: tuple) -> int:
    """Bytes Redis writes for the command: SET with a TTL becomes SET key value PXAT ms."""
    if words[0] == "SET" and len(words) > 3:
        return wire_size(("SET", words[1], words[2], "PXAT", _EPOCH_MS))
    return wire_size(words)


_MULTI_SIZE, _EXEC_SIZE, _SELECT_SIZE = wire_size(("MULTI",)), wire_size(("EXEC",)), wire_size(_SELECT)


class AppendOnlyFile:
    def __init__(self, base: tuple[dict, dict] | None = None) -> None:
        self.base = base or ({}, {})          # (data, expires) the file starts from
        self.lines: list[Line] = []
        self.ends: list[int] = []             # byte offset after each line
        self.torn = 0                         # bytes of a partial command after the last line
        self._select = True                   # the next write is the first since the server started

    @property
    def size(self) -> int:
        return (self.ends[-1] if self.ends else 0) + self.torn

    def _add(self, at: float, words: tuple, size: int) -> None:
        self.lines.append(Line(at, words, size))
        self.ends.append((self.ends[-1] if self.ends else 0) + size)

    def append(self, at: float, writes: list[tuple]) -> None:
        """The writes of one command, script or transaction, as Redis propagates them."""
        if self._select:
            self._add(at, _SELECT, _SELECT_SIZE)
            self._select = False
        block = len(writes) > 1
        if block:
            self._add(at, ("MULTI",), _MULTI_SIZE)
        for words in writes:
            self._add(at, words, _propagated_size(words))
        if block:
            self._add(at, ("EXEC",), _EXEC_SIZE)

    def offset_at(self, t: float) -> int:
        """The file's length when every write applied by ``t`` was in it."""
        count = bisect.bisect_right([line.at for line in self.lines], t) if self.lines else 0
        return self.ends[count - 1] if count else 0

    def cut(self, length: int) -> None:
        """Power loss: the disk keeps the first ``length`` bytes."""
        whole = bisect.bisect_right(self.ends, length)
        self.torn = length - (self.ends[whole - 1] if whole else 0)
        del self.lines[whole:], self.ends[whole:]

    def load(self, store: Any) -> dict[str, int]:
        """Restart: replay the file into ``store`` as Redis loads it, and
        truncate the file as Redis does. Returns what the load did."""
        data, expires = copy.deepcopy(self.base)
        store.data, store.expires = data, expires
        batch, store.batch = store.batch, None        # replay writes nothing to the file
        queue: list[Line] | None = None               # inside MULTI: the commands queued
        before_multi = 0                              # lines before the open MULTI
        effects = {"aof_truncated": 0, "aof_multi_reverted": 0, "aof_nested_multi": 0}
        for index, line in enumerate(self.lines):
            name = line.words[0]
            if queue is not None and name != "EXEC":
                queue.append(line)
            elif name == "MULTI":
                queue, before_multi = [], index
            elif name == "EXEC":
                for queued in queue or ():
                    if queued.words[0] == "MULTI":
                        effects["aof_nested_multi"] += 1   # "MULTI calls can not be nested": skipped
                    else:
                        self._replay(store, queued)
                queue = None
            elif name != "SELECT":
                self._replay(store, line)
        if self.torn:
            effects["aof_truncated"] = 1       # short read: cut at the last whole command, MULTI or not
            self.torn = 0
        elif queue is not None:
            effects["aof_multi_reverted"] = 1  # clean end inside MULTI: back to before it
            del self.lines[before_multi:], self.ends[before_multi:]
        store.batch = batch
        self._select = True
        return effects

    @staticmethod
    def _replay(store: Any, line: Line) -> None:
        store.now = line.at
        try:
            store.execute(line.words)
        except CommandError:
            pass   # Redis logs the error and goes on loading
