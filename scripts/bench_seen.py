"""What judging users' values costs a run: wall time, peak memory, the history file.

    python3 scripts/bench_seen.py [SCENARIO] [--strategies a,b]

Runs the scenario (default: scenarios/review.toml) on the simulation, each
strategy in turn, then does again, timed on its own, what the run did to
judge what users were shown (the history as stored, every value judged,
the seen figures; not the worst users' list, one pass over the users'
totals), and writes the history file. Fidelity's client view of the same
values is not part of a run. Prints, per strategy and in all: the run's wall time,
judging's, their ratio, the process's peak memory, and the history file's
size. Figures, not assertions: the machine is shared.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim import seen  # noqa: E402
from sim.report import history_file  # noqa: E402
from sim.runner import run_scenario  # noqa: E402
from sim.scenario import load  # noqa: E402
from sim.traffic import generate  # noqa: E402
from sim.truth import Memberships  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "review.toml"))
    parser.add_argument("--strategies", help="comma-separated (default: the scenario's)")
    args = parser.parse_args()
    scenario = load(Path(args.scenario))
    strategies = args.strategies.split(",") if args.strategies else list(scenario.strategies)
    trace = generate(scenario.traffic, scenario.seed)
    print(f"{scenario.name}: {len(trace.t):,} operations, strategies {', '.join(strategies)}", flush=True)
    total_run = total_judge = 0.0
    histories = {}
    for name in strategies:
        kept: dict = {}
        started = time.perf_counter()
        results = run_scenario(scenario, [name], trace, explain=False, histories=kept)
        ran = time.perf_counter() - started
        raw = kept[name]
        started = time.perf_counter()
        pairs = Memberships(trace)
        stored = raw.rounded(trace.t)
        seen.figures(trace, stored, seen.judge_values(trace, stored, pairs), results["runs"][0]["faults"])
        judged = time.perf_counter() - started
        total_run, total_judge = total_run + ran, total_judge + judged
        histories[name] = stored
        print(f"  {name:<15} run {ran:7.1f} s (judging inside it)  judging alone {judged:6.2f} s "
              f"= {100 * judged / (ran - judged):5.1f}% of the rest  peak {peak_mib():6.0f} MiB", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / history_file.HISTORY_FILE
        started = time.perf_counter()
        history_file.save(path, trace, histories)
        written = time.perf_counter() - started
        size = path.stat().st_size
    share = 100 * total_judge / (total_run - total_judge)
    per_operation = size / (len(trace.t) * len(strategies))
    print(f"all: run {total_run:.1f} s, judging {total_judge:.2f} s = {share:.1f}% of the rest; "
          f"history file {size / 2**20:.1f} MiB ({per_operation:.2f} bytes "
          f"an operation), written in {written:.1f} s; peak {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
