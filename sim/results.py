"""results.json: the contract that reports, compare and other tools read
(DESIGN.md). Wall-clock figures carry a ``wall_`` prefix, so that two runs of
a deterministic sim scenario compare equal on everything else."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def strip_wall(value: Any) -> Any:
    """The results without wall-clock fields: what must repeat exactly."""
    if isinstance(value, dict):
        return {k: strip_wall(v) for k, v in value.items() if not k.startswith("wall_")}
    if isinstance(value, list):
        return [strip_wall(v) for v in value]
    return value


def write_json(path: Path, document: dict) -> None:
    """Write atomically: a reader never sees half a file, a failure leaves none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(document, out, indent=2, sort_keys=False)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
