"""The `countdrift` command line.

Heavy modules are imported inside the commands, so that an interrupt at any
moment, start-up included, ends in the one line and the exit status of
``main`` (130), and a bad command line is refused before any of them loads.
"""
from __future__ import annotations

import os
import sys

try:   # an interrupt while these load (numpy, via the backends' registry) ends as one in a command
    import argparse
    import math
    import signal
    from pathlib import Path
    from typing import Callable

    from sim import __version__, backends
    from sim.errors import UsageError
except KeyboardInterrupt:   # this is the program's module: nothing has been written yet
    sys.stderr.write("countdrift: interrupted; nothing written\n")
    os._exit(130)


class Done:
    """What a command has written so far, for the line an interrupt prints."""

    written: str | None = None


def _strategies(option: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    from strategies import STRATEGIES

    if option is None:
        return default
    names = tuple(name.strip() for name in option.split(",") if name.strip())
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise UsageError(f"--strategies: unknown strategy {', '.join(unknown) or '(none given)'}; "
                         f"allowed: {', '.join(STRATEGIES)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--strategies: {', '.join(twice)} named twice")
    return names


def _saved_trace(args: argparse.Namespace, scenario):
    """--trace, if it was made from the scenario's traffic (and --seed, if given); else None."""
    from dataclasses import asdict

    from sim.traffic import Trace, TraceError

    if not args.trace:
        return None
    try:
        trace = Trace.load(Path(args.trace))
    except TraceError as error:
        raise UsageError(f"--trace {error}") from None
    if trace.source:   # imported from an event log: its own traffic, whatever the scenario draws
        return trace
    if trace.config != scenario.traffic:
        ours, theirs = asdict(scenario.traffic), asdict(trace.config)
        key = next(key for key in ours if ours[key] != theirs.get(key))
        raise UsageError(f"--trace {args.trace}: made from other traffic (traffic.{key} = {theirs.get(key)!r}, "
                         f"{scenario.path} says {ours[key]!r}); make it with `countdrift trace {scenario.path}`")
    if args.seed is not None and trace.seed != args.seed:
        raise UsageError(f"--trace {args.trace}: made with seed {trace.seed}, not --seed {args.seed}")
    return trace


def command_run(args: argparse.Namespace) -> int:
    from sim import budget
    from sim.report import history_file
    from sim.report.history_file import HISTORY_FILE
    from sim.report.output import OutputFolder
    from sim.report.results import write_json
    from sim.report.table import format_causes, format_faults, format_table, format_topology
    from sim.runner import peak_rss_mib, run_scenario, stderr_progress
    from sim.scenario import load, with_driver
    from sim.traffic import generate

    scenario = load(args.scenario)
    strategies = _strategies(args.strategies, scenario.strategies)
    driver = _driver_model(args, scenario, args.backend)
    if driver is not None:
        scenario = with_driver(scenario, driver)
    saved = _saved_trace(args, scenario)
    seed = saved.seed if saved else scenario.seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else Path("results") / f"{scenario.name}-s{seed}"
    folder = OutputFolder(out, "--out", "run", args.force, writes=("results.json", "trace.npz", HISTORY_FILE))
    refusal = backends.get(args.backend).refuse(scenario)
    if refusal:
        raise UsageError(f"--backend {args.backend}: {refusal}")
    if args.jobs > 1 and not backends.get(args.backend).parallel_runs:
        raise UsageError(f"--jobs: the {args.backend} backend runs one strategy at a time")
    if args.jobs > cores():
        raise UsageError(f"--jobs: at most {cores()} here (one process per core: a run is CPU-bound, and more "
                         f"processes than cores only add memory), got {args.jobs}")
    processes = min(args.jobs, len(strategies))
    if saved:
        budget.check_work(saved.work(), f"--trace {args.trace}", processes)
    else:
        budget.check(scenario.traffic, seed, str(scenario.path), processes)
    with folder:
        if not args.quiet:
            print(f"countdrift {__version__}: scenario {scenario.name} ({scenario.path}), seed {seed}, "
                  f"backend {args.backend}, strategies {', '.join(strategies)}", file=sys.stderr)
        trace = saved or generate(scenario.traffic, seed)
        histories: dict = {}
        results = run_scenario(scenario, strategies, trace, None if args.quiet else stderr_progress(), args.backend,
                               jobs=processes, histories=histories)
        trace.save(folder.partial / "trace.npz")
        results["trace"]["file"] = "trace.npz"
        history_file.save(folder.partial / HISTORY_FILE, trace, histories)
        results["history_file"] = HISTORY_FILE
        write_json(folder.partial / "results.json", results)
        folder.commit()
    Done.written = f"results in {out}"
    print(format_table(results))
    if results["runs"] and results["runs"][0]["faults"]:
        for part in (format_faults(results), format_causes(results)):
            if part:
                print(f"\n{part}")
    if format_topology(results):
        print(f"\n{format_topology(results)}")
    summary = results["trace"]
    print(f"\n{summary['messages']} messages ({summary['deliveries']} deliveries), "
          f"{summary['operations']} operations over {summary['span_s']:.1f} simulated s; "
          f"wall {results['wall_seconds']:.1f} s, peak memory {peak_rss_mib():.0f} MiB")
    print(f"results: {out / 'results.json'}")
    return 0


def command_explain(args: argparse.Namespace) -> int:
    """Print one user's story; a simulated run is run again to tell it (sim/experiments/explain.py)."""
    from sim.experiments.explain import explain
    from sim.report.stored_run import load_run
    from sim.report.story import format_story

    stored = load_run(Path(args.run), "explain")
    print(format_story(explain(stored, args.strategy, args.user)), end="")
    return 0


def command_shrink(args: argparse.Namespace) -> int:
    """Shrink one strategy's anomaly (sim/experiments/shrink.py) and write its reproduction."""
    import dataclasses
    import time

    from sim import budget
    from sim.experiments.explain import explain
    from sim.experiments.shrink import ANOMALIES, NoAnomaly, scenario_of, shown_in, shrink
    from sim.report.output import OutputFolder, write_text
    from sim.report.stored_run import StoredRun
    from sim.report.story import format_story
    from sim.runner import run_scenario, schedule_for
    from sim.scenario import load
    from sim.traffic import Trace, generate
    from strategies import STRATEGIES

    started = time.perf_counter()
    strategy = args.strategy
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy}: unknown strategy; allowed: {', '.join(STRATEGIES)}")
    if args.anomaly is not None and args.anomaly not in ANOMALIES:
        raise UsageError(f"--anomaly {args.anomaly}: unknown anomaly; allowed: {', '.join(ANOMALIES)}")
    scenario = load(args.scenario)
    seed = scenario.seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else Path("results") / f"shrink-{scenario.name}-{strategy}"
    folder = OutputFolder(out, "--out", "shrink", args.force, writes=SHRINK_FILES)
    simulation = backends.get(backends.SIMULATION)
    budget.check(scenario.traffic, seed, str(scenario.path), 1)
    trace = generate(scenario.traffic, seed)
    scenario = dataclasses.replace(scenario, seed=seed)
    schedule = schedule_for(scenario, trace)
    bar = None if args.quiet else _shrink_bar()
    try:
        shrunk = shrink(simulation, scenario, trace, strategy, schedule, args.anomaly, bar)
    except NoAnomaly as nothing:
        print(f"countdrift: {nothing}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    best = shrunk.best
    shrunk_scenario = dataclasses.replace(
        scenario_of(scenario, strategy, best),
        name=f"{scenario.name}-shrunk", description=f"{strategy}'s {shrunk.anomaly} anomaly on {scenario.name} "
                                                     f"(seed {seed}), shrunk by countdrift shrink")
    with folder:
        best.trace.save(folder.partial / "shrunk-trace.npz")
        toml = shrunk_scenario.to_toml(f"Run it: countdrift run shrunk.toml --trace shrunk-trace.npz\n"
                                       f"{len(best.trace.t)} operations, {len(best.schedule)} fault(s), "
                                       f"{best.clients} client(s)")
        write_text(folder.partial / "shrunk.toml", toml)
        # The files as written, run as a user would run them: the reproduction is what they hold.
        reloaded = load(folder.partial / "shrunk.toml")
        histories: dict = {}
        results = run_scenario(reloaded, [strategy], Trace.load(folder.partial / "shrunk-trace.npz"),
                               backend=backends.SIMULATION, histories=histories)
        if not shown_in(results["runs"][0], shrunk.anomaly):
            raise UsageError(f"the shrunk scenario did not show {shrunk.anomaly} when run from its files: "
                             f"a bug of countdrift's; please report it with {args.scenario} and seed {seed}")
        story = format_story(explain(StoredRun(out, results, best.trace, histories), strategy))
        write_text(folder.partial / "story.md", f"```\n{story}```\n")
        folder.commit()
    Done.written = f"reproduction in {out}"
    whole = shrunk.whole
    print(f"{strategy}'s {shrunk.anomaly} anomaly ({shrunk.cause or 'any cause'}) on {scenario.name} (seed {seed}): "
          f"{len(whole.trace.t):,} operations, {len(whole.schedule)} fault(s), {whole.clients} clients -> "
          f"{len(best.trace.t)} operations, {len(best.schedule)} fault(s), {best.clients} client(s); "
          f"{shrunk.runs} simulated runs, {time.perf_counter() - started:.0f} s"
          + (" (interrupted: the smallest found so far)" if shrunk.interrupted else ""))
    print(f"\n{story}")
    if args.confirm_real:
        shows = 0
        for _ in range(args.confirm_real):
            real = run_scenario(reloaded, [strategy], Trace.load(out / "shrunk-trace.npz"), backend=backends.REAL,
                                explain=False)
            shows += shown_in(real["runs"][0], shrunk.anomaly)
        print(f"real servers: {shrunk.anomaly} in {shows} of {args.confirm_real} runs of the shrunk scenario "
              f"(real timing varies from run to run: a rate, not a promise)")
    print(f"reproduction: {out / 'shrunk.toml'}")
    return 0


SHRINK_FILES = ("shrunk.toml", "shrunk-trace.npz", "story.md")


def _shrink_bar():
    """A progress line for shrink: the smallest reproduction so far, and the runs."""
    from tqdm import tqdm

    bar = tqdm(desc="shrink", unit=" runs", file=sys.stderr, leave=False, dynamic_ncols=True)

    def progress(shrinker) -> None:
        best = shrinker.best
        bar.set_postfix_str(f"smallest: {len(best.trace.t):,} operations, {len(best.schedule)} fault(s), "
                            f"{best.clients} client(s)", refresh=False)
        bar.update(1)

    progress.close = bar.close
    return progress


def command_judge(args: argparse.Namespace) -> int:
    """Judge a stored run's shown values again, with this version's checker; writes nothing."""
    from sim.report.stored_run import load_run
    from sim.report.table import format_table
    from sim.seen import client_view, figures, judge_values
    from sim.truth import Memberships

    stored = load_run(Path(args.run), "judge")
    results, trace, histories = stored.results, stored.trace, stored.histories
    pairs = Memberships(trace)
    differences = []
    for run in results["runs"]:
        history = histories[run["strategy"]]
        judged = {"seen": figures(trace, history, judge_values(trace, history, pairs), run["faults"])}
        shown = client_view(trace, history, pairs) if "seen_client_view" in run else None
        if shown is not None:
            judged["seen_client_view"] = shown
        for block, now in judged.items():
            before = run.get(block) or {}
            differences += [f"{run['strategy']} {block}.{key} {before.get(key)} -> {value}"
                            for key, value in now.items() if before.get(key) != value and key != "timeline"
                            and key != "faults"]
            if before and (before.get("faults") != now.get("faults") or before.get("timeline") != now.get("timeline")):
                differences.append(f"{run['strategy']} {block}: per fault or over time")
            run[block] = now
    print(format_table(results))
    if differences:
        print(f"\njudged again by countdrift {__version__}: {len(differences)} figure(s) differ from the run's:")
        print("\n".join(f"  {line}" for line in differences))
    else:
        print(f"\njudged again by countdrift {__version__}: the same figures as the run's "
              f"({len(results['runs'])} strategies, {results['backend']} backend)")
    return 0


def command_trace(args: argparse.Namespace) -> int:
    from sim import budget
    from sim.report.output import check_file
    from sim.scenario import load
    from sim.traffic import generate, is_trace

    action = {"import": _trace_import, "export": _trace_export, "stats": _trace_stats}.get(args.scenario)
    if action is not None:
        if not args.source:
            raise UsageError(f"trace {args.scenario}: name the file to {args.scenario} (see countdrift trace --help)")
        return action(args)
    if args.source or args.members:
        raise UsageError("trace SCENARIO: takes one scenario file, and --out")
    if not args.out:
        raise UsageError("trace SCENARIO: --out T.npz is required")
    scenario = load(args.scenario)
    out = check_file(Path(args.out), "--out", is_trace, args.force)
    seed = scenario.seed if args.seed is None else args.seed
    budget.check(scenario.traffic, seed, str(scenario.path))
    return _save_trace(generate(scenario.traffic, seed), out)


def _save_trace(trace, out: Path) -> int:
    trace.save(out)
    Done.written = f"the trace in {out}"
    for key, value in trace.summary().items():
        print(f"{key:>14}: {value}")
    print(f"trace: {out}")
    return 0


def _trace_import(args: argparse.Namespace) -> int:
    from sim.events import import_events
    from sim.report.output import check_file
    from sim.traffic import TraceError, is_trace

    if not args.out:
        raise UsageError("trace import: --out T.npz is required")
    out = check_file(Path(args.out), "--out", is_trace, args.force)
    try:
        trace = import_events(Path(args.source), Path(args.members) if args.members else None)
    except TraceError as error:
        raise UsageError(str(error)) from None
    return _save_trace(trace, out)


def _load_trace(path: str):
    from sim.traffic import Trace, TraceError

    try:
        return Trace.load(Path(path))
    except TraceError as error:
        raise UsageError(str(error)) from None


def _trace_export(args: argparse.Namespace) -> int:
    from sim.events import export_events
    from sim.report.output import check_file

    if not args.out or not args.out.endswith(".csv"):
        raise UsageError("trace export: --out EVENTS.csv is required (its membership table is written beside it)")
    trace = _load_trace(args.source)
    out = check_file(Path(args.out), "--out", lambda path: False, args.force)
    members = check_file(out.with_name(f"{out.stem}-members.csv"), "--out", lambda path: False, args.force)
    export_events(trace, out)
    Done.written = f"the events in {out} and {members}"
    print(f"events: {out}\nmembers: {members}")
    return 0


def _trace_stats(args: argparse.Namespace) -> int:
    from sim.report.trace_stats import format_trace_stats, trace_stats

    print(format_trace_stats(trace_stats(_load_trace(args.source))))
    return 0


def _stories_of(sources: list[Path], documents: list[dict]) -> list[dict]:
    """`report --explain`: the story of each drifted strategy's worst user,
    of every run whose folder holds its history."""
    from sim.experiments.explain import explain
    from sim.report.history_file import HISTORY_FILE
    from sim.report.stored_run import load_run
    from sim.report.story import format_story

    stories = []
    for source, document in zip(sources, documents):
        if not (source.parent / HISTORY_FILE).is_file():
            continue
        stored = None
        for run in document["runs"]:
            if not (run["drift"]["abs_drift_sum"] or run["drift"]["users_inconsistent"]):
                continue
            stored = stored or load_run(source.parent, "report --explain")
            try:
                story = format_story(explain(stored, run["strategy"]))
            except UsageError as nothing:   # a real run whose totals are right: nothing its history can tell
                story = str(nothing)
            stories.append({"scenario": document["scenario"]["name"], "strategy": run["strategy"],
                            "seed": document["seed"], "story": story.strip(),
                            "title": f"the story of its worst user (countdrift explain {source.parent})"})
    return stories


def command_report(args: argparse.Namespace) -> int:
    from sim.report.output import OutputFolder
    from sim.report.summary import (
        ReportError,
        capacity_against_real,
        find_documents,
        find_results,
        find_stories,
        load_results,
        write_report,
    )
    from sim.report.sweep_results import find_sweeps

    out = Path(args.out)
    with OutputFolder(out, "--out", "report", args.force, writes=("summary.md", "summary.html")) as folder:
        try:
            sources = find_results(args.results, required=False)
            documents = [load_results(path) for path in sources]
            fidelities = find_documents(args.results, "fidelity.json")
            capacities = find_documents(args.results, "capacity.json")
            sweeps = [sweep for _, sweep in find_sweeps(args.results)]
        except ReportError as error:
            raise UsageError(str(error)) from None
        if not (documents or fidelities or sweeps or capacity_against_real(capacities)):
            raise UsageError(f"nothing to report under {', '.join(args.results)}: no results.json, sweep or "
                             "fidelity.json, nor a capacity.json measured on both backends (real, and simulated "
                             "with --model-driver)")
        stories = find_stories(args.results) + (_stories_of(sources, documents) if args.explain else [])
        markdown, page = write_report(documents, folder.partial, fidelities, capacities, sweeps, sources, stories)
        folder.commit()
    Done.written = f"the report in {out}"
    print(f"report: {out / page.name} (and {markdown.name}, charts as PNG and SVG in {out})")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from sim.report.compare import as_json, as_markdown, as_text, compare, compare_sweeps, written_by_compare
    from sim.report.output import check_file, write_text
    from sim.report.summary import ReportError
    from sim.report.sweep_results import find_sweeps

    if not (math.isfinite(args.tolerance) and 0 <= args.tolerance <= 10):
        raise UsageError(f"--tolerance: a fraction between 0 and 10 (0.05 is 5%), got {args.tolerance}")
    if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise UsageError(f"--alpha: a significance level between 0 and 1 (0.01 is 1%), got {args.alpha}")
    outputs = {option: check_file(Path(path), option, written_by_compare, args.force)
               for option, path in (("--json", args.json), ("--markdown", args.markdown)) if path}
    try:
        sweeps = [bool(find_sweeps([path])) for path in (args.baseline, args.current)]
        if sweeps[0] != sweeps[1]:
            sweep, other = (args.baseline, args.current) if sweeps[0] else (args.current, args.baseline)
            raise UsageError(f"{sweep} holds a sweep and {other} does not: compare a sweep with a sweep, "
                             f"a run with a run")
        changes = (compare_sweeps([args.baseline], [args.current], args.tolerance, args.alpha) if sweeps[0]
                   else compare([args.baseline], [args.current], args.tolerance))
    except ReportError as error:
        raise UsageError(str(error)) from None
    print(as_text(changes))
    for option, path in outputs.items():
        write_text(path, as_json(changes) if option == "--json" else as_markdown(changes))
    return 1 if any(change.regression for change in changes) else 0


def command_list(args: argparse.Namespace) -> int:
    from sim.faults import SPECS
    from strategies import STRATEGIES

    print("strategies:")
    from sim.strategy_code import BUILT_IN, origin

    for name, cls in STRATEGIES.items():
        print(f"  {name:<15} {cls.summary}" + ("" if name in BUILT_IN else f" ({origin(name)})"))
    print("\nbackends:")
    for name in backends.BACKENDS:
        print(f"  {name:<15} {backends.get(name).summary}")
    print("\nfault kinds (each parameter: type, unit, bounds, default):")
    for spec in SPECS.values():
        print(f"  {spec.kind:<22} {spec.summary}")
        print(f"  {'':<24}duration: {spec.duration} (default {spec.default_duration:g} s)")
        for param in spec.params:
            print(f"  {'':<24}{param.name}: {param.describe()}")
    return 0


def command_new_strategy(args: argparse.Namespace) -> int:
    from sim.skeleton import write_skeleton

    out = Path(args.out)
    for path in write_skeleton(args.name, out):
        print(f"wrote {path}")
    print(f"next: countdrift check-strategy {out / (args.name + '.py')}; then name it in a scenario "
          f"([strategy_code.{args.name}] path = \"...\") or pass --strategy-file")
    return 0


def command_check_strategy(args: argparse.Namespace) -> int:
    from sim import strategy_code
    from sim.experiments.check_strategy import check_strategy
    from strategies import STRATEGIES

    target = args.strategy
    if target.endswith(".py") or Path(target).is_file():
        names = [cls.name for cls in strategy_code.load_file(target)]
    elif target in STRATEGIES:
        names = [target]
    else:
        raise UsageError(f"check-strategy: {target!r} is neither a Python file nor a strategy countdrift knows; "
                         f"known: {', '.join(STRATEGIES)}")
    failed = 0
    for name in names:
        print(f"check-strategy {name} ({strategy_code.origin(name)}):")
        verdicts = check_strategy(name, seeds=args.seeds, sim_only=args.sim_only,
                                  progress=lambda verdict: print(f"  {verdict.line()}", flush=True))
        failed += sum(not verdict.passed for verdict in verdicts)
    print(f"{failed} check(s) failed" if failed else "every check passed")
    return 1 if failed else 0


def command_fidelity(args: argparse.Namespace) -> int:
    from sim import budget
    from sim.experiments.fidelity import format_matrix, run_fidelity
    from sim.report.output import OutputFolder
    from sim.runner import stderr_progress
    from sim.scenario import load
    from strategies import FIDELITY

    scenarios = [load(path) for path in args.scenarios]
    strategies = _strategies(args.strategies, FIDELITY)
    seeds = [seed_number(seed, "--seeds") for seed in args.seeds.split(",")] if args.seeds else None
    out = Path(args.out)
    with OutputFolder(out, "--out", "fidelity", args.force, writes=("fidelity.json",)) as folder:
        for backend in (backends.SIMULATION, backends.REAL):
            for scenario in scenarios:
                refusal = backends.get(backend).refuse(scenario)
                if refusal:
                    raise UsageError(f"fidelity needs the {backend} backend: {refusal}")
        for scenario in scenarios:
            budget.check(scenario.traffic, seeds[0] if seeds else scenario.seed, str(scenario.path))
        driver = _driver_model(args, scenarios[0], backends.SIMULATION) if scenarios else None
        document = run_fidelity(scenarios, strategies, seeds, folder.partial,
                                progress=None if args.quiet else stderr_progress(), driver=driver)
        folder.commit()
    Done.written = f"fidelity.json in {out}"
    print(format_matrix(document))
    print(f"fidelity: {out / 'fidelity.json'}")
    return 1 if document["disagreements"] else 0


def _seeds(args: argparse.Namespace) -> Callable[[object], list[int]]:
    """A scenario's seeds: --seed-range A:B, or --seeds N from the scenario's own (default 10)."""
    if args.seed_range is None:
        def from_own(scenario) -> list[int]:
            if scenario.seed + args.seeds > 2 ** 63:
                raise UsageError(f"--seeds: {args.seeds} seeds from {scenario.path}'s seed {scenario.seed} pass "
                                 f"2**63 - 1; name them with --seed-range")
            return list(range(scenario.seed, scenario.seed + args.seeds))
        return from_own
    first, colon, last = args.seed_range.partition(":")
    try:
        low, high = seed_number(first, "--seed-range"), seed_number(last, "--seed-range")
    except UsageError:
        low, high = 1, 0
    if not colon or not low <= high or high - low >= 10_000:
        raise UsageError(f"--seed-range: A:B, two seeds with A <= B and at most 10,000 of them (e.g. 1:20 for "
                         f"seeds 1 to 20, both included), got {args.seed_range!r}")
    return lambda scenario: list(range(low, high + 1))


def command_sweep(args: argparse.Namespace) -> int:
    from sim import budget
    from sim.experiments.sweep import check_folder, default_workers, plan_tasks, run_sweep
    from sim.report.table import format_sweep_table
    from sim.scenario import load, with_driver

    scenarios = [load(path) for path in args.scenarios]
    scenarios = [with_driver(scenario, driver) if (driver := _driver_model(args, scenario, args.backend)) else scenario
                 for scenario in scenarios]
    tasks = plan_tasks(scenarios, _seeds(args), lambda scenario: _strategies(args.strategies, scenario.strategies),
                       args.backend)
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers: the size of a local cluster; with --scheduler the cluster's own workers run "
                         "the sweep: leave one of them out")
    for scenario in scenarios:
        refusal = backends.get(args.backend).refuse(scenario)
        if refusal:
            raise UsageError(f"--backend {args.backend}: {refusal}")
    names = "+".join(dict.fromkeys(scenario.name for scenario in scenarios))
    out = Path(args.out) if args.out else Path("results") / f"sweep-{names}-{args.backend}"
    out = check_folder(out, args.force)

    def note(done: int, total: int) -> None:
        Done.written = f"{done} of {total} runs in {out} (the same command resumes the sweep)"

    if args.workers and args.workers > cores():
        raise UsageError(f"--workers: at most {cores()} here (the cores: each worker runs one CPU-bound run at a "
                         f"time), got {args.workers}")
    workers = min(args.workers or default_workers(args.backend), len(tasks))
    for scenario in scenarios:
        first = next(task.seed for task in tasks if task.scenario is scenario)
        budget.check(scenario.traffic, first, str(scenario.path), 1 if args.scheduler else workers)
    document = run_sweep(out, tasks, args.scheduler, workers, args.quiet,
                         note)
    Done.written = f"the sweep in {out}"
    for name in document["aggregates"]:
        print(format_sweep_table(document, name), end="\n\n")
    runs = document["runs"]
    print(f"{runs['done']} of {runs['planned']} runs, wall {document['wall_seconds']:.1f} s; "
          f"sweep: {out / 'sweep.json'}")
    if runs["failed"]:   # an error, not a verdict: each failure is in sweep.json; the same command runs them again
        first = runs["failed"][0]
        raise UsageError(f"{len(runs['failed'])} of {runs['planned']} runs failed (each one's error is in "
                         f"{out / 'sweep.json'}; the same command runs them again); the first, {first['scenario']} "
                         f"seed {first['seed']} {first['strategy']}: {first['error']}")
    return 0 if document["complete"] else 1


def _write_document(out: Path, file_name: str, make: Callable[[], dict], show: Callable[[dict], str],
                    force: bool) -> int:
    """Check ``--out``, write the document ``make`` returns there whole, print it."""
    from sim.report.output import OutputFolder
    from sim.report.results import write_json

    with OutputFolder(out, "--out", file_name.removesuffix(".json"), force, writes=(file_name,)) as folder:
        document = make()
        write_json(folder.partial / file_name, document)
        folder.commit()
    Done.written = f"{file_name} in {out}"
    print(show(document))
    print(f"{file_name.removesuffix('.json')}: {out / file_name}")
    return 0


def _calibration_file(given: str, scenario) -> Path:
    """The calibration file named, else the scenario's, else the committed one."""
    from sim.scenario import CALIBRATION

    if given:
        return Path(given)
    if scenario.server.calibration:
        return scenario.path.parent / scenario.server.calibration
    return CALIBRATION


def _driver_model(args: argparse.Namespace, scenario, backend: str) -> dict[str, float] | None:
    """--model-driver's [driver] section, or None when it is not given."""
    from sim.scenario import DRIVER_KEYS, load_calibration

    if args.model_driver is None:
        return None
    if not backends.get(backend).models_driver:
        raise UsageError(f"--model-driver: the {backend} backend cannot model the driver (it has one)")
    return load_calibration(_calibration_file(args.model_driver, scenario), "driver", DRIVER_KEYS)


def _client_counts(text: str) -> tuple[int, ...]:
    """--clients: up to 20 counts, each within the scenario's bound on clients.count."""
    from sim.scenario import BOUNDS

    high = int(BOUNDS["clients.count"][1])
    try:
        counts = tuple(whole(high)(count) for count in text.split(","))
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"--clients: {error} (comma-separated client counts)") from None
    if len(counts) > 20:
        raise UsageError(f"--clients: at most 20 client counts, got {len(counts)}")
    return counts


def command_capacity(args: argparse.Namespace) -> int:
    from sim import budget
    from sim.experiments.capacity import RAMP, format_capacity, measure
    from sim.runner import stderr_progress
    from sim.scenario import load

    scenario = load(args.scenario)
    strategies = _strategies(args.strategies, scenario.strategies)
    if not (math.isfinite(args.slo_p99_ms) and 0 < args.slo_p99_ms <= 3_600_000):
        raise UsageError(f"--slo-p99-ms: a number of milliseconds above 0, got {args.slo_p99_ms}")
    counts = RAMP if args.clients is None else _client_counts(args.clients)
    driver = _driver_model(args, scenario, args.backend)

    def make() -> dict:
        refusal = backends.get(args.backend).refuse(scenario)
        if refusal:
            raise UsageError(f"--backend {args.backend}: {refusal}")
        budget.check(scenario.traffic, scenario.seed, str(scenario.path))
        return measure(scenario, strategies, args.backend, args.slo_p99_ms, counts,
                       None if args.quiet else stderr_progress(), driver)

    out = Path(args.out) if args.out else Path("results") / f"capacity-{scenario.name}-{args.backend}"
    return _write_document(out, "capacity.json", make, format_capacity, args.force)


def command_cost(args: argparse.Namespace) -> int:
    from sim.experiments.cost import format_cost, measure
    from strategies import STRATEGIES

    strategies = list(_strategies(args.strategies, tuple(STRATEGIES)))
    target = backends.get(args.backend)
    progress = None if args.quiet else (lambda step: print(f"cost: {step}", file=sys.stderr, flush=True))
    out = Path(args.out) if args.out else Path("results") / f"cost-{args.backend}"
    return _write_document(out, "cost.json",
                           lambda: measure(strategies, target.cost_target, args.backend, args.repeats, progress),
                           format_cost, args.force)


def command_calibrate(args: argparse.Namespace) -> int:
    from sim.experiments.calibrate import main as calibrate
    from sim.report.output import check_file

    args.out = str(check_file(Path(args.out), "--out", is_calibration, args.force))
    return calibrate(args)


def is_calibration(path: Path) -> bool:
    """Whether a file is a calibration countdrift wrote (its first line says so)."""
    try:
        with open(path, "rb") as file:
            return file.readline().startswith(b"# countdrift calibration")
    except OSError:
        return False


def command_clean(args: argparse.Namespace) -> int:
    from sim.leftovers import find

    found, in_use = find()
    for leftover in found:
        print(f"{'would remove' if args.dry_run else 'removing'} {leftover.describe()}")
        if not args.dry_run:
            leftover.remove()
    if not found:
        print("nothing left over by earlier runs")
    if in_use:
        print(f"left alone: {len(in_use)} folder(s) of countdrift runs still going")
    return 0


def command_bench(args: argparse.Namespace) -> int:
    args.strategies = _strategies(args.strategies, ())
    if not Path(args.scenario).exists() and Path("scenarios", f"{args.scenario}.toml").exists():
        args.scenario = str(Path("scenarios", f"{args.scenario}.toml"))
    return backends.get(args.backend).bench(args)


def seed_number(text: str, option: str = "") -> int:
    """A seed: an integer from 0 to 2**63 - 1."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2 ** 63:
        message = f"a seed is a whole number from 0 to 2**63 - 1, got {text!r}"
        if option:
            raise UsageError(f"{option}: {message}")
        raise argparse.ArgumentTypeError(message)
    return seed


def whole(high: int) -> Callable[[str], int]:
    """A whole number from 1 to ``high``, as argparse takes a type."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"a whole number from 1 to {high:,}, got {text!r}")
        return value
    return parse


def cores() -> int:
    return len(os.sched_getaffinity(0))


class OneLineParser(argparse.ArgumentParser):
    """A bad command line is one line, as every other error."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


FORCE_FOLDER = "write into a --out folder that is not this command's own output (nothing in it is removed or replaced)"
FORCE_FILE = "replace a --out file that countdrift did not write"
MODEL_DRIVER = ("the simulation only: model the real backend's driver on the calibrated machine (its loopback round "
                "trip, one process's CPU for every client), from a calibration file's [driver] (default: the "
                "scenario's calibration, else the committed one), so that the figures compare with real servers")


# The commands that run or read strategies: each takes --strategy-file.
TAKE_STRATEGY_FILES = ("run", "judge", "explain", "shrink", "report", "fidelity", "sweep", "capacity", "cost", "list",
                       "bench")


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="countdrift", description=__doc__)
    top.add_argument("--version", action="version", version=f"countdrift {__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser("run", help="replay a scenario through each strategy, write results.json")
    run.add_argument("scenario", help="a scenario TOML file, e.g. scenarios/quick.toml")
    run.add_argument("--strategies", help="comma-separated strategies (default: the scenario's)")
    run.add_argument("--seed", type=seed_number, help="override the scenario's seed")
    run.add_argument("--out", help="output folder (default: results/<scenario>-s<seed>)")
    run.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    run.add_argument("--trace", help="replay a saved trace instead of generating one")
    run.add_argument("--backend", choices=tuple(backends.BACKENDS), default=backends.DEFAULT,
                     help="sim: the SimPy model (default); redis: real redis-server and toxiproxy-server processes")
    run.add_argument("--model-driver", nargs="?", const="", metavar="CALIBRATION", help=MODEL_DRIVER)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.add_argument("--jobs", type=whole(64), default=1,
                     help="(sim) strategies run at once, each in a process of its own (no progress bars)")
    run.set_defaults(handler=command_run)

    judge = commands.add_parser("judge", help="judge a stored run's badges and opened counts again with this "
                                              "version's checker; print the run's table")
    judge.add_argument("run", help="a run's folder (results.json, trace.npz, history.npz)")
    judge.set_defaults(handler=command_judge)

    explain = commands.add_parser("explain", help="the story of one drifting user of a stored run: each operation "
                                                  "that touched them, the faults around, and the cause")
    explain.add_argument("run", help="a run's folder (results.json, trace.npz, history.npz)")
    explain.add_argument("--strategy", help="whose story (default: the strategy that drifted most)")
    explain.add_argument("--user", type=int, help="which user (default: the one whose total drifted most)")
    explain.set_defaults(handler=command_explain)

    shrink = commands.add_parser("shrink", help="the smallest trace and fault schedule that still show a "
                                                "strategy's anomaly (simulation); write shrunk.toml, its trace, "
                                                "and the story")
    shrink.add_argument("scenario", help="a scenario TOML file")
    shrink.add_argument("--strategy", required=True, help="the strategy whose anomaly to shrink")
    shrink.add_argument("--seed", type=seed_number, help="the trace's seed (default: the scenario's)")
    shrink.add_argument("--anomaly", help="inconsistent, over, under or wrong_badge (default: the first of them "
                                          "the run shows)")
    shrink.add_argument("--out", help="output folder (default: results/shrink-<scenario>-<strategy>)")
    shrink.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    shrink.add_argument("--confirm-real", type=whole(1000), default=0, metavar="N",
                        help="replay the shrunk scenario N times on real servers and say how often it shows")
    shrink.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    shrink.set_defaults(handler=command_shrink)

    trace = commands.add_parser(
        "trace", help="a trace: generate a scenario's (trace SCENARIO --out T.npz), import one from an event log "
                      "(trace import EVENTS [--members TABLE] --out T.npz), export one (trace export T.npz --out "
                      "EVENTS.csv), or print its figures (trace stats T.npz)")
    trace.add_argument("scenario", metavar="SCENARIO|import|export|stats")
    trace.add_argument("source", nargs="?", help="import: the events (.csv, .jsonl, .parquet); export, stats: a "
                                                 "trace (.npz)")
    trace.add_argument("--seed", type=seed_number)
    trace.add_argument("--members", help="import: the membership table (conversation, user per row)")
    trace.add_argument("--out", help="the file to write (.npz; export: .csv, its membership table beside it)")
    trace.add_argument("--force", action="store_true", help=FORCE_FILE)
    trace.set_defaults(handler=command_trace)

    report = commands.add_parser("report", help="charts and a summary page from results.json files and sweeps")
    report.add_argument("results", nargs="+", help="results.json or sweep.json files, or folders to search for them")
    report.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    report.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    report.add_argument("--explain", action="store_true",
                        help="tell the story of each drifted strategy's worst user (`countdrift explain`: a "
                             "simulated run is run again, which takes a while)")
    report.set_defaults(handler=command_report)

    comparison = commands.add_parser("compare", help="what got worse between two results, or two sweeps; "
                                                     "exit 1 if anything did")
    comparison.add_argument("baseline", help="a results.json, or a folder of them, or a sweep's folder")
    comparison.add_argument("current", help="a results.json, or a folder of them, or a sweep's folder")
    comparison.add_argument("--tolerance", type=float, default=0.05,
                            help="allowed fall in throughput (and growth of drift on real runs), as a fraction")
    comparison.add_argument("--alpha", type=float, default=0.01,
                            help="sweeps: a noisy figure's change counts only below this p (default 0.01)")
    comparison.add_argument("--json", help="also write the verdict as JSON here")
    comparison.add_argument("--markdown", help="also write a short Markdown table here (for a CI comment)")
    comparison.add_argument("--force", action="store_true",
                            help="replace a --json or --markdown file that countdrift did not write")
    comparison.set_defaults(handler=command_compare)

    fidelity = commands.add_parser("fidelity", help="run scenarios on the simulation and on real servers; "
                                                    "name the cells whose drift class differs (exit 1 if any)")
    fidelity.add_argument("scenarios", nargs="+", help="scenario TOML files")
    fidelity.add_argument("--strategies", help="comma-separated (default: naive,lua,lock,lua_idempotent)")
    fidelity.add_argument("--seeds", help="comma-separated seeds (default: each scenario's own)")
    fidelity.add_argument("--out", default="results/fidelity", help="output folder (default: results/fidelity)")
    fidelity.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    fidelity.add_argument("--model-driver", nargs="?", const="", metavar="CALIBRATION", help=MODEL_DRIVER)
    fidelity.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    fidelity.set_defaults(handler=command_fidelity)

    sweep = commands.add_parser("sweep", help="every (scenario, seed, strategy) as a task on Dask distributed; "
                                              "each run's results.json and sweep.json with confidence intervals")
    sweep.add_argument("scenarios", nargs="+", help="scenario TOML files")
    seeds = sweep.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=whole(10_000), default=10,
                       help="how many seeds, from each scenario's own seed up (default 10)")
    seeds.add_argument("--seed-range", help="A:B: seeds A to B, both included, for every scenario")
    sweep.add_argument("--strategies", help="comma-separated (default: each scenario's)")
    sweep.add_argument("--backend", choices=tuple(backends.BACKENDS), default=backends.DEFAULT)
    sweep.add_argument("--scheduler", help="the address of an existing Dask scheduler (default: a local cluster)")
    sweep.add_argument("--workers", type=whole(64),
                       help="worker processes of the local cluster (default: one per core on the sim, 1 on redis)")
    sweep.add_argument("--out", help="the sweep's folder, resumed if it holds an earlier run of the same sweep "
                                     "(default: results/sweep-<scenarios>-<backend>)")
    sweep.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    sweep.add_argument("--model-driver", nargs="?", const="", metavar="CALIBRATION", help=MODEL_DRIVER)
    sweep.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sweep.set_defaults(handler=command_sweep)

    capacity = commands.add_parser("capacity", help="each strategy's highest throughput with p99 under an objective "
                                                    "(closed loop, more and more clients)")
    capacity.add_argument("scenario", help="a scenario TOML file (its faults are left out)")
    capacity.add_argument("--backend", choices=tuple(backends.BACKENDS), default=backends.DEFAULT)
    capacity.add_argument("--slo-p99-ms", type=float, default=10.0, help="the p99 latency objective (default 10 ms)")
    capacity.add_argument("--strategies", help="comma-separated (default: the scenario's)")
    capacity.add_argument("--clients", help="the client counts to try, comma-separated (default 1,2,4,...,256)")
    capacity.add_argument("--out", help="output folder (default: results/capacity-<scenario>-<backend>)")
    capacity.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    capacity.add_argument("--model-driver", nargs="?", const="", metavar="CALIBRATION", help=MODEL_DRIVER)
    capacity.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    capacity.set_defaults(handler=command_capacity)

    cost = commands.add_parser("cost", help="what one operation of each kind costs the server, per strategy "
                                            "(round trips, commands, server time, bytes), and memory per user")
    cost.add_argument("--backend", choices=tuple(backends.BACKENDS), default=backends.DEFAULT)
    cost.add_argument("--strategies", help="comma-separated (default: all)")
    cost.add_argument("--repeats", type=whole(100_000), default=1000, help="operations of each kind (default 1000)")
    cost.add_argument("--out", help="output folder (default: results/cost-<backend>)")
    cost.add_argument("--force", action="store_true", help=FORCE_FOLDER)
    cost.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    cost.set_defaults(handler=command_cost)

    calibrate = commands.add_parser("calibrate", help="measure what a request costs a real redis-server here, "
                                                      "and write the simulation's service times")
    calibrate.add_argument("--out", default="results/calibration.toml", help="the calibration file to write")
    calibrate.add_argument("--force", action="store_true", help=FORCE_FILE)
    calibrate.add_argument("--requests", type=whole(10_000_000), default=200_000,
                           help="redis-benchmark -n for each probe")
    calibrate.add_argument("--driver-only", action="store_true",
                           help="measure the [driver] section only, keeping the --out file's [server]")
    calibrate.set_defaults(handler=command_calibrate)

    listing = commands.add_parser("list", help="list strategies and fault kinds")
    listing.set_defaults(handler=command_list)

    new = commands.add_parser("new-strategy", help="write a strategy of your own to start from (a class, its Lua, "
                                                   "a test), which runs as it is")
    new.add_argument("name", help="the strategy's name: lower-case letters, digits, '_'")
    new.add_argument("--out", default=".", help="the folder to write it into (default: here)")
    new.set_defaults(handler=command_new_strategy)

    check = commands.add_parser("check-strategy", help="the conformance checks every built-in strategy passes, "
                                                       "for one strategy (exit 1 if any fails)")
    check.add_argument("strategy", help="a strategy file (.py) or the name of a strategy countdrift knows")
    check.add_argument("--seeds", type=whole(1000), default=20, help="simulated runs without faults (default 20)")
    check.add_argument("--sim-only", action="store_true",
                       help="leave out the comparison with a real redis-server")
    check.set_defaults(handler=command_check_strategy)

    clean = commands.add_parser("clean", help="stop the servers and remove the folders of earlier runs that were "
                                              "killed outright (found by the marker each run writes)")
    clean.add_argument("--dry-run", action="store_true", help="only list them")
    clean.set_defaults(handler=command_clean)

    bench = commands.add_parser("bench", help="measure the simulator's speed")
    bench.add_argument("--scenario", default="quick",
                       help="a scenario TOML file, or the name of one in scenarios/ (quick, review)")
    bench.add_argument("--strategies", default="naive,lua")
    bench.add_argument("--events", type=whole(10_000_000), default=500_000, help="bare SimPy timeouts to time")
    bench.add_argument("--backend", choices=tuple(backends.BACKENDS), default=backends.DEFAULT,
                       help="redis: the asyncio driver against redis-server, next to redis-benchmark")
    bench.add_argument("--clients", type=whole(10_000), default=50, help="(redis) concurrent clients")
    bench.add_argument("--requests", type=whole(10_000_000), default=200_000, help="(redis) redis-benchmark -n")
    bench.add_argument("--operations", type=whole(10_000_000), default=50_000,
                       help="(redis) deliveries the driver makes")
    bench.set_defaults(handler=command_bench)
    for name in TAKE_STRATEGY_FILES:
        commands.choices[name].add_argument(
            "--strategy-file", action="append", default=[], metavar="PATH",
            help="a Python file that defines strategies of your own (repeatable; README: 'Write your own strategy')")
    return top


def _load_strategy_code(args: argparse.Namespace) -> None:
    """Strategies from outside the package, for the commands that run or
    read strategies: installed packages' entry points, and --strategy-file."""
    from sim import strategy_code

    if args.command not in (*TAKE_STRATEGY_FILES, "check-strategy"):
        return
    strategy_code.load_installed()
    for path in getattr(args, "strategy_file", ()):
        strategy_code.load_file(path)


def _keep_traceback() -> str:
    """Write the exception being handled to a file of its own; its path."""
    import tempfile
    import traceback

    handle, path = tempfile.mkstemp(prefix="countdrift-traceback-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write(f"countdrift {__version__}: {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    return path


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: cleanly, with one line;
    through SIGINT's handler (asyncio.run puts its own in place, which
    cancels the run's task first), or directly when SIGINT is ignored, as
    in a shell's background job: there raising SIGINT did nothing, and
    `kill PID` let the run go on to its end."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _late_interrupt(signum: int, frame: object) -> None:
    """Once the command is over, an interrupt only ends the process."""
    sys.stderr.write(f"countdrift: interrupted; {Done.written or 'nothing written'}\n")
    os._exit(130)


def main(argv: list[str] | None = None, program: bool = False) -> int:
    """Run one command; ``program``: this is the process (the console
    script), so an interrupt after the command only ends the process."""
    from sim.scenario import ScenarioError

    Done.written = None
    if program:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        args = parser().parse_args(argv)
        _load_strategy_code(args)
        return args.handler(args)
    except (ScenarioError, UsageError) as error:
        print(f"countdrift: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # the reader of our output went away (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"countdrift: interrupted; {Done.written or 'nothing written'}", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"countdrift: error: out of memory; {Done.written or 'nothing written'} (make the scenario smaller: "
              f"traffic.users, traffic.messages, traffic.max_group_size)", file=sys.stderr)
        return 2
    except Exception as error:   # a bug of countdrift's: one line, the traceback kept in a file
        if os.environ.get("COUNTDRIFT_TRACEBACK"):
            raise
        print(f"countdrift: internal error: {type(error).__name__}: {str(error)[:300]} (a bug in countdrift; "
              f"{Done.written or 'nothing written'}; the traceback is in {_keep_traceback()})", file=sys.stderr)
        return 2
    finally:
        if program:
            signal.signal(signal.SIGINT, _late_interrupt)
            signal.signal(signal.SIGTERM, _late_interrupt)
        for backend in backends.loaded():
            backend.stop_all()
        if "sim.watchdog" in sys.modules:   # its work is done: it goes, and is reaped here
            sys.modules["sim.watchdog"].WATCHDOG.close()


def entry() -> None:
    """The `countdrift` program. An interrupt from the first line of this
    module on ends in one line and exit status 130 (SIGTERM as Ctrl-C); one
    that comes while Python itself is still starting ends the process before
    countdrift has done anything. The process ends at once when the command
    is over: Python's own shutdown would put the default handlers back and
    let a late Ctrl-C kill it without a word."""
    status = main(program=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
