"""results.json: the contract that reports, compare and other tools read
(DESIGN.md). Wall-clock figures carry a ``wall_`` prefix, so that two runs of
a deterministic sim scenario compare equal on everything else."""
from __future__ import annotations

import json
import math
import stat
from functools import cache
from pathlib import Path
from typing import Any

from sim.backends import SIMULATION

SCHEMA_VERSION = 1
SCHEMAS = Path(__file__).with_name("schemas")   # what readers of each document may rely on


class InvalidResults(ValueError):
    """A document that is not what its schema promises."""


def _non_finite(value: Any, where: str = "$") -> str | None:
    """The JSON path of the first NaN or infinity in a document, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}{key}" if str(key).startswith("[") else f"{where}.{key}")
        if found:
            return found
    return None


MAX_DOCUMENT_BYTES = 256 * 2 ** 20


def read_document(path: Path, what: str) -> Any:
    """A JSON document countdrift wrote, read back: a regular file (never a
    pipe or a device, which could block), of a sane size, UTF-8 JSON;
    InvalidResults says what it is instead."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InvalidResults(f"{path}: not a regular file (a {what} is one)")
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise InvalidResults(f"{path}: {info.st_size:,} bytes; a {what} countdrift writes is under "
                                 f"{MAX_DOCUMENT_BYTES:,}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InvalidResults(f"{path}: not a readable {what} ({error})") from None


@cache
def _validator(kind: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))


def validate(document: Any, kind: str = "results") -> None:
    """Check a document against ``schemas/<kind>.schema.json`` (types,
    ranges, required fields) and for NaN or infinite numbers; InvalidResults
    names the field."""
    where = _non_finite(document)
    if where:
        raise InvalidResults(f"{where} is not a finite number")
    errors = sorted(_validator(kind).iter_errors(document), key=lambda error: list(map(str, error.absolute_path)))
    if errors:
        error = errors[0]
        raise InvalidResults(f"{error.json_path}: {error.message[:200]}")


def deterministic(document: dict) -> bool:
    """Whether a document's figures (but wall_ ones) repeat exactly for its
    scenario and seed: it says so, or, written before documents said so, it
    comes from the simulation."""
    return bool(document.get("deterministic", document.get("backend") == SIMULATION))


def strip_wall(value: Any) -> Any:
    """The results without wall-clock fields: what must repeat exactly."""
    if isinstance(value, dict):
        return {k: strip_wall(v) for k, v in value.items() if not k.startswith("wall_")}
    if isinstance(value, list):
        return [strip_wall(v) for v in value]
    return value


def write_json(path: Path, document: dict) -> None:
    """Write atomically: a reader never sees half a file, a failure leaves none."""
    from sim.report.output import write_text

    write_text(path, json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")
