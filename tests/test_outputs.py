"""No command removes or replaces a file it did not write: the user's files
planted in every --out of every command survive, a destination that is not
the command's own output is refused in one line before any work (unless
--force, which writes beside them), and writes that fail say so in one line
and leave nothing partial."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main

from conftest import ROOT, SMALL_SCENARIO

TINY = SMALL_SCENARIO.replace("messages = 3000", "messages = 300")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def a_run(tiny: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["run", str(tiny), "--strategies", "naive,lua", "--out", str(out), "-q"]) == 0
    return out


def _folder_commands(tiny: Path, a_run: Path) -> dict[str, list[str]]:
    """Each command that writes a folder, as its arguments before --out."""
    return {
        "run": ["run", str(tiny), "--strategies", "naive", "-q"],
        "report": ["report", str(a_run)],
        "sweep": ["sweep", str(tiny), "--strategies", "naive", "--seeds", "1", "--workers", "1", "-q"],
        "capacity": ["capacity", str(tiny), "--strategies", "naive", "--clients", "1", "-q"],
        "cost": ["cost", "--strategies", "naive", "--repeats", "3", "-q"],
    }


def _plant(folder: Path) -> dict[str, bytes]:
    """The user's own files in a folder: a note, a results.json-looking
    file of theirs in a subfolder, a hidden file."""
    folder.mkdir(parents=True, exist_ok=True)
    planted = {"notes.txt": b"my notes\n", "mine/results.json": b'{"mine": true}\n', ".hidden": b"x"}
    for name, content in planted.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return planted


def _intact(folder: Path, planted: dict[str, bytes]) -> None:
    for name, content in planted.items():
        assert (folder / name).read_bytes() == content, f"{name} was changed or removed"


@pytest.mark.parametrize("command", ["run", "report", "sweep", "capacity", "cost"])
def test_every_folder_output_keeps_the_users_files(command, tiny, a_run, tmp_path, capsys):
    arguments = _folder_commands(tiny, a_run)[command]
    out = tmp_path / "out"
    planted = _plant(out)
    before = sorted(path.name for path in out.rglob("*"))
    capsys.readouterr()
    assert main([*arguments, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--force" in err[0], err
    assert sorted(path.name for path in out.rglob("*")) == before, "a refused command wrote something"
    assert not list(tmp_path.glob(".out.partial-*"))

    assert main([*arguments, "--out", str(out), "--force"]) == 0
    _intact(out, planted)
    assert main([*arguments, "--out", str(out)]) == 0, "its own output, with the user's files beside it"
    _intact(out, planted)
    assert not list(out.glob(".out.partial-*")) and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("command", ["run", "report"])
def test_a_folder_of_its_own_is_replaced_whole_and_a_file_added_later_is_kept(command, tiny, a_run, tmp_path):
    arguments = _folder_commands(tiny, a_run)[command]
    out = tmp_path / "out"
    assert main([*arguments, "--out", str(out)]) == 0
    ours = sorted(path.name for path in out.iterdir())
    assert main([*arguments, "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ours
    (out / "added-later.txt").write_text("mine")
    assert main([*arguments, "--out", str(out)]) == 0
    assert (out / "added-later.txt").read_text() == "mine"


def test_force_never_replaces_a_file_of_the_users_with_the_same_name(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("my own results")
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(out), "--force", "-q"]) == 2
    assert "results.json" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "my own results"
    assert not (out / "trace.npz").exists()


def test_report_refuses_to_write_over_the_runs_it_reads(a_run, capsys):
    before = {path.name: path.read_bytes() for path in a_run.iterdir()}
    assert main(["report", str(a_run), "--out", str(a_run)]) == 2
    assert "countdrift run" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in a_run.iterdir()} == before


def test_a_command_that_writes_the_other_commands_folder_is_refused(tiny, a_run, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["report", str(a_run), "--out", str(report)]) == 0
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(report), "-q"]) == 2
    assert "countdrift report" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--json", "--markdown"])
def test_compare_never_overwrites_a_file_it_did_not_write(option, a_run, tmp_path, capsys):
    target = tmp_path / "verdict"
    target.write_text("my own file")
    assert main(["compare", str(a_run), str(a_run), option, str(target)]) == 2
    assert "--force" in capsys.readouterr().err and target.read_text() == "my own file"
    assert main(["compare", str(a_run), str(a_run), option, str(target), "--force"]) == 0
    assert main(["compare", str(a_run), str(a_run), option, str(target)]) == 0, "its own file is replaced"
    assert "countdrift compare" in target.read_text()


def test_trace_and_calibrate_never_overwrite_a_file_they_did_not_write(tiny, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    assert main(["trace", str(tiny), "--out", str(target)]) == 2
    assert main(["calibrate", "--out", str(target)]) == 2
    assert capsys.readouterr().err.count("--force") == 2
    assert target.read_text() == "my notes"
    trace = tmp_path / "t.npz"
    assert main(["trace", str(tiny), "--out", str(trace)]) == 0
    assert main(["trace", str(tiny), "--out", str(trace), "--seed", "9"]) == 0, "its own trace is replaced"


def test_a_symbolic_link_as_out_writes_into_its_target_and_stays_a_link(tiny, tmp_path):
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(link), "-q"]) == 0
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(link), "-q"]) == 0
    assert link.is_symlink() and (target / "results.json").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "target", "tiny.toml"]


def test_the_working_folder_as_out_takes_the_files_beside_the_users(tiny, tmp_path):
    folder = tmp_path / "here"
    planted = _plant(folder)
    command = [sys.executable, "-m", "sim.cli", "run", str(tiny), "--strategies", "naive", "--out", ".", "-q"]
    refused = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    done = subprocess.run([*command, "--force"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _intact(folder, planted)
    assert (folder / "results.json").exists() and (folder / "trace.npz").exists()


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_a_write_that_fails_is_one_line_and_leaves_nothing_partial(tiny, tmp_path):
    """A file-size limit (what a full disk does to a write, without needing
    one): the trace is larger than the limit; exit 2, one line naming the
    path and the cause, no partial file or folder, the old output intact."""
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(out), "-q"]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    command = [sys.executable, "-m", "sim.cli", "run", str(tiny), "--strategies", "lua", "--out", str(out), "-q"]
    failed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=_limited(3_000))
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 2 and len(lines) == 1, failed.stderr
    assert str(out) in lines[0] and "file too large" in lines[0], lines
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "tiny.toml"]


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs mounted with those options (root only;
    skipped where mounting is not allowed), unmounted afterwards."""
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mount{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_a_read_only_destination_is_refused_before_any_work(tiny, mount, capsys):
    folder = mount("size=1m,ro")
    for out in (folder, folder / "out"):
        assert main(["run", str(tiny), "--strategies", "naive", "--out", str(out), "-q"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "Read-only file system" in lines[0], lines
    assert main(["compare", str(tiny.parent), str(tiny.parent), "--json", str(folder / "v.json")]) == 2
    assert "Read-only file system" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_leaves_nothing_partial(tiny, mount, capsys):
    folder = mount("size=64k")
    filler = folder / "the-users-big-file"
    filler.write_bytes(b"x" * 56 * 1024)
    out = folder / "out"
    assert main(["run", str(tiny), "--strategies", "naive,lua", "--out", str(out), "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], lines
    assert list(folder.iterdir()) == [filler] and filler.stat().st_size == 56 * 1024


def test_a_mount_point_as_out_is_written_into_not_swapped(tiny, mount, capsys):
    folder = mount("size=4m")
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(folder), "-q"]) == 0
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(folder), "-q"]) == 0
    assert os.path.ismount(folder)
    assert sorted(path.name for path in folder.iterdir()) == [".countdrift-output.json", "history.npz", "results.json",
                                                          "trace.npz"]


def test_two_writers_of_one_trace_never_leave_a_file_that_does_not_load(tiny, tmp_path):
    out = tmp_path / "same.npz"
    command = [sys.executable, "-m", "sim.cli", "trace", str(tiny), "--out", str(out)]
    writers = [subprocess.Popen([*command, "--seed", str(seed)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in (1, 2, 3, 4)]
    results = [writer.communicate(timeout=120) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), results
    from sim.traffic import Trace

    loaded = Trace.load(out)
    printed = {line.split(":")[1].strip() for out_, _ in results for line in out_.splitlines()
               if line.strip().startswith("sha256")}
    assert loaded.sha256() in printed
    assert sorted(path.name for path in tmp_path.iterdir()) == ["same.npz", "tiny.toml"]


def test_an_output_marker_names_the_command_and_its_files(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--strategies", "naive", "--out", str(out), "-q"]) == 0
    marker = json.loads((out / ".countdrift-output.json").read_text())
    assert marker["written"] == {"run": ["history.npz", "results.json", "trace.npz"]}


def test_a_folder_written_before_markers_is_recognized_by_exact_names_only(a_run, tmp_path, capsys):
    """A report folder from before markers holds the user's diagram.png: it
    is not one of report's charts, so the folder is not report's alone."""
    old = tmp_path / "old-report"
    old.mkdir()
    (old / "summary.md").write_text("# countdrift report\n")
    (old / "timeline-quick-sim-s42.png").write_bytes(b"chart")
    (old / "architecture-diagram.png").write_bytes(b"mine")
    assert main(["report", str(a_run), "--out", str(old)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(a_run), "--out", str(old), "--force"]) == 2, "summary.md is not known to be ours"
    assert (old / "architecture-diagram.png").read_bytes() == b"mine"
    (old / "architecture-diagram.png").unlink()
    assert main(["report", str(a_run), "--out", str(old)]) == 0, "what is left is a report's own"


def test_two_commands_writing_one_folder_keep_each_others_files(a_run, tmp_path):
    out = tmp_path / "shared"
    shutil.copytree(a_run, out)
    assert main(["report", str(out / "results.json"), "--out", str(out), "--force"]) == 0
    assert (out / "results.json").exists() and (out / "summary.md").exists()
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    assert main(["run", str(scenario), "--strategies", "naive", "--out", str(out), "--force", "-q"]) == 0
    assert (out / "summary.md").exists(), "the report's files stay"
    written = json.loads((out / ".countdrift-output.json").read_text())["written"]
    assert set(written) == {"run", "report"} and written["run"] == ["history.npz", "results.json", "trace.npz"]


def test_a_sweep_never_replaces_a_sweep_json_it_did_not_write(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text('{"mine": 1}')
    for force in ([], ["--force"]):
        assert main(["sweep", str(tiny), "--strategies", "naive", "--seeds", "1", "--workers", "1",
                     "--out", str(out), "-q", *force]) == 2
        assert "sweep.json" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == '{"mine": 1}'


def test_a_pipe_as_a_file_output_is_refused_at_once(tiny, tmp_path, capsys):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for command in (["trace", str(tiny), "--out", str(pipe)], ["trace", str(tiny), "--out", str(pipe), "--force"],
                    ["compare", str(tmp_path), str(tmp_path), "--json", str(pipe)]):
        assert main(command) == 2
        assert "not a regular file" in capsys.readouterr().err
    assert pipe.is_fifo()
