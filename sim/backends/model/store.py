"""The simulated Redis keyspace and the commands the strategies use.

Values are stored as Redis stores them: strings (``str``), hashes (``dict``)
and sets (``set``); numbers are kept as their decimal text, so INCRBY on a
non-integer fails as it does on a real server. Replies follow RESP2 as
redis-py decodes them: integers as ``int``, bulk strings as ``str``, nil as
``None``, arrays as ``list``.

Commands run one at a time, in the order :class:`~sim.backends.model.server.Server`
commits them; ``now`` is the server clock in seconds, used for key TTLs.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from sim.backends.model.journal import Journal
from sim.backends.model.redis_commands import REDIS_COMMANDS
from sim.backends.model.streams import Stream, StreamCommands
from sim.backends.model.values import (
    HASH_NOT_INTEGER,
    INT64_MAX,
    INT64_MIN,
    OK,
    OVERFLOW,
    WRONGTYPE,
    Status,
    to_int,
)
from sim.commands import READ_ONLY, CommandError
from sim.errors import NotModelled

# Redis arity: n means exactly n words, -n at least n (the name included).
ARITY = {
    "PING": -1, "SELECT": 2, "GET": 2, "SET": -3, "DEL": -2, "EXISTS": -2, "TYPE": 2,
    "INCR": 2, "INCRBY": 3, "DECRBY": 3, "HGET": 3, "HSET": -4, "HDEL": -3,
    "HINCRBY": 4, "HGETALL": 2, "HVALS": 2, "HKEYS": 2, "HLEN": 2,
    "HEXISTS": 3, "SADD": -3, "SREM": -3, "SISMEMBER": 3, "SMEMBERS": 2,
    "SCARD": 2, "SPOP": -2, "EXPIRE": 3, "PEXPIRE": 3, "PTTL": 2, "KEYS": 2,
    "DBSIZE": 1, "FLUSHALL": -1,
    "XADD": -5, "XLEN": 2, "XRANGE": -4, "XDEL": -3, "XGROUP": -2, "XREADGROUP": -7, "XACK": -4,
    "XAUTOCLAIM": -6, "XPENDING": -3,
}


def _sum(current: int, amount: int) -> int:
    """A counter plus an amount, refused as Redis refuses it past a long long."""
    total = current + amount
    if not INT64_MIN <= total <= INT64_MAX:
        raise CommandError(OVERFLOW)
    return total


# Commands whose work grows with their data: each element they walk costs
# the server (ServiceTimes: a field or member ``element``, a stream entry
# read ``stream_read``, an id acknowledged or deleted ``stream_ack``,
# ``stream_delete``). HLEN, SCARD and XLEN are O(1) in Redis.
WALKS = frozenset({"HGETALL", "HVALS", "HKEYS", "SMEMBERS", "XRANGE", "XREADGROUP", "XAUTOCLAIM", "XACK", "XDEL"})


# The commands the server runs itself (a connection's WATCH, the script
# cache, functions), not the keyspace.
SERVER_COMMANDS = frozenset({"WATCH", "UNWATCH", "SCRIPT", "ASKING", "FUNCTION", "FCALL"})


class ServerCommand(Exception):
    """A command of the server's that reached the store under another case
    than upper (Redis takes any): the server runs it."""


# The server's own commands' arity (run by the server, not the store).
SERVER_ARITY = {"WATCH": -2, "UNWATCH": 1, "SCRIPT": -2, "ASKING": 1, "FUNCTION": -2, "FCALL": -3}


def check_arity(words: tuple) -> None:
    """Raise the error Redis gives at queue time for an unknown command or
    wrong arity; NotModelled for a command Redis has that the model lacks."""
    name = str(words[0]).upper()
    arity = ARITY.get(name) or SERVER_ARITY.get(name)
    if arity is None:
        if name in REDIS_COMMANDS:
            raise NotModelled(f"{name}: a Redis command the simulated server does not have")
        raise CommandError(f"ERR unknown command '{words[0]}'")
    n = len(words)
    if (arity >= 0 and n != arity) or (arity < 0 and n < -arity):
        raise CommandError(f"ERR wrong number of arguments for '{name.lower()}' command")


class Store(StreamCommands):
    """One Redis database: keys, TTLs and the WATCH bookkeeping."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        # Set when a fault may need to take writes back (see journal.py).
        self.journal: Journal | None = None
        self.expires: dict[str, float] = {}
        self.now = 0.0
        # Set when the writes are kept as an AOF (see aof.py): each command
        # that changed a key, in the order it ran, until the server takes them.
        self.batch: list[tuple] | None = None
        self._wrote = False
        # Set while the server refuses writes (min-replicas-to-write): the
        # error a write command gets, inside a script too (a new exception
        # each time: one raised again keeps growing its traceback).
        self.refusal: str | None = None
        self.walked = 0   # elements walked by the commands of WALKS so far
        # key -> connections WATCHing it; a write marks them dirty (touchWatchedKey).
        self.watchers: dict[str, set] = {}
        self.commands: dict[str, Callable[..., Any]] = {
            name: getattr(self, "cmd_" + name.lower()) for name in ARITY
        }
        # name -> (handler, fewest words, most words): one lookup per command.
        self._dispatch = {name: (handler, abs(ARITY[name]), ARITY[name] if ARITY[name] >= 0 else math.inf)
                          for name, handler in self.commands.items()}

    # -- access helpers -------------------------------------------------
    def _lookup(self, key: str) -> Any:
        """The key's value, None when it is missing or expired (then removed).
        The typed helpers below call it only for a key with a TTL: the others
        cannot expire, a plain dict lookup is their value."""
        value = self.data.get(key)
        if value is not None and self.expires and key in self.expires:
            if self.expires[key] <= self.now:
                self._touch(key)
                self._remove(key)
                if self.batch is not None:
                    self.batch.append(("DEL", key))   # Redis propagates a lazy expiry as DEL
                return None
        return value

    def _remove(self, key: str) -> None:
        del self.data[key]
        self.expires.pop(key, None)

    def exists(self, key: str) -> bool:
        return self._lookup(key) is not None

    def take(self, key: str) -> tuple[Any, float | None] | None:
        """MIGRATE's side on the source: the key's value and expiry, and the key deleted."""
        value = self._lookup(key)
        if value is None:
            return None
        expires_at = self.expires.get(key)
        self._write(key)
        self._remove(key)
        return value, expires_at

    def put(self, key: str, value: Any, expires_at: float | None) -> None:
        """MIGRATE's side on the target (RESTORE)."""
        self._write(key)
        self.data[key] = value
        if expires_at is not None:
            self.expires[key] = expires_at

    def _write(self, key: str) -> None:
        """Every command calls this before it changes a key."""
        self._wrote = True
        if self.journal is not None or self.watchers:
            self._touch(key)

    def _touch(self, key: str) -> None:
        if self.journal is not None:
            self.journal.before_write(self.data, self.expires, key, self.now)
        if self.watchers:
            watchers = self.watchers.get(key)
            if watchers:
                for connection in watchers:
                    connection.dirty = True

    def _hash(self, key: str, create: bool = False) -> dict | None:
        value = self.data.get(key)
        if key in self.expires:
            value = self._lookup(key)
        if value is None:
            if create:
                value = self.data[key] = {}
            return value
        if type(value) is not dict:
            raise CommandError(WRONGTYPE)
        return value

    def _set(self, key: str, create: bool = False) -> set | None:
        value = self.data.get(key)
        if key in self.expires:
            value = self._lookup(key)
        if value is None:
            if create:
                value = self.data[key] = set()
            return value
        if type(value) is not set:
            raise CommandError(WRONGTYPE)
        return value

    def _string(self, key: str) -> str | None:
        value = self.data.get(key)
        if key in self.expires:
            value = self._lookup(key)
        if value is not None and type(value) is not str:
            raise CommandError(WRONGTYPE)
        return value

    def execute(self, words: tuple) -> Any:
        """Run one command given as its words, e.g. ``("HGET", "k", "f")``."""
        dispatch = self._dispatch.get(words[0])
        if dispatch is None:
            if str(words[0]).upper() in SERVER_COMMANDS:
                raise ServerCommand(words[0])
            check_arity(words)
            handler = self.commands[str(words[0]).upper()]
        else:
            handler, fewest, most = dispatch
            if not fewest <= len(words) <= most:
                check_arity(words)
        if self.refusal is not None and str(words[0]).upper() not in READ_ONLY:
            raise CommandError(self.refusal)
        if self.batch is None:
            return handler(*words[1:])
        self._wrote = False
        reply = handler(*words[1:])
        if self._wrote:
            self.batch.append(words)
        return reply

    def elements(self, words: tuple) -> int:
        """How many elements a command of WALKS would walk now: the hash's
        fields, the set's members, the stream's entries (at most what its
        COUNT asks for; XAUTOCLAIM scans up to ten times that), the ids
        XACK and XDEL name."""
        upper = [str(word).upper() for word in words]
        if upper[0] == "XACK" or upper[0] == "XDEL":   # XACK key group id..., XDEL key id...
            return max(len(words) - (3 if upper[0] == "XACK" else 2), 0)
        key = words[1]
        if upper[0] == "XREADGROUP":   # GROUP g c [COUNT n] STREAMS key id: the key follows STREAMS
            key = words[upper.index("STREAMS") + 1] if "STREAMS" in upper[:-1] else ""
        value = self.data.get(key)
        kind = type(value)
        size = len(value.entries) if kind is Stream else len(value) if kind is dict or kind is set else 0
        if "COUNT" in upper[:-1]:
            count = words[upper.index("COUNT") + 1]
            if str(count).isdigit():
                size = min(size, int(count) * (10 if upper[0] == "XAUTOCLAIM" else 1))
        return size

    # -- generic ----------------------------------------------------------
    def cmd_select(self, index: str) -> Status:
        """One database, 0 (an AOF's SELECT 0, a client's): another is not modelled."""
        if str(index).strip() != "0":
            raise NotModelled(f"SELECT {index}: databases other than 0")
        return OK

    def cmd_ping(self, *message: str) -> str:
        return message[0] if message else Status("PONG")

    def cmd_del(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._lookup(key) is not None:
                self._write(key)
                self._remove(key)
                removed += 1
        return removed

    def cmd_exists(self, *keys: str) -> int:
        return sum(1 for key in keys if self._lookup(key) is not None)

    def cmd_type(self, key: str) -> str:
        value = self._lookup(key)
        return {str: "string", dict: "hash", set: "set", Stream: "stream"}.get(type(value), "none")

    def cmd_keys(self, pattern: str) -> list[str]:
        if pattern != "*":
            raise CommandError("ERR the simulated KEYS supports only '*'")
        if not self.expires:   # no key can have expired: every key is there (the checker lists them all, often)
            return list(self.data)
        return [key for key in list(self.data) if self._lookup(key) is not None]

    def cmd_dbsize(self) -> int:
        return len(self.cmd_keys("*"))

    def cmd_flushall(self, *mode: str) -> str:
        for key in list(self.data):
            self._write(key)
        self.data.clear()
        self.expires.clear()
        return OK

    def cmd_expire(self, key: str, seconds: Any) -> int:
        return self.cmd_pexpire(key, to_int(seconds) * 1000)

    def cmd_pexpire(self, key: str, millis: Any) -> int:
        millis = to_int(millis)   # parsed before the key is looked up, as expire.c does
        if self._lookup(key) is None:
            return 0
        self._write(key)
        if millis <= 0:   # a time already past deletes the key at once
            self._remove(key)
            return 1
        self.expires[key] = self.now + millis / 1000.0
        return 1

    def cmd_pttl(self, key: str) -> int:
        if self._lookup(key) is None:
            return -2
        if key not in self.expires:
            return -1
        return int(round((self.expires[key] - self.now) * 1000))

    # -- strings ----------------------------------------------------------
    def cmd_get(self, key: str) -> str | None:
        return self._string(key)

    def cmd_set(self, key: str, value: Any, *options: Any) -> str | None:
        """SET with NX or XX, one of EX, PX or KEEPTTL, and GET, as Redis 7
        parses them (two of a kind: a syntax error); EXAT and PXAT name a
        moment of the wall clock, which the simulation does not have."""
        nx = xx = get = keep = False
        unit, amount = None, None   # EX or PX, and its amount as given (parsed once every option is read)
        i = 0
        while i < len(options):
            option = str(options[i]).upper()
            if option == "NX" and not xx:
                nx = True
            elif option == "XX" and not nx:
                xx = True
            elif option == "GET":
                get = True
            elif option == "KEEPTTL" and unit is None:
                keep = True
            elif option in ("EX", "PX") and i + 1 < len(options) and unit in (None, option) and not keep:
                unit, amount = option, options[i + 1]
                i += 1
            elif option in ("EXAT", "PXAT"):
                raise NotModelled(f"SET ... {option}: a moment of the wall clock, which the simulation does not have")
            else:
                raise CommandError("ERR syntax error")
            i += 1
        ttl = None
        if unit is not None:
            ttl = to_int(amount)
            if ttl <= 0:
                raise CommandError("ERR invalid expire time in 'set' command")
            ttl = ttl if unit == "EX" else ttl / 1000.0
        old = self._string(key) if get else None
        exists = self._lookup(key) is not None
        if (nx and exists) or (xx and not exists):
            return old
        self._write(key)
        self.data[key] = value if type(value) is str else str(value)
        if ttl is not None:
            self.expires[key] = self.now + ttl
        elif not keep:
            self.expires.pop(key, None)
        return old if get else OK

    def cmd_incrby(self, key: str, amount: Any) -> int:
        return self._increment(key, to_int(amount))

    def cmd_incr(self, key: str) -> int:
        return self._increment(key, 1)

    def cmd_decrby(self, key: str, amount: Any) -> int:
        decrement = to_int(amount)
        if decrement == INT64_MIN:   # its negation is no long long (t_string.c)
            raise CommandError("ERR decrement would overflow")
        return self._increment(key, -decrement)

    def _increment(self, key: str, amount: int) -> int:
        """INCRBY's work once its amount is parsed (Redis parses it first)."""
        current = self._string(key)
        value = _sum(to_int(current) if current is not None else 0, amount)
        self._write(key)
        self.data[key] = str(value)
        return value

    # -- hashes -------------------------------------------------------------
    def cmd_hget(self, key: str, field: str) -> str | None:
        value = self._hash(key)
        return None if value is None else value.get(field)

    def cmd_hset(self, key: str, *pairs: Any) -> int:
        if len(pairs) % 2:
            raise CommandError("ERR wrong number of arguments for 'hset' command")
        self._hash(key)
        self._write(key)
        value = self._hash(key, create=True)
        added = 0
        for i in range(0, len(pairs), 2):
            field = pairs[i]
            if field not in value:
                added += 1
            item = pairs[i + 1]
            value[field] = item if type(item) is str else str(item)
        return added

    def cmd_hdel(self, key: str, *fields: str) -> int:
        value = self._hash(key)
        if value is None:
            return 0
        for field in fields:   # (a loop, not any() over a generator: HDEL is on every read's path)
            if field in value:
                break
        else:
            return 0
        self._write(key)
        removed = 0
        for field in fields:
            if value.pop(field, None) is not None:
                removed += 1
        if not value:
            self._remove(key)
        return removed

    def cmd_hincrby(self, key: str, field: str, amount: Any) -> int:
        increment = to_int(amount)
        value = self._hash(key)
        current = None if value is None else value.get(field)
        total = _sum(to_int(current, HASH_NOT_INTEGER) if current is not None else 0, increment)
        self._write(key)
        if value is None:
            value = self.data[key] = {}
        value[field] = str(total)
        return total

    def cmd_hgetall(self, key: str) -> list[str]:
        value = self._hash(key)
        if not value:
            return []
        self.walked += len(value)
        return [word for pair in value.items() for word in pair]

    def cmd_hvals(self, key: str) -> list[str]:
        value = self._hash(key)
        if not value:
            return []
        self.walked += len(value)
        return list(value.values())

    def cmd_hkeys(self, key: str) -> list[str]:
        value = self._hash(key)
        if not value:
            return []
        self.walked += len(value)
        return list(value)

    def cmd_hlen(self, key: str) -> int:
        value = self._hash(key)
        return len(value) if value else 0

    def cmd_hexists(self, key: str, field: str) -> int:
        value = self._hash(key)
        return int(bool(value) and field in value)

    # -- sets -----------------------------------------------------------------
    def cmd_sadd(self, key: str, *members: Any) -> int:
        self._set(key)
        self._write(key)
        value = self._set(key, create=True)
        before = len(value)
        value.update(m if type(m) is str else str(m) for m in members)
        return len(value) - before

    def cmd_srem(self, key: str, *members: Any) -> int:
        value = self._set(key)
        if not value:
            return 0
        self._write(key)
        before = len(value)
        value.difference_update(str(m) for m in members)
        if not value:
            self._remove(key)
        return before - len(value)

    def cmd_sismember(self, key: str, member: Any) -> int:
        value = self._set(key)
        return int(bool(value) and str(member) in value)

    def cmd_smembers(self, key: str) -> list[str]:
        value = self._set(key)
        if not value:
            return []
        self.walked += len(value)
        return sorted(value)

    def cmd_scard(self, key: str) -> int:
        value = self._set(key)
        return len(value) if value else 0

    def cmd_spop(self, key: str, *count: Any) -> Any:
        """Members in a fixed order (a real server's are random): the
        smallest first, sorted as SMEMBERS sorts them."""
        if len(count) > 1:
            raise CommandError("ERR syntax error")
        many = None
        if count:
            many = to_int(count[0], "ERR value is out of range, must be positive")
            if many < 0:
                raise CommandError("ERR value is out of range, must be positive")
        value = self._set(key)
        if not value:
            return [] if many is not None else None
        if many == 0:
            return []
        chosen = sorted(value)[:1 if many is None else many]
        self._write(key)
        value.difference_update(chosen)
        if not value:
            self._remove(key)
        return chosen[0] if many is None else chosen

    # -- WATCH ----------------------------------------------------------------
    def watch(self, connection: Any, keys: tuple) -> None:
        for key in keys:
            self.watchers.setdefault(key, set()).add(connection)
            connection.watched.add(key)

    def unwatch(self, connection: Any) -> None:
        for key in connection.watched:
            watchers = self.watchers.get(key)
            if watchers is not None:
                watchers.discard(connection)
                if not watchers:
                    del self.watchers[key]
        connection.watched.clear()
        connection.dirty = False
