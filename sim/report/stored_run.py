"""A run's folder read back whole: its results.json, its trace and every
strategy's history, each checked against the others (`countdrift judge`,
`countdrift explain`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sim.errors import ReportError, UsageError
from sim.history import History
from sim.report.history_file import HISTORY_FILE, HistoryError
from sim.report.history_file import load as load_histories
from sim.report.summary import load_results
from sim.traffic import Trace, TraceError


@dataclass
class StoredRun:
    folder: Path
    results: dict
    trace: Trace
    histories: dict[str, History]

    def record(self, strategy: str) -> dict:
        return next(run for run in self.results["runs"] if run["strategy"] == strategy)


def load_run(folder: Path, command: str) -> StoredRun:
    """A run's folder as `countdrift run` wrote it; a UsageError in one line otherwise."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder; {command} takes a run's folder (results.json, trace.npz and "
                         f"{HISTORY_FILE}, as `countdrift run` writes them)")
    path = folder / "results.json"
    if not path.is_file():
        raise UsageError(f"{folder}: not a run's folder: it has no results.json")
    try:
        results = load_results(path)
        trace_path = folder / Path(results["trace"].get("file", "trace.npz")).name
        trace = Trace.load(trace_path)
        if trace.sha256() != results["trace"]["sha256"]:
            raise UsageError(f"{trace_path}: not the trace of {path} (their checksums differ)")
        strategies = [run["strategy"] for run in results["runs"]]
        histories = load_histories(folder / HISTORY_FILE, trace, strategies)
    except (ReportError, TraceError, HistoryError) as error:
        raise UsageError(str(error)) from None
    return StoredRun(folder, results, trace, histories)
