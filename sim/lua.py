"""Lua scripts as files: both backends run the same bytes."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @classmethod
    def from_file(cls, path: Path) -> "LuaScript":
        return cls(path.stem, path.read_text())


def load_script(module_file: str, name: str) -> LuaScript:
    """Load ``name``.lua that stands beside a strategy module."""
    return LuaScript.from_file(Path(module_file).with_name(f"{name}.lua"))
