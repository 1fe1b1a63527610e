"""`countdrift sweep`, and the report and compare of sweeps, end to end on a
tiny scenario: the same results with 1 and 2 workers, a resume that runs
only what is missing, sweep.json's statistics, compare's verdicts, the
report's sentences, and a Ctrl-C that leaves no worker behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sim.cli import main
from sim.report.results import strip_wall
from sim.report.stats import describe

from conftest import ROOT, SMALL_SCENARIO

# Lost replies make retries, so the strategies drift apart.
SCENARIO = SMALL_SCENARIO + '\n[[faults]]\nkind = "reset_peer"\nat = 0.5\nduration = 0.5\n'
STRATEGIES = "naive,lua"


def sweep(scenario: Path, out: Path, *options: str) -> int:
    return main(["sweep", str(scenario), "--strategies", STRATEGIES, "--out", str(out), *options])


def documents(folder: Path) -> dict[str, dict]:
    """Every JSON file of a sweep by its place in the folder, wall-clock figures left out."""
    return {str(path.relative_to(folder)): strip_wall(json.loads(path.read_text()))
            for path in sorted(folder.rglob("*.json"))}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sweeps")
    scenario = folder / "small.toml"
    scenario.write_text(SCENARIO)
    for workers in ("1", "2"):
        assert sweep(scenario, folder / f"w{workers}", "--seeds", "3", "--workers", workers, "-q") == 0
    return {"scenario": scenario, "one": folder / "w1", "two": folder / "w2"}


def test_one_and_two_workers_give_identical_results(sweeps):
    one, two = documents(sweeps["one"]), documents(sweeps["two"])
    assert len(one) == 7                       # 3 seeds x 2 strategies, and sweep.json
    runs = [name for name in one if name != "sweep.json"]
    for name in runs:
        assert one[name] == two[name], name
    assert one["sweep.json"]["aggregates"] == two["sweep.json"]["aggregates"]
    drift = one["sweep.json"]["aggregates"]["small"]["naive"]["drift.abs_drift_sum"]
    assert len(set(drift["values"])) > 1       # the seeds differ: the comparison above could fail


def test_a_sweep_run_is_the_run_countdrift_run_writes(sweeps, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(sweeps["scenario"]), "--seed", "8", "--strategies", "lua", "--out", str(out), "-q"]) == 0
    alone = strip_wall(json.loads((out / "results.json").read_text()))
    del alone["trace"]["file"], alone["history_file"]   # a sweep keeps no trace nor history files
    assert alone == strip_wall(json.loads((sweeps["one"] / "small" / "s8" / "lua" / "results.json").read_text()))


def test_sweep_json_aggregates_each_figure_with_an_interval(sweeps):
    document = json.loads((sweeps["one"] / "sweep.json").read_text())
    assert document["complete"] and document["runs"] == {"planned": 6, "done": 6, "failed": []}
    assert document["scenarios"]["small"]["seeds"] == [7, 8, 9]
    for strategy in ("naive", "lua"):
        values = [json.loads((sweeps["one"] / "small" / f"s{seed}" / strategy / "results.json").read_text())
                  ["runs"][0]["drift"]["abs_drift_sum"] for seed in (7, 8, 9)]
        statistics = document["aggregates"]["small"][strategy]["drift.abs_drift_sum"]
        assert statistics["values"] == values and statistics["seeds"] == [7, 8, 9] and statistics["n"] == 3
        assert statistics["mean"] == pytest.approx(np.mean(values)) and statistics["median"] == np.median(values)
        assert (statistics["min"], statistics["max"]) == (min(values), max(values))
        low, high = statistics["ci95"]
        assert min(values) <= low <= statistics["mean"] <= high <= max(values)
        assert describe(values)["ci95"] == [low, high]       # seeded: the same interval every time
    assert "wall_seconds" in document["aggregates"]["small"]["lua"]
    shown = document["aggregates"]["small"]["naive"]["seen.wrong_badges_per_1000"]   # what users saw, too
    assert shown["n"] == 3 and shown["values"] == [
        json.loads((sweeps["one"] / "small" / f"s{seed}" / "naive" / "results.json").read_text())
        ["runs"][0]["seen"]["wrong_badges_per_1000"] for seed in (7, 8, 9)]


def test_resume_runs_only_what_is_missing_and_prints_means_with_intervals(sweeps, tmp_path, capsys):
    folder = tmp_path / "resumed"
    shutil.copytree(sweeps["two"], folder)
    missing = folder / "small" / "s9" / "lua" / "results.json"
    original = strip_wall(json.loads(missing.read_text()))
    missing.unlink()
    kept = {path: path.stat().st_mtime_ns for path in folder.rglob("results.json")}
    assert sweep(sweeps["scenario"], folder, "--seeds", "3", "--workers", "2") == 0
    printed = capsys.readouterr()
    assert "6 runs (5 already done)" in printed.err
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert strip_wall(json.loads(missing.read_text())) == original
    statistics = json.loads((folder / "sweep.json").read_text())["aggregates"]["small"]["naive"]
    drift = statistics["drift.abs_drift_sum"]
    row = next(line for line in printed.out.splitlines() if line.startswith("naive"))
    assert f"{drift['mean']:.0f} [{drift['ci95'][0]:.0f}, {drift['ci95'][1]:.0f}]" in row
    assert "mean [95% bootstrap interval]" in printed.out and "|drift|" in printed.out


def test_quiet_prints_the_table_and_nothing_else(sweeps, tmp_path, capfd):
    assert sweep(sweeps["scenario"], tmp_path / "quiet", "--seeds", "2", "--workers", "2", "-q") == 0
    out, err = capfd.readouterr()          # the workers' output too: they write to the same descriptors
    assert err == "" and "mean [95% bootstrap interval]" in out and "4 of 4 runs" in out


def test_a_run_of_another_scenario_version_is_refused(sweeps, tmp_path, capsys):
    folder = tmp_path / "other"
    shutil.copytree(sweeps["one"], folder)
    edited = tmp_path / "small.toml"
    edited.write_text(SCENARIO + "# edited\n")
    assert sweep(edited, folder, "--seeds", "3", "-q") == 2
    error = capsys.readouterr().err
    assert "another version" in error and "sweep into another --out" in error


def _with_figure(sweep_json: Path, out: Path, strategy: str, figure: str, values: list[float]) -> Path:
    """A copy of a sweep.json on real servers (whose figures are noisy) with
    one figure's values over seeds 1..n replaced."""
    document = json.loads(sweep_json.read_text())
    document["backend"], document["deterministic"] = "redis", False
    seeds = list(range(1, len(values) + 1))
    for figures in document["aggregates"]["small"].values():
        for name in figures:
            figures[name] = {**figures[name], "seeds": seeds, "values": [figures[name]["values"][0]] * len(seeds)}
    document["aggregates"]["small"][strategy][figure] = {**describe(values), "seeds": seeds, "values": values}
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(document))
    return out


def test_compare_flags_a_planted_drift_regression_not_wall_clock_noise(sweeps, tmp_path, capsys):
    noisy, worse = tmp_path / "noisy", tmp_path / "worse"
    rng = np.random.default_rng(3)
    for folder, planted in ((noisy, 0), (worse, 5)):
        shutil.copytree(sweeps["one"], folder)
        for path in folder.rglob("results.json"):
            document = json.loads(path.read_text())
            document["wall_seconds"] *= rng.uniform(0.7, 1.4)
            if document["runs"][0]["strategy"] == "lua":
                document["runs"][0]["drift"]["abs_drift_sum"] += planted
            path.write_text(json.dumps(document))
        assert sweep(sweeps["scenario"], folder, "--seeds", "3", "-q") == 0    # all done: aggregates again
    capsys.readouterr()
    assert main(["compare", str(sweeps["one"]), str(noisy)]) == 0
    printed = capsys.readouterr().out
    assert "wall_seconds" in printed and "within noise" in printed and "0 regression(s)" in printed
    assert main(["compare", str(sweeps["one"]), str(worse), "--json", str(tmp_path / "verdict.json")]) == 1
    flagged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("!!")]
    assert len(flagged) == 1 and "lua" in flagged[0] and "drift.abs_drift_sum" in flagged[0]
    assert "worse in 3" in flagged[0]
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["regression"] and {c["figure"] for c in verdict["changes"] if c["regression"]} == {
        "drift.abs_drift_sum"}


def test_compare_of_noisy_figures_needs_significance(sweeps, tmp_path, capsys):
    rng = np.random.default_rng(5)
    def draw(centre: float) -> list[float]:   # ten seeds, 3% noise
        return list(centre * rng.uniform(0.97, 1.03, 10))
    source = sweeps["one"] / "sweep.json"
    baseline = _with_figure(source, tmp_path / "base", "lua", "throughput_ops_per_s", draw(1000))
    same = _with_figure(source, tmp_path / "same", "lua", "throughput_ops_per_s", draw(1000))
    slower = _with_figure(source, tmp_path / "slower", "lua", "throughput_ops_per_s", draw(800))
    assert main(["compare", str(baseline), str(same)]) == 0
    assert "within noise: Mann-Whitney U" in capsys.readouterr().out
    assert main(["compare", str(baseline), str(slower)]) == 1
    flagged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("!!")]
    assert len(flagged) == 1 and "throughput_ops_per_s" in flagged[0] and "significant" in flagged[0]
    assert main(["compare", str(baseline), str(sweeps["scenario"])]) == 2
    assert "compare a sweep with a sweep" in capsys.readouterr().err


def test_report_says_which_differences_are_significant(sweeps, tmp_path):
    six = tmp_path / "six"
    shutil.copytree(sweeps["two"], six)
    assert sweep(sweeps["scenario"], six, "--seeds", "6", "-q") == 0     # three more seeds
    out = tmp_path / "report"
    assert main(["report", str(sweeps["one"]), str(six), "--out", str(out)]) == 0
    markdown = (out / "summary.md").read_text()
    assert "## Sweep: small (sim, 3 seeds)" in markdown and "## Sweep: small (sim, 6 seeds)" in markdown
    few, many = markdown.split("## Sweep: small (sim, 6 seeds)")
    assert "only 3 of 3 seeds differ: too few for p < 0.05" in few and "is higher than" not in few
    drift = many[many.index("**|drift|**"):many.index("**count of inconsistent users**")]
    assert "- naive's |drift| is higher than lua's" in drift and "Wilcoxon p = 0.031 over 6 seeds" in drift
    assert "| naive | 6 |" in many and " [" in many          # the table: means with intervals
    for chart in ("sweep-tradeoff-1-small-sim", "sweep-spread-1-small-sim", "sweep-matrix-drift-1"):
        assert (out / f"{chart}.png").stat().st_size > 10_000, chart
    assert "results.json" not in markdown                        # the runs are the sweep's, not runs of their own


def test_an_existing_cluster_runs_the_sweep_by_its_address(sweeps, tmp_path):
    from distributed import LocalCluster

    from sim.errors import UsageError
    from sim.experiments.sweep import connect

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = tmp_path / "remote"
        assert sweep(sweeps["scenario"], out, "--seeds", "3", "--scheduler", cluster.scheduler_address, "-q") == 0
        assert documents(out) == documents(sweeps["one"])
        with pytest.raises(UsageError, match=r"no worker offers the resource 'real'.*--resources real=1"):
            with connect(cluster.scheduler_address, 1, real=True):
                pass
    with connect(None, 2, real=True) as client:     # a local cluster for real runs: one real run per worker
        assert [info["resources"] for info in client.scheduler_info()["workers"].values()] == [{"real": 1}] * 2


@pytest.mark.parametrize("options, expected", [
    (["--seed-range", "5"], ["--seed-range", "e.g. 1:20"]),
    (["--seed-range", "9:3"], ["--seed-range", "A <= B"]),
    (["--seeds", "0"], ["--seeds", "a whole number from 1"]),
    (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], ["--workers", "leave one of them out"]),
])
def test_bad_sweep_options_are_explained(sweeps, tmp_path, capsys, options, expected):
    out = tmp_path / "out"
    assert sweep(sweeps["scenario"], out, *options) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and all(fragment in error for fragment in expected), error
    assert not out.exists()


def test_a_folder_that_is_not_a_sweep_is_refused(sweeps, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert sweep(sweeps["scenario"], tmp_path / "mine", "-q") == 2
    assert "something else than a sweep" in capsys.readouterr().err


def _group(leader: int) -> dict[int, str]:
    """The live (not zombie) processes of a process group: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and int(fields[2]) == leader and fields[0] != "Z":
            found[int(entry.name)] = command
    return found


def test_ctrl_c_stops_every_worker_and_the_sweep_resumes(sweeps, tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-c", "import sys; from sim.cli import entry; sys.argv[0] = 'countdrift'; entry()",
               "sweep", str(sweeps["scenario"]), "--strategies", STRATEGIES, "--seeds", "6", "--workers", "2",
               "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.rglob("results.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    workers = [pid for pid, command in _group(process.pid).items() if "spawn_main" in command]
    assert len(workers) == 2
    os.killpg(process.pid, signal.SIGINT)                      # as Ctrl-C in a terminal: the whole group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "countdrift: interrupted; " in err and "the same command resumes the sweep" in err
    assert not set(workers) & set(_group(process.pid))         # the workers ended with the sweep
    deadline = time.monotonic() + 10                           # multiprocessing's resource tracker ends by itself
    while _group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group(process.pid) == {}
    done = len(list(out.rglob("results.json")))
    assert 0 < done < 12
    assert sweep(sweeps["scenario"], out, "--seeds", "6", "--workers", "2", "-q") == 0
    assert json.loads((out / "sweep.json").read_text())["runs"]["done"] == 12


@pytest.mark.real
def test_a_real_sweep_runs_each_task_on_servers_of_its_own(tmp_path):
    """Two seeds on real servers, one task per worker at a time: each run
    starts and stops its own servers, and none is left afterwards."""
    def servers() -> set[int]:
        """Every redis-server, redis-sentinel and toxiproxy-server on this machine."""
        found = set()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "comm").read_text().startswith(("redis", "toxiproxy")):
                    found.add(int(entry.name))
            except OSError:
                continue
        return found

    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 1200"))
    out = tmp_path / "real"
    before = servers()
    assert main(["sweep", str(scenario), "--strategies", "lua", "--backend", "redis", "--seeds", "2",
                 "--out", str(out), "-q"]) == 0
    runs = sorted(out.rglob("results.json"))
    assert len(runs) == 2
    for path in runs:
        document = json.loads(path.read_text())
        assert document["backend"] == "redis" and document["runs"][0]["drift"]["abs_drift_sum"] == 0
    assert servers() <= before
