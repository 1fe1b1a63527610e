"""A strategy's bug is never a failed operation: the client loop catches
only what a strategy declares (GaveUp: a lock that stayed busy, WATCH that
kept aborting); anything else ends the run in one line that names the
strategy, the operation and the line."""
from __future__ import annotations

import pytest

from sim.cli import main
from strategies import STRATEGIES
from strategies.lua import Lua

from conftest import SMALL_SCENARIO


class Broken(Lua):
    name = "broken"
    summary = "lua, whose badge fetch divides by zero"

    def fetch_badge(self, user: int):
        reply = yield ("GET", self.total_key(user))
        return int(reply or 0) // 0


@pytest.fixture
def broken(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "broken", Broken)


def test_a_strategy_that_raises_ends_the_run_naming_the_strategy_the_operation_and_the_line(broken, tmp_path,
                                                                                            capsys):
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL_SCENARIO)
    assert main(["run", str(scenario), "--strategies", "broken", "--out", str(tmp_path / "out"), "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "strategy broken: fetch_badge" in lines[0] and "ZeroDivisionError" in lines[0], lines
    assert f"{__file__}:22" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_what_a_strategy_declares_is_a_failed_operation():
    from strategies.base import GaveUp
    from strategies.lock import LockNotAcquired
    from strategies.watch import RetriesExhausted

    assert issubclass(LockNotAcquired, GaveUp) and issubclass(RetriesExhausted, GaveUp)
