"""Traffic from a team's own data: a trace exported to events and imported
again is the same trace and gives the same results; every malformed event
file is one line that names its row, and nothing is written; trace stats
prints what a traffic engineer checks; a scenario replays an imported trace."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sim.cli import main
from sim.events import export_events, import_events
from sim.runner import run_scenario
from sim.scenario import load, parse
from sim.traffic import ARRAYS, Trace, generate

from conftest import SMALL_SCENARIO

SMALL = SMALL_SCENARIO.replace("messages = 3000", "messages = 800")


@pytest.fixture
def trace(tmp_path):
    scenario = parse(tmp_path / "small.toml", SMALL)
    path = tmp_path / "small.npz"
    generate(scenario.traffic, scenario.seed).save(path)
    return path


def test_an_exported_trace_imported_again_is_the_same_trace_and_gives_the_same_results(trace, tmp_path, capsys):
    events, back = tmp_path / "events.csv", tmp_path / "back.npz"
    assert main(["trace", "export", str(trace), "--out", str(events)]) == 0
    members = tmp_path / "events-members.csv"
    assert members.is_file() and events.read_text().startswith("time,kind,user,conversation,recipients\n")
    assert main(["trace", "import", str(events), "--members", str(members), "--out", str(back)]) == 0
    original, imported = Trace.load(trace), Trace.load(back)
    for name in ARRAYS:
        assert np.array_equal(getattr(original, name), getattr(imported, name)), name
    assert imported.source == "events.csv"
    scenario = parse(tmp_path / "small.toml", SMALL)
    first = run_scenario(scenario, ["naive", "lua"], original, explain=False)["runs"]
    second = run_scenario(scenario, ["naive", "lua"], imported, explain=False)["runs"]
    for a, b in zip(first, second):
        assert a["drift"] == b["drift"] and a["seen"] == b["seen"] and a["operations"] == b["operations"]
    assert first[0]["drift"]["abs_drift_sum"] > 0   # naive drifts: the comparison compares something


def test_run_takes_an_imported_trace_whatever_the_scenarios_traffic(trace, tmp_path):
    events = tmp_path / "events.csv"
    export_events(Trace.load(trace), events)
    imported = tmp_path / "imported.npz"
    import_events(events, tmp_path / "events-members.csv").save(imported)
    other = tmp_path / "other.toml"
    other.write_text(SMALL.replace("users = 300", "users = 50"))
    assert main(["run", str(other), "--trace", str(imported), "--strategies", "lua", "--out",
                 str(tmp_path / "out"), "-q"]) == 0
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["runs"][0]["operations"] == len(Trace.load(trace).t)


def test_a_scenario_replays_an_imported_trace_and_refuses_keys_it_would_not_use(trace, tmp_path, capsys):
    events = tmp_path / "events.csv"
    export_events(Trace.load(trace), events)
    import_events(events, tmp_path / "events-members.csv").save(tmp_path / "mine.npz")
    scenario = tmp_path / "mine.toml"
    scenario.write_text('name = "mine"\n[traffic]\nfile = "mine.npz"\n[clients]\ncount = 8\n')
    loaded = load(scenario)
    assert loaded.traffic.file == str((tmp_path / "mine.npz").resolve())
    run = run_scenario(loaded, ["lua"], explain=False)["runs"][0]
    assert run["operations"] == len(Trace.load(trace).t) and run["drift"]["abs_drift_sum"] == 0
    scenario.write_text('name = "mine"\n[traffic]\nfile = "mine.npz"\nmessages = 10\n')
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "'traffic.messages' has no effect with 'traffic.file'" in capsys.readouterr().err


def test_trace_stats_prints_rates_peaks_and_distributions(trace, capsys):
    assert main(["trace", "stats", str(trace)]) == 0
    out = capsys.readouterr().out
    for expected in ("300 users", "deliver", "open", "badge", "peak / s", "group size (members)",
                     "conversations per user", "read delay (s)"):
        assert expected in out, (expected, out)


HEADER = "time,kind,user,conversation,recipients\n"
GOOD = HEADER + "0.0,deliver,0,0,1 2\n0.5,open,1,0,\n0.7,badge,2,,\n"
MALFORMED = {
    "a column missing": ("events.csv", "time,user,conversation,recipients\n0.0,0,0,1\n",
                         "line 1: column(s) kind missing"),
    "time out of order": ("events.csv", GOOD + "0.6,open,2,0,\n", "line 5: time 0.6 comes before"),
    "an unknown user": ("events.csv", GOOD + "0.8,badge,7,,\n", "line 5: user 7 is in no conversation"),
    "a recipient not a member": ("events.csv", GOOD + "0.9,deliver,0,0,1 5\n",
                                 "line 5: recipient 5 is not a member"),
    "a user that is not a number": ("events.csv", GOOD.replace("0.5,open,1", "0.5,open,one"),
                                    "line 3: user is 'one', not a whole number"),
    "an empty file": ("events.csv", "", "empty: no rows"),
    "a negative time": ("events.csv", HEADER + "-1,deliver,0,0,1 2\n", "line 2: time -1.0 must be"),
    "a time that is not a number": ("events.csv", HEADER + "soon,deliver,0,0,1 2\n", "line 2: time is 'soon'"),
    "an infinite time": ("events.csv", HEADER + "inf,deliver,0,0,1 2\n", "line 2: time inf must be"),
    "an unknown kind": ("events.csv", GOOD + "0.9,typing,1,0,\n", "line 5: kind 'typing' is not one of"),
    "a badge with a conversation": ("events.csv", GOOD + "0.9,badge,1,0,\n", "line 5: a badge has no conversation"),
    "a deliver without its conversation": ("events.csv", HEADER + "0.0,deliver,0,,1 2\n",
                                           "line 2: conversation is empty"),
    "a sender not a member": ("events.csv", GOOD + "0.9,deliver,3,0,1 2\n", "line 5: sender 3 is not a member"),
    "recipients short of the members": ("events.csv", GOOD + "0.9,deliver,0,0,1\n",
                                        "line 5: recipients must be every member"),
    "an open by a stranger": ("events.csv", GOOD + HEADER.replace("time,kind,user,conversation,recipients\n", "")
                              + "0.9,deliver,3,1,4\n1.0,open,2,1,\n", "line 6: user 2 opens conversation 1"),
    "a gap in conversation ids": ("events.csv", HEADER + "0.0,deliver,0,1,1 2\n", "conversation 0 has 0 member(s)"),
    "JSON Lines that is not JSON": ("events.jsonl", '{"time": 0, "kind": "badge", "user": 1, "conversation": null}'
                                                    '\n{oops\n',
                                    "line 2: not JSON"),
    "a JSON line that is no object": ("events.jsonl", "[1, 2]\n", "line 1: an event is a JSON object"),
    "a JSON line without its kind": ("events.jsonl", '{"time": 0, "user": 1, "conversation": null}\n',
                                     "line 1: key(s) kind missing"),
    "a fractional user id": ("events.jsonl", '{"time": 0, "kind": "deliver", "user": 1.5, "conversation": 0, '
                                             '"recipients": [2]}\n', "line 1: user is 1.5, not a whole number"),
    "another kind of file": ("events.txt", GOOD, "name it .csv, .jsonl or .parquet"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_event_file_is_one_line_naming_the_row_and_nothing_is_written(case, tmp_path, capsys):
    name, text, expected = MALFORMED[case]
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "t.npz"
    assert main(["trace", "import", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path) in err[0], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_file_that_is_not_utf8_names_its_line(tmp_path, capsys):
    path = tmp_path / "events.csv"
    path.write_bytes(GOOD.encode() + b"0.9,badge,\xff\xfe,,\n")
    assert main(["trace", "import", str(path), "--out", str(tmp_path / "t.npz")]) == 2
    assert "line 5: not UTF-8 text" in capsys.readouterr().err


def test_a_membership_table_keeps_silent_conversations_and_checks_its_rows(tmp_path, capsys):
    events, members = tmp_path / "events.csv", tmp_path / "members.csv"
    events.write_text(HEADER + "0.0,deliver,0,0,\n0.4,open,1,0,\n0.5,badge,3,,\n")
    members.write_text("conversation,user\n0,0\n0,1\n1,2\n1,3\n")
    trace = import_events(events, members)
    assert trace.conversations == 2 and trace.users == 4 and trace.deliveries() == 1
    members.write_text("conversation,user\n0,0\n0,1\n0,1\n")
    assert main(["trace", "import", str(events), "--members", str(members), "--out", str(tmp_path / "t.npz")]) == 2
    assert "line 4: user 1 is listed twice in conversation 0" in capsys.readouterr().err


def test_parquet_events_import_as_their_csv_does(tmp_path):
    parquet = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    csv_path = tmp_path / "events.csv"
    csv_path.write_text(GOOD)
    table = pyarrow.table({"time": [0.0, 0.5, 0.7], "kind": ["deliver", "open", "badge"], "user": [0, 1, 2],
                           "conversation": [0, 0, None], "recipients": [[1, 2], [], []]})
    parquet.write_table(table, tmp_path / "events.parquet")
    a, b = import_events(csv_path), import_events(tmp_path / "events.parquet")
    for name in ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_drawn_traffic_has_bursts_and_a_daily_cycle_when_asked(tmp_path):
    from sim.report.trace_stats import trace_stats

    flat = parse(tmp_path / "flat.toml", SMALL.replace("message_rate = 1500.0", "message_rate = 200.0"))
    bursty = parse(tmp_path / "bursts.toml", SMALL.replace(
        "message_rate = 1500.0", "message_rate = 200.0\nburst_every_s = 1.0\nburst_s = 0.2\nburst_factor = 10.0"))
    daily = parse(tmp_path / "daily.toml", SMALL.replace(
        "message_rate = 1500.0", "message_rate = 200.0\ndaily_amplitude = 0.9\nday_s = 4.0"))
    flat_trace, burst_trace = generate(flat.traffic, 3), generate(bursty.traffic, 3)
    deliver = burst_trace.t[burst_trace.kind == 0]
    in_bursts = (np.mod(deliver, 1.0) < 0.2).mean()
    assert in_bursts > 0.6   # 10 x the rate for a fifth of the time: 2/2.8 of the messages
    assert trace_stats(burst_trace)["rates"]["deliver"]["peak_per_s"] > trace_stats(flat_trace)["rates"]["deliver"][
        "peak_per_s"]
    drawn = generate(daily.traffic, 3)
    times = drawn.t[drawn.kind == 0]
    phase = np.mod(times, 4.0)
    near_peak, near_trough = ((phase < 1.0) | (phase >= 3.0)).sum(), ((phase >= 1.0) & (phase < 3.0)).sum()
    assert near_peak > 2 * near_trough   # (a flat rate draws what it always drew: the baselines hold it)


def test_a_burst_that_never_ends_is_refused(tmp_path):
    from sim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="'traffic.burst_s' .* must be below 'traffic.burst_every_s'"):
        parse(tmp_path / "b.toml", SMALL.replace("message_rate = 1500.0", "burst_every_s = 1.0\nburst_s = 2.0"))


def test_a_spreadsheets_csv_reads_as_written(tmp_path, capsys):
    """A byte order mark before the header, a blank line, a quoted field over
    two lines: read, and a bad row still named by its line in the file."""
    path = tmp_path / "events.csv"
    path.write_text("\ufeff" + GOOD.replace("0.5,open,1,0,\n", "0.5,open,1,0,\n\n") + '0.8,badge,"2\n",,\n'
                    + "0.9,typing,1,0,\n", encoding="utf-8")
    assert main(["trace", "import", str(path), "--out", str(tmp_path / "t.npz")]) == 2
    assert "line 8: kind 'typing'" in capsys.readouterr().err


def test_json_lines_rows_of_badges_and_logins_need_no_conversation(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"time": 0, "kind": "deliver", "user": 0, "conversation": 0, "recipients": [1]}\n'
                    '{"time": 1, "kind": "badge", "user": 1}\n{"time": 2, "kind": "login", "user": 0}\n')
    trace = import_events(path)
    assert list(trace.kind) == [0, 2, 3] and list(trace.conv) == [0, -1, -1]


def test_recipients_that_repeat_a_user_or_name_the_sender_are_refused(tmp_path, capsys):
    for recipients in ("1 1", "0 1"):
        path = tmp_path / "events.csv"
        path.write_text(HEADER + f"0.0,deliver,0,0,{recipients}\n")
        assert main(["trace", "import", str(path), "--out", str(tmp_path / "t.npz")]) == 2
        assert "line 2: recipients name a user twice, or the sender 0" in capsys.readouterr().err


def test_a_log_of_one_to_one_chats_runs_as_a_scenarios_traffic(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text(HEADER + "0.0,deliver,0,0,1\n0.1,deliver,2,1,3\n0.2,open,1,0,\n0.3,badge,3,,\n")
    import_events(events).save(tmp_path / "chats.npz")
    scenario = tmp_path / "chats.toml"
    scenario.write_text('name = "chats"\n[traffic]\nfile = "chats.npz"\n[clients]\ncount = 2\n')
    run = run_scenario(load(scenario), ["lua"], explain=False)["runs"][0]
    assert run["operations"] == 4 and run["drift"]["abs_drift_sum"] == 0
