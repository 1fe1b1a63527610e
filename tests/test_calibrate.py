"""`countdrift calibrate`'s driver section: what the redis backend's own
driver costs, for the simulation to model it."""
from __future__ import annotations

import pytest

from sim.backends.real.calibrate import DRIVER_TRAFFIC, driver_toml, measure_driver, idle_costs, measure_ping
from sim.scenario import DRIVER_KEYS, load_calibration


def test_one_clients_ping_splits_into_loaded_cpu_waking_up_and_the_loopback():
    ping = {"wall_us": 60.0, "driver_cpu_us": 30.0, "server_cpu_us": 20.0}
    driver = {"request_us": 15.0, "command_us": 1.0}
    server = {"request_us": 7.0, "command_us": 0.5}
    idle = idle_costs(ping, driver, server)
    assert idle == {"rtt_us": 10.0, "wake_us": 14.0, "server_wake_us": 12.5}
    # the model charges one client's PING all of its wall time: loaded CPU, waking up, the loopback
    assert idle["rtt_us"] + idle["wake_us"] + idle["server_wake_us"] + 16.0 + 7.5 == ping["wall_us"]
    # a side that costs no more idle than under load has nothing to wake
    assert idle_costs({**ping, "wall_us": 40.0, "driver_cpu_us": 10.0}, driver, server)["wake_us"] == 0.0


@pytest.mark.redis
def test_the_driver_calibration_fits_its_runs(tmp_path):
    """Three strategies of different mixes (naive pipelines, lua one script,
    lock two round trips) on a short trace: the fitted costs are positive
    and explain each run's CPU, and the section they write reads back."""
    traffic = DRIVER_TRAFFIC.replace("messages = 20000", "messages = 3000")
    driver = measure_driver(traffic, ("naive", "lua", "lock"))
    assert 1.0 < driver["request_us"] < 1000.0 and driver["command_us"] >= 0.0
    for name, run in driver["runs"].items():
        assert run["requests"] >= run["operations"] > 0 and run["commands"] >= run["requests"], name
        assert abs(run["fitted_cpu_s"] - run["cpu_s"]) < 0.5 * run["cpu_s"], (name, run)
    ping = measure_ping()
    assert ping["wall_us"] > ping["driver_cpu_us"] > 0
    path = tmp_path / "calibration.toml"
    path.write_text(driver_toml(ping, driver, {"request_us": 7.0, "command_us": 0.5}))
    written = load_calibration(path, "driver", DRIVER_KEYS)
    assert written["request_us"] == driver["request_us"] and all(written[key] >= 0.0 for key in DRIVER_KEYS)
