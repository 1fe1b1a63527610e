"""`countdrift shrink`: the smallest trace and schedule that still show a
strategy's anomaly by the same cause, written as a scenario, a trace and a
story that reproduce it; delta debugging, the sub-traces it runs, and what
the command refuses."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sim import backends
from sim.cli import main
from sim.experiments.shrink import Shrinker, ddmin, shrink, subtrace
from sim.runner import schedule_for
from sim.scenario import load, parse
from sim.traffic import DELIVER, generate

from conftest import SHORT_FAILOVER, SMALL_SCENARIO


def test_ddmin_finds_the_smallest_subset_that_passes():
    tested = []

    def needs_3_and_7(items):
        tested.append(items)
        return 3 in items and 7 in items

    assert ddmin(list(range(20)), needs_3_and_7) == [3, 7]
    assert ddmin(list(range(5)), lambda items: True, allow_empty=True) == []
    assert ddmin(list(range(5)), lambda items: 4 in items) == [4]


def test_a_subtrace_numbers_its_users_and_conversations_anew():
    trace = generate(load_scenario().traffic, 3)
    ops = np.flatnonzero(trace.kind == DELIVER)[:5]
    small = subtrace(trace, ops)
    small.check("test")
    assert len(small.t) == 5 and np.array_equal(small.t, trace.t[ops])
    assert small.conversations == len(np.unique(trace.conv[ops]))
    assert small.users == len(np.unique(np.concatenate([trace.user[ops], *[
        trace.conv_members[trace.conv_offsets[c]:trace.conv_offsets[c + 1]] for c in np.unique(trace.conv[ops])]])))
    assert np.array_equal(small.message, np.arange(5))
    # Only the members asked for, never fewer than two.
    fewer = subtrace(trace, ops, lambda conv, everyone: everyone[:1])
    assert fewer.conv_members.size == small.conv_members.size
    two = subtrace(trace, ops, lambda conv, everyone: everyone[:2])
    assert np.all(np.diff(two.conv_offsets) == 2)


def load_scenario(text: str = SMALL_SCENARIO):
    return parse(Path("small.toml"), text)


def test_a_scenario_written_as_toml_reads_back_equal(tmp_path):
    for name in ("faults_failover", "cluster_mixed", "quick", "faults_client_pause"):
        scenario = load(Path(__file__).parent.parent / "scenarios" / f"{name}.toml")
        scenario = dataclasses.replace(scenario, fault_rates=())
        path = tmp_path / f"{name}.toml"
        path.write_text(scenario.to_toml("a header\nof two lines"))
        again = load(path)
        assert dataclasses.replace(again, path=scenario.path, sha256=scenario.sha256) == scenario


@pytest.fixture(scope="module")
def shrunk_failover(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shrink")
    (folder / "failover.toml").write_text(SHORT_FAILOVER)
    assert main(["shrink", str(folder / "failover.toml"), "--strategy", "lua", "-q",
                 "--out", str(folder / "out")]) == 0
    return folder


def test_lua_under_failover_shrinks_to_a_lost_acknowledged_write(shrunk_failover, capsys):
    out = shrunk_failover / "out"
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "shrunk-trace.npz", "shrunk.toml", "story.md"]
    scenario = load(out / "shrunk.toml")
    assert len(scenario.faults) == 1 and scenario.faults[0].kind == "failover"
    story = (out / "story.md").read_text()
    assert "cause: lost_on_failover" in story
    # The reproduction is what its files hold: run as a user runs it, the counters drift over the truth.
    capsys.readouterr()
    assert main(["run", str(out / "shrunk.toml"), "--trace", str(out / "shrunk-trace.npz"), "-q",
                 "--out", str(shrunk_failover / "again")]) == 0
    results = json.loads((shrunk_failover / "again" / "results.json").read_text())
    run = results["runs"][0]
    assert run["drift"]["overcount"] + run["drift"]["total_over"] > 0
    assert run["drift_by_cause"]["abs_drift_sum"]["lost_on_failover"] > 0
    assert results["trace"]["operations"] <= 12


def test_an_interrupted_shrink_keeps_the_smallest_reproduction_found(tmp_path):
    scenario = parse(tmp_path / "failover.toml", SHORT_FAILOVER)
    trace = generate(scenario.traffic, scenario.seed)
    schedule = schedule_for(scenario, trace)

    smaller = []

    def interrupt(shrinker: Shrinker) -> None:
        """Ctrl-C at the candidate after the first smaller reproduction."""
        if smaller:
            raise KeyboardInterrupt
        if len(shrinker.best.trace.t) < len(trace.t):
            smaller.append(len(shrinker.best.trace.t))

    shrunk = shrink(backends.get(backends.SIMULATION), scenario, trace, "lua", schedule, progress=interrupt)
    assert shrunk.interrupted and len(shrunk.best.trace.t) == smaller[0] < len(trace.t)
    shrinker = Shrinker(backends.get(backends.SIMULATION), scenario, "lua", shrunk.anomaly, shrunk.cause)
    assert shrinker.shows(shrunk.best)


def test_a_run_without_the_anomaly_says_so_and_exits_1(tmp_path, capsys):
    (tmp_path / "quiet.toml").write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 300"))
    assert main(["shrink", str(tmp_path / "quiet.toml"), "--strategy", "lua", "-q",
                 "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lua shows no anomaly on" in err and "nothing to shrink" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, expected", [
    (["--strategy", "nope"], "--strategy nope: unknown strategy; allowed: naive,"),
    (["--strategy", "lua", "--anomaly", "sideways"],
     "--anomaly sideways: unknown anomaly; allowed: inconsistent, over, under, wrong_badge"),
])
def test_bad_input_is_one_line(tmp_path, capsys, arguments, expected):
    (tmp_path / "s.toml").write_text(SMALL_SCENARIO)
    assert main(["shrink", str(tmp_path / "s.toml"), *arguments, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_the_report_offers_the_shrink_and_shows_the_shrunk_story(shrunk_failover, tmp_path):
    assert main(["run", str(shrunk_failover / "failover.toml"), "--strategies", "lua", "-q",
                 "--out", str(shrunk_failover / "whole")]) == 0
    assert main(["report", str(shrunk_failover / "whole"), str(shrunk_failover / "out"),
                 "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"`countdrift shrink {shrunk_failover / 'failover.toml'} --strategy lua --seed 11`" in summary
    assert "how lua counted too many: user 0, faults_failover-shrunk" in summary
    assert "the story of its worst user" not in summary
    # --explain: the story of the worst user of each strategy that drifted, beside it.
    assert main(["report", str(shrunk_failover / "whole"), "--explain", "--out", str(tmp_path / "told")]) == 0
    told = (tmp_path / "told" / "summary.md").read_text()
    assert "the story of its worst user (countdrift explain" in told
    assert "how lua counted too many: user 166, faults_failover (seed 11, sim)" in told


def test_an_anomaly_the_run_does_not_show_is_named(shrunk_failover, capsys):
    assert main(["shrink", str(shrunk_failover / "failover.toml"), "--strategy", "lua", "--anomaly", "inconsistent",
                 "-q", "--out", str(shrunk_failover / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("countdrift: lua shows no inconsistent anomaly on faults_failover with seed 11 (it shows over, "
                   "under, wrong_badge): nothing to shrink")
    assert not (shrunk_failover / "none").exists()


def test_shrink_never_removes_or_replaces_a_file_it_did_not_write(shrunk_failover, tmp_path, capsys):
    scenario = str(shrunk_failover / "failover.toml")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    assert main(["shrink", scenario, "--strategy", "lua", "-q", "--out", str(out)]) == 2
    assert "holds files countdrift did not write" in capsys.readouterr().err
    (out / "story.md").write_text("the user's story")
    assert main(["shrink", scenario, "--strategy", "lua", "-q", "--out", str(out), "--force"]) == 2
    assert "story.md exist(s) there and `countdrift shrink` did not write them" in capsys.readouterr().err
    (out / "story.md").unlink()
    assert main(["shrink", scenario, "--strategy", "lua", "-q", "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "shrunk.toml").is_file() and (out / "story.md").is_file()
