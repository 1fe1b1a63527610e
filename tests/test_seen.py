"""What users are shown: every badge a push carried and every count an
opened conversation showed, judged against the truth over the operation's
own window (sim/seen.py)."""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sim import seen
from sim.history import OK, History
from sim.runner import run_scenario
from sim.scenario import parse
from sim.seen import client_view, figures, judge_values
from sim.traffic import BADGE, DELIVER, READ, Trace, generate
from sim.truth import Memberships, truth_ranges

from conftest import SMALL_SCENARIO

ATOMIC = ("multi", "watch", "lock", "lua", "lua_repair", "derived", "idset", "lua_idempotent", "read_pointer")


def _trace(operations: list[tuple[float, int, int, int]], users: int = 2) -> Trace:
    """One conversation of every user; operations as (t, kind, user, conversation)."""
    scenario = parse(Path("tiny.toml"), SMALL_SCENARIO)
    t, kind, user, conv = (np.array(column) for column in zip(*operations))
    config = replace(scenario.traffic, users=users)
    message = np.where(kind == DELIVER, np.cumsum(kind == DELIVER) - 1, -1)
    return Trace(config, 1, np.array([0, users]), np.arange(users, dtype=np.int32), t.astype(float),
                 kind.astype(np.int8), user.astype(np.int32), conv.astype(np.int32), message.astype(np.int32))


def _history(trace: Trace, windows: list[tuple[float, float]], values: dict[int, int]) -> History:
    history = History(len(trace.t))
    for op, (invoke, complete) in enumerate(windows):
        history.record(op, invoke, complete, OK)
    for op, value in values.items():
        history.shown(op, value)
    return history


def _judged(trace: Trace, history: History) -> list[tuple[int, int, int]]:
    judged = judge_values(trace, history, Memberships(trace))
    return list(zip(judged.value.tolist(), judged.lo.tolist(), judged.hi.tolist()))


def test_a_planted_wrong_badge_is_one_wrong_badge_over_by_one():
    # User 0 sends a message to user 1, then user 1's push reads the badge.
    trace = _trace([(1.0, DELIVER, 0, 0), (2.0, BADGE, 1, -1)])
    windows = [(1.0, 1.01), (2.0, 2.01)]
    assert _judged(trace, _history(trace, windows, {1: 1})) == [(1, 1, 1)]
    history = _history(trace, windows, {1: 2})
    shown = figures(trace, history, judge_values(trace, history, Memberships(trace)), detail=False)
    assert (shown["badges"], shown["badges_wrong"], shown["badges_over"], shown["badge_error_max"]) == (1, 1, 1, 1)
    assert shown["phantom_badges"] == 0 and shown["missed_badges"] == 0


def test_a_stale_badge_is_right_while_the_window_allows_it_and_missed_once_it_does_not():
    trace = _trace([(1.0, DELIVER, 0, 0), (1.0, BADGE, 1, -1)])
    overlapping = [(1.0, 1.01), (0.995, 1.005)]     # the delivery may have landed after the read
    assert _judged(trace, _history(trace, overlapping, {1: 0})) == [(0, 0, 1)]
    after = [(1.0, 1.01), (1.02, 1.03)]             # the delivery had surely landed
    history = _history(trace, after, {1: 0})
    assert _judged(trace, history) == [(0, 1, 1)]
    shown = figures(trace, history, judge_values(trace, history, Memberships(trace)), detail=False)
    assert shown["missed_badges"] == shown["badges_under"] == 1


def test_a_badge_with_nothing_unread_is_a_phantom():
    trace = _trace([(1.0, DELIVER, 0, 0), (2.0, READ, 1, 0), (3.0, BADGE, 1, -1)])
    history = _history(trace, [(1.0, 1.01), (2.0, 2.01), (3.0, 3.01)], {1: 1, 2: 1})
    judged = _judged(trace, history)
    assert judged == [(1, 1, 1), (1, 0, 0)], "the open showed the one message; the badge after it nothing"
    shown = figures(trace, history, judge_values(trace, history, Memberships(trace)), detail=False)
    assert (shown["phantom_badges"], shown["opens_wrong"]) == (1, 0)


def test_an_opened_count_is_judged_without_its_own_read():
    trace = _trace([(1.0, DELIVER, 0, 0), (1.0, DELIVER, 0, 0), (2.0, READ, 1, 0)])
    history = _history(trace, [(1.0, 1.01), (1.0, 1.01), (2.0, 2.01)], {2: 2})
    assert _judged(trace, history) == [(2, 2, 2)]


def _random_history(trace: Trace, rng: np.random.Generator, width: float) -> History:
    """A real server's history: no moment of effect known, some requests timed out."""
    n = len(trace.t)
    history = History(n)
    history.invoke[:] = trace.t + rng.uniform(0, 0.001, n)
    history.complete[:] = history.invoke + rng.exponential(width, n)
    history.outcome[:] = OK
    history.timed_out[:] = rng.random(n) < 0.05
    shown = trace.kind != DELIVER
    history.value[shown] = rng.integers(0, 4, int(shown.sum()))
    return history


def _one_by_one(trace: Trace, history: History, pairs: Memberships, op: int) -> tuple[int, int]:
    """The truth over one operation's window, by truth_ranges."""
    since = history.invoke[op]
    at = np.inf if history.timed_out[op] else history.complete[op]
    if trace.kind[op] == READ:   # without its own read
        history = copy.deepcopy(history)
        history.invoke[op] = history.complete[op] = np.nan
        truth = truth_ranges(trace, history, pairs, at=at, since=since)
        pair = pairs.of_operations()[op]
        return (int(truth.lo[pair]), int(truth.hi[pair])) if pair >= 0 else (0, 0)
    truth = truth_ranges(trace, history, pairs, at=at, since=since)
    return int(truth.user_lo[trace.user[op]]), int(truth.user_hi[trace.user[op]])


@pytest.mark.parametrize("seed, width", [(1, 0.001), (2, 0.02), (3, 0.3)])
def test_every_operation_is_judged_as_truth_ranges_judges_its_window(seed, width):
    """The judge computes every window at once; truth_ranges, one at a time, says the same."""
    scenario = parse(Path("small.toml"), SMALL_SCENARIO.replace("messages = 3000", "messages = 300"))
    trace = generate(scenario.traffic, seed)
    rng = np.random.default_rng(seed)
    history = _random_history(trace, rng, width)
    pairs = Memberships(trace)
    judged = judge_values(trace, history, pairs, exact=False)
    assert len(judged.op) == int((trace.kind != DELIVER).sum())
    for i in rng.choice(len(judged.op), size=60, replace=False):
        assert (judged.lo[i], judged.hi[i]) == _one_by_one(trace, history, pairs, int(judged.op[i])), judged.op[i]


def _small(seed: int, **changes) -> str:
    text = SMALL_SCENARIO.replace("seed = 7", f"seed = {seed}")
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("seed", [1, 2, 3, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(4, 21))])
def test_no_atomic_strategy_shows_a_wrong_badge_or_count_without_faults(seed, tmp_path):
    """3 seeds in CI, 20 under -m slow."""
    scenario = parse(tmp_path / "small.toml", _small(seed))
    results = run_scenario(scenario, strategies=("naive", *ATOMIC), explain=False)
    shown = {run["strategy"]: run["seen"] for run in results["runs"]}
    for strategy in ATOMIC:
        assert shown[strategy]["badges"] > 100 and shown[strategy]["opens"] > 100, strategy
        assert shown[strategy]["badges_wrong"] == shown[strategy]["opens_wrong"] == 0, (strategy, shown[strategy])
    assert shown["naive"]["badges"] == shown["lua"]["badges"]
    assert shown["naive"]["badges_wrong"] > 0, "naive's race between its two writes reaches pushes"


def test_fidelity_compares_what_users_saw_by_class_and_size():
    from sim.experiments.fidelity import SIZE_FLOOR, compare_shown, seen_class

    def run(over: int = 0, under: int = 0, opens: int = 0) -> dict:
        return {"seen": {"badges_wrong": over + under, "badges_over": over, "badges_under": under,
                         "opens_wrong": opens}}

    assert seen_class(None) == "not judged" and seen_class(run(opens=1)["seen"]) == "opens wrong"
    assert compare_shown(run(), run()) is None
    assert compare_shown(run(), run(over=2, opens=1)) is None          # a few: noise
    assert compare_shown(run(), run(over=5)) == "class: none vs badges wrong"
    assert compare_shown(run(opens=30), run(under=40)) == "class: opens wrong vs badges wrong"
    assert compare_shown(run(over=30), run(under=40)) is None   # the direction is a figure, not the class
    assert compare_shown(run(over=SIZE_FLOOR + 1), run(over=3 * (SIZE_FLOOR + 1))).startswith("size")
    assert compare_shown(run(over=SIZE_FLOOR + 1), run(over=SIZE_FLOOR + 5)) is None
    assert compare_shown({"seen": None}, run(over=50)) is None         # results written before judging


def test_more_wrong_badges_is_a_regression_for_compare(tmp_path, capsys):
    from sim.cli import main
    from sim.report.results import write_json

    scenario = parse(tmp_path / "small.toml", _small(1, **{"messages = 3000": "messages = 500"}))
    document = run_scenario(scenario, strategies=("naive", "lua"), explain=False)
    write_json(tmp_path / "base" / "results.json", document)
    document["runs"][1]["seen"]["phantom_badges"] += 1
    write_json(tmp_path / "worse" / "results.json", document)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "base")]) == 0
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "worse")]) == 1
    out = capsys.readouterr().out
    assert "lua" in out and "seen.phantom_badges" in out and "!!" in out


def test_an_exec_that_watch_aborted_is_no_moment_of_effect():
    """quick at seed 58: a read of watch's whose EXEC a delivery aborted
    found nothing left to clear on its second try; it was judged at the
    aborted EXEC's moment, before the read that had cleared the 25 messages
    meanwhile: two wrong opened counts in a run without faults. An aborted
    EXEC applied nothing, and is no moment of effect."""
    scenario = parse(Path(__file__).parents[1] / "scenarios" / "quick.toml",
                     (Path(__file__).parents[1] / "scenarios" / "quick.toml").read_text())
    run = run_scenario(scenario, ["watch"], generate(scenario.traffic, 58), explain=False)["runs"][0]
    assert run["retries"] > 0 and run["seen"]["opens"] > 1000
    assert run["seen"]["opens_wrong"] == run["seen"]["badges_wrong"] == 0, run["seen"]
    history = History(1)
    history.applied(0, 2.0)
    history.applied(0, np.nan)
    assert history.applied_at[0] == 2.0


def test_judging_a_part_at_a_time_finds_what_judging_at_once_does(monkeypatch):
    """The judge goes through a large run in parts (to bound its memory):
    parts of a few rows and messages give every value the same range."""
    scenario = parse(Path("small.toml"), SMALL_SCENARIO.replace("messages = 3000", "messages = 600"))
    trace = generate(scenario.traffic, 5)
    history = _random_history(trace, np.random.default_rng(5), 0.05)
    pairs = Memberships(trace)
    whole = judge_values(trace, history, pairs, exact=False)
    monkeypatch.setattr(seen, "ROWS_PER_PASS", 7)
    monkeypatch.setattr(seen, "ITEMS_PER_PASS", 5)
    parts = judge_values(trace, history, pairs, exact=False)
    assert len(whole.op) > 100
    assert np.array_equal(whole.op, parts.op)
    assert np.array_equal(whole.lo, parts.lo) and np.array_equal(whole.hi, parts.hi)
    assert (whole.hi > whole.lo).any() and (whole.lo > 0).any()    # ranges, not only zeros


def test_the_client_view_is_judged_for_a_history_that_knows_its_moments_only():
    """Fidelity judges the simulation's values from the clients' windows
    alone; a real server's history (no moments of effect) has nothing more."""
    scenario = parse(Path("small.toml"), SMALL_SCENARIO.replace("messages = 3000", "messages = 400"))
    kept: dict = {}
    run = run_scenario(scenario, ["naive"], explain=False, histories=kept)["runs"][0]
    trace = generate(scenario.traffic, scenario.seed)
    pairs = Memberships(trace)
    view = client_view(trace, kept["naive"], pairs)
    assert "seen_client_view" not in run
    assert view["badges"] == run["seen"]["badges"] and view["opens"] == run["seen"]["opens"]
    assert view["badges_wrong"] <= run["seen"]["badges_wrong"]   # wider windows: never more wrong
    real_like = copy.deepcopy(kept["naive"])
    real_like.applied_at[:] = np.nan
    assert client_view(trace, real_like, pairs) is None
