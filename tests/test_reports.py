"""report, compare, the committed baselines, and the notebook."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from sim.cli import main
from sim.runner import run_scenario
from sim.scenario import load

from conftest import ROOT

BASELINES = ROOT / "results" / "baselines"


@pytest.fixture(scope="module")
def small_results(tmp_path_factory) -> Path:
    from conftest import SMALL_SCENARIO

    folder = tmp_path_factory.mktemp("small")
    scenario = folder / "small.toml"
    scenario.write_text(SMALL_SCENARIO + '\n[[faults]]\nkind = "reset_peer"\nat = 0.5\nduration = 0.5\n')
    out = folder / "run"
    assert main(["run", str(scenario), "--strategies", "naive,lua,lua_idempotent", "--out", str(out), "-q"]) == 0
    return out / "results.json"


def test_report_reads_a_fidelity_json_whose_cells_agree_on_what_users_saw(small_results, tmp_path):
    """A cell's seen_disagreement is None when both sides agree: the schema
    must take it (report once refused every fidelity.json fidelity wrote)."""
    from sim.experiments.fidelity import FIDELITY_SCHEMA, SIZE_FACTOR, SIZE_FLOOR, cells_of
    from sim.report.results import write_json

    document = json.loads(small_results.read_text())
    cells = cells_of({"sim": document, "redis": document})
    assert cells and all(cell["seen_disagreement"] is None for cell in cells)
    write_json(tmp_path / "fidelity" / "fidelity.json",
               {"fidelity_schema": FIDELITY_SCHEMA, "backends": ["sim", "redis"], "size_floor": SIZE_FLOOR,
                "size_factor": SIZE_FACTOR, "cells": cells, "disagreements": 0, "seen_disagreements": 0})
    assert main(["report", str(small_results), str(tmp_path / "fidelity"), "--out", str(tmp_path / "report")]) == 0


def test_report_writes_every_chart_and_the_page(small_results, tmp_path, capsys):
    second = tmp_path / "second" / "results.json"
    second.parent.mkdir()
    document = json.loads(small_results.read_text())
    document["scenario"]["name"] = "small_copy"
    second.write_text(json.dumps(document))
    out = tmp_path / "report"
    assert main(["report", str(small_results), str(second.parent), "--out", str(out)]) == 0
    for chart in ("matrix-drift", "matrix-throughput", "tradeoff-small-sim-s7", "timeline-small-sim-s7",
                  "latency-small-sim-s7", "seen-small-sim-s7", "seen-timeline-small-sim-s7"):
        png, svg = out / f"{chart}.png", out / f"{chart}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, chart
        assert svg.read_text().lstrip().startswith("<?xml") and svg.stat().st_size > 10_000, chart
    page = (out / "summary.html").read_text()
    markdown = (out / "summary.md").read_text()
    for text in (page, markdown):
        assert "small" in text and "seed 7" in text and "reset_peer" in text and "0.1.0" in text
    assert page.count("data:image/png;base64,") == 12   # self-contained: every chart inline
    assert "What users saw" in markdown and "naive: " in markdown


def test_the_tradeoff_plots_capacity_when_it_was_measured(small_results, tmp_path):
    from sim.experiments.capacity import measure
    from sim.report import charts
    from sim.report.summary import capacity_of

    document = json.loads(small_results.read_text())
    scenario = load(Path(document["scenario"]["path"]))
    capacity = measure(scenario, ["naive", "lua"], "sim", 10.0, (1, 4))
    assert capacity_of(document, [capacity]) is capacity
    assert capacity_of({**document, "backend": "redis"}, [capacity]) is None
    figure = charts.tradeoff(document, capacity)
    left = figure.axes[0]
    plotted = sorted(float(points.get_offsets()[0][0]) for points in left.collections)
    assert plotted == sorted(result["capacity_ops_per_s"] for result in capacity["strategies"].values())
    assert "capacity" in left.get_xlabel()
    offered = charts.tradeoff(document)   # without a capacity: the offered rate, said so
    assert "offered rate" in offered.axes[0].get_xlabel() and len(offered.axes[0].collections) == 3

    folder = tmp_path / "results"
    (folder / "capacity-small-sim").mkdir(parents=True)
    (folder / "capacity-small-sim" / "capacity.json").write_text(json.dumps(capacity))
    (folder / "run").mkdir()
    (folder / "run" / "results.json").write_text(small_results.read_text())
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    markdown = (out / "summary.md").read_text()
    assert "Capacity and p99 latency vs drift" in markdown and "| lua |" in markdown


def test_report_explains_a_missing_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.json" in capsys.readouterr().err


def write(document: dict, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(document))
    return folder


def test_compare_identical_results_pass(small_results, tmp_path, capsys):
    assert main(["compare", str(small_results), str(small_results)]) == 0
    assert "no change" in capsys.readouterr().out


def test_compare_fails_when_one_strategys_drift_grew(small_results, tmp_path, capsys):
    document = json.loads(small_results.read_text())
    worse = copy.deepcopy(document)
    worse["runs"][1]["drift"]["overcount"] += 1            # lua
    current = write(worse, tmp_path / "current")
    verdict = tmp_path / "verdict.json"
    table = tmp_path / "verdict.md"
    assert main(["compare", str(small_results), str(current), "--json", str(verdict), "--markdown", str(table)]) == 1
    out = capsys.readouterr().out
    assert "lua" in out and "drift.overcount" in out and "!!" in out
    parsed = json.loads(verdict.read_text())
    assert parsed["regression"] and parsed["changes"][0]["strategy"] == "lua"
    assert "1 regression" in table.read_text()


def test_compare_names_the_shard_whose_users_drift_more(small_results, tmp_path, capsys):
    """A cluster run's drift that moved from one shard's users to another's:
    the totals are the same, the shard that got worse is a regression."""
    document = json.loads(small_results.read_text())
    document["runs"][1]["shard_drift"] = {
        "shard0": {"users": 50, "users_wrong_total": 2, "abs_drift_sum": 3, "users_inconsistent": 0},
        "shard1": {"users": 50, "users_wrong_total": 0, "abs_drift_sum": 0, "users_inconsistent": 0}}
    moved = copy.deepcopy(document)
    moved["runs"][1]["shard_drift"]["shard0"].update(users_wrong_total=0, abs_drift_sum=0)
    moved["runs"][1]["shard_drift"]["shard1"].update(users_wrong_total=2, abs_drift_sum=3)
    assert main(["compare", str(write(document, tmp_path / "a")), str(write(document, tmp_path / "b"))]) == 0
    assert main(["compare", str(write(document, tmp_path / "c")), str(write(moved, tmp_path / "d"))]) == 1
    out = capsys.readouterr().out
    assert "shard_drift.shard1.abs_drift_sum" in out and "shard_drift.shard0.abs_drift_sum" in out


def test_compare_throughput_tolerance(small_results, tmp_path):
    document = json.loads(small_results.read_text())
    slower = copy.deepcopy(document)
    slower["runs"][0]["throughput_ops_per_s"] *= 0.97
    assert main(["compare", str(small_results), str(write(slower, tmp_path / "a")), "--tolerance", "0.05"]) == 0
    much_slower = copy.deepcopy(document)
    much_slower["runs"][0]["throughput_ops_per_s"] *= 0.90
    assert main(["compare", str(small_results), str(write(much_slower, tmp_path / "b")), "--tolerance", "0.05"]) == 1


@pytest.mark.parametrize("baseline", sorted(BASELINES.glob("*/results.json")), ids=lambda p: p.parent.name)
def test_no_strategy_drifts_more_than_its_committed_baseline(baseline, tmp_path):
    """CI's regression check: the committed baselines, run again."""
    document = json.loads(baseline.read_text())
    scenario = load(ROOT / document["scenario"]["path"])
    strategies = [run["strategy"] for run in document["runs"]]
    # two at once: the simulation is deterministic, and the machine has two cores
    current = write(run_scenario(scenario, strategies, explain=False, jobs=2), tmp_path / "current")
    assert main(["compare", str(baseline), str(current)]) == 0


@pytest.mark.parametrize("where, given", [("notebooks", None), ("", "folder")])
def test_the_notebook_runs(small_results, where, given):
    """From its own folder with the default results (the committed
    baseline), and from the repository's root with a run's folder."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "compare_strategies.ipynb", as_version=4)
    if given:
        os.environ["COUNTDRIFT_RESULTS"] = str(small_results.parent)
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / where)}}).execute()
    finally:
        os.environ.pop("COUNTDRIFT_RESULTS", None)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs)


def capacity_document(backend: str, name: str, sha: str, capacities: dict, modelled: bool = False) -> dict:
    document = {"capacity_schema": 1, "backend": backend, "scenario": {"name": name, "sha256": sha * 8},
                "slo_p99_ms": 10.0, "strategies": {strategy: {"capacity_ops_per_s": value, "clients": 8}
                                                   for strategy, value in capacities.items()}}
    if modelled:
        document["driver_model"] = {"rtt_us": 8.0, "request_us": 13.9}
    return document


def write_capacities(documents: dict[str, dict], folder: Path) -> Path:
    for name, document in documents.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "capacity.json").write_text(json.dumps(document))
    return folder


def test_report_sets_simulated_capacity_beside_the_real_median(tmp_path, capsys):
    from sim.report.summary import capacity_of

    modelled = capacity_document("sim", "hot", "s1", {"lock": 13_000, "lua": 60_000, "watch": 9_000}, modelled=True)
    alone = capacity_document("sim", "hot", "s1", {"lock": 5_000, "lua": 99_000})
    documents = {
        "sim-modelled": modelled,
        "sim-without-driver": alone,   # Redis alone: not comparable, and sorted last
        "real-1": capacity_document("redis", "hot", "s1", {"lock": 10_000, "lua": 50_000}),
        "real-2": capacity_document("redis", "hot", "s1", {"lock": 12_000, "lua": 61_000, "watch": 8_000}),
        "real-3": capacity_document("redis", "hot", "s1", {"lock": 13_000, "lua": 59_000}),
        "real-other-file": capacity_document("redis", "hot", "s2", {"lock": 1, "lua": 1}),   # another version of it
        "real-only": capacity_document("redis", "quick", "s3", {"lock": 20_000}),             # nothing simulated
    }
    folder = write_capacities(documents, tmp_path / "capacities")
    out = tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out)]) == 0   # capacity documents alone are enough
    markdown = (out / "summary.md").read_text()
    assert markdown.count("## Capacity of hot, simulated against real servers (p99 <= 10 ms)") == 1
    assert "sha256 s1s1s1s1s1s1" in markdown and "rtt_us 8, request_us 13.9" in markdown
    assert "| lock | 13,000 | 12,000 | 10,000, 12,000, 13,000 | 1.08 |" in markdown
    assert "| lua | 60,000 | 59,000 | 50,000, 61,000, 59,000 | 1.02 |" in markdown
    assert "| watch | 9,000 | 8,000 | 8,000 | 1.12 |" in markdown   # measured once on real
    assert "Capacity of quick" not in markdown and "## Charts" not in markdown
    # A results document's trade-off chart takes the capacity of Redis alone, never the driver's.
    results = {"scenario": {"name": "hot", "sha256": "s1" * 8}, "backend": "sim"}
    assert capacity_of(results, [alone, modelled]) is alone and capacity_of(results, [modelled]) is None
    assert capacity_of({**results, "scenario": {"name": "hot", "sha256": "s2" * 8}}, [alone]) is None


def test_report_refuses_capacities_it_cannot_compare_or_read(tmp_path, capsys):
    lone = write_capacities({"sim": capacity_document("sim", "hot", "s1", {"lock": 1}, modelled=True),
                             "real": capacity_document("redis", "cold", "s1", {"lock": 1})}, tmp_path / "lone")
    assert main(["report", str(lone), "--out", str(tmp_path / "r1")]) == 2
    assert "nothing to report" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    broken = write_capacities({"bad": {"backend": "sim", "driver_model": {}}}, tmp_path / "broken")
    assert main(["report", str(broken), "--out", str(tmp_path / "r2")]) == 2
    error = capsys.readouterr().err
    assert "bad/capacity.json" in error and "not a countdrift capacity.json" in error


def test_two_runs_of_one_scenario_and_seed_keep_their_charts_and_headings_apart(small_results, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    (second / "results.json").write_text(small_results.read_text())
    assert main(["report", str(small_results), str(second), "--out", str(tmp_path / "report")]) == 0
    charts_drawn = sorted(path.name for path in (tmp_path / "report").glob("tradeoff-*.png"))
    assert len(charts_drawn) == 2, charts_drawn
    headings = [line for line in (tmp_path / "report" / "summary.md").read_text().splitlines()
                if line.startswith("## small")]
    assert len(headings) == 2 and str(second) in headings[1] and str(small_results) in headings[0], headings


def test_the_matrix_tells_backends_apart_and_takes_a_strategy_it_does_not_know(small_results, tmp_path):
    from sim.report import charts

    document = json.loads(small_results.read_text())
    real = {**document, "backend": "redis"}
    real["runs"] = [{**run, "strategy": "my_counter" if run["strategy"] == "naive" else run["strategy"]}
                    for run in document["runs"]]
    assert charts.column_names([document, real]) == ["small (sim, s7)", "small (redis, s7)"]
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "results.json").write_text(json.dumps(real))
    assert main(["report", str(small_results), str(tmp_path / "real"), "--out", str(tmp_path / "report")]) == 0
    figure = charts.matrix([document, real], "drift")
    assert "my_counter" in [label.get_text() for label in figure.axes[0].get_yticklabels()]
