"""The seam between the engine and the backends: shared code imports no
backend, modules import no cycle, and every scheduled fault is in the
results whatever happened to it."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from sim.runner import run_scenario
from sim.scenario import load, parse

from conftest import ROOT, SMALL_SCENARIO

PACKAGES = ("sim", "strategies")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of import nodes under ``if TYPE_CHECKING:`` (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped |= {id(inner) for child in node.body for inner in ast.walk(child)}
    return skipped


def module_imports(top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports, at every depth (inside
    functions too: an import there runs as surely as one at the top, only
    later), but for those under ``if TYPE_CHECKING:``; ``from package import
    module`` counts as importing the module."""
    paths = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        skipped = _type_checking_only(tree)
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(paths)
                found |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES)
        graph[name] = found
    return graph


BACKENDS = ("sim.backends.model", "sim.backends.real")


def within(module: str, rooms: tuple[str, ...]) -> bool:
    return any(module == room or module.startswith(f"{room}.") for room in rooms)


def test_shared_code_imports_no_backend():
    for module, imported in module_imports().items():
        if module.startswith("sim.backends."):
            continue
        backend_imports = {name for name in imported if within(name, BACKENDS)}
        assert not backend_imports, f"{module} imports {backend_imports}: go through sim.backends.get()"


# What runs a scenario: the report's room reads documents and draws, and imports none of it.
RUNS = ("sim.runner", "sim.client", "sim.backend", "sim.nemesis", "sim.record", "sim.causes", "sim.experiments",
        *BACKENDS)


def test_each_room_imports_only_what_its_rules_allow():
    """report/ imports no backend and nothing that runs; a backend imports
    no experiment; strategies import nothing of the engine but its
    request language."""
    for module, imported in module_imports().items():
        if module.startswith("sim.report"):
            running = {name for name in imported if within(name, RUNS)}
            assert not running, f"{module} (a report) imports {running}, which run scenarios"
        if module.startswith("sim.backends."):
            experiments = {name for name in imported if within(name, ("sim.experiments",))}
            assert not experiments, f"{module} (a backend) imports the experiment(s) {experiments}"
        if module.startswith("strategies"):
            engine = {name for name in imported if within(name, ("sim",)) and name not in ("sim.commands", "sim.lua")}
            assert not engine, f"{module} (a strategy) imports {engine}"


def test_no_import_cycles():
    """At every depth: an import inside a function closes a circle as surely as one at the top."""
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if other not in graph:
                continue
            if state.get(other) == 1:
                raise AssertionError(" -> ".join(path[path.index(other):] + [other]) if other in path
                                     else f"{module} -> {other}")
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.real
def test_a_run_on_real_servers_loads_no_module_of_the_model(tmp_path):
    """At run time, not only in the source: a --backend redis run, start to
    end, never imports sim.backends.model."""
    scenario = tmp_path / "small.toml"
    scenario.write_text(SMALL_SCENARIO.replace("messages = 3000", "messages = 300"))
    program = ("import sys; from sim.cli import main; "
               f"status = main(['run', {str(scenario)!r}, '--backend', 'redis', '--strategies', 'lua', "
               f"'--out', {str(tmp_path / 'out')!r}, '-q']); "
               "print(status, *sorted(name for name in sys.modules if name.startswith('sim.')))")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    status, *loaded = done.stdout.split()[-1:] and done.stdout.strip().splitlines()[-1].split()
    assert status == "0", done.stderr
    assert "sim.backends.real" in loaded
    assert not [name for name in loaded if name.startswith("sim.backends.model")], loaded


def test_a_fault_due_after_the_run_is_recorded_as_not_applied(tmp_path):
    text = SMALL_SCENARIO + '\n[[faults]]\nkind = "server_crash"\nat = 500.0\nduration = 0.5\n'
    run = run_scenario(parse(tmp_path / "late.toml", text), ["lua"])["runs"][0]
    (fault,) = run["faults"]
    assert fault["effects"]["applied"] is False
    assert "before it struck" in fault["effects"]["reason"]
    assert run["recovery"][0]["peak_drift"] is None


def test_a_fault_still_under_way_when_the_run_ends_says_so(tmp_path):
    text = SMALL_SCENARIO + '\n[[faults]]\nkind = "partition"\nat = 1.5\nduration = 300.0\n'
    text = text.replace("[clients]\ncount = 16", "[clients]\ncount = 16\nretries = 0")
    run = run_scenario(parse(tmp_path / "long.toml", text), ["lua"])["runs"][0]
    (fault,) = run["faults"]
    assert fault["effects"]["applied"] is True and fault["effects"]["ended_at"] is None
    assert "while it lasted" in fault["effects"]["reason"]


def test_a_fault_applied_for_one_strategy_is_applied_for_all():
    """Every strategy meets the same faults: mixed faults, every strategy."""
    results = run_scenario(load(ROOT / "scenarios" / "faults_mixed.toml"),
                           ["naive", "multi", "lock", "lua", "derived", "idset"], explain=False)
    schedules = {run["strategy"]: [(fault["kind"], fault["at"], fault["effects"]["applied"])
                                   for fault in run["faults"]] for run in results["runs"]}
    first = next(iter(schedules.values()))
    assert len(first) >= 10
    for strategy, schedule in schedules.items():
        assert schedule == first, strategy
    struck = {run["strategy"]: [fault["effects"]["target"] for fault in run["faults"]
                                if fault["kind"] == "mid_script_power_loss"] for run in results["runs"]}
    for strategy, targets in struck.items():
        assert targets and "none" not in targets, (strategy, targets)


def test_no_strategy_or_backend_is_named_outside_its_room():
    """Code asks capabilities, never names: outside strategies/ and
    sim/backends/ (which hold the registries), no string in the code is a
    strategy's or a backend's name (a docstring may mention one)."""
    from sim.backends import BACKENDS
    from strategies import STRATEGIES

    names = set(STRATEGIES) | set(BACKENDS)
    found = []
    for path in sorted((ROOT / "sim").rglob("*.py")):
        if (ROOT / "sim" / "backends") in path.parents:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings]
    assert not found, found
