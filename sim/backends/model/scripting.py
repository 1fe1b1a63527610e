"""EVAL/EVALSHA for the simulated Redis: the strategies' Lua run in Lua 5.1 via lupa.

Conversions follow the Redis manual ("Scripting with Lua", data type
conversion): integer reply -> number, bulk -> string, nil -> false, array ->
table, status -> {ok=...}, error -> {err=...}; and back: number -> integer
(truncated), string -> bulk, false/nil -> nil, table -> array up to the first
nil, {ok=}/{err=} -> status/error. A script runs to its end without yielding;
its writes are not rolled back when it fails half-way.

Redis Functions (FUNCTION LOAD, FCALL) run in the same VM. Unlike the script
cache, a library is part of the dataset (Redis manual, "Redis functions"):
a restart or a promoted replica has it, unless what survived predates its
load (see :meth:`ScriptEngine.keep_libraries`).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable

from lupa import lua51

from sim.backends.model.store import ServerCommand, Store
from sim.backends.model.values import INT64_MAX, INT64_MIN, Status
from sim.commands import CommandError
from sim.errors import NotModelled
from sim.lua import FUNCTION_NOT_FOUND, LuaScript

_PRELUDE = """
local call_py, sha1hex, not_modelled, error_text = ...
redis = {}
-- redis.call is the Python function itself: an error reply raises
-- CommandError, which aborts the script and comes out of the call unchanged.
redis.call = call_py
local raw_pcall = pcall
function redis.pcall(...)
  local ok, reply = raw_pcall(call_py, ...)
  if ok then return reply end
  return {err = error_text(reply)}
end
-- A script's own pcall sees an error reply as Redis gives it: a string.
function pcall(f, ...)
  local results = {raw_pcall(f, ...)}
  if not results[1] and type(results[2]) == "userdata" then results[2] = error_text(results[2]) end
  if not results[1] and type(results[2]) == "table" and results[2].err ~= nil then results[2] = results[2].err end
  return unpack(results, 1, table.maxn(results))
end
function redis.error_reply(message) return {err = message} end
function redis.status_reply(message) return {ok = message} end
function redis.log(...) end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.sha1hex = sha1hex
function redis.replicate_commands() return true end
-- The rest of Redis's redis.* (set_repl, setresp, breakpoint...): refused, never a nil to call.
setmetatable(redis, {__index = function(_, name) not_modelled("redis." .. name) end})
-- Libraries Redis embeds that the simulation does not: any use of one is refused.
for _, name in ipairs({"cjson", "cmsgpack", "bit", "struct"}) do
  _G[name] = setmetatable({}, {__index = function() not_modelled(name) end})
end
"""

_INVOKE = """
local pcall = ...
return function(script, nkeys, ...)
  local KEYS, ARGV = {...}, {}
  for i = nkeys + 1, select("#", ...) do
    ARGV[i - nkeys] = KEYS[i]
    KEYS[i] = nil
  end
  local ok, reply = pcall(script, KEYS, ARGV)
  if ok then return reply end
  -- error({err = "CODE ..."}): that error reply, as Redis gives it
  if type(reply) == "table" and reply.err ~= nil then return {err = reply.err} end
  error(reply, 0)
end
"""


_REGISTER = """
local registered = ...
return function(first, callback)
  if type(first) == "table" then
    local flags = {}
    for _, flag in ipairs(first.flags or {}) do flags[#flags + 1] = flag end
    registered(first.function_name, first.callback, flags)
  else
    registered(first, callback, {})
  end
end
"""


@dataclass
class Library:
    """A loaded library: its code, its functions (name -> (Lua function,
    flags)), and the server time of its load."""

    name: str
    code: str
    loaded_at: float
    functions: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)


def _long_long(number: int) -> int:
    """A Lua number as Redis replies it: cast to a C long long, which on
    x86-64 makes every number out of its range the lowest one (a script that
    returns INCRBY's 2**63 - 1 replies -2**63: its double is 2**63)."""
    return number if INT64_MIN <= number <= INT64_MAX else INT64_MIN


def _lua_number_text(value: float) -> str:
    # Redis formats a Lua number argument as the shortest round-trip text.
    if value == math.floor(value) and abs(value) < 1e17:
        return str(int(value))
    return repr(value)


def _words_from_lua(words: tuple) -> tuple:
    """Redis's conversion of redis.call arguments to strings."""
    if not words:
        raise CommandError("ERR Please specify at least one argument for this redis lib call")
    converted = []
    for word in words:
        kind = type(word)
        if kind is str:
            converted.append(word)
        elif kind is int:
            converted.append(str(word))
        elif kind is float:
            converted.append(_lua_number_text(word))
        else:
            raise CommandError("ERR Lua redis lib command arguments must be strings or integers")
    return tuple(converted)


def _error_text(error: Any) -> str:
    """An error reply a redis.call raised, as the string a script's pcall
    gets; anything else (not modelled, a bug of the model's) is never swallowed."""
    if not isinstance(error, CommandError):
        raise error
    return str(error)


def _sha1hex(*text: Any) -> str:
    if len(text) != 1:
        raise CommandError("ERR wrong number of arguments")
    return hashlib.sha1(str(text[0]).encode()).hexdigest()


def _client_words(words: tuple) -> tuple:
    """Arguments as a client (redis-py) sends them: numbers as their text."""
    return tuple(word if type(word) is str else word.decode() if type(word) is bytes else
                 repr(word) if type(word) is float else str(word) for word in words)


def _not_modelled(name: str) -> None:
    raise NotModelled(f"the Lua library {name} (Redis embeds it in scripts; the simulation does not)")


def _work_key(script: LuaScript) -> str:
    return f"fn:{script.name}" if script.library else script.sha


_LUA_PLACE = re.compile(r'(?:error loading code: )?\[string "[^"]*"\]:(\d+): (.*?)(?:\nstack traceback:.*)?', re.DOTALL)


def _lua_place(message: str, header_lines: int) -> tuple[str | None, str]:
    """The line in the script's own text (the chunk the VM ran has
    ``header_lines`` before it) and the message without lupa's place or
    stack; None when the message names no place."""
    found = _LUA_PLACE.fullmatch(message)
    if found is None:
        return None, message.split("\nstack traceback:")[0]
    return str(max(int(found[1]) - header_lines, 1)), found[2]


class ScriptEngine:
    """The Lua VM of one simulated server, with its (volatile) script cache."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.runtime = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
        raw_pcall = self.runtime.globals().pcall   # the prelude gives scripts their own
        self.runtime.execute(_PRELUDE, self._call, _sha1hex, _not_modelled, _error_text)
        # Builds KEYS and ARGV inside Lua: cheaper than two table_from calls.
        self._invoke = self.runtime.execute(_INVOKE, raw_pcall)
        self._table_from = self.runtime.table_from
        self._lua_type = lua51.lua_type
        self.cache: dict[str, Any] = {}
        self.libraries: dict[str, Library] = {}
        self._loading: Library | None = None
        self.runtime.globals().redis.register_function = self.runtime.execute(_REGISTER, self._register)
        self.calls = 0  # redis.call / redis.pcall made by scripts
        self._work: dict[str, list[int]] = {}   # sha -> [redis.call made, runs, elements walked]
        # On a cluster shard while slots migrate away: the error a redis.call gets instead of running.
        self.call_guard: Callable[[tuple], str | None] | None = None

    def expected_elements(self, script: LuaScript) -> float:
        """How many elements a run of the script walks (HVALS's values...):
        its mean so far (0 before its first run)."""
        work = self._work.get(_work_key(script))
        return work[2] / work[1] if work and work[1] else 0.0

    def expected_calls(self, script: LuaScript) -> float:
        """How many redis.call a run of the script makes: its mean so far
        (before its first run, the calls its text holds)."""
        work = self._work.get(_work_key(script))
        if work and work[1]:
            return work[0] / work[1]
        return float(script.source.count("redis.call"))

    # -- script cache -----------------------------------------------------
    def load(self, script: LuaScript) -> str:
        if script.sha not in self.cache:
            self._work.setdefault(script.sha, [0, 0, 0])
            try:
                self.cache[script.sha] = self.runtime.eval(
                    f"function(KEYS, ARGV)\n{script.source}\nend")
            except lua51.LuaSyntaxError as error:
                line, message = _lua_place(str(error), 1)
                raise CommandError(f"ERR Error compiling script (new function): user_script:{line or 1}: "
                                   f"{message}") from None
        return script.sha

    def flush(self) -> None:
        """SCRIPT FLUSH, and what a restart or a failover does to the cache."""
        self.cache.clear()

    def evalsha(self, sha: str, keys: tuple, args: tuple) -> Any:
        function = self.cache.get(sha)
        if function is None:
            raise CommandError("NOSCRIPT No matching script. Please use EVAL.")
        return self._run(function, sha, keys, args, "user_script")

    # -- functions --------------------------------------------------------
    def load_library(self, code: str, replace: bool, at: float) -> str:
        """FUNCTION LOAD [REPLACE]: the library's name."""
        header, _, body = code.partition("\n")
        if not header.startswith("#!"):
            raise CommandError("ERR Missing library metadata")
        engine, *metadata = header[2:].split()
        if engine.lower() != "lua":
            raise CommandError(f"ERR Engine '{engine}' not found")
        name = next((item[5:] for item in metadata if item.startswith("name=")), "")
        if not name:
            raise CommandError("ERR Library name was not given")
        if name in self.libraries and not replace:
            raise CommandError(f"ERR Library '{name}' already exists")
        self._loading = library = Library(name, code, at)
        try:
            self.runtime.execute(body)
        except lua51.LuaError as error:
            raise CommandError(f"ERR Error registering functions: {error}") from None
        finally:
            self._loading = None
        if not library.functions:
            raise CommandError("ERR No functions registered")
        for other in self.libraries.values():
            if other.name != name and (taken := set(other.functions) & set(library.functions)):
                raise CommandError(f"ERR Function {min(taken)} already exists")
        self.libraries[name] = library
        return name

    def _register(self, name: Any, callback: Any, flags: Any) -> None:
        if self._loading is None:
            raise CommandError("ERR redis.register_function can only be called on FUNCTION LOAD command")
        self._loading.functions[str(name)] = (callback, list(flags.values()))
        self._work.setdefault(f"fn:{name}", [0, 0, 0])

    def fcall(self, name: str, keys: tuple, args: tuple) -> Any:
        for library in self.libraries.values():
            found = library.functions.get(name)
            if found is not None:
                return self._run(found[0], f"fn:{name}", keys, args, "user_function")
        raise CommandError(FUNCTION_NOT_FOUND)

    def delete_library(self, name: str) -> None:
        if self.libraries.pop(name, None) is None:
            raise CommandError("ERR Library not found")

    def list_libraries(self, pattern: str = "*", with_code: bool = False) -> list:
        """FUNCTION LIST's reply (libraries by name: Redis's order is its hash table's)."""
        return [["library_name", library.name, "engine", "LUA", "functions",
                 [["name", function, "description", None, "flags", flags]
                  for function, (_, flags) in sorted(library.functions.items())],
                 *(("library_code", library.code) if with_code else ())]
                for name, library in sorted(self.libraries.items()) if fnmatchcase(name, pattern)]

    def keep_libraries(self, until: float) -> None:
        """After a restart or a promotion from a copy of the data as it was
        at ``until``: the libraries loaded before then are there."""
        self.libraries = {name: library for name, library in self.libraries.items() if library.loaded_at < until}

    def adopt_libraries(self, other: "ScriptEngine", until: float) -> None:
        """A replica's libraries: those ``other`` had loaded before ``until``."""
        for library in other.libraries.values():
            if library.loaded_at < until:
                self.load_library(library.code, True, library.loaded_at)

    def _run(self, function: Any, key: str, keys: tuple, args: tuple, origin: str) -> Any:
        calls, walked = self.calls, self.store.walked
        try:
            for words in (keys, args):
                for word in words:
                    if type(word) is not str:   # a client sends every argument as a string
                        keys, args = _client_words(keys), _client_words(args)
                        break
            reply = self._invoke(function, len(keys), *keys, *args)
        except CommandError:
            raise
        except lua51.LuaError as error:
            # An error of the script's own (Lua's, or error("text")): ERR in front, as Redis 7 puts it, and
            # its place in the script when the message has one (error(text, 0) gives none).
            message = str(error.args[0] if error.args else error)
            line, message = _lua_place(message, 1 if origin == "user_script" else 0)
            name = key.removeprefix("fn:")
            if line is None:
                raise CommandError(f"ERR {message} script: {name}, on @{origin}:1.") from None
            raise CommandError(f"ERR {origin}:{line}: {message} script: {name}, on @{origin}:{line}.") from None
        finally:
            work = self._work[key]   # made when the script was loaded
            work[0] += self.calls - calls
            work[1] += 1
            work[2] += self.store.walked - walked
        kind = type(reply)
        if kind is str or (kind is int and INT64_MIN <= reply <= INT64_MAX):   # the usual reply, at once
            return reply
        return self._to_redis(reply)

    # -- Lua -> Python ----------------------------------------------------------
    def _call(self, *words: Any) -> Any:
        self.calls += 1
        for word in words:
            if type(word) is not str:
                words = _words_from_lua(words)
                break
        else:
            if not words:
                words = _words_from_lua(words)   # (raises: no command)
        if self.call_guard is not None:
            refused = self.call_guard(words)
            if refused is not None:
                raise CommandError(refused)
        try:
            reply = self.store.execute(words)
        except ServerCommand:   # WATCH, SCRIPT, FUNCTION...: refused inside a script, as Redis refuses them
            raise CommandError("ERR This Redis command is not allowed from script") from None
        except CommandError as error:   # a call Redis refuses before running it, in its script wording
            text = str(error)
            if text.startswith("ERR unknown command"):
                raise CommandError("ERR Unknown Redis command called from script") from None
            if text.startswith("ERR wrong number of arguments"):
                raise CommandError("ERR Wrong number of args calling Redis command from script") from None
            raise
        kind = type(reply)
        if kind is int or kind is str:
            return reply
        return self._to_lua(reply)

    def _to_lua(self, reply: Any) -> Any:
        if reply is None:
            return False
        if type(reply) is list:
            for item in reply:
                if type(item) is not str and type(item) is not int:
                    return self._table_from([self._to_lua(item) for item in reply])
            return self._table_from(reply)   # bulk strings and integers convert as they are
        if type(reply) is Status:
            return self._table_from({"ok": str(reply)})
        return reply

    def _to_redis(self, value: Any) -> Any:
        kind = type(value)
        if kind is int:
            return _long_long(value)
        if kind is float:   # NaN and the infinities cast as any number out of range does
            return _long_long(int(value)) if math.isfinite(value) else INT64_MIN
        if value is None or value is False:
            return None
        if value is True:
            return 1
        if kind is str:
            return value
        if self._lua_type(value) == "table":
            error = value["err"]
            if error is not None:
                raise CommandError(str(error))
            status = value["ok"]
            if status is not None:
                return status
            items = []
            index = 1
            while True:
                item = value[index]
                if item is None:
                    return items
                items.append(self._to_redis(item))
                index += 1
        return None
