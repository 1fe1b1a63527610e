"""`countdrift report`: charts and one summary page (Markdown, and HTML with
the charts embedded) from one or more results.json files."""
from __future__ import annotations

import base64
import html
import json
import statistics
import tomllib
from pathlib import Path

from sim.backends import DEFAULT
from sim.errors import ReportError
from sim.report import charts
from sim.report.output import write_text
from sim.report.results import InvalidResults, deterministic, read_document, validate
from sim.report.sweep_report import sweep_sections
from sim.report.sweep_results import SWEEP_FILE
from sim.report.table import COLUMNS, field_of, has_field


def find_results(paths: list[str], required: bool = True) -> list[Path]:
    """results.json files named, or found under folders named, except the
    runs of a sweep (its sweep.json stands for them); in a stable order.
    ``required``: none and no sweep either is an error."""
    found: list[Path] = []
    sweeps: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            sweeps += [sweep.parent for sweep in path.rglob(SWEEP_FILE)]
            found.extend(result for result in sorted(path.rglob("results.json"))
                         if not any(result.is_relative_to(sweep) for sweep in sweeps))
        elif path.is_file() and path.name not in ("fidelity.json", "capacity.json", SWEEP_FILE):
            found.append(path)
        elif path.is_file():
            sweeps += [path.parent] * (path.name == SWEEP_FILE)
        elif path.exists():
            raise ReportError(f"{path}: not a regular file or a folder")
        else:
            raise ReportError(f"{path}: no such file or folder")
    if required and not found and not sweeps:
        raise ReportError(f"no results.json under {', '.join(paths)}")
    return found


def find_documents(paths: list[str], file_name: str) -> list[dict]:
    """The ``file_name`` documents (fidelity.json, capacity.json) under the
    folders named, or named themselves."""
    found = []
    for name in paths:
        path = Path(name)
        candidates = sorted(path.rglob(file_name)) if path.is_dir() else [path] * (path.name == file_name)
        for candidate in candidates:
            try:
                document = read_document(candidate, file_name)
            except InvalidResults as error:
                raise ReportError(str(error)) from None
            if file_name == "fidelity.json":
                try:
                    validate(document, "fidelity")
                except InvalidResults as error:
                    raise ReportError(f"{candidate}: not a valid fidelity.json: {error}") from None
                missing = [f"cells[{index}].{backend}" for index, cell in enumerate(document["cells"])
                           for backend in document["backends"] if backend not in cell]
                if missing:
                    raise ReportError(f"{candidate}: not a valid fidelity.json: {missing[0]} is missing")
            if file_name == "capacity.json" and not _is_capacity(document):
                raise ReportError(f"{candidate}: not a countdrift capacity.json (backend, scenario with name and "
                                  "sha256, slo_p99_ms, strategies with capacity_ops_per_s expected)")
            found.append(document)
    return found


def find_stories(paths: list[str]) -> list[dict]:
    """The shrunk reproductions (`countdrift shrink`'s shrunk.toml and
    story.md) under the folders named: each one's scenario, strategy, seed
    and story."""
    stories = []
    for name in paths:
        path = Path(name)
        for scenario in sorted(path.rglob("shrunk.toml")) if path.is_dir() else []:
            story = scenario.with_name("story.md")
            try:
                data = tomllib.loads(scenario.read_text())
                text = story.read_text()
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue   # not a reproduction countdrift wrote whole: nothing to show
            shrunk_of = str(data.get("name", "")).removesuffix("-shrunk")
            strategies = data.get("strategies") or [""]
            stories.append({"scenario": shrunk_of, "strategy": strategies[0], "seed": data.get("seed"),
                            "story": text.strip().strip("`").strip(), "title": f"shrunk ({scenario.parent})"})
    return stories


def _explain_lines(document: dict, stories: list[dict]) -> list[str]:
    """For each strategy that drifted: how to tell its story and shrink it,
    and its shrunk story when one was given."""
    drifted = [run for run in document["runs"] if run["drift"]["abs_drift_sum"] or run["drift"]["users_inconsistent"]]
    if not drifted:
        return []
    scenario = document["scenario"]
    lines = ["", "How it drifted: the story of a strategy's worst user, `countdrift explain RUN_DIR --strategy S`; "
                 "the smallest run that still shows it, on the simulation:", ""]
    for run in drifted:
        lines.append(f"- {run['strategy']}: `countdrift shrink {scenario.get('path', 'SCENARIO')} "
                     f"--strategy {run['strategy']} --seed {document['seed']}`")
        for story in stories:
            if (story["scenario"], story["strategy"], story["seed"]) == (scenario["name"], run["strategy"],
                                                                         document["seed"]):
                lines += ["", f"  {story['title']}:", "", "```", story["story"], "```", ""]
    return lines


def _is_capacity(document: object) -> bool:
    """Whether a capacity.json has what reports read."""
    if not isinstance(document, dict) or not isinstance(document.get("scenario"), dict):
        return False
    strategies = document.get("strategies")
    return ("backend" in document and {"name", "sha256"} <= set(document["scenario"])
            and isinstance(document.get("slo_p99_ms"), (int, float)) and isinstance(strategies, dict)
            and all(isinstance(result, dict) and isinstance(result.get("capacity_ops_per_s"), (int, float))
                    for result in strategies.values()))


def same_scenario_file(one: dict, other: dict) -> bool:
    """Two documents (results, capacity) of the same scenario file: its name and its contents."""
    return (one["scenario"]["name"] == other["scenario"]["name"]
            and one["scenario"].get("sha256") == other["scenario"].get("sha256"))


def capacity_of(document: dict, capacities: list[dict]) -> dict | None:
    """The capacity measured for a results document's scenario file and
    backend (the last one given), or None. A simulated capacity with the redis
    backend's driver modelled measures that driver, not the strategy's
    capacity on Redis: it is for comparing with real servers only."""
    matching = [capacity for capacity in capacities
                if same_scenario_file(capacity, document) and capacity["backend"] == document["backend"]
                and "driver_model" not in capacity]
    return matching[-1] if matching else None


def load_results(path: Path) -> dict:
    """A results.json, checked against its schema before any use
    (sim/results.schema.json: types, ranges, no NaN), the field named."""
    try:
        document = read_document(path, "results.json")
    except InvalidResults as error:
        raise ReportError(str(error)) from None
    if not isinstance(document, dict) or document.get("schema_version") != 1:
        raise ReportError(f"{path}: not a countdrift results.json (schema_version 1 expected)")
    try:
        validate(document)
    except InvalidResults as error:
        raise ReportError(f"{path}: not a valid results.json: {error}") from None
    return document


def slugs(documents: list[dict]) -> list[str]:
    """A file name stem for each document's charts, unique in the report
    (two runs of one scenario, backend and seed get -1, -2...)."""
    return charts.distinct([f"{document['scenario']['name']}-{document['backend']}-s{document['seed']}"
                            for document in documents], "-")


def titles(documents: list[dict], sources: list[Path] | None = None) -> list[str]:
    """Each document's heading, unique in the report: where two would read
    alike, each says the file it comes from."""
    plain = [charts.title_of(document) for document in documents]
    if sources and len(set(plain)) < len(plain):
        plain = [title if plain.count(title) == 1 else f"{title}, {source}" for title, source in zip(plain, sources)]
    return charts.distinct(plain)


def draw_all(documents: list[dict], folder: Path, capacities: list[dict] = (),
             sources: list[Path] | None = None) -> list[tuple[str, Path]]:
    """Every chart, as (caption, PNG path)."""
    drawn: list[tuple[str, Path]] = []
    if len(documents) > 1:
        for field, caption in (("drift", "Drift by strategy and scenario"),
                               ("throughput", "Throughput by strategy and scenario")):
            drawn.append((caption, charts.save(charts.matrix(documents, field), folder, f"matrix-{field}")[0]))
    for document, slug, title in zip(documents, slugs(documents), titles(documents, sources)):
        capacity = capacity_of(document, capacities)
        tradeoff = ("tradeoff", lambda document, capacity=capacity: charts.tradeoff(document, capacity),
                    "Capacity and p99 latency vs drift" if capacity else "Throughput and p99 latency vs drift")
        shown = ("seen", lambda document, capacity=capacity: charts.seen_tradeoff(document, capacity),
                 "Wrong badges per 1,000 pushes vs " + ("capacity" if capacity else "throughput"))
        chosen = [tradeoff, ("timeline", charts.timeline, "Drift and throughput over time"),
                  ("latency", charts.latency, "Latency percentiles")]
        if charts.judged_runs(document):   # results written before users' values were judged have none
            chosen[1:1] = [shown, ("seen-timeline", charts.seen_timeline, "Wrong badges over time")]
        for name, chart, caption in chosen:
            figure = chart(document)
            drawn.append((f"{caption}: {title}",
                          charts.save(figure, folder, f"{name}-{slug}")[0]))
    return drawn


def _markdown_table(document: dict) -> list[str]:
    titles = [title.replace("|drift|", "abs drift") for title, _, _, _ in COLUMNS]  # a pipe would split the cell
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for run in document["runs"]:
        cells = [format(field_of(run, path), number) if has_field(run, path) else "-"
                 for _, path, _, number in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _what_users_saw(document: dict) -> list[str]:
    """In words, per strategy: the pushes that carried a wrong badge and the
    opened conversations that showed a wrong count (sim/seen.py)."""
    judged = charts.judged_runs(document)
    if not judged:
        return []
    lines = ["", "What users saw (each badge a push carried and each count an opened conversation showed, judged "
                 "against the truth over the operation's own window):", ""]
    for run in judged:
        seen = run["seen"]
        if not (seen["badges_wrong"] or seen["opens_wrong"]):
            lines.append(f"- {run['strategy']}: every one of {seen['badges']:,} badges and {seen['opens']:,} opened "
                         f"counts was right.")
            continue
        drifted = " (its counters ended without drift: the wrong values were passing ones)" \
            if not run["drift"]["abs_drift_sum"] else ""
        lines.append(f"- {run['strategy']}: {seen['badges_wrong']:,} of {seen['badges']:,} pushes "
                     f"({seen['wrong_badges_per_1000']:g} per 1,000) carried a wrong badge: "
                     f"{seen['phantom_badges']:,} phantom (a badge with nothing unread), {seen['missed_badges']:,} "
                     f"below the truth, off by up to {seen['badge_error_max']:,}; {seen['opens_wrong']:,} of "
                     f"{seen['opens']:,} opened conversations showed a wrong count{drifted}.")
    return lines


def _section(document: dict, capacity: dict | None = None, title: str | None = None,
             stories: list[dict] = ()) -> list[str]:
    scenario = document["scenario"]
    lines = [f"## {title or charts.title_of(document)}", "",
             f"- scenario: `{scenario['name']}` from `{scenario.get('path', '?')}` "
             f"(sha256 `{scenario['sha256'][:12]}`): {scenario.get('description', '')}",
             f"- backend: {document['backend']}, seed: {document['seed']}, "
             f"countdrift {document['tool_version']}",
             f"- trace: {document['trace']['messages']} messages, {document['trace']['operations']} operations, "
             f"sha256 `{document['trace']['sha256'][:12]}`",
             f"- reproduce: `countdrift run {scenario.get('path', 'SCENARIO')} --seed {document['seed']}"
             + (f" --backend {document['backend']}" if document["backend"] != DEFAULT else "") + "`", ""]
    lines += _markdown_table(document)
    lines += _what_users_saw(document)
    server = scenario.get("server", {})
    if server.get("topology") == "cluster":
        shards = list(document["runs"][0].get("shard_commands", {})) if document["runs"] else []
        lines += ["", f"Redis Cluster: {server['cluster_primaries']} primaries x "
                      f"{server['cluster_replicas_per_primary']} replica(s); commands per shard's primary:", "",
                  "| strategy | " + " | ".join(shards) + " |", "|" + "---|" * (len(shards) + 1)]
        lines += [f"| {run['strategy']} | " + " | ".join(str(run.get("shard_commands", {}).get(name, ""))
                                                          for name in shards) + " |" for run in document["runs"]]
        if any(run.get("shard_drift") for run in document["runs"]):
            lines += ["", "Users with a wrong total / |drift|, by the shard of their keys (a fault on one shard "
                          "should leave the others at 0):", "",
                      "| strategy | " + " | ".join(shards) + " |", "|" + "---|" * (len(shards) + 1)]
            lines += [f"| {run['strategy']} | " + " | ".join(
                "{users_wrong_total} / {abs_drift_sum}".format(**run.get("shard_drift", {}).get(name, {
                    "users_wrong_total": "", "abs_drift_sum": ""})) for name in shards) + " |"
                for run in document["runs"]]
    if capacity:
        lines += ["", f"Capacity (`countdrift capacity`: the best throughput with p99 <= "
                      f"{capacity['slo_p99_ms']:g} ms, closed loop, no faults; the trade-off chart plots it):", "",
                  "| strategy | capacity ops/s | clients |", "|---|---|---|"]
        lines += [f"| {name} | {result['capacity_ops_per_s']:,.0f} | {result['clients']} |"
                  for name, result in capacity["strategies"].items()]
    faults = document["runs"][0]["faults"] if document["runs"] else []
    if faults:
        lines += ["", "Faults applied (the same schedule for every strategy):", ""]
        for fault in faults:
            params = ", ".join(f"{key}={value}" for key, value in fault["params"].items())
            lines.append(f"- {fault['at']:.3f} s: {fault['kind']} for {fault['duration']} s"
                         + (f" ({params})" if params else ""))
    causes = [run for run in document["runs"] if "drift_by_cause" in run]
    if causes and faults:
        names = list(causes[0]["drift_by_cause"]["abs_drift_sum"])
        lines += ["", "Drift by cause (the shares add up to the abs drift):", "",
                  "| strategy | abs drift | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
        for run in causes:
            shares = run["drift_by_cause"]["abs_drift_sum"]
            lines.append(f"| {run['strategy']} | {run['drift']['abs_drift_sum']} | "
                         + " | ".join(str(shares[name]) for name in names) + " |")
    lines += _explain_lines(document, list(stories))
    return lines + [""]


def capacity_against_real(capacities: list[dict]) -> list[str]:
    """Every scenario measured on both backends: each strategy's capacity
    simulated with the redis backend's driver modelled (`countdrift capacity
    --model-driver`), beside the real one (the median of the real
    measurements given, each listed), and their ratio: how well the
    simulation is calibrated to this machine. Measurements compare only for
    the same scenario file and latency objective; a simulation per driver
    model (identical ones are one)."""
    lines: list[str] = []
    modelled: dict[str, dict] = {}
    for capacity in capacities:
        if deterministic(capacity) and "driver_model" in capacity:
            modelled[json.dumps([capacity["scenario"]["sha256"], capacity["slo_p99_ms"], capacity["driver_model"]],
                                sort_keys=True)] = capacity
    for simulated in modelled.values():
        real = [capacity for capacity in capacities if not deterministic(capacity)
                and same_scenario_file(capacity, simulated) and capacity["slo_p99_ms"] == simulated["slo_p99_ms"]]
        rows = []
        for name, result in simulated["strategies"].items():
            runs = [capacity["strategies"][name]["capacity_ops_per_s"] for capacity in real
                    if name in capacity["strategies"]]
            if runs:
                median = statistics.median(runs)
                ratio = f"{result['capacity_ops_per_s'] / median:.2f}" if median else "-"
                rows.append(f"| {name} | {result['capacity_ops_per_s']:,.0f} | {median:,.0f} | "
                            f"{', '.join(f'{run:,.0f}' for run in runs)} | {ratio} |")
        if not rows:
            continue
        scenario, driver = simulated["scenario"], simulated["driver_model"]
        lines += [f"## Capacity of {scenario['name']}, simulated against real servers (p99 <= "
                  f"{simulated['slo_p99_ms']:g} ms)", "",
                  f"The best throughput with p99 under the objective (closed loop, no faults) of scenario file "
                  f"sha256 {scenario['sha256'][:12]}. The simulation models the redis backend's driver on the "
                  "calibrated machine (" + ", ".join(f"{key} {value:g}" for key, value in driver.items()) + "); "
                  "real: the median of the real measurements, each one listed.", "",
                  "| strategy | simulated ops/s | real ops/s (median) | each real | simulated / real |",
                  "|---|---|---|---|---|", *rows, ""]
    return lines


def _fidelity_section(document: dict, index: int, folder: Path, drawn: list[tuple[str, Path]]) -> list[str]:
    left, right = document["backends"]
    caption = f"Fidelity {left} / {right}"
    drawn.append((caption, charts.save(charts.fidelity(document), folder, f"fidelity-{index}")[0]))
    lines = [f"## {caption}", "",
             f"Each cell ran the same trace and schedule on both backends. A cell disagrees when the drift "
             f"classes differ, or when |drift| is above {document['size_floor']} on either side and the two are "
             f"more than {document['size_factor']:g}x apart.", ""]
    disagreeing = [cell for cell in document["cells"] if cell["disagreement"] is not None]
    lines.append(f"{len(document['cells']) - len(disagreeing)} of {len(document['cells'])} cells agree.")
    lines += [""] + [f"- {cell['scenario']} seed {cell['seed']}, {cell['strategy']}: {cell['disagreement']}"
                     for cell in disagreeing]
    return lines + [""]


def write_report(documents: list[dict], folder: Path, fidelities: list[dict] = (),
                 capacities: list[dict] = (), sweeps: list[dict] = (),
                 sources: list[Path] | None = None, stories: list[dict] = ()) -> tuple[Path, Path]:
    """``sources``: the file each document was read from, named where two
    documents would read alike; ``stories``: shrunk reproductions (find_stories)."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = draw_all(documents, folder, capacities, sources)
    markdown = ["# countdrift report", "",
                "Drift is how far the counters ended from the truth (the message log): `inconsistent` users "
                "have a total that is not the sum of their conversation counts, `wrong total` users a total "
                "outside the true range. Latency is measured from each operation's intended start.", ""]
    for index, fidelity in enumerate(fidelities):
        markdown += _fidelity_section(fidelity, index, folder, drawn)
    for index, sweep in enumerate(sweeps):
        markdown += sweep_sections(sweep, folder, index, drawn)
    markdown += capacity_against_real(list(capacities))
    for document, title in zip(documents, titles(documents, sources)):
        markdown += _section(document, capacity_of(document, capacities), title, stories)
    markdown += ["## Charts", ""] if drawn else []
    for caption, png in drawn:
        markdown += [f"### {caption}", "", f"![{caption}]({png.name})", ""]
    markdown_path = folder / "summary.md"
    write_text(markdown_path, "\n".join(markdown))
    html_path = folder / "summary.html"
    write_text(html_path, _html(markdown, drawn))
    return markdown_path, html_path


def _cells(row: list[str], tag: str) -> str:
    return "".join(f"<{tag}>{html.escape(cell.strip())}</{tag}>" for cell in row)


def _html(markdown: list[str], drawn: list[tuple[str, Path]]) -> str:
    """A self-contained page: the Markdown's text and tables, the charts inline."""
    images = {png.name: base64.b64encode(png.read_bytes()).decode() for _, png in drawn}
    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if table:
            rows = [row.strip("|").split("|") for row in table if not set(row) <= set("|-")]
            body.append("<table><tr>" + _cells(rows[0], "th") + "</tr>"
                        + "".join("<tr>" + _cells(row, "td") + "</tr>" for row in rows[1:]) + "</table>")
            table.clear()

    for line in markdown:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            name = line[line.rindex("](") + 2:-1]
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{images[name]}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('`', '')}</li>")
        elif line:
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}"
             "img{max-width:100%;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>countdrift report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
