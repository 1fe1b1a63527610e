"""countdrift checks every file it reads back: an edited or hand-made
trace.npz, a results.json with a value out of its schema, a run file copied
into another seed's place of a sweep. Each ends in one line naming the file
and what is wrong, exit 2, nothing written; none is silently accepted, and
none ends in a traceback (Hypothesis fuzzes their contents)."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.traffic import ARRAYS, Trace

from conftest import SMALL_SCENARIO

TINY = SMALL_SCENARIO.replace("messages = 3000", "messages = 300")
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))   # -m slow


@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own")
    scenario = folder / "tiny.toml"
    scenario.write_text(TINY)
    assert main(["run", str(scenario), "--strategies", "naive,lua", "--out", str(folder / "run"), "-q"]) == 0
    return folder


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("countdrift: error:"), captured.err
    return lines[0]


# -- trace.npz -------------------------------------------------------------------------------------------

def _save_raw(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as out:
        np.savez_compressed(out, meta=np.array(json.dumps(meta)), **arrays)


def _mutations():
    names = st.sampled_from(sorted(ARRAYS))
    value = st.sampled_from([-1, -5, 2 ** 31 - 1, 10 ** 6, 3])
    return st.one_of(
        st.tuples(st.just("set"), names, st.integers(0, 10 ** 6), value),
        st.tuples(st.just("nan"), st.just("t"), st.integers(0, 10 ** 6), st.just(0)),
        st.tuples(st.just("truncate"), names, st.integers(0, 10 ** 6), st.just(0)),
        st.tuples(st.just("reverse"), names, st.just(0), st.just(0)),
        st.tuples(st.just("retype"), names, st.just(0), st.just(0)),
    )


def _mutate(arrays: dict[str, np.ndarray], mutation) -> dict[str, np.ndarray]:
    how, name, index, value = mutation
    arrays = {key: array.copy() for key, array in arrays.items()}
    array = arrays[name]
    position = index % len(array)
    if how == "set":
        array[position] = np.array(value, dtype=np.int64).astype(array.dtype)   # wraps where the type is narrower
    elif how == "nan":
        array[position] = math.nan
    elif how == "truncate":
        arrays[name] = array[:position]
    elif how == "reverse":
        arrays[name] = array[::-1].copy()
    else:
        arrays[name] = array.astype(np.float32 if array.dtype.kind == "i" else np.int64)
    return arrays


@FUZZ
@given(mutation=_mutations(), checksum_updated=st.booleans())
def test_an_edited_trace_is_refused_by_run(a_run, tmp_path_factory, capsys, mutation, checksum_updated):
    """With its checksum left as it was (an edit), or updated (a hand-made
    file): refused by the checksum, or by the check of every array; or, when
    the edit happens to leave a valid trace, a run of the edited traffic."""
    _run_an_edited_trace(a_run, tmp_path_factory, capsys, mutation, checksum_updated)


@pytest.mark.slow
@LONG
@given(mutation=_mutations(), checksum_updated=st.booleans())
def test_many_edited_traces(a_run, tmp_path_factory, capsys, mutation, checksum_updated):
    _run_an_edited_trace(a_run, tmp_path_factory, capsys, mutation, checksum_updated)


def _run_an_edited_trace(a_run, tmp_path_factory, capsys, mutation, checksum_updated) -> None:
    original = Trace.load(a_run / "run" / "trace.npz")
    arrays = _mutate(original._arrays(), mutation)
    meta = {"format": 1, "seed": original.seed, "config": json.loads(json.dumps(original.config.__dict__)),
            "sha256": original.sha256()}
    if checksum_updated:
        meta["sha256"] = Trace(original.config, original.seed, **arrays).sha256()
    folder = tmp_path_factory.mktemp("trace")
    edited = folder / "edited.npz"
    _save_raw(edited, meta, arrays)
    capsys.readouterr()
    out = folder / "out"
    status = main(["run", str(a_run / "tiny.toml"), "--trace", str(edited), "--strategies", "lua", "--out", str(out),
                   "-q"])
    changed = any(not np.array_equal(arrays[name], getattr(original, name)) or arrays[name].dtype != ARRAYS[name]
                  for name in ARRAYS)
    if changed and not checksum_updated:
        assert status == 2
        line = _one_error_line(capsys)
        assert "checksum" in line or "not a row" in line, line
    elif status == 2:
        assert str(edited) in _one_error_line(capsys)
    else:
        assert status == 0, "a valid edit runs"
        assert json.loads((out / "results.json").read_text())["trace"]["sha256"] == meta["sha256"]
    if status == 2:
        assert not out.exists()


def test_a_file_that_is_not_a_trace_is_refused_in_one_line(a_run, tmp_path, capsys):
    for content in (b"", b"not a zip", b"PK\x03\x04broken"):
        path = tmp_path / "bad.npz"
        path.write_bytes(content)
        assert main(["run", str(a_run / "tiny.toml"), "--trace", str(path), "--out", str(tmp_path / "o"), "-q"]) == 2
        assert "bad.npz" in _one_error_line(capsys)
    np.savez(tmp_path / "plain.npz", t=np.zeros(3))
    assert main(["run", str(a_run / "tiny.toml"), "--trace", str(tmp_path / "plain.npz"), "-q"]) == 2
    assert "metadata" in _one_error_line(capsys)
    data = (a_run / "run" / "trace.npz").read_bytes()   # a deflate stream damaged inside: zlib's own error
    for at in range(len(data) // 8, len(data) - 256, len(data) // 8):
        (tmp_path / "damaged.npz").write_bytes(data[:at] + bytes(256) + data[at + 256:])
        status = main(["run", str(a_run / "tiny.toml"), "--trace", str(tmp_path / "damaged.npz"), "--out",
                       str(tmp_path / f"o{at}"), "-q"])
        if status != 0:   # (bytes no array reads may be damaged harmlessly)
            assert status == 2 and "damaged.npz" in _one_error_line(capsys)
        capsys.readouterr()


# -- results.json --------------------------------------------------------------------------------------

def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value[:3]):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _set(document: dict, path: tuple, value) -> dict:
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        if isinstance(target, dict):
            del target[path[-1]]
        else:
            target.pop(path[-1])
    else:
        target[path[-1]] = value
    return document


_DELETE = object()
# Fields a reader relies on: a value of the wrong kind there must be refused, never read.
COUNTS = ("users_inconsistent", "users_wrong_total", "convs_wrong", "abs_drift_sum", "max_abs_drift",
          "overcount", "undercount", "retries", "ambiguous", "errors", "ops")
AMOUNTS = ("p50", "p99", "p999", "max", "throughput_ops_per_s", "t", "at")


def _must_refuse(path: tuple, value) -> bool:
    """Whether this edit breaks what schema_version 1 promises."""
    last = path[-1]
    if isinstance(value, float) and not math.isfinite(value):
        return True
    # a run's own figures, its drift, its latency, its timeline's points, its faults' times
    read = path[:1] == ("runs",) and (len(path) == 3 or path[2] in ("drift", "latency_ms", "timeline", "faults"))
    if read and last in COUNTS:
        return not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2 ** 53)
    if read and last in AMOUNTS:
        return not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1e15)
    return path in (("seed",), ("backend",), ("schema_version",)) and value is _DELETE


@FUZZ
@given(data=st.data())
def test_an_edited_results_json_is_refused_or_read_never_a_traceback(a_run, tmp_path_factory, capsys, data):
    _read_an_edited_results_json(a_run, tmp_path_factory, capsys, data)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_many_edited_results_json(a_run, tmp_path_factory, capsys, data):
    _read_an_edited_results_json(a_run, tmp_path_factory, capsys, data)


def _read_an_edited_results_json(a_run, tmp_path_factory, capsys, data) -> None:
    document = json.loads((a_run / "run" / "results.json").read_text())
    path = data.draw(st.sampled_from(sorted(_leaves(document), key=str)))
    value = data.draw(st.sampled_from([_DELETE, math.nan, -math.inf, -1, -0.5, "7", None, [], {}, 10 ** 30, True]))
    edited = _set(document, path, value)
    folder = tmp_path_factory.mktemp("results")
    (folder / "edited").mkdir()
    (folder / "edited" / "results.json").write_text(json.dumps(edited))
    capsys.readouterr()
    for command in (["report", str(folder / "edited"), "--out", str(folder / "report")],
                    ["compare", str(a_run / "run"), str(folder / "edited")],
                    ["compare", str(folder / "edited"), str(a_run / "run")]):
        status = main(command)
        captured = capsys.readouterr()
        assert "internal error" not in captured.err and "Traceback" not in captured.err, (path, value, captured.err)
        if _must_refuse(path, value):
            assert status == 2, (command, path, value, captured.out[-300:])
            assert "results.json" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        else:
            assert status in (0, 1, 2), (command, path, value)
            if status == 2:
                assert len(captured.err.strip().splitlines()) == 1, captured.err


def test_a_nan_or_negative_drift_is_never_zero_regressions(a_run, tmp_path, capsys):
    document = json.loads((a_run / "run" / "results.json").read_text())
    for value in (math.nan, -3):
        edited = _set(document, ("runs", 0, "drift", "abs_drift_sum"), value)
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / "results.json").write_text(json.dumps(edited))
        assert main(["compare", str(a_run / "run"), str(tmp_path / "edited")]) == 2
        assert "abs_drift_sum" in _one_error_line(capsys)


# -- a sweep's run files --------------------------------------------------------------------------------

def test_a_sweep_refuses_to_resume_from_a_run_copied_into_another_place(a_run, tmp_path, capsys):
    scenario = a_run / "tiny.toml"
    out = tmp_path / "sweep"
    command = ["sweep", str(scenario), "--strategies", "naive,lua", "--seed-range", "1:2", "--workers", "1",
               "--out", str(out), "-q"]
    assert main(command) == 0
    capsys.readouterr()
    seed_two = out / "small" / "s2" / "naive" / "results.json"
    for source in (out / "small" / "s1" / "naive" / "results.json", out / "small" / "s2" / "lua" / "results.json"):
        shutil.copy(source, seed_two)
        assert main(command) == 2
        line = _one_error_line(capsys)
        assert str(seed_two) in line and ("seed" in line or "strategy" in line), line


def test_compare_and_report_refuse_a_sweep_whose_run_was_changed_since(a_run, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(a_run / "tiny.toml"), "--strategies", "lua", "--seed-range", "1:2", "--workers", "1",
                 "--out", str(out), "-q"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    run = copy / "small" / "s2" / "lua" / "results.json"
    for value in (math.nan, 7):
        document = json.loads((out / "small" / "s2" / "lua" / "results.json").read_text())
        document["runs"][0]["drift"]["abs_drift_sum"] = value
        run.write_text(json.dumps(document))
        capsys.readouterr()
        assert main(["compare", str(out), str(copy)]) == 2
        assert str(run) in _one_error_line(capsys)
        assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 2
        assert str(run) in _one_error_line(capsys)
