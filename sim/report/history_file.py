"""A run folder's history.npz: every strategy's per-operation history, so
that `countdrift judge` can judge a stored run again with today's checker.

Each strategy's history is stored as its columns (``History.columns``:
moments to the nanosecond as differences, outcomes, shown values),
compressed, with the checksum of the trace they belong to. Reading one
back checks what it holds against the run's results and trace: a history
of another run, a truncated or corrupt file, is a HistoryError that names
the file and what is wrong.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sim.history import History
from sim.traffic import Trace

HISTORY_FILE = "history.npz"
HISTORY_FORMAT = "countdrift-history-1"
COLUMNS = ("invoke", "complete", "applied", "outcome", "spread", "timed_out", "value", "commits_known")

# What a damaged .npz raises as numpy reads it (a corrupt deflate stream: zlib.error).
UNREADABLE = (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, zlib.error)


class HistoryError(ValueError):
    """A history file that cannot be judged: why, in one line."""


def save(path: Path, trace: Trace, histories: dict[str, History]) -> None:
    """Write ``histories`` (strategy -> history) atomically."""
    from sim.report.output import write_file

    meta = json.dumps({"format": HISTORY_FORMAT, "trace_sha256": trace.sha256(), "operations": len(trace.t),
                       "strategies": list(histories)})
    arrays = {f"{strategy}.{name}": column for strategy, history in histories.items()
              for name, column in history.columns(trace.t).items()}
    write_file(path, lambda out: np.savez_compressed(out, meta=np.array(meta), **arrays), binary=True)


def is_history(path: Path) -> bool:
    """Whether ``path`` is a history file countdrift wrote (a file it may replace)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "meta" in data.files and json.loads(str(data["meta"])).get("format") == HISTORY_FORMAT
    except UNREADABLE:
        return False


def load(path: Path, trace: Trace, strategies: list[str]) -> dict[str, History]:
    """Every named strategy's history, checked against ``trace``."""
    if not path.is_file():
        raise HistoryError(f"{path}: no history file (runs written before countdrift kept one cannot be judged "
                           f"again: run them anew)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "meta" not in data.files:
                raise HistoryError(f"{path}: not a history countdrift wrote (no metadata)")
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != HISTORY_FORMAT:
                raise HistoryError(f"{path}: not a history countdrift wrote (format {meta!r:.60})")
            if meta.get("trace_sha256") != trace.sha256():
                raise HistoryError(f"{path}: the history of another trace (its checksum is not trace.npz's)")
            missing = [strategy for strategy in strategies if strategy not in meta.get("strategies", [])]
            if missing:
                raise HistoryError(f"{path}: holds no history of {', '.join(missing)} (results.json has them)")
            histories = {}
            for strategy in strategies:
                columns = {}
                for name in COLUMNS:
                    key = f"{strategy}.{name}"
                    if key not in data.files:
                        raise HistoryError(f"{path}: {strategy}'s history has no column {name!r}")
                    columns[name] = data[key]
                    if name != "commits_known" and columns[name].shape != trace.t.shape:
                        raise HistoryError(f"{path}: {strategy}'s column {name!r} holds {len(columns[name]):,} "
                                           f"operations; the trace has {len(trace.t):,}")
                histories[strategy] = History.from_columns(columns, trace.t)
            return histories
    except HistoryError:
        raise
    except UNREADABLE as error:
        raise HistoryError(f"{path}: unreadable, truncated or corrupt ({type(error).__name__}: "
                           f"{str(error)[:120]})") from None
