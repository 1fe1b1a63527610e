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
import fnmatch
import json
import os
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

# For folders written before markers: the names each command writes, and
# its main file with what that file begins with when countdrift wrote it.
LEGACY: dict[str, tuple[tuple[str, ...], str, bytes]] = {
    "run": (("results.json", "trace.npz"), "results.json", b'{\n  "schema_version": 1,'),
    "report": (("summary.md", "summary.html", "*.png", "*.svg"), "summary.md", b"# countdrift report"),
    "fidelity": (("fidelity.json", "*-s*"), "fidelity.json", b'{\n  "fidelity_schema":'),
    "capacity": (("capacity.json",), "capacity.json", b'{\n  "capacity_schema":'),
    "cost": (("cost.json",), "cost.json", b'{\n  "cost_schema":'),
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
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def _written_by(folder: Path, command: str) -> set[str] | None:
    """The names in ``folder`` that ``command`` wrote, or None when the folder
    is not an output of that command."""
    names = {entry.name for entry in folder.iterdir()
             if entry.name != MARKER and not entry.name.startswith(f".{folder.name}.partial-")}
    marker = _read_marker(folder)
    if marker is not None:
        if marker.get("command") != command:
            return None
        return names & {str(name) for name in marker["files"]}
    if not names:
        return names
    patterns, main, head = LEGACY.get(command, ((), "", b""))
    if not all(any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns) for name in names):
        return None
    try:
        with open(folder / main, "rb") as file:
            ours = file.read(len(head)) == head
    except OSError:
        ours = False
    return names if ours else None


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
    """``with OutputFolder(path, "--out", "run") as folder: ...write into folder.partial...; folder.commit()``"""

    def __init__(self, path: Path, option: str, command: str, force: bool = False) -> None:
        self.given = Path(path)
        self.path = path = check_folder(self.given, option)
        self.option = option
        self.command = command
        self.partial: Path | None = None
        self.committed = False
        self.in_place = False
        if not path.is_dir():
            return
        ours = _written_by(path, command)
        marker = _read_marker(path)
        if ours is None and not force:
            what = (f"holds the output of `countdrift {marker.get('command')}`" if marker
                    else "holds files countdrift did not write")
            raise OutputError(f"{option} {self.given}: {what}; name another folder, or add --force to write "
                              f"{command}'s files into it (nothing else in it is touched)")
        self.in_place = (ours is None or os.path.ismount(path) or _holds_working_folder(path)
                         or any(entry.name != MARKER and entry.name not in ours for entry in path.iterdir()))

    def __enter__(self) -> "OutputFolder":
        made = False
        try:
            if self.in_place:
                beside = self.path
            else:
                beside = self.path.absolute().parent
                beside.mkdir(parents=True, exist_ok=True)
            prefix = f".{self.path.name}.partial-"
            for stale in beside.glob(f"{prefix}*"):
                if _is_partial(stale):
                    shutil.rmtree(stale, ignore_errors=True)
            self.partial = beside / f"{prefix}{os.getpid()}"
            if self.partial.exists() and _read_marker(self.partial) is None:
                raise OutputError(f"{self.option} {self.given}: {self.partial} is in the way and countdrift did "
                                  f"not make it; move it")
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir()
            made = True
            self._mark(self.partial, partial_of=os.getpid())
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

    def _mark(self, folder: Path, **extra: object) -> None:
        names = sorted(entry.name for entry in folder.iterdir() if entry.name != MARKER)
        write_text(folder / MARKER, json.dumps({"tool": "countdrift", "command": self.command, "files": names,
                                                **extra}) + "\n")

    def commit(self) -> None:
        """Put the finished files in the destination's place."""
        try:
            self._mark(self.partial)
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
        countdrift did not write (put there since the command began): that is
        moved into the new folder."""
        ours = _written_by(old, self.command) or set()
        for entry in old.iterdir():
            if entry.name != MARKER and entry.name not in ours:
                target = self.path / entry.name
                if not target.exists():
                    os.rename(entry, target)
        if any(entry.name != MARKER and entry.name not in ours for entry in old.iterdir()):
            os.rename(old, self.path / f"{old.name}.kept")   # a name clash: keep both, never remove
            return
        shutil.rmtree(old)

    def _commit_in_place(self) -> None:
        previous = _written_by(self.path, self.command) or set()
        new = [entry for entry in self.partial.iterdir() if entry.name != MARKER]
        clash = sorted(entry.name for entry in new if (self.path / entry.name).exists()
                       and entry.name not in previous)
        if clash:
            raise OutputError(f"{self.option} {self.given}: {', '.join(clash)} exist(s) there and countdrift did "
                              f"not write them; it never replaces such a file: move them, or name another folder")
        for entry in new:
            target = self.path / entry.name
            if entry.is_dir() and target.is_dir():
                aside = self.partial / f".{entry.name}.old"
                os.rename(target, aside)
                os.rename(entry, target)
                shutil.rmtree(aside)
            else:
                os.replace(entry, target)
        for name in previous - {entry.name for entry in new}:
            stale = self.path / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        files = sorted({entry.name for entry in new})
        write_text(self.path / MARKER, json.dumps({"tool": "countdrift", "command": self.command,
                                                   "files": files}) + "\n")
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
