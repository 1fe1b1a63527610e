"""Where a command writes: folders and files written whole or not at all,
and never a file countdrift did not write removed or replaced.

A folder a command writes holds a marker (``.countdrift-output.json``: the
command and the names it wrote). A destination that exists is taken only
when it is empty or an output of the same command (by its marker, or, for
folders written before markers, because every name in it is one that
command writes); anything else is refused, with one line, before any work,
unless ``--force``: then the command writes its files into it and keeps
everything else, and a name it would write that it did not write before is
still refused.

The files are written in a hidden ``.<name>.partial-<pid>`` folder beside
the destination; when they are complete they take its place in one step
(renameat2 with RENAME_EXCHANGE where the kernel has it), so a reader finds
the old folder or the new one, never a mix. Where the destination cannot be
swapped whole (it holds files of the user's, it is a mount point or holds
the working folder), the partial folder is made inside it and each file
replaces its old copy in one step. A command that fails or is interrupted
removes its partial folder; one left by a process that was killed outright
is removed by the next command that writes there (it carries the marker
and the PID of its writer, which is no longer alive).

Every file is written under a temporary name unique to the process and
renamed into place; a write that fails (a full disk, a file-size limit, a
read-only file system) ends the command with one line naming the path and
the cause, and leaves nothing partial.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable

from sim.errors import UsageError

MARKER = ".countdrift-output.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# For folders written before markers: the names each command wrote there
# (exactly: a user's diagram.png is not one of report's charts), the
# folders it wrote, and its main file with what that file begins with.
LEGACY: dict[str, tuple[str, str, str, bytes]] = {
    "run": (r"results\.json|trace\.npz", "", "results.json", b'{\n  "schema_version": 1,'),
    "report": (r"summary\.(md|html)|(tradeoff|timeline|latency)-.+-s\d+(-\d+)?\.(png|svg)"
               r"|matrix-(drift|throughput)\.(png|svg)|fidelity-\d+\.(png|svg)|sweep-.+\.(png|svg)",
               "", "summary.md", b"# countdrift report"),
    "fidelity": (r"fidelity\.json", r"[A-Za-z0-9][A-Za-z0-9._-]*-s\d+", "fidelity.json", b'{\n  "fidelity_schema":'),
    "capacity": (r"capacity\.json", "", "capacity.json", b'{\n  "capacity_schema":'),
    "cost": (r"cost\.json", "", "cost.json", b'{\n  "cost_schema":'),
}


class OutputError(UsageError):
    """A destination that cannot be written, or a write that failed."""


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def cause(error: OSError) -> str:
    """An OSError's cause in words."""
    if error.errno == errno.EFBIG:
        return "file too large (a file-size limit)"
    return error.strerror or type(error).__name__


def write_file(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` under a temporary name unique
    to this process, then rename it into place: a reader never sees half a
    file, two writers never share a temporary file, and a failure leaves
    nothing (OutputError names the path and the cause)."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.fchmod(handle, 0o666 & ~_UMASK)   # as open() would make it, not mkstemp's 0600
        with os.fdopen(handle, "wb" if binary else "w") as out:
            write(out)
            out.flush()
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise OutputError(f"cannot write {path}: {cause(error)}") from None
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda out: out.write(text))


def _real(path: Path) -> Path:
    """The destination a path names: a symbolic link's target (the link is kept)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _writable_parent(path: Path, option: str) -> None:
    """Refuse, before any work, a destination whose nearest existing folder
    is a file or cannot take a new file (read-only, no permission)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path}: {parent} is a file, not a folder")
            _probe(parent, f"{option} {path}")
            return


def _probe(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the honest test that it takes one."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".countdrift-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"{what}: cannot write in {folder}: {cause(error)}") from None


def check_file(path: Path, option: str, ours: Callable[[Path], bool] | None = None, force: bool = False) -> Path:
    """Refuse, before any work, a file destination that cannot be written,
    or that exists and is not a file countdrift wrote of this kind
    (``ours``), unless ``force``. Returns the path to write (a symbolic
    link's target)."""
    given = Path(path)
    try:
        path = _real(given)
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a folder; name a file")
        _writable_parent(path, option)
        exists = path.exists()
        if exists and not path.is_file():   # a pipe or a device: reading it to know whose it is would block
            raise OutputError(f"{option} {given}: not a regular file; name a file")
    except OSError as error:   # a name too long, a loop of links
        raise OutputError(f"{option} {given}: {cause(error)}") from None
    if exists:
        if not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
            raise OutputError(f"{option} {path}: cannot be replaced (no write permission)")
        if ours is not None and not force and not ours(path):
            raise OutputError(f"{option} {path}: exists and is not a file countdrift wrote; name another file, "
                              f"or add --force to replace it")
    return path


def check_folder(path: Path, option: str) -> Path:
    """Refuse, before any work, a folder destination that cannot be
    written; returns the folder to write (a symbolic link's target)."""
    given = Path(path)
    try:
        path = _real(given)
        if path.exists() and not path.is_dir():
            raise OutputError(f"{option} {given}: exists and is not a folder; name a folder")
        _writable_parent(path, option)
        if path.is_dir():
            _probe(path, f"{option} {given}")
    except OSError as error:   # a name too long, a loop of links
        raise OutputError(f"{option} {given}: {cause(error)}") from None
    return path


def _read_marker(folder: Path) -> dict | None:
    """A folder's marker as {"written": {command: [names]}, ...}, or None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict):
        return None
    if isinstance(marker.get("command"), str) and isinstance(marker.get("files"), list):   # one command's marker
        marker["written"] = {marker["command"]: marker["files"]}
    written = marker.get("written")
    if not isinstance(written, dict) or not all(isinstance(names, list) for names in written.values()):
        return None
    return marker


def _names(folder: Path) -> set[str]:
    """What a folder holds, but for the marker and countdrift's partial folders in it."""
    return {entry.name for entry in folder.iterdir()
            if entry.name != MARKER and not entry.name.startswith(f".{folder.name}.partial-")}


def _written(folder: Path) -> dict[str, set[str]]:
    """command -> the names in ``folder`` that command wrote (from the
    marker; for a folder written before markers, recognized whole)."""
    names = _names(folder)
    marker = _read_marker(folder)
    if marker is not None:
        return {str(command): names & {str(name) for name in listed}
                for command, listed in marker["written"].items()}
    for command, (files, folders, main, head) in LEGACY.items():
        if names and all(re.fullmatch(files, name) or (folders and re.fullmatch(folders, name)
                                                      and (folder / name).is_dir()) for name in names):
            try:
                with open(folder / main, "rb") as file:
                    if file.read(len(head)) == head:
                        return {command: names}
            except OSError:
                continue
    return {}


def _is_partial(entry: Path) -> bool:
    """A partial folder of a writer that is no longer alive."""
    marker = _read_marker(entry) if entry.is_dir() else None
    pid = marker.get("partial_of") if marker else None
    return isinstance(pid, int) and not alive(pid)


def _holds_working_folder(path: Path) -> bool:
    try:
        return Path.cwd().resolve().is_relative_to(path.resolve())
    except OSError:
        return False


class OutputFolder:
    """``with OutputFolder(path, "--out", "run") as folder: ...write into folder.partial...; folder.commit()``

    ``writes``: the names the command will surely write, so that one that
    would meet a file of the user's under --force is refused before any work."""

    def __init__(self, path: Path, option: str, command: str, force: bool = False,
                 writes: tuple[str, ...] = ()) -> None:
        self.given = Path(path)
        self.path = path = check_folder(self.given, option)
        self.option = option
        self.command = command
        self.partial: Path | None = None
        self.committed = False
        self.in_place = False
        if not path.is_dir():
            return
        written = _written(path)
        foreign = _names(path) - set().union(*written.values())
        others = sorted(set(written) - {command})
        # Its own output (the user's files added to it are kept), or an empty folder.
        own = not others and (command in written or not foreign)
        if not own and not force:
            what = (f"holds the output of `countdrift {others[0]}`" if others
                    else "holds files countdrift did not write")
            raise OutputError(f"{option} {self.given}: {what}; name another folder, or add --force to write "
                              f"{command}'s files into it (nothing else in it is touched)")
        self._refuse_clash(set(writes), written.get(command, set()))
        self.in_place = bool(foreign or others) or os.path.ismount(path) or _holds_working_folder(path)

    def _refuse_clash(self, names: set[str], ours: set[str]) -> None:
        """Refuse to write a name that is there and that this command did not write there."""
        clash = sorted(name for name in names if (self.path / name).exists() and name not in ours)
        if clash:
            raise OutputError(f"{self.option} {self.given}: {', '.join(clash)} exist(s) there and `countdrift "
                              f"{self.command}` did not write them; it never replaces such a file: move them, or "
                              f"name another folder")

    def __enter__(self) -> "OutputFolder":
        made = False
        try:
            if self.in_place:
                beside = self.path
            else:
                beside = self.path.absolute().parent
                beside.mkdir(parents=True, exist_ok=True)
            prefix = f".{self.path.name}.partial-"
            for stale in beside.glob(f"{glob.escape(prefix)}*"):
                if _is_partial(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            self.partial = beside / f"{prefix}{os.getpid()}"
            if self.partial.exists() and _read_marker(self.partial) is None:
                raise OutputError(f"{self.option} {self.given}: {self.partial} is in the way and countdrift did "
                                  f"not make it; move it")
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir()
            made = True
            self._mark(self.partial, {self.command: []}, partial_of=os.getpid())
        except OutputError as error:   # a full disk can refuse the marker itself: nothing stays
            if made:
                shutil.rmtree(self.partial, ignore_errors=True)
            self._reword(error)
            raise
        except OSError as error:
            if made:
                shutil.rmtree(self.partial, ignore_errors=True)
            raise OutputError(f"{self.option} {self.given}: cannot write: {cause(error)}") from None
        return self

    @staticmethod
    def _mark(folder: Path, written: dict[str, list[str]], **extra: object) -> None:
        write_text(folder / MARKER, json.dumps({"tool": "countdrift", "written": written, **extra}) + "\n")

    def commit(self) -> None:
        """Put the finished files in the destination's place."""
        try:
            self._mark(self.partial, {self.command: sorted(_names(self.partial))})
            if self.in_place:
                self._commit_in_place()
            elif self.path.is_dir() and _exchange(self.partial, self.path):
                self._remove_old(self.partial)   # now the old folder
            elif self.path.is_dir():
                aside = self.partial.with_name(self.partial.name + ".old")
                os.rename(self.path, aside)
                os.rename(self.partial, self.path)
                self._remove_old(aside)
            else:
                os.rename(self.partial, self.path)
        except OSError as error:
            raise OutputError(f"{self.option} {self.given}: cannot write: {cause(error)}") from None
        self.committed = True

    def _remove_old(self, old: Path) -> None:
        """Remove the previous output, now at ``old``, but for anything in it
        this command did not write (put there since the command began): that
        is moved into the new folder."""
        ours = _written(old).get(self.command, set())
        for name in _names(old) - ours:
            if not (self.path / name).exists():
                os.rename(old / name, self.path / name)
        if _names(old) - ours:
            os.rename(old, self.path / f"{old.name}.kept")   # a name clash: keep both, never remove
            return
        shutil.rmtree(old)

    def _commit_in_place(self) -> None:
        written = _written(self.path)
        previous = written.get(self.command, set())
        new = _names(self.partial)
        self._refuse_clash(new, previous)
        for name in sorted(new):
            entry, target = self.partial / name, self.path / name
            if entry.is_dir() and target.is_dir():
                aside = self.partial / f".{name}.old"
                os.rename(target, aside)
                os.rename(entry, target)
                shutil.rmtree(aside)
            else:
                os.replace(entry, target)
        for name in previous - new:
            stale = self.path / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        written[self.command] = new
        self._mark(self.path, {command: sorted(names) for command, names in written.items() if names})
        shutil.rmtree(self.partial)

    def __exit__(self, kind: type | None, error: BaseException | None, trace: object) -> None:
        if not self.committed and self.partial is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
        if isinstance(error, OutputError):
            self._reword(error)

    def _reword(self, error: OutputError) -> None:
        """A write's error, said of the destination rather than of the partial folder."""
        if not str(error).startswith(self.option):
            message = str(error).replace(str(self.partial), str(self.given))
            raise OutputError(f"{self.option} {self.given}: {message}; nothing written") from None
