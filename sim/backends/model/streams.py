"""Redis Streams and consumer groups in the simulated keyspace: what a queue
of work needs (XADD, XREADGROUP, XACK, XAUTOCLAIM and their kin), with the
replies and errors of redis-server 7's t_stream.c.

An entry id is (milliseconds, sequence); ``*`` takes the server clock's
milliseconds (the simulation's clock starts at 0, a real server's at the
epoch: ids differ between them, their order does not). A consumer group
keeps the last id it delivered and its pending entries list (PEL): id ->
[consumer, delivery time in ms, deliveries]. BLOCK is not modelled: a
simulated read that would block is refused.
"""
from __future__ import annotations

from typing import Any

from sim.backends.model import values
from sim.commands import CommandError

INVALID_ID = "ERR Invalid stream ID specified as stream command argument"
SYNTAX = "ERR syntax error"
NO_KEY_FOR_GROUP = ("ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to "
                    "use the MKSTREAM option to create an empty stream automatically.")
_MAX = (1 << 64) - 1

StreamId = tuple[int, int]


class Group:
    def __init__(self, last_id: StreamId) -> None:
        self.last_id = last_id
        self.pel: dict[StreamId, list] = {}          # id -> [consumer, delivery ms, deliveries]
        self.consumers: dict[str, int] = {}          # consumer -> its pending entries

    def copy(self) -> "Group":
        group = Group(self.last_id)
        group.pel = {id_: list(nack) for id_, nack in self.pel.items()}
        group.consumers = dict(self.consumers)
        return group

    def own(self, id_: StreamId, consumer: str, at_ms: int, deliveries: int) -> None:
        old = self.pel.get(id_)
        if old is not None:
            self.consumers[old[0]] -= 1
        self.consumers[consumer] = self.consumers.get(consumer, 0) + 1
        self.pel[id_] = [consumer, at_ms, deliveries]

    def drop(self, id_: StreamId) -> bool:
        nack = self.pel.pop(id_, None)
        if nack is None:
            return False
        self.consumers[nack[0]] -= 1
        return True


class Stream:
    def __init__(self) -> None:
        self.entries: dict[StreamId, list[str]] = {}   # in id order (ids only grow)
        self.last_id: StreamId = (0, 0)
        self.groups: dict[str, Group] = {}

    def copy(self) -> "Stream":
        stream = Stream()
        stream.entries = dict(self.entries)
        stream.last_id = self.last_id
        stream.groups = {name: group.copy() for name, group in self.groups.items()}
        return stream

    def __deepcopy__(self, memo: dict) -> "Stream":
        return self.copy()


def text(id_: StreamId) -> str:
    return f"{id_[0]}-{id_[1]}"


def parse_id(word: Any, missing_seq: int = 0) -> StreamId:
    """``ms-seq``, or ``ms`` with the sequence given (0 for a start, the
    largest for an end), as streamParseID does."""
    word = str(word)
    ms, dash, seq = word.partition("-")
    try:
        parsed = (_u64(ms), _u64(seq) if dash else missing_seq)
    except ValueError:
        raise CommandError(INVALID_ID) from None
    return parsed


def _u64(word: str) -> int:
    if not word.isdigit():
        raise ValueError(word)
    number = int(word)
    if number > _MAX:
        raise ValueError(word)
    return number


def _entries_reply(stream: Stream, ids: list[StreamId]) -> list:
    return [[text(id_), list(stream.entries[id_]) if id_ in stream.entries else None] for id_ in ids]


class StreamCommands:
    """The stream commands of :class:`~sim.backends.model.store.Store` (a mixin: they use its keyspace)."""

    def _stream(self, key: str, create: bool = False) -> Stream | None:
        value = self._lookup(key)
        if value is None:
            if create:
                value = self.data[key] = Stream()
            return value
        if type(value) is not Stream:
            raise CommandError(values.WRONGTYPE)
        return value

    def _ms(self) -> int:
        return int(self.now * 1000)

    def _group(self, key: str, name: str, command: str) -> tuple[Stream, Group]:
        stream = self._stream(key)
        group = None if stream is None else stream.groups.get(name)
        if group is None:
            suffix = " in XREADGROUP with GROUP option" if command == "XREADGROUP" else ""
            raise CommandError(f"NOGROUP No such key '{key}' or consumer group '{name}'{suffix}")
        return stream, group

    # -- entries ------------------------------------------------------------------
    def cmd_xadd(self, key: str, *words: Any) -> str | None:
        words = [str(word) for word in words]
        i, nomkstream, maxlen = 0, False, None
        while i < len(words):
            option = words[i].upper()
            if option == "NOMKSTREAM":
                nomkstream, i = True, i + 1
            elif option == "MAXLEN":
                i += 1
                if i < len(words) and words[i] in ("=", "~"):
                    i += 1
                if i >= len(words):
                    raise CommandError(SYNTAX)
                maxlen = values.to_int(words[i], "ERR value is not an integer or out of range")
                if maxlen < 0:
                    raise CommandError("ERR The MAXLEN argument must be >= 0.")
                i += 1
            else:
                break
        pairs = words[i + 1:]
        if i >= len(words) or not pairs or len(pairs) % 2:
            raise CommandError("ERR wrong number of arguments for 'xadd' command")
        wanted = words[i]
        explicit = None
        if wanted != "*":
            ms, dash, seq = wanted.partition("-")
            if dash and seq == "*":
                explicit = (parse_id(ms)[0], None)
            else:
                explicit = parse_id(wanted)
                if explicit == (0, 0):
                    raise CommandError("ERR The ID specified in XADD must be greater than 0-0")
        stream = self._stream(key)
        if stream is None and nomkstream:
            return None
        last = stream.last_id if stream is not None else (0, 0)
        if explicit is None:
            ms = max(self._ms(), last[0])
            new = (ms, last[1] + 1 if ms == last[0] else 0)
        elif explicit[1] is None:
            if explicit[0] < last[0]:
                raise CommandError("ERR The ID specified in XADD is equal or smaller than the target stream top item")
            new = (explicit[0], last[1] + 1 if explicit[0] == last[0] else 0)
        else:
            new = explicit
        if stream is not None and new <= last:
            raise CommandError("ERR The ID specified in XADD is equal or smaller than the target stream top item")
        self._write(key)
        stream = self._stream(key, create=True)
        stream.entries[new] = pairs
        stream.last_id = new
        if maxlen is not None:
            while len(stream.entries) > maxlen:
                del stream.entries[next(iter(stream.entries))]
        return text(new)

    def cmd_xlen(self, key: str) -> int:
        stream = self._stream(key)
        return len(stream.entries) if stream is not None else 0

    def cmd_xrange(self, key: str, start: Any, end: Any, *options: Any) -> list | None:
        low = (0, 0) if str(start) == "-" else parse_id(start, 0)
        high = (_MAX, _MAX) if str(end) == "+" else parse_id(end, _MAX)
        count = None
        if options:
            if len(options) != 2 or str(options[0]).upper() != "COUNT":
                raise CommandError(SYNTAX)
            count = values.to_int(options[1])
        stream = self._stream(key)
        if stream is None:
            return []
        if count is not None and count <= 0:   # a null array, on a stream there is (t_stream.c)
            return None
        ids = [id_ for id_ in stream.entries if low <= id_ <= high]
        ids = ids if count is None else ids[:count]
        self.walked += len(ids)
        return _entries_reply(stream, ids)

    def cmd_xdel(self, key: str, *ids: Any) -> int:
        stream = self._stream(key)
        if stream is None:   # (the ids are not even parsed)
            return 0
        parsed = [parse_id(id_) for id_ in ids]
        gone = [id_ for id_ in dict.fromkeys(parsed) if id_ in stream.entries]
        if gone:
            self._write(key)
            for id_ in gone:
                del stream.entries[id_]
        return len(gone)

    # -- consumer groups --------------------------------------------------------------
    def cmd_xgroup(self, subcommand: str, *words: Any) -> Any:
        name = str(subcommand).upper()
        if name == "CREATE":
            if len(words) < 3:
                raise CommandError("ERR wrong number of arguments for 'xgroup|create' command")
            key, group, start, *rest = (str(word) for word in words)
            mkstream = False
            for option in rest:
                if option.upper() != "MKSTREAM":
                    raise CommandError(SYNTAX)
                mkstream = True
            stream = self._stream(key)
            if stream is None and not mkstream:
                raise CommandError(NO_KEY_FOR_GROUP)
            last = None if start == "$" else parse_id(start)
            if stream is not None and group in stream.groups:
                raise CommandError("BUSYGROUP Consumer Group name already exists")
            self._write(key)
            stream = self._stream(key, create=True)
            stream.groups[group] = Group(stream.last_id if last is None else last)
            return values.OK
        if name == "DESTROY":
            if len(words) != 2:
                raise CommandError("ERR wrong number of arguments for 'xgroup|destroy' command")
            key, group = str(words[0]), str(words[1])
            stream = self._stream(key)
            if stream is None:
                raise CommandError(NO_KEY_FOR_GROUP)
            if group not in stream.groups:
                return 0
            self._write(key)
            del stream.groups[group]
            return 1
        raise CommandError(f"ERR unknown subcommand '{subcommand}'. Try XGROUP HELP.")

    def cmd_xreadgroup(self, *words: Any) -> Any:
        words = [str(word) for word in words]
        if words[0].upper() != "GROUP" or len(words) < 3:
            raise CommandError(SYNTAX)
        group_name, consumer = words[1], words[2]
        count, i = None, 3
        while i < len(words):
            option = words[i].upper()
            if option == "COUNT" and i + 1 < len(words):
                count = values.to_int(words[i + 1])
                count = None if count <= 0 else count
                i += 2
            elif option == "NOACK":
                raise CommandError("ERR the simulated XREADGROUP does not take NOACK")
            elif option == "BLOCK":
                raise CommandError("ERR the simulated XREADGROUP does not block")
            elif option == "STREAMS":
                i += 1
                break
            else:
                raise CommandError(SYNTAX)
        else:
            raise CommandError(SYNTAX)
        rest = words[i:]
        if not rest or len(rest) % 2:
            raise CommandError("ERR Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' "
                               "must be specified.")
        half = len(rest) // 2
        pairs = list(zip(rest[:half], rest[half:]))
        starts, targets = [], []
        for key, id_ in pairs:   # each stream's group, then its id, in turn (xreadCommand's order)
            targets.append(self._group(key, group_name, "XREADGROUP"))
            if id_ == "$":
                raise CommandError("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the "
                                   "history of this consumer by specifying a proper ID, or use the > ID to get new "
                                   "messages. The $ ID would just return an empty result set.")
            starts.append(None if id_ == ">" else parse_id(id_))
        reply = []
        now = self._ms()
        for (key, _), start, (stream, group) in zip(pairs, starts, targets):
            if start is None:
                ids = [id_ for id_ in stream.entries if id_ > group.last_id]
                ids = ids if count is None else ids[:count]
                if not ids:
                    continue
                self._write(key)
                group.consumers.setdefault(consumer, 0)
                for id_ in ids:
                    group.own(id_, consumer, now, 1)
                group.last_id = ids[-1]
                self.walked += len(ids)
                reply.append([key, _entries_reply(stream, ids)])
            else:
                if consumer not in group.consumers:
                    self._write(key)
                    group.consumers[consumer] = 0
                ids = [id_ for id_ in sorted(group.pel) if id_ > start and group.pel[id_][0] == consumer]
                ids = ids if count is None else ids[:count]
                reply.append([key, _entries_reply(stream, ids)])
        return reply or None

    def cmd_xack(self, key: str, group_name: str, *ids: Any) -> int:
        stream = self._stream(key)
        group = None if stream is None else stream.groups.get(group_name)
        if group is None:   # nothing to acknowledge: the ids are not even parsed
            return 0
        parsed = [parse_id(id_) for id_ in ids]
        acked = [id_ for id_ in dict.fromkeys(parsed) if id_ in group.pel]
        if acked:
            self._write(key)
            for id_ in acked:
                group.drop(id_)
        return len(acked)

    def cmd_xautoclaim(self, key: str, group_name: str, consumer: str, min_idle: Any, start: Any,
                       *options: Any) -> list:
        idle = values.to_int(min_idle, "ERR Invalid min-idle-time argument for XAUTOCLAIM")
        idle = max(idle, 0)
        begin = parse_id(start)
        count, justid, i = 100, False, 0
        while i < len(options):
            option = str(options[i]).upper()
            if option == "COUNT" and i + 1 < len(options):
                count = values.to_int(options[i + 1], "ERR COUNT must be > 0")
                if count < 1 or count > values.INT64_MAX // 16:
                    raise CommandError("ERR COUNT must be > 0")
                i += 2
            elif option == "JUSTID":
                justid, i = True, i + 1
            else:
                raise CommandError(SYNTAX)
        stream, group = self._group(key, group_name, "XAUTOCLAIM")   # every argument is checked before the key
        now = self._ms()
        attempts = count * 10
        order = [id_ for id_ in sorted(group.pel) if id_ >= begin]
        claimed, deleted = [], []
        position = 0
        while attempts and count and position < len(order):
            id_ = order[position]
            position += 1
            attempts -= 1
            nack = group.pel[id_]
            if id_ not in stream.entries:
                self._write(key)
                group.drop(id_)
                deleted.append(text(id_))
                continue
            if idle and now - nack[1] < idle:
                continue
            self._write(key)
            group.own(id_, consumer, now, nack[2] + (0 if justid else 1))
            claimed.append(id_)
            count -= 1
        if consumer not in group.consumers:
            self._write(key)
            group.consumers[consumer] = 0
        self.walked += position
        following = text(order[position]) if position < len(order) else "0-0"
        entries = [text(id_) for id_ in claimed] if justid else _entries_reply(stream, claimed)
        return [following, entries, deleted]

    def cmd_xpending(self, key: str, group_name: str, *options: Any) -> list:
        if options:
            raise CommandError("ERR the simulated XPENDING gives its summary form only")
        stream, group = self._group(key, group_name, "XPENDING")
        if not group.pel:
            return [0, None, None, None]
        ids = sorted(group.pel)
        owners = [[name, str(pending)] for name, pending in sorted(group.consumers.items()) if pending]
        return [len(ids), text(ids[0]), text(ids[-1]), owners]
