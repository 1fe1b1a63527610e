"""`countdrift sweep`: every (scenario, seed, strategy) as one task on Dask
distributed.

Why Dask: pure Python, a LocalCluster of worker processes on this machine
with nothing to start by hand, and the same code against an existing
cluster (Kubernetes, a batch system) given its scheduler's address. A task
is the run `countdrift run --seed SEED --strategies STRATEGY` does; it
returns its results document, and this process writes it into the sweep's
folder, so workers need no shared file system and a finished run is never
done again (a re-run skips it). A run depends only on its scenario, seed
and strategy, so the simulated results are the same whatever the workers.

A task on real servers asks for the worker resource ``real`` (each worker
of the local cluster has one), so no two of them share a worker; each
starts its own servers on free ports.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sim import backends
from sim.errors import ReportError, UsageError
from sim.report.results import write_json
from sim.report.sweep_results import SWEEP_FILE, run_file, sweep_document
from sim.scenario import Scenario

REAL_RESOURCE = "real"


@dataclass(frozen=True)
class Task:
    scenario: Scenario
    seed: int
    strategy: str
    backend: str
    code: bytes = b""   # the strategy's classes by value, when it comes from outside the package

    def where(self, folder: Path) -> Path:
        return run_file(folder, self.scenario.name, self.seed, self.strategy)

    def name(self) -> str:
        return f"{self.scenario.name} seed {self.seed} {self.strategy}"


def run_task(task: Task) -> dict:
    """One run, on a worker: the trace of the seed, replayed through one strategy."""
    from sim.runner import run_scenario
    from sim.strategy_code import unpack
    from sim.traffic import generate

    if task.code:   # a worker knows the package's strategies; this one travelled with the task
        unpack(task.code)
    return run_scenario(task.scenario, [task.strategy], generate(task.scenario.traffic, task.seed),
                        backend=task.backend)


def plan_tasks(scenarios: list[Scenario], seeds: Callable[[Scenario], list[int]],
         strategies: Callable[[Scenario], tuple[str, ...]], backend: str) -> list[Task]:
    """Every (scenario, seed, strategy), in that order."""
    names = [scenario.name for scenario in scenarios]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"sweep: two scenarios are named {', '.join(twice)}; a sweep keeps runs by scenario "
                         f"name: give each a distinct `name`")
    from sim.strategy_code import BUILT_IN, packed

    return [Task(scenario, seed, strategy, backend, b"" if strategy in BUILT_IN else packed([strategy]))
            for scenario in scenarios for seed in seeds(scenario) for strategy in strategies(scenario)]


def _finished(task: Task, folder: Path) -> bool:
    """Whether the sweep's folder already holds this run; a file that is
    not this run (another scenario file or backend, or a run of another seed
    or strategy copied there) is refused rather than mixed in."""
    from sim.report.summary import load_results

    path = task.where(folder)
    if not path.exists():
        return False
    try:
        document = load_results(path)
    except ReportError as error:
        raise UsageError(f"--out {folder}: {error}; remove it to run it again") from None
    found = {"scenario": document["scenario"]["name"], "seed": document["seed"], "backend": document["backend"],
             "strategy": [run["strategy"] for run in document["runs"]]}
    expected = {"scenario": task.scenario.name, "seed": task.seed, "backend": task.backend,
                "strategy": [task.strategy]}
    wrong = [key for key in expected if found[key] != expected[key]]
    if wrong:
        key = wrong[0]
        raise UsageError(f"--out {folder}: {path} holds a run of {key} {found[key]!r}, not {expected[key]!r} as its "
                         f"place says; remove it to run it again")
    if document["scenario"].get("sha256") != task.scenario.sha256:
        raise UsageError(f"--out {folder}: {path} is a run of another version of {task.scenario.path}; sweep into "
                         f"another --out")
    ours = task.scenario.to_dict()
    if any(document["scenario"].get(section) != ours[section] for section in ("clients", "server")):
        raise UsageError(f"--out {folder}: {path} ran its clients or server otherwise (with or without "
                         f"--model-driver, or another calibration); sweep into another --out")
    return True


def check_folder(folder: Path, force: bool = False) -> Path:
    """A sweep writes into a new folder or one of its own earlier sweeps
    (known by its sweep.json), or, with ``force``, into another folder,
    where it removes and replaces nothing: a sweep.json there that is not a
    sweep's is refused even so."""
    from sim.report.output import check_folder as check_writable
    from sim.report.sweep_results import load_sweep

    folder = check_writable(folder, "--out")
    sweep = folder / SWEEP_FILE
    if sweep.exists():
        try:
            load_sweep(sweep)
        except ReportError as error:
            raise UsageError(f"--out {folder}: {error}; it is not a sweep's: name another folder (a sweep never "
                             f"replaces a file it did not write)") from None
    elif folder.is_dir() and not force and any(folder.iterdir()):
        raise UsageError(f"--out {folder}: a folder that holds something else than a sweep; name a new folder, "
                         f"the folder of the sweep to resume, or add --force to write the sweep into it "
                         f"(nothing in it is removed or replaced)")
    return folder


@contextmanager
def _local_cluster(workers: int, real: bool) -> Iterator:
    """A cluster of worker processes on this machine, closed on the way out
    whatever happens. The workers ignore SIGINT (they inherit it ignored):
    a Ctrl-C in a terminal reaches the whole process group, and only this
    process should act on it, by closing the cluster. Dask's own logs are
    silenced (a worker's heartbeat racing the scheduler's close logs an
    error): a run that fails is reported with its error by the sweep."""
    import dask
    from distributed import LocalCluster

    from sim.watchdog import remove_scratch, scratch_folder

    scratch = scratch_folder("countdrift-dask-")   # Dask's files, removed even if this process is killed
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with dask.config.set({"temporary-directory": str(scratch)}):
            # The scheduler's HTTP server starts whatever the dashboard: on 127.0.0.1 and a free port, not
            # on every interface's 8787 (taken, it warned on stderr).
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.CRITICAL, resources={REAL_RESOURCE: 1} if real else None)
    except BaseException:
        remove_scratch(scratch)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        with cluster:
            yield cluster
    finally:
        remove_scratch(scratch)


@contextmanager
def connect(scheduler: str | None, workers: int, real: bool) -> Iterator:
    """A Dask client: of a local cluster of ``workers`` processes, or of the
    cluster whose scheduler is at ``scheduler``."""
    from distributed import Client

    if scheduler is None:
        with _local_cluster(workers, real) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as error:
        raise UsageError(f"--scheduler {scheduler}: no Dask scheduler answered ({error}); start one "
                         f"(`dask scheduler`) or leave --scheduler out for a local cluster") from None
    with client:
        workers_info = client.scheduler_info()["workers"].values()
        if real and not any(info.get("resources", {}).get(REAL_RESOURCE) for info in workers_info):
            raise UsageError(f"--scheduler {scheduler}: no worker offers the resource {REAL_RESOURCE!r} that "
                             f"runs on real servers need; start workers with "
                             f"`dask worker {scheduler} --nthreads 1 --resources {REAL_RESOURCE}=1`")
        yield client


def _stop_servers() -> None:
    """On a worker: stop the servers its run started, before the cluster
    kills the worker (its watchdog would, a moment later)."""
    for backend in backends.loaded():
        backend.stop_all()


class Progress:
    """Runs done of the sweep's total, with an ETA (tqdm, on stderr), or nothing when quiet."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=total, initial=done, desc="sweep", unit="run", file=sys.stderr,
                                           mininterval=0.5, bar_format="{desc} {n}/{total} runs |{bar:20}| "
                                                                       "[{elapsed}<{remaining}{postfix}]")

    def step(self, task: Task) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(task.name(), refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_on(client, todo: list[Task], folder: Path, real: bool, progress: Progress,
            finished: Callable[[], None]) -> list[dict]:
    """Submit the tasks, write each run's results.json as it comes back
    (``finished()`` after each); the runs that failed, each with its error.
    Cut short, nothing of ours goes on running: the tasks are cancelled and
    the servers of the real runs under way stopped."""
    from distributed import as_completed

    futures = {client.submit(run_task, task, pure=False, resources={REAL_RESOURCE: 1} if real else None): task
               for task in todo}
    failed: list[dict] = []
    complete = False
    try:
        for future in as_completed(futures):
            task = futures[future]
            try:
                document = future.result()
            except Exception as error:   # the run failed on its worker: say which, go on with the rest
                failed.append({"scenario": task.scenario.name, "seed": task.seed, "strategy": task.strategy,
                               "error": f"{type(error).__name__}: {str(error)[:500]}"})
            else:
                write_json(task.where(folder), document)
                finished()
            progress.step(task)
        complete = True
    finally:
        progress.close()
        if not complete:
            client.cancel(list(futures))
            if real:
                client.run(_stop_servers)
    return failed


def run_sweep(folder: Path, tasks: list[Task], scheduler: str | None, workers: int, quiet: bool,
              on_run: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Run the tasks not yet in ``folder``, writing each run's results.json
    as it comes back; then sweep.json. ``on_run(done, total)`` whenever a run is written."""
    started = time.perf_counter()
    deterministic = backends.get(tasks[0].backend).deterministic
    scenarios = {task.scenario.name: {**task.scenario.to_dict(),
                                      "throughput_basis": task.scenario.throughput_basis(deterministic)}
                 for task in tasks}
    plan = {name: {"seeds": list(dict.fromkeys(task.seed for task in tasks if task.scenario.name == name)),
                   "strategies": list(dict.fromkeys(task.strategy for task in tasks if task.scenario.name == name))}
            for name in scenarios}
    backend = tasks[0].backend

    def document(failed: list[dict]) -> dict:
        return sweep_document(folder, scenarios, plan, backend, failed, time.perf_counter() - started,
                              deterministic)

    todo = [task for task in tasks if not _finished(task, folder)]
    done = len(tasks) - len(todo)
    on_run(done, len(tasks))
    if not quiet:
        where = f"the cluster at {scheduler}" if scheduler else f"a local cluster of {workers} worker(s)"
        print(f"sweep: {len(tasks)} runs ({done} already done) on {where}; {folder}", file=sys.stderr)

    def finished() -> None:
        nonlocal done
        done += 1
        on_run(done, len(tasks))

    failed: list[dict] = []
    alone = not backends.get(backend).parallel_runs   # each run needs a worker to itself
    if todo:
        with connect(scheduler, workers, alone) as client:
            write_json(folder / SWEEP_FILE, document([]))    # the folder is a sweep's before its first run lands
            failed = _run_on(client, todo, folder, alone, Progress(len(tasks), done, quiet), finished)
    result = document(failed)
    write_json(folder / SWEEP_FILE, result)
    return result


def default_workers(backend: str) -> int:
    """All cores for a backend whose runs may share a machine (the
    simulation); one otherwise (real servers, whose figures are wall-clock:
    two real runs side by side on one machine measure each other)."""
    return len(os.sched_getaffinity(0)) if backends.get(backend).parallel_runs else 1
