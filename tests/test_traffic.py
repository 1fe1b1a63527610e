"""What the trace holds beyond messages, reads and pushes: heavy users (1:1
partners drawn by a Zipf law) and logins, which show the badge."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from sim.traffic import DELIVER, LOGIN, Trace, TrafficConfig, generate

BASE = TrafficConfig(users=2000, messages=3000, message_rate=1000.0, dm_per_user=4.0, groups=10,
                     max_group_size=50)


def conversations_per_user(trace: Trace) -> np.ndarray:
    return np.bincount(trace.conv_members, minlength=trace.users)


def test_zipf_partners_make_heavy_users_and_alike_partners_do_not():
    traces = generate(BASE, 3), generate(replace(BASE, dm_partner_zipf=1.2), 3)
    alike, heavy = (conversations_per_user(trace) for trace in traces)
    assert alike.max() < 10 * np.median(alike)   # (groups add a few)
    assert heavy.max() > 100 * np.median(heavy) and heavy.max() > 500
    one_to_one = [int((np.diff(trace.conv_offsets) == 2).sum()) for trace in traces]
    assert one_to_one[0] == one_to_one[1]   # as many 1:1 conversations, shared otherwise


def test_logins_are_drawn_at_their_rate_and_the_trace_checks_and_saves(tmp_path):
    trace = generate(replace(BASE, logins_per_s=100.0), 4)
    logins = trace.kind == LOGIN
    span = float(trace.t[trace.kind == DELIVER][-1])   # logins come while messages do
    assert abs(logins.sum() - 100.0 * span) < 5 * np.sqrt(100.0 * span)
    assert np.all(trace.conv[logins] == -1) and np.all(trace.message[logins] == -1)
    assert trace.summary()["logins"] == logins.sum()
    trace.save(tmp_path / "trace.npz")
    assert Trace.load(tmp_path / "trace.npz").sha256() == trace.sha256()


def test_without_logins_or_zipf_partners_a_trace_is_drawn_as_before():
    """The new draws take no randomness when off: old seeds give old traces."""
    trace = generate(BASE, 5)
    assert not (trace.kind == LOGIN).any()
    assert trace.sha256() == generate(replace(BASE, logins_per_s=0.0, dm_partner_zipf=0.0), 5).sha256()


def test_a_queue_kept_total_is_recounted_at_login_and_shown_right(tmp_path):
    """async_total: pushes carry a total the queue has not recounted yet;
    a login recounts it in one script and shows it right."""
    from sim.backends.model.backend import simulate
    from sim.scenario import parse
    from sim.seen import judge_values
    from strategies import make_strategy

    scenario = parse(tmp_path / "login.toml", """
name = "login"
seed = 6
[traffic]
users = 300
messages = 3000
message_rate = 1500.0
groups = 10
max_group_size = 40
logins_per_s = 300.0
""")
    trace = generate(scenario.traffic, scenario.seed)
    driver, _ = simulate(scenario, trace, make_strategy("async_total"), [], timeline_points=0)
    judged = judge_values(trace, driver.history, driver.pairs)
    at_login = trace.kind[judged.op] == LOGIN
    assert at_login.sum() > 100 and np.all(judged.error[at_login] == 0)
    assert np.count_nonzero(judged.error[judged.badge & ~at_login]) > 0   # pushes: stale totals
