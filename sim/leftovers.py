"""What a harness that was killed outright left behind, for `countdrift clean`.

Each scratch folder a harness makes holds a marker (``countdrift-owner.json``:
the harness's PID and start time, and every process it started there with
its own). A folder is a leftover when its harness is gone: the processes the
marker lists that are still the ones it names (PID and start time: never a
PID that was reused, never a process found by its name) are stopped, and the
folder is removed. Folders of a harness still running are left alone, and so
is any folder without the marker.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sim.watchdog import OWNER_FILE, remove_folder, start_time, stop_all


@dataclass
class Leftover:
    folder: Path
    owner: int
    processes: dict[int, int]      # PID -> start time, those still running

    def describe(self) -> str:
        running = ", ".join(f"PID {pid}" for pid in self.processes) or "no process running"
        return f"{self.folder} (left by countdrift PID {self.owner}: {running})"

    def remove(self) -> None:
        stop_all(self.processes)
        remove_folder(self.folder)


def _owner(folder: Path) -> dict | None:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(owner, dict) or owner.get("tool") != "countdrift" or not isinstance(owner.get("pid"), int)
            or not isinstance(owner.get("processes"), list)):
        return None
    return owner


def find(where: Path | None = None) -> tuple[list[Leftover], list[Path]]:
    """The leftovers in the temporary folder (``where``, default the
    system's), and the scratch folders of harnesses still running."""
    root = Path(where or tempfile.gettempdir())
    leftovers, in_use = [], []
    for folder in sorted(root.glob("countdrift-*")):
        # Only this user's folders, with a marker of their own: in a shared /tmp, another user's could name
        # processes that are not countdrift's.
        try:
            mine = (folder.is_dir() and not folder.is_symlink() and folder.stat().st_uid == os.getuid()
                    and (folder / OWNER_FILE).stat().st_uid == os.getuid())
        except OSError:
            mine = False
        owner = _owner(folder) if mine else None
        if owner is None:
            continue
        if start_time(owner["pid"]) == owner.get("start"):
            in_use.append(folder)
            continue
        try:
            listed = {int(pid): int(started) for pid, started in owner["processes"]}
        except (TypeError, ValueError):
            continue   # not a marker this version wrote: left alone
        running = {pid: started for pid, started in listed.items() if start_time(pid) == started}
        leftovers.append(Leftover(folder, owner["pid"], running))
    return leftovers, in_use
