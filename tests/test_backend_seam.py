"""The seam between the engine and the backends: shared code imports no
backend, modules import no cycle, and every scheduled fault is in the
results whatever happened to it."""
from __future__ import annotations

import ast

from sim.runner import run_scenario
from sim.scenario import load, parse

from conftest import ROOT, SMALL_SCENARIO

PACKAGES = ("sim", "strategies")


def module_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports at its top level (not inside
    functions); ``from package import module`` counts as importing the module."""
    paths = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(paths)
                found |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] in PACKAGES)
        graph[name] = found
    return graph


def test_shared_code_imports_no_backend():
    for module, imported in module_imports().items():
        if module.startswith("sim.backends."):
            continue
        backend_imports = {name for name in imported if name.startswith(("sim.backends.model", "sim.backends.real"))}
        assert not backend_imports, f"{module} imports {backend_imports}: go through sim.backends.get()"


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in graph.get(module, ()):
            if other not in graph:
                continue
            if state.get(other) == 1:
                raise AssertionError(" -> ".join(path[path.index(other):] + [other]) if other in path
                                     else f"{module} -> {other}")
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


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
                           ["naive", "multi", "lock", "lua", "derived", "idset"])
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
