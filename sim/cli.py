"""The `countdrift` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim import __version__, backends
from sim.errors import UsageError
from sim.faults import SPECS
from sim.results import write_json
from sim.runner import peak_rss_mib, run_scenario, stderr_progress
from sim.scenario import ScenarioError, load
from sim.table import format_causes, format_faults, format_table
from sim.traffic import Trace, generate
from strategies import STRATEGIES

def _strategies(option: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if option is None:
        return default
    names = tuple(name.strip() for name in option.split(",") if name.strip())
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise UsageError(f"--strategies: unknown strategy {', '.join(unknown) or '(none given)'}; "
                         f"allowed: {', '.join(STRATEGIES)}")
    return names


def command_run(args: argparse.Namespace) -> int:
    scenario = load(args.scenario)
    strategies = _strategies(args.strategies, scenario.strategies)
    trace = None
    if args.trace:
        try:
            trace = Trace.load(Path(args.trace))
        except (OSError, ValueError, KeyError) as error:
            raise UsageError(f"--trace {args.trace}: cannot load the trace: {error}") from None
    seed = scenario.seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else Path("results") / f"{scenario.name}-s{seed}"
    if not args.quiet:
        print(f"countdrift {__version__}: scenario {scenario.name} ({scenario.path}), seed {seed}, "
              f"backend {args.backend}, strategies {', '.join(strategies)}", file=sys.stderr)
    if trace is None:
        trace = generate(scenario.traffic, seed)
    results = run_scenario(scenario, strategies, trace, None if args.quiet else stderr_progress(), args.backend)
    trace.save(out / "trace.npz")
    results["trace"]["file"] = "trace.npz"
    write_json(out / "results.json", results)
    print(format_table(results))
    if results["runs"] and results["runs"][0]["faults"]:
        for part in (format_faults(results), format_causes(results)):
            if part:
                print(f"\n{part}")
    summary = results["trace"]
    print(f"\n{summary['messages']} messages ({summary['deliveries']} deliveries), "
          f"{summary['operations']} operations over {summary['span_s']:.1f} simulated s; "
          f"wall {results['wall_seconds']:.1f} s, peak memory {peak_rss_mib():.0f} MiB")
    print(f"results: {out / 'results.json'}")
    return 0


def command_trace(args: argparse.Namespace) -> int:
    scenario = load(args.scenario)
    seed = scenario.seed if args.seed is None else args.seed
    trace = generate(scenario.traffic, seed)
    out = Path(args.out)
    trace.save(out)
    for key, value in trace.summary().items():
        print(f"{key:>14}: {value}")
    print(f"trace: {out}")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from sim.report import ReportError, find_fidelity, find_results, load_results, write_report

    try:
        documents = [load_results(path) for path in find_results(args.results)]
        fidelities = find_fidelity(args.results)
    except ReportError as error:
        raise UsageError(str(error)) from None
    markdown, page = write_report(documents, Path(args.out), fidelities)
    print(f"report: {page} (and {markdown.name}, charts as PNG and SVG in {args.out})")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from sim.compare import as_json, as_markdown, as_text, compare
    from sim.report import ReportError

    try:
        changes = compare([args.baseline], [args.current], args.tolerance)
    except ReportError as error:
        raise UsageError(str(error)) from None
    print(as_text(changes))
    if args.json:
        Path(args.json).write_text(as_json(changes))
    if args.markdown:
        Path(args.markdown).write_text(as_markdown(changes))
    return 1 if any(change.regression for change in changes) else 0


def command_list(args: argparse.Namespace) -> int:
    print("strategies:")
    for name, cls in STRATEGIES.items():
        print(f"  {name:<15} {cls.summary}")
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


def command_fidelity(args: argparse.Namespace) -> int:
    from sim.fidelity import format_matrix, run_fidelity

    scenarios = [load(path) for path in args.scenarios]
    strategies = _strategies(args.strategies, ("naive", "lua", "lock", "lua_idempotent"))
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise UsageError(f"--seeds: a comma-separated list of integers, got {args.seeds!r}") from None
    out = Path(args.out)
    document = run_fidelity(scenarios, strategies, seeds, out, progress=None if args.quiet else stderr_progress())
    print(format_matrix(document))
    print(f"fidelity: {out / 'fidelity.json'}")
    return 1 if document["disagreements"] else 0


def command_bench(args: argparse.Namespace) -> int:
    return backends.get(args.backend).bench(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="countdrift", description=__doc__)
    top.add_argument("--version", action="version", version=f"countdrift {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="replay a scenario through each strategy, write results.json")
    run.add_argument("scenario", help="a scenario TOML file, e.g. scenarios/quick.toml")
    run.add_argument("--strategies", help="comma-separated strategies (default: the scenario's)")
    run.add_argument("--seed", type=int, help="override the scenario's seed")
    run.add_argument("--out", help="output folder (default: results/<scenario>-s<seed>)")
    run.add_argument("--trace", help="replay a saved trace instead of generating one")
    run.add_argument("--backend", choices=tuple(backends.BACKENDS), default="sim",
                     help="sim: the SimPy model (default); redis: real redis-server and toxiproxy-server processes")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.set_defaults(handler=command_run)

    trace = commands.add_parser("trace", help="generate a scenario's trace and save it")
    trace.add_argument("scenario")
    trace.add_argument("--seed", type=int)
    trace.add_argument("--out", required=True, help="the .npz file to write")
    trace.set_defaults(handler=command_trace)

    report = commands.add_parser("report", help="charts and a summary page from results.json files")
    report.add_argument("results", nargs="+", help="results.json files, or folders to search for them")
    report.add_argument("--out", default="results/report", help="output folder (default: results/report)")
    report.set_defaults(handler=command_report)

    comparison = commands.add_parser("compare", help="what got worse between two results; exit 1 if anything did")
    comparison.add_argument("baseline", help="a results.json, or a folder of them")
    comparison.add_argument("current", help="a results.json, or a folder of them")
    comparison.add_argument("--tolerance", type=float, default=0.05,
                            help="allowed fall in throughput (and growth of drift on real runs), as a fraction")
    comparison.add_argument("--json", help="also write the verdict as JSON here")
    comparison.add_argument("--markdown", help="also write a short Markdown table here (for a CI comment)")
    comparison.set_defaults(handler=command_compare)

    fidelity = commands.add_parser("fidelity", help="run scenarios on the simulation and on real servers; "
                                                    "name the cells whose drift class differs (exit 1 if any)")
    fidelity.add_argument("scenarios", nargs="+", help="scenario TOML files")
    fidelity.add_argument("--strategies", help="comma-separated (default: naive,lua,lock,lua_idempotent)")
    fidelity.add_argument("--seeds", help="comma-separated seeds (default: each scenario's own)")
    fidelity.add_argument("--out", default="results/fidelity", help="output folder (default: results/fidelity)")
    fidelity.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    fidelity.set_defaults(handler=command_fidelity)

    listing = commands.add_parser("list", help="list strategies and fault kinds")
    listing.set_defaults(handler=command_list)

    bench = commands.add_parser("bench", help="measure the simulator's speed")
    bench.add_argument("--scenario", default="scenarios/quick.toml")
    bench.add_argument("--strategies", default="naive,lua")
    bench.add_argument("--events", type=int, default=500_000, help="bare SimPy timeouts to time")
    bench.add_argument("--backend", choices=tuple(backends.BACKENDS), default="sim",
                       help="redis: the asyncio driver against redis-server, next to redis-benchmark")
    bench.add_argument("--clients", type=int, default=50, help="(redis) concurrent clients")
    bench.add_argument("--requests", type=int, default=200_000, help="(redis) redis-benchmark -n")
    bench.add_argument("--operations", type=int, default=50_000, help="(redis) deliveries the driver makes")
    bench.set_defaults(handler=command_bench)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ScenarioError, UsageError) as error:
        print(f"countdrift: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("countdrift: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
