"""Lua scripts as files: both backends run the same bytes.

A script runs by EVALSHA from the server's script cache, which a restart or
a failover empties; or, registered in a :class:`LuaLibrary`, as a Redis
Function (FCALL), which is part of the dataset: persisted and replicated.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    library: str = ""   # the library it is a function of ("": a script, run by EVALSHA)
    path: str = field(default="", compare=False)   # the file it was read from, to name in an error
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @classmethod
    def from_file(cls, path: Path) -> "LuaScript":
        return cls(path.stem, path.read_text(), path=str(path))

    def place(self, line: str = "") -> str:
        """Where the script is (its file, or its name), at ``line``."""
        return f"{self.path or self.name}{f':{line}' if line else ''}"


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
# An error a script made itself (Lua's own: a nil called, a syntax error; a
# redis.call without its arguments): a bug of the script, never a failed
# operation. Errors a redis.call answered (WRONGTYPE, READONLY, NOREPLICAS...)
# carry their own code; an error a script returns on purpose
# (redis.error_reply) names no place in the script.
_SCRIPT_BUG = re.compile(r"ERR (?:Error compiling script \(new function\): )?user_(?:script|function):(\d+|\?): "
                         r"|ERR (?:Wrong number of args calling Redis command from script"
                         r"|Unknown Redis command called from script|Please specify at least one argument"
                         r"|Lua redis lib command arguments must be strings or integers"
                         r"|This Redis command is not allowed from script)")


def script_bug(reply: object) -> str | None:
    """The line of the script's own error a reply carries ('' when it names
    none), or None when the reply is no such error."""
    found = _SCRIPT_BUG.match(str(reply))
    return None if found is None else found[1] or ""


@functools.lru_cache(maxsize=256)
def compile_problem(script: LuaScript) -> str | None:
    """Why the script's text would not compile on Redis (Lua 5.1: the line
    and the message), or None."""
    from lupa import lua51

    # inside the function Redis wraps a script's body in (line 1 is that header)
    loaded = lua51.LuaRuntime().globals().loadstring(f"return function(KEYS, ARGV)\n{script.source}\nend",
                                                     "=user_script")
    if isinstance(loaded, tuple) and loaded[0] is None:
        line, _, message = str(loaded[1]).removeprefix("user_script:").partition(": ")
        return f"{max(int(line) - 1, 1) if line.isdigit() else line}: {message}"
    return None


def forgotten(reply: object) -> bool:
    """Whether a reply says the server lacks the code a request called
    (NOSCRIPT: its script cache was emptied; no function: its library is gone)."""
    text = str(reply)
    return text.startswith("NOSCRIPT") or text == FUNCTION_NOT_FOUND
