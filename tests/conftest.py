from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL_SCENARIO = """
name = "small"
seed = 7

[traffic]
users = 300
messages = 3000
message_rate = 1500.0
groups = 20
max_group_size = 60
include_max_group = true
read_probability = 0.9
read_delay_mean_s = 0.2
badge_probability = 0.3

[clients]
count = 16

[run]
timeline_points = 5
"""


@pytest.fixture
def small_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCENARIO)
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of our own for the session, stopped by its PID at the end."""
    from sim.backends.real.processes import RedisServer

    server = RedisServer("test", tmp_path_factory.mktemp("redis"), {"appendonly": "no"})
    server.start()
    yield server
    server.stop()
