"""The strategies that need a background worker (write_behind's flusher,
async_total's consumers): their keys by hand, the worker's drain and its
crashes in whole runs, on the simulated backend (tests/test_differential.py
holds them to redis-server)."""
from __future__ import annotations

import pytest
from test_strategies import served

from sim.commands import run_now
from sim.runner import run_scenario
from sim.scenario import parse
from strategies import make_strategy
from strategies.base import StrategyOptionError

from conftest import ROOT

BACKGROUND = ("write_behind", "async_total")


def in_processes(name: str, processes: int = 2, **options):
    """The strategy, its view in each application process, its jobs, a server."""
    strategy = make_strategy(name, **options)
    strategy.prepare([[]] * 7 + [[0, 1, 2], [0, 1]], 3)
    views = [strategy.in_process(process, processes) for process in range(processes)]
    jobs = [job for view in {id(view): view for view in views}.values() for job in view.jobs()]
    server, execute = served(strategy)
    return strategy, views, jobs, server, execute


def test_write_behind_in_the_app_buffers_per_owner_and_flushes_combined():
    strategy, views, jobs, server, execute = in_processes("write_behind", buffer_in="app")
    run_now(views[0].deliver(1, 7, 0, [1, 2]), execute)   # user 1 is process 1's, user 2 process 0's
    run_now(views[0].deliver(2, 7, 0, [1]), execute)
    assert not server.store.data                            # nothing sent yet
    assert run_now(views[1].fetch_badge(1), execute) == 2   # the owner sees its buffer
    assert run_now(views[0].fetch_badge(1), execute) == 0   # another process does not
    assert [job.name for job in jobs] == ["flusher 0", "flusher 1"]
    assert run_now(jobs[1].step(), execute) == 1            # one script: (user 1, conversation 7) x 2
    assert server.store.data["unread:{u1}"] == {"7": "2"} and server.store.data["total:{u1}"] == "2"
    assert run_now(views[1].open_conversation(1, 7), execute) == 2
    assert run_now(views[0].open_conversation(2, 7), execute) == 1   # buffered only, taken from the buffer
    assert run_now(jobs[0].step(), execute) == 0            # so nothing is left to flush
    assert run_now(strategy.counters(2), execute) == ({}, 0, 0)


def test_write_behind_flushes_a_full_buffer_before_it_adds_and_a_crash_loses_the_buffer():
    strategy, views, jobs, server, execute = in_processes("write_behind", buffer_in="app", flush_max=2)
    run_now(views[0].deliver(1, 7, 0, [1]), execute)
    run_now(views[0].deliver(2, 7, 0, [1]), execute)
    assert not server.store.data
    run_now(views[0].deliver(3, 8, 0, [1]), execute)        # two waiting: flushed first, then the third added
    assert server.store.data["total:{u1}"] == "2"
    assert run_now(strategy.counters(1), execute) == ({7: 2, 8: 1}, 3, 0)   # the buffer counts, as its owner reads
    assert strategy.crashed(1) == 1
    assert run_now(strategy.counters(1), execute) == ({7: 2}, 2, 0)


def test_write_behind_in_redis_buffers_in_a_hash_that_reads_see_and_the_flusher_folds():
    strategy, views, jobs, server, execute = in_processes("write_behind", buffer_in="redis")
    assert len(jobs) == 1                                   # one flusher, whatever the processes
    run_now(views[0].deliver(1, 7, 0, [1, 2]), execute)
    run_now(views[1].deliver(2, 8, 0, [1]), execute)
    data = server.store.data
    assert data["pending:{u1}"] == {"7": "1", "8": "1"} and data["buffered"] == {"1", "2"}
    assert [run_now(view.fetch_badge(1), execute) for view in views] == [2, 2]
    assert run_now(jobs[0].step(), execute) == 2            # users 1 and 2 folded
    assert "pending:{u1}" not in data and "buffered" not in data
    assert data["unread:{u1}"] == {"7": "1", "8": "1"} and data["total:{u1}"] == "2"
    run_now(views[0].deliver(3, 8, 0, [1]), execute)
    assert run_now(views[1].open_conversation(1, 8), execute) == 2   # one counted, one pending
    assert run_now(strategy.counters(1), execute) == ({7: 1}, 1, 0)
    assert strategy.crashed(0) == 0                         # nothing in a process's memory


def test_async_total_counts_at_once_and_recounts_the_total_from_the_queue():
    strategy, views, jobs, server, execute = in_processes("async_total", consumers=2, batch=2)
    assert [job.name for job in jobs] == ["consumer 0", "consumer 1"]
    run_now(strategy.deliver(1, 7, 0, [1, 2]), execute)
    run_now(strategy.deliver(2, 8, 0, [1]), execute)
    assert server.store.data["unread:{u1}"] == {"7": "1", "8": "1"}
    assert run_now(strategy.fetch_badge(1), execute) == 0   # the total waits for a consumer
    assert run_now(strategy.counters(1), execute) == ({7: 1, 8: 1}, 0, 0)   # inconsistent until then
    assert run_now(jobs[0].step(), execute) == 2            # a batch of two entries: users 1 and 2
    assert run_now(jobs[1].step(), execute) == 1
    assert run_now(jobs[0].step(), execute) == 0
    assert run_now(strategy.fetch_badge(1), execute) == 2
    assert run_now(strategy.open_conversation(1, 7), execute) == 1
    assert run_now(strategy.fetch_badge(1), execute) == 2   # stale again, until the recount
    run_now(jobs[1].step(), execute)
    assert run_now(strategy.counters(1), execute) == ({8: 1}, 1, 0)
    assert server.store.execute(("XLEN", "recount")) == 0   # acknowledged entries are deleted
    assert server.store.execute(("XPENDING", "recount", "totals"))[0] == 0


def test_async_total_claims_what_a_dead_consumer_left_pending():
    strategy, views, jobs, server, execute = in_processes("async_total", consumers=2, claim_idle_ms=500.0)
    run_now(strategy.deliver(1, 7, 0, [1]), execute)
    step = jobs[0].step()
    run_now_until_pipeline = next(step)                     # XGROUP CREATE
    execute(run_now_until_pipeline)
    read = step.send("OK")                                  # XAUTOCLAIM + XREADGROUP
    execute(read)                                           # consumer 0 read the entry and died
    step.close()
    assert run_now(jobs[1].step(), execute) == 0            # not idle long enough to claim
    server.store.now += 0.6
    assert run_now(jobs[1].step(), execute) == 1            # claimed, recounted, acknowledged
    assert run_now(strategy.fetch_badge(1), execute) == 1


@pytest.mark.parametrize("name, option, value, allowed", [
    ("write_behind", "flush_ms", 0.0, "between 0.1 and"),
    ("write_behind", "flush_max", 0, "between 1 and"),
    ("write_behind", "buffer_in", "disk", "one of app, redis"),
    ("async_total", "consumers", 0, "between 1 and 64"),
    ("async_total", "batch", 2.5, "must be int"),
])
def test_background_options_out_of_bounds_or_of_the_wrong_type_are_refused(name, option, value, allowed):
    with pytest.raises(StrategyOptionError, match=f"option '{option}' of strategy '{name}' (must be )?{allowed}"):
        make_strategy(name, **{option: value})


BACKGROUND_SCENARIO = """
name = "background"
seed = {seed}
strategies = ["write_behind", "async_total"]

[traffic]
users = 300
messages = 2500
message_rate = 1500.0
groups = 20
max_group_size = 60
read_probability = 0.9
read_delay_mean_s = 0.2
badge_probability = 0.3

[clients]
count = 8
route = "by_user"

[strategy_options.write_behind]
buffer_in = "app"
flush_ms = 20.0

[run]
timeline_points = 5
{faults}
"""


def background_scenario(seed: int = 3, faults: str = "", **replace: str):
    text = BACKGROUND_SCENARIO.format(seed=seed, faults=faults)
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse(ROOT / "scenarios" / "background.toml", text)


def by_strategy(results: dict) -> dict:
    return {run["strategy"]: run for run in results["runs"]}


def test_without_faults_the_drained_state_is_exact_and_a_queue_total_shows_stale_badges():
    runs = by_strategy(run_scenario(background_scenario(), explain=False))
    for name in BACKGROUND:
        assert runs[name]["drift"]["abs_drift_sum"] == 0, name
        assert runs[name]["workers"]["failed_passes"] == 0
    assert runs["write_behind"]["seen"]["badges_wrong"] == 0    # every read reaches its user's buffer
    assert runs["write_behind"]["workers"]["count"] == 8        # a flusher per process
    assert runs["async_total"]["seen"]["badges_under"] > 0      # pushes carry a total still to be recounted
    assert runs["async_total"]["workers"]["items"] > 0


@pytest.mark.parametrize("seeds", [range(1, 4), pytest.param(range(4, 21), marks=pytest.mark.slow)],
                         ids=["seeds 1-3", "seeds 4-20"])
def test_an_app_buffer_read_by_its_own_process_shows_no_wrong_value_without_faults(seeds):
    for seed in seeds:
        run = by_strategy(run_scenario(background_scenario(seed), ["write_behind"], explain=False))["write_behind"]
        assert run["drift"]["abs_drift_sum"] == 0 and run["drift"]["users_inconsistent"] == 0, seed
        assert run["seen"]["badges_wrong"] == run["seen"]["opens_wrong"] == 0, (seed, run["seen"])
        assert run["seen"]["badges"] > 100 and run["seen"]["opens"] > 100


def test_an_app_buffer_is_missed_by_reads_in_other_processes():
    runs = by_strategy(run_scenario(background_scenario(**{'route = "by_user"': 'route = "round_robin"'}),
                                    ["write_behind"], explain=False))
    assert runs["write_behind"]["drift"]["overcount"] > 0   # flushed after the read that should have cleared it
    assert runs["write_behind"]["seen"]["badges_wrong"] > 0


WORKER_CRASH = """
[[faults]]
kind = "worker_crash"
at = 0.8
duration = 0.3
params = { workers = 8 }
"""


def test_a_worker_crash_loses_an_app_buffer_and_leaves_a_queue_pending_until_claimed():
    # Few reads, so that what a crash lost is still unread at the end.
    runs = by_strategy(run_scenario(background_scenario(faults=WORKER_CRASH, **{
        "read_probability = 0.9": "read_probability = 0.3"}), explain=True))
    buffered, queued = runs["write_behind"], runs["async_total"]
    assert buffered["workers"]["crashes"] == 8 and buffered["workers"]["lost_in_buffer"] > 0
    assert buffered["drift"]["undercount"] > 0
    assert buffered["seen"]["badges_under"] > 0
    assert buffered["drift_by_cause"]["abs_drift_sum"]["lost_in_buffer"] == buffered["drift"]["abs_drift_sum"]
    assert queued["workers"]["crashes"] == 1                 # one consumer: struck once
    assert queued["faults"][0]["effects"]["workers"] == [8]  # numbered after the eight clients
    assert queued["drift"]["abs_drift_sum"] == 0             # its entries were claimed (XAUTOCLAIM) and recounted


def test_a_worker_crash_on_a_strategy_without_workers_strikes_nobody():
    runs = by_strategy(run_scenario(background_scenario(faults=WORKER_CRASH), ["write_behind"], explain=False))
    assert runs["write_behind"]["faults"][0]["effects"]["workers"]
    lua = by_strategy(run_scenario(background_scenario(faults=WORKER_CRASH, **{
        'strategies = ["write_behind", "async_total"]': 'strategies = ["lua"]'}), explain=False))["lua"]
    assert lua["faults"][0]["effects"]["workers"] == [] and "workers" not in lua
    assert lua["drift"]["abs_drift_sum"] == 0


def test_a_drain_waits_for_what_no_pass_could_take_yet():
    """A queue's entries pending but not yet claimable (a rollback took
    their XACK back): the drain waits for them instead of ending."""
    from sim.client import Client, Send, Sleep
    from sim.worker import WorkerLoop, WorkerStats
    from strategies.base import Job

    queue = {"pending": 2, "claimable_at": 3}
    clock = {"now": 0.0}

    def step():
        yield ("XAUTOCLAIM",)
        if clock["now"] < queue["claimable_at"]:
            return 0
        handled, queue["pending"] = queue["pending"], 0
        return handled

    def left():
        yield ("XPENDING",)
        return queue["pending"]

    stats = WorkerStats()
    loop = WorkerLoop(lambda: clock["now"], frozenset(), stats)
    instructions = loop.run(Client(0), Job("consumer", 1.0, step, left=left), lambda: True)
    answer = None
    sent = []
    while True:
        try:
            instruction = instructions.send(answer)
        except StopIteration:
            break
        answer = None
        if type(instruction) is Sleep:
            clock["now"] += instruction.seconds
        elif type(instruction) is Send:
            sent.append(instruction.request[0])
            answer = ("reply", None, clock["now"])
    assert stats.items == 2 and queue["pending"] == 0
    assert sent == ["XAUTOCLAIM", "XPENDING"] * 3 + ["XAUTOCLAIM", "XAUTOCLAIM", "XPENDING"]
    assert stats.drained_at == 3.0
