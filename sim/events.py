"""Traffic from a team's own event log: `countdrift trace import` reads one
event per row (CSV, JSON Lines or Parquet) into a trace; `trace export`
writes a trace back as events.

An event: ``time`` (seconds from the log's start, in order), ``kind``
(``deliver``, ``open``, ``badge``, ``login``), ``user`` (the sender, the
reader, the badge's owner, who logged in), ``conversation`` (a deliver's or
an open's; empty for a badge or a login), ``recipients`` (a deliver's: every
member but the sender, as ids separated by spaces in CSV, a list in JSON
Lines and Parquet). Conversations' members come from a membership table
(``conversation``, ``user`` per row) when one is given (it keeps the
conversations that had no message), else from the deliveries. Users and
conversations are numbered from 0 without gaps. Every row is checked; the
first bad one is named with its line, and nothing is written.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sim.traffic import BADGE, DELIVER, KIND_NAMES, LOGIN, READ, Trace, TraceError, TrafficConfig

KINDS = {"deliver": DELIVER, "open": READ, "badge": BADGE, "login": LOGIN,
         **{name: index for index, name in enumerate(KIND_NAMES)}}
EXPORT_NAMES = ("deliver", "open", "badge", "login")
EVENT_COLUMNS = ("time", "kind", "user", "conversation", "recipients")
REQUIRED = ("time", "kind", "user")   # a badge's or a login's row needs no conversation
MEMBER_COLUMNS = ("conversation", "user")
FORMATS = {".csv": "CSV", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines", ".parquet": "Parquet"}


class EventError(TraceError):
    """An event file that cannot be read as traffic: names the file and the row."""


def rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """Each row of an event or membership file, with where it is ('line 7', 'row 7')."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise EventError(f"{path}: not a file of events: name it .csv, .jsonl or .parquet")
    if not path.is_file():
        raise EventError(f"{path}: not found")
    if kind == "Parquet":
        yield from _parquet_rows(path, required)
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")   # (a spreadsheet's byte order mark is no part of the header)
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise EventError(f"{path}: line {line}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not text.strip():
        raise EventError(f"{path}: empty: no rows")
    if kind == "CSV":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [column for column in required if column not in (reader.fieldnames or ())]
        if missing:
            raise EventError(f"{path}: line 1: column(s) {', '.join(missing)} missing; the header must name "
                             f"{', '.join(required)} (found {', '.join(reader.fieldnames or ())})")
        for row in reader:   # (its line: a blank line skipped, a quoted field over two lines, counted)
            yield f"line {reader.line_num}", row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise EventError(f"{path}: line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise EventError(f"{path}: line {number}: an event is a JSON object, got {type(row).__name__}")
        missing = [column for column in required if column not in row]
        if missing:
            raise EventError(f"{path}: line {number}: key(s) {', '.join(missing)} missing")
        yield f"line {number}", row


def _parquet_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as parquet

    try:
        table = parquet.read_table(path)
    except Exception as error:   # noqa: BLE001 - pyarrow's errors are many; the file is not one we can read
        raise EventError(f"{path}: not a Parquet file pyarrow can read ({str(error)[:200]})") from None
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise EventError(f"{path}: column(s) {', '.join(missing)} missing (found {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise EventError(f"{path}: empty: no rows")
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", row


def _whole(value: Any, where: str, column: str, empty: bool = False) -> int | None:
    """An id: a whole number from 0 (CSV's text, JSON's number); None if empty is allowed."""
    if value is None or value == "":
        if empty:
            return None
        raise EventError(f"{where}: {column} is empty; it must be a whole number from 0")
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise EventError(f"{where}: {column} is {value!r}, not a whole number")
    try:
        number = int(value) if not isinstance(value, str) else int(value.strip())
    except (TypeError, ValueError):
        raise EventError(f"{where}: {column} is {value!r}, not a whole number") from None
    if number < 0 or number >= 2 ** 31:
        raise EventError(f"{where}: {column} {number} is out of range (0 to {2 ** 31 - 1})")
    return number


def _ids(value: Any, where: str) -> list[int]:
    if value is None or value == "":
        return []
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise EventError(f"{where}: recipients is {value!r}: ids separated by spaces (CSV) or a list")
    return [_whole(item, where, "recipients") for item in items]


def read_members(path: Path) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for where, row in rows(path, MEMBER_COLUMNS):
        where = f"{path}: {where}"
        conversation = _whole(row["conversation"], where, "conversation")
        user = _whole(row["user"], where, "user")
        if user in members.setdefault(conversation, []):
            raise EventError(f"{where}: user {user} is listed twice in conversation {conversation}")
        members[conversation].append(user)
    return members


def import_events(path: Path, members_path: Path | None = None) -> Trace:
    """The trace an event file (and a membership table) describe; EventError
    names the first row that cannot be part of one."""
    members = read_members(members_path) if members_path is not None else None
    table_given = members is not None
    members = members if members is not None else {}
    t, kind, user, conv = [], [], [], []
    places = []   # each event's row, to name it
    last = 0.0
    for where, row in rows(path, REQUIRED):
        where = f"{path}: {where}"
        try:
            moment = float(row["time"])
        except (TypeError, ValueError):
            raise EventError(f"{where}: time is {row['time']!r}, not a number of seconds") from None
        if not math.isfinite(moment) or moment < 0:
            raise EventError(f"{where}: time {moment!r} must be a finite number of seconds from 0")
        if moment < last:
            raise EventError(f"{where}: time {moment!r} comes before the row above ({last!r}); events must be "
                             f"in time order")
        last = moment
        name = str(row["kind"]).strip()
        if name not in KINDS:
            raise EventError(f"{where}: kind {name!r} is not one of {', '.join(EXPORT_NAMES)}")
        code = KINDS[name]
        who = _whole(row["user"], where, "user")
        talks = code in (DELIVER, READ)
        conversation = _whole(row.get("conversation"), where, "conversation", empty=not talks)
        if not talks and conversation is not None:
            raise EventError(f"{where}: a {name} has no conversation; leave conversation empty")
        if code == DELIVER:
            recipients = _ids(row.get("recipients"), where)
            if len(set(recipients)) < len(recipients) or who in recipients:
                raise EventError(f"{where}: recipients name a user twice, or the sender {who}")
            group = members.get(conversation)
            if group is None and not table_given:
                if not recipients:
                    raise EventError(f"{where}: a deliver names its recipients (or give a membership table)")
                members[conversation] = group = [who, *recipients]
            if group is None:
                raise EventError(f"{where}: conversation {conversation} is not in the membership table")
            if who not in group:
                raise EventError(f"{where}: sender {who} is not a member of conversation {conversation}")
            strangers = [other for other in recipients if other not in group]
            if strangers:
                raise EventError(f"{where}: recipient {strangers[0]} is not a member of conversation {conversation}")
            if recipients and len(recipients) != len(group) - 1:
                raise EventError(f"{where}: recipients must be every member of conversation {conversation} but the "
                                 f"sender ({len(group) - 1} of them), got {len(recipients)}")
        t.append(moment)
        kind.append(code)
        user.append(who)
        conv.append(-1 if conversation is None else conversation)
        places.append(where)
    known = {member for group in members.values() for member in group}
    for index, code in enumerate(kind):
        where, who, conversation = places[index], user[index], conv[index]
        if code == READ and who not in members.get(conversation, ()):
            raise EventError(f"{where}: user {who} opens conversation {conversation}, of which they are not a "
                             f"member")
        if who not in known:
            raise EventError(f"{where}: user {who} is in no conversation (an unknown user)")
    return _trace(path, t, kind, user, conv, members)


def _trace(path: Path, t: list, kind: list, user: list, conv: list, members: dict[int, list[int]]) -> Trace:
    count = max(members) + 1 if members else 0
    for conversation in range(count):
        if len(members.get(conversation, ())) < 2:
            raise EventError(f"{path}: conversation {conversation} has {len(members.get(conversation, ()))} "
                             f"member(s); conversations are numbered from 0 without gaps, each with 2 or more")
    users = max([*(max(group) for group in members.values()), *user]) + 1 if members else 0
    kinds = np.array(kind, np.int8)
    convs = np.array(conv, np.int32)
    if not t:
        raise EventError(f"{path}: no events")
    messages = np.full(len(t), -1, np.int32)
    messages[kinds == DELIVER] = np.arange(int((kinds == DELIVER).sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(members[c]) for c in range(count)])]).astype(np.int64)
    flat = np.array([member for c in range(count) for member in members[c]], np.int32)
    sizes = np.diff(offsets)
    span = t[-1]
    n_messages = int((kinds == DELIVER).sum())
    config = replace(TrafficConfig(), users=max(users, 2), messages=n_messages,
                     message_rate=float(n_messages / span) if span > 0 and n_messages else 1.0,
                     groups=int((sizes > 2).sum()), max_group_size=int(sizes.max()) if count else 2)
    trace = Trace(config, 0, offsets, flat, np.array(t, np.float64), kinds, np.array(user, np.int32), convs, messages,
                  source=path.name)
    trace.check(str(path))   # (every row was checked: this holds the arrays to what a run needs)
    return trace


def export_events(trace: Trace, out: Path) -> Path:
    """Write the trace as events (CSV) and its membership table beside it;
    the table's path."""
    from sim.report.output import write_file

    offsets, flat = trace.conv_offsets, trace.conv_members
    members_path = out.with_name(f"{out.stem}-members{out.suffix}")

    def events(handle) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(EVENT_COLUMNS)
        for moment, code, who, conversation in zip(trace.t.tolist(), trace.kind.tolist(), trace.user.tolist(),
                                                   trace.conv.tolist()):
            recipients = ""
            if code == DELIVER:
                group = flat[offsets[conversation]:offsets[conversation + 1]].tolist()
                recipients = " ".join(str(member) for member in group if member != who)
            writer.writerow((repr(moment), EXPORT_NAMES[code], who, "" if conversation < 0 else conversation,
                             recipients))

    def table(handle) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MEMBER_COLUMNS)
        for conversation in range(trace.conversations):
            for member in flat[offsets[conversation]:offsets[conversation + 1]].tolist():
                writer.writerow((conversation, member))

    write_file(members_path, table)
    write_file(out, events)
    return members_path
