"""`countdrift judge RUN_DIR`: a stored run judged again from its history
file, simulated or real, finds the run's own figures; a folder that cannot
be judged is one line naming the file, exit 2, nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sim.cli import main
from sim.report.history_file import HISTORY_FILE

from conftest import SMALL_SCENARIO

TINY = SMALL_SCENARIO.replace("messages = 3000", "messages = 400")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("judge")
    scenario = folder / "tiny.toml"
    scenario.write_text(TINY)
    made = {}
    for name, seed in (("one", "1"), ("other", "2")):
        made[name] = folder / name
        assert main(["run", str(scenario), "--strategies", "naive,lua,derived", "--seed", seed, "-q",
                     "--out", str(made[name])]) == 0
    return made


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.split()[:1] in (["naive"], ["lua"], ["derived"])]


def test_a_simulated_run_judged_again_finds_its_own_figures(runs, capsys):
    capsys.readouterr()
    assert main(["run", str(runs["one"].parent / "tiny.toml"), "--strategies", "naive,lua,derived", "--seed", "1",
                 "-q", "--out", str(runs["one"])]) == 0
    printed_by_run = _table_rows(capsys.readouterr().out)
    assert main(["judge", str(runs["one"])]) == 0
    out = capsys.readouterr().out
    assert "the same figures as the run's (3 strategies, sim backend)" in out
    assert _table_rows(out) == printed_by_run
    results = json.loads((runs["one"] / "results.json").read_text())
    assert results["runs"][0]["seen"]["badges"] > 0 and results["history_file"] == HISTORY_FILE


def test_a_changed_figure_is_named(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["runs"][0]["seen"]["badges_wrong"] += 5
    (run / "results.json").write_text(json.dumps(results))
    assert main(["judge", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 figure(s) differ from the run's" in out and "naive seen.badges_wrong" in out


def _refused(run: Path, capsys, *expected: str) -> None:
    before = sorted((path.name, path.stat().st_size) for path in run.iterdir())
    capsys.readouterr()
    assert main(["judge", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("countdrift: error: "), err
    for text in expected:
        assert text in err[0], err
    assert sorted((path.name, path.stat().st_size) for path in run.iterdir()) == before, "something was written"


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    _refused(tmp_path, capsys, str(tmp_path), "no results.json")


def test_a_run_without_its_history_is_refused(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    (run / HISTORY_FILE).unlink()
    _refused(run, capsys, str(run / HISTORY_FILE), "no history file")


def test_the_history_of_another_run_is_refused(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    shutil.copy(runs["other"] / HISTORY_FILE, run / HISTORY_FILE)
    _refused(run, capsys, str(run / HISTORY_FILE), "another trace")


def test_the_trace_of_another_run_is_refused(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    shutil.copy(runs["other"] / "trace.npz", run / "trace.npz")
    _refused(run, capsys, str(run / "trace.npz"), "not the trace of")


def test_a_history_without_a_strategy_of_the_results_is_refused(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["runs"].append({**results["runs"][0], "strategy": "lua_idempotent"})
    (run / "results.json").write_text(json.dumps(results))
    _refused(run, capsys, str(run / HISTORY_FILE), "lua_idempotent")


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "empty"])
def test_a_damaged_history_file_is_refused(damage, runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    path = run / HISTORY_FILE
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(256) + data[middle + 256:])
    else:
        path.write_bytes(b"")
    _refused(run, capsys, str(path))


def test_a_column_of_the_wrong_length_is_refused(runs, tmp_path, capsys):
    run = _copy(runs["one"], tmp_path)
    with np.load(run / HISTORY_FILE) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["lua.value"] = arrays["lua.value"][:-3]
    np.savez_compressed(run / HISTORY_FILE, **arrays)
    _refused(run, capsys, str(run / HISTORY_FILE), "lua's column 'value'")


@pytest.mark.real
def test_a_real_run_judged_again_finds_its_own_figures(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "real"
    assert main(["run", str(scenario), "--backend", "redis", "--strategies", "naive,lua", "-q",
                 "--out", str(out)]) == 0
    printed_by_run = _table_rows(capsys.readouterr().out)
    assert main(["judge", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the same figures as the run's (2 strategies, redis backend)" in printed
    assert _table_rows(printed) == printed_by_run


def test_a_parallel_run_keeps_every_history(runs, tmp_path, capsys):
    """--jobs: each strategy's history comes back from its worker process."""
    out = tmp_path / "parallel"
    assert main(["run", str(runs["one"].parent / "tiny.toml"), "--strategies", "naive,lua,derived", "--seed", "1",
                 "-q", "--jobs", "2", "--out", str(out)]) == 0
    assert main(["judge", str(out)]) == 0
    assert "the same figures as the run's (3 strategies, sim backend)" in capsys.readouterr().out
    alone, parallel = (json.loads((folder / "results.json").read_text()) for folder in (runs["one"], out))
    assert [run["seen"] for run in alone["runs"]] == [run["seen"] for run in parallel["runs"]]
