"""Lua scripts as files: both backends run the same bytes.

A script runs by EVALSHA from the server's script cache, which a restart or
a failover empties; or, registered in a :class:`LuaLibrary`, as a Redis
Function (FCALL), which is part of the dataset: persisted and replicated.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    library: str = ""   # the library it is a function of ("": a script, run by EVALSHA)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @classmethod
    def from_file(cls, path: Path) -> "LuaScript":
        return cls(path.stem, path.read_text())


def load_script(module_file: str, name: str) -> LuaScript:
    """Load ``name``.lua that stands beside a strategy module."""
    return LuaScript.from_file(Path(module_file).with_name(f"{name}.lua"))


@dataclass(frozen=True)
class LuaLibrary:
    """A library of Redis Functions made of scripts: each script's text is a
    function's body, named after the script, called as FCALL with the same
    KEYS and ARGV."""

    name: str
    scripts: tuple[LuaScript, ...]

    def function(self, script: LuaScript) -> LuaScript:
        """``script`` as this library's function of the same name."""
        if script not in self.scripts:
            raise ValueError(f"{script.name} is not in library {self.name}")
        return LuaScript(script.name, script.source, self.name)

    @property
    def source(self) -> str:
        """The code FUNCTION LOAD takes."""
        return f"#!lua name={self.name}\n" + "".join(
            f"redis.register_function('{script.name}', function(KEYS, ARGV)\n{script.source}\nend)\n"
            for script in self.scripts)


Code = Union[LuaScript, LuaLibrary]


def load_command(code: Code) -> tuple:
    """What a connection sends as it opens: SCRIPT LOAD a script into the
    cache; FUNCTION LOAD a library, which the server keeps if it has it."""
    return ("SCRIPT", "LOAD", code.source) if isinstance(code, LuaScript) else ("FUNCTION", "LOAD", code.source)


def load_replies(code: tuple[Code, ...], replies: list) -> tuple[bool, object | None]:
    """Whether loading ``code`` loaded anything (a library already there
    does not load again), and the first reply that says it failed, if any."""
    loaded, problem = False, None
    for item, reply in zip(code, replies):
        new = reply == (item.sha if isinstance(item, LuaScript) else item.name)
        loaded |= new
        kept = isinstance(item, LuaLibrary) and str(reply) == f"ERR Library '{item.name}' already exists"
        if not (new or kept) and problem is None:
            problem = reply
    return loaded, problem


FUNCTION_NOT_FOUND = "ERR Function not found"


def forgotten(reply: object) -> bool:
    """Whether a reply says the server lacks the code a request called
    (NOSCRIPT: its script cache was emptied; no function: its library is gone)."""
    text = str(reply)
    return text.startswith("NOSCRIPT") or text == FUNCTION_NOT_FOUND
