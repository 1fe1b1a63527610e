"""A team's own strategy, from a folder outside the repository: written by
`countdrift new-strategy`, held by `check-strategy`, named by a scenario or
--strategy-file, carried to a sweep's workers; and a broken one ends the run
in one line that names its file and line, with nothing written."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sim.cli import main
from strategies import STRATEGIES

from conftest import SMALL_SCENARIO


@pytest.fixture
def own(tmp_path):
    """A skeleton written into a folder of its own; the registry as it was, afterwards."""
    from sim import strategy_code as sources

    before, origins = dict(STRATEGIES), dict(sources._FROM)
    folder = tmp_path / "counters"
    assert main(["new-strategy", "my_counter", "--out", str(folder)]) == 0
    yield folder
    STRATEGIES.clear()
    STRATEGIES.update(before)
    sources._FROM.clear()
    sources._FROM.update(origins)


def scenario_file(folder: Path, extra: str = "") -> Path:
    path = folder / "small.toml"
    path.write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 600") + extra)
    return path


def test_new_strategy_writes_a_skeleton_that_passes_the_simulated_checks_as_it_is(own, capsys):
    assert sorted(path.name for path in own.iterdir()) == ["my_counter.py", "my_counter_deliver.lua",
                                                          "my_counter_read.lua", "test_my_counter.py"]
    assert main(["check-strategy", str(own / "my_counter.py"), "--seeds", "2", "--sim-only"]) == 0
    out = capsys.readouterr().out
    assert out.count("pass ") == 4 and "every check passed" in out, out


def test_a_copy_without_its_second_write_fails_check_strategy_naming_the_check(own, capsys):
    lua = own / "my_counter_deliver.lua"
    lua.write_text(lua.read_text().replace('return redis.call("INCRBY", KEYS[2], 1)', "return 1"))
    assert main(["check-strategy", str(own / "my_counter.py"), "--seeds", "2", "--sim-only"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  exact without faults: seed 1:" in out and "total_under" in out, out
    assert "1 check(s) failed" in out


def test_check_strategy_compares_with_redis_server(own, capsys):
    pytest.importorskip("redis")
    assert main(["check-strategy", str(own / "my_counter.py"), "--seeds", "1"]) == 0
    assert "pass  the same on redis-server: 12 steps" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["lua", "async_total", "read_pointer", "write_behind", "lock_fenced"])
def test_built_in_strategies_pass_the_simulated_checks(name, capsys):
    assert main(["check-strategy", name, "--seeds", "2", "--sim-only"]) == 0, capsys.readouterr().out


def test_a_strategy_that_spans_slots_fails_that_check(capsys):
    from strategies.lua import Lua

    class Untagged(Lua):
        name = "untagged_lua"
        summary = "lua with its total outside the user's slot"

        def __init__(self, **options):
            super().__init__(**{"untagged_total": True, **options})

    STRATEGIES["untagged_lua"] = Untagged
    try:
        assert main(["check-strategy", "untagged_lua", "--seeds", "1", "--sim-only"]) == 1
    finally:
        del STRATEGIES["untagged_lua"]
    assert "FAIL  one Cluster slot per user: script" in capsys.readouterr().out


def test_a_scenario_names_a_strategy_file_relative_to_itself_and_runs_it(own, tmp_path, capsys):
    scenario = scenario_file(tmp_path, '\n[strategy_code.my_counter]\npath = "counters/my_counter.py"\n')
    text = scenario.read_text().replace('name = "small"', 'name = "small"\nstrategies = ["lua", "my_counter"]')
    scenario.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out), "-q"]) == 0
    import json

    runs = {run["strategy"]: run for run in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["my_counter"]["drift"]["abs_drift_sum"] == 0 and runs["my_counter"]["seen"]["badges_wrong"] == 0
    assert runs["my_counter"]["operations"] == runs["lua"]["operations"]
    stored = json.loads((out / "results.json").read_text())["scenario"]["strategy_code"]
    assert stored == {"my_counter": {"path": str((own / "my_counter.py").resolve())}}
    # explain reads the stored run back, and loads the strategy from where the run found it
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0


def test_strategy_file_on_the_command_line(own, tmp_path):
    scenario = scenario_file(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--strategy-file", str(own / "my_counter.py"), "--strategies", "my_counter",
                 "--out", str(out), "-q"]) == 0
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("table, message", [
    ('path = "nowhere.py"', "not found"),
    ('module = "no.such.module"', "cannot be imported"),
    ('path = "counters/my_counter.py"\nmodule = "x"', "must be a table of one key"),
    ('file = "counters/my_counter.py"', "must be a table of one key"),
])
def test_a_bad_strategy_code_table_is_one_line(own, tmp_path, capsys, table, message):
    scenario = scenario_file(tmp_path, f"\n[strategy_code.my_counter]\n{table}\n")
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strategy_code.my_counter" in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_table_named_otherwise_than_its_strategy_is_refused(own, tmp_path, capsys):
    scenario = scenario_file(tmp_path, '\n[strategy_code.mine]\npath = "counters/my_counter.py"\n')
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "defines strategy 'my_counter', not 'mine'" in capsys.readouterr().err


def test_a_name_taken_by_a_built_in_strategy_is_refused(own, capsys):
    code = own / "my_counter.py"
    code.write_text(code.read_text().replace('name = "my_counter"', 'name = "lua"'))
    assert main(["list", "--strategy-file", str(code)]) == 2
    assert "strategy name 'lua' is a built-in strategy's" in capsys.readouterr().err


BROKEN = {   # what is changed in the skeleton (file, [(old, new)]), and what the line says
    "syntax error": ("my_counter.py", [("    def deliver(self, message", "    def deliver(self, message,,")],
                     "SyntaxError"),
    "exception in the generator": ("my_counter.py", [("        field = str(conversation)\n",
                                                      "        field = str(conversation)\n        1 / 0\n")],
                                   "raised ZeroDivisionError"),
    "Lua error": ("my_counter_deliver.lua", [('redis.call("HINCRBY", KEYS[1], ARGV[1], 1)',
                                              'redis.call("HINCRBY", KEYS[1], ARGV[1], 1)\nlocal nothing = nil\n'
                                              'nothing()')],
                  "got an error from its Lua: ERR user_script:5:"),
    "wrong yield": ("my_counter.py", [("        count = yield Script(", "        count = yield [Script("),
                                      ("(str(conversation),))\n", "(str(conversation),))]\n")],
                    "yielded list"),
    "Lua that does not compile": ("my_counter_read.lua", [("local count", "local = count")], "does not compile"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_strategy_ends_the_run_in_one_line_naming_the_place(own, tmp_path, capsys, kind):
    file, changes, expected = BROKEN[kind]
    path = own / file
    text = path.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    scenario = scenario_file(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--strategy-file", str(own / "my_counter.py"), "--strategies", "my_counter",
                 "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert str(path.resolve()) in err[0], err
    assert not out.exists()


def test_new_strategy_refuses_a_bad_name_and_never_replaces_a_file(tmp_path, capsys):
    (tmp_path / "mine.py").write_text("# the user's own\n")
    assert main(["new-strategy", "mine", "--out", str(tmp_path)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (tmp_path / "mine.py").read_text() == "# the user's own\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.py"]
    for bad in ("Mine", "my-counter", "lua", "class"):
        assert main(["new-strategy", bad, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_the_strategy_travels_with_a_sweeps_task(own, tmp_path):
    """A task pickled on the client runs in another process where neither
    the file nor its Lua exists any more: the class went by value."""
    from sim.experiments.sweep import plan_tasks
    from sim.scenario import load

    scenario = load(scenario_file(tmp_path, '\n[strategy_code.my_counter]\npath = "counters/my_counter.py"\n'))
    task, = plan_tasks([scenario], lambda _: [3], lambda _: ("my_counter",), "sim")
    import cloudpickle

    blob = tmp_path / "task.pickle"
    blob.write_bytes(cloudpickle.dumps(task))
    for path in own.iterdir():
        path.unlink()
    own.rmdir()
    run = textwrap.dedent(f"""
        import pickle, sys
        from sim.experiments.sweep import run_task
        task = pickle.loads(open({str(blob)!r}, "rb").read())
        run = run_task(task)["runs"][0]
        print(run["strategy"], run["drift"]["abs_drift_sum"], run["operations"])
    """)
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, drift, operations = done.stdout.split()
    assert name == "my_counter" and drift == "0" and int(operations) > 0
    assert pickle.loads(blob.read_bytes()).strategy == "my_counter"


def test_an_installed_package_registers_strategies_by_entry_point(own, tmp_path):
    site = tmp_path / "site"
    package = site / "team_counters"
    package.mkdir(parents=True)
    for path in own.iterdir():
        (package / path.name).write_text(path.read_text())
    (package / "__init__.py").write_text("")
    info = site / "team_counters-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: team-counters\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[countdrift.strategies]\nmy_counter = team_counters.my_counter\n")
    done = subprocess.run([sys.executable, "-m", "sim.cli", "list"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert "my_counter" in done.stdout and "entry point team_counters.my_counter" in done.stdout


def test_a_strategy_file_must_be_python_and_name_each_strategy_once(own, tmp_path, capsys):
    text = tmp_path / "counter.txt"
    text.write_text((own / "my_counter.py").read_text())
    assert main(["list", "--strategy-file", str(text)]) == 2
    assert "not a Python file (.py)" in capsys.readouterr().err
    code = own / "my_counter.py"
    code.write_text(code.read_text() + "\n\nclass Again(MyCounter):\n    name = \"my_counter\"\n")
    assert main(["list", "--strategy-file", str(code)]) == 2
    assert "two strategies are named 'my_counter'" in capsys.readouterr().err
    assert "my_counter" not in STRATEGIES


def test_a_strategy_whose_checker_read_raises_fails_that_check_in_a_verdict(own, capsys):
    code = own / "my_counter.py"
    code.write_text(code.read_text() + "\n    def counters(self, user):\n        yield ('GET', 'x')\n"
                                       "        return {}[1]\n")
    assert main(["check-strategy", str(code), "--seeds", "1", "--sim-only"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  exact without faults: " in out and "KeyError" in out and str(code.resolve()) in out, out
    assert "FAIL  one Cluster slot per user: " in out


def test_new_strategy_refuses_a_name_whose_class_the_skeleton_imports(tmp_path, capsys):
    assert main(["new-strategy", "script", "--out", str(tmp_path / "x")]) == 2
    assert "would name its class Script" in capsys.readouterr().err and not (tmp_path / "x").exists()
