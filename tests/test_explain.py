"""`countdrift explain RUN_DIR`: one drifting user's story. A simulated run
is run again exactly, with each request, reply and the user's counters
after each step; its cause is the user's own share of drift attribution.
A real run's story comes from its stored history, its cause inferred; on a
failover both name the mechanism drift attribution names."""
from __future__ import annotations

from pathlib import Path

import pytest

from sim.cli import main
from sim.experiments.explain import explain
from sim.report.stored_run import load_run
from sim.report.story import format_story

from conftest import SHORT_FAILOVER


@pytest.fixture(scope="module")
def failover(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("explain")
    scenario = folder / "failover.toml"
    scenario.write_text(SHORT_FAILOVER)
    assert main(["run", str(scenario), "--strategies", "lua,naive", "-q", "--out", str(folder / "sim")]) == 0
    return folder


def test_a_simulated_story_is_the_run_again_step_by_step(failover):
    stored = load_run(failover / "sim", "explain")
    story = explain(stored, "lua")
    record = stored.record("lua")
    worst = record["drifted_users"][0]
    assert story.user == worst["user"] and story.drift == worst["drift"]
    assert (story.total, story.conversations_sum) == (worst["total"], worst["conversations_sum"])
    assert not [note for note in story.notes if "differs" in note]   # the run again is the stored run
    assert story.replayed and story.rows
    # Each step holds what was sent and what came back, and the counters after it.
    followed = [row for row in story.rows if row.exchanges]
    assert len(followed) == len([row for row in story.rows if row.outcome != "not run"])
    assert all(row.counters is not None and row.truth is not None for row in followed)
    # The user's shares of the causes add up to the user's drift.
    assert story.drift and sum(story.shares.values()) == story.drift
    assert story.cause == "lost_on_failover"
    assert story.cause in record["drift_by_cause"]["abs_drift_sum"]
    assert record["drift_by_cause"]["abs_drift_sum"]["lost_on_failover"] > 0


def test_the_story_prints_each_request_and_the_counters_beside_the_truth(failover, capsys):
    assert main(["explain", str(failover / "sim"), "--strategy", "lua"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("how lua ")
    assert "cause: lost_on_failover (drift attribution, this user's share" in text
    assert "-- failover strikes" in text
    assert "EVALSHA deliver unread:{u" in text
    assert "<- off" in text    # a step after which the total left the truth


def test_the_default_strategy_is_the_one_that_drifted_most(failover):
    stored = load_run(failover / "sim", "explain")
    drifts = {run["strategy"]: run["drift"]["abs_drift_sum"] for run in stored.results["runs"]}
    assert explain(stored).strategy == max(drifts, key=drifts.get)


def test_a_chosen_user_is_told_even_without_drift(failover):
    stored = load_run(failover / "sim", "explain")
    story = explain(stored, "lua", 0)
    assert story.user == 0
    assert format_story(story).splitlines()[0].startswith("how lua")


@pytest.mark.parametrize("arguments, expected", [
    (["--strategy", "watch"], "--strategy watch: not in this run; it ran lua, naive"),
    (["--user", "600"], "--user 600: not a user of this run; its users are 0 to 599"),
])
def test_bad_input_is_one_line(failover, capsys, arguments, expected):
    assert main(["explain", str(failover / "sim"), *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["explain", str(tmp_path)]) == 2
    assert "not a run's folder: it has no results.json" in capsys.readouterr().err


@pytest.mark.real
def test_a_real_story_infers_the_cause_attribution_names(failover, capsys):
    real = failover / "real"
    assert main(["run", str(failover / "failover.toml"), "--backend", "redis", "--strategies", "lua", "-q",
                 "--out", str(real)]) == 0
    stored = load_run(real, "explain")
    if not stored.record("lua")["drifted_users"]:
        pytest.skip("this real failover lost no acknowledged write (real timing varies)")
    story = explain(stored)
    assert not story.replayed and story.notes
    assert story.cause == "lost_on_failover" == explain(load_run(failover / "sim", "explain"), "lua").cause
    assert all(row.exchanges is None for row in story.rows)
    assert main(["explain", str(real)]) == 0
    assert "cause: lost_on_failover (inferred)" in capsys.readouterr().out
