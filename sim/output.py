"""An output folder written whole or not at all.

Everything a command writes goes to a hidden ``.<name>.partial-<pid>``
folder beside the destination; when it is complete, it takes the
destination's place in one step (renameat2 with RENAME_EXCHANGE where the
kernel has it, so a reader finds the old folder or the new one, never a mix
and never neither). A command that fails or is interrupted leaves the old
folder as it was and removes its partial one; a partial folder left by a
process that was killed outright is removed by the next command that writes
beside it.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from sim.errors import UsageError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_file(path: Path, option: str) -> None:
    """Refuse, before any work, a file destination that cannot be written."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; name a file")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            break


def check_folder(path: Path, option: str) -> None:
    """Refuse, before any work, a folder destination that cannot be written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a folder; name a folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {path}: cannot write in {parent}")
            break


class OutputFolder:
    """``with OutputFolder(path, "--out") as folder: ...write into folder.partial...; folder.commit()``"""

    def __init__(self, path: Path, option: str) -> None:
        self.path = Path(path)
        self.option = option
        self.partial: Path | None = None
        self.committed = False
        check_folder(self.path, option)


    def __enter__(self) -> "OutputFolder":
        parent = self.path.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.path.name}.partial-"
        for stale in parent.glob(f"{prefix}*"):
            pid = stale.name[len(prefix):]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.partial = parent / f"{prefix}{os.getpid()}"
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir()
        return self

    def commit(self) -> None:
        """Put the finished folder in the destination's place."""
        if self.path.is_dir() and _exchange(self.partial, self.path):
            shutil.rmtree(self.partial)      # now the old folder
        elif self.path.is_dir():
            aside = self.partial.with_name(self.partial.name + ".old")
            os.rename(self.path, aside)
            os.rename(self.partial, self.path)
            shutil.rmtree(aside)
        else:
            os.rename(self.partial, self.path)
        self.committed = True

    def __exit__(self, *exc: object) -> None:
        if not self.committed and self.partial is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
