"""A user's story (sim/story.py) as text: `countdrift explain` prints it,
`countdrift shrink` writes it as story.md, `countdrift report` shows it."""
from __future__ import annotations

from typing import Any

from sim.commands import CommandError, Pipeline, Script, Stall, Transaction
from sim.story import Row, Story

WIDTH = 96            # a request or a reply is cut to this many characters
PIPELINE_SHOWN = 3    # a pipeline's first commands shown, then how many more


def focused(request: Any, reply: Any, focus: str) -> tuple[str, str]:
    """A request and its reply as a person reads them; of a long pipeline,
    the commands that name ``focus`` (a user's key tag), and their replies."""
    if type(request) is Pipeline and len(request.commands) > PIPELINE_SHOWN:
        at = [index for index, command in enumerate(request.commands) if focus in describe(command)]
        if at:
            at = at[:PIPELINE_SHOWN]
            whole = len(request.commands)
            sent = "[" + "; ".join(f"#{index + 1} of {whole:,}: {describe(request.commands[index])}"
                                   for index in at) + "]"
            if isinstance(reply, list) and len(reply) == whole:
                return sent, "[" + ", ".join(f"#{index + 1}: {describe_reply(reply[index])}" for index in at) + "]"
            return sent, describe_reply(reply)
    return describe(request), describe_reply(reply)


def describe(request: Any) -> str:
    """A request as a person reads it: its commands and their arguments."""
    kind = type(request)
    if kind is tuple:
        return " ".join(str(word) for word in request)
    if kind is Script:
        script = request.script
        call = "FCALL" if script.library else "EVALSHA"
        return " ".join([call, script.name, *map(str, request.keys), *map(str, request.args)])
    if kind is Pipeline or kind is Transaction:
        items = [describe(command) for command in request.commands[:PIPELINE_SHOWN]]
        more = len(request.commands) - PIPELINE_SHOWN
        if more > 0:
            items.append(f"... {more:,} more")
        inside = "; ".join(items)
        return f"MULTI; {inside}; EXEC" if kind is Transaction else f"[{inside}]"
    if kind is Stall:
        return f"(the server held for {request.seconds:g} s)"
    return str(request)


def describe_reply(reply: Any) -> str:
    if isinstance(reply, CommandError):
        return f"error {reply}"
    if reply is None:
        return "nil"
    if isinstance(reply, list):
        items = [describe_reply(item) for item in reply[:PIPELINE_SHOWN]]
        more = len(reply) - PIPELINE_SHOWN
        return "[" + ", ".join(items + ([f"... {more:,} more"] if more > 0 else [])) + "]"
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    return str(reply)


def _cut(text: str) -> str:
    return text if len(text) <= WIDTH else text[:WIDTH - 3] + "..."


def _what(row: Row, user: int) -> str:
    if row.kind == "deliver":
        return f"deliver to c{row.conv} (from u{row.by})"
    if row.kind == "open_conversation":
        return f"open c{row.conv}"
    return row.kind.replace("_", " ")


def _range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _fault_lines(faults: list[dict]) -> list[tuple[float, str]]:
    lines = []
    for fault in faults:
        effects = fault.get("effects") or {}
        struck, ended = effects.get("struck_at"), effects.get("ended_at")
        if struck is None:
            continue
        said = ", ".join(f"{key} {value:g}" for key, value in effects.items()
                         if key not in ("struck_at", "ended_at") and type(value) in (int, float) and value)
        lines.append((struck, f"-- {fault['kind']} strikes (for {fault['duration']:g} s{': ' + said if said else ''})"))
        if ended is not None:
            lines.append((ended, f"-- {fault['kind']} is over"))
    return lines


def format_story(story: Story) -> str:
    user = story.user
    verb = "counted too many" if story.drift > 0 else "lost a count" if story.drift < 0 else "went inconsistent"
    lines = [f"how {story.strategy} {verb}: user {user}, {story.scenario} (seed {story.seed}, {story.backend})",
             f"at the end: total {story.total}, its conversations sum to {story.conversations_sum}; "
             f"the truth: {_range(*story.truth)} (drift {story.drift:+d}"
             + (f"; the total is {story.total - story.conversations_sum:+d} off the sum"
                if story.total != story.conversations_sum else "") + ")"]
    basis = "drift attribution, this user's share" if story.replayed else "inferred"
    shares = ", ".join(f"{cause} {share:+d}" for cause, share in story.shares.items())
    lines.append(f"cause: {story.cause} ({basis}{': ' + shares if shares else ''})")
    lines += [f"note: {note}" for note in story.notes]
    lines.append("")
    header = f"{'time s':>10}  {'op':>7}  {'what':<28}{'client':>7}  {'outcome':<8}{'shown':>6}"
    if story.replayed:
        header += f"  {'total/sum':>10}  {'truth':>6}"
    lines.append(header)
    events: list[tuple[float, int, list[str]]] = [(at, 0, [f"{'':>10}  {text}"]) for at, text in
                                                   _fault_lines(story.faults)]
    for row in story.rows:
        line = (f"{row.completed:>10.4f}  {'#' + str(row.op):>7}  {_cut(_what(row, user)):<28}"
                f"{'c' + str(row.client) if row.client is not None else '':>7}  {row.outcome:<8}"
                f"{'' if row.shown is None else row.shown:>6}")
        if story.replayed:
            after = f"{row.counters[0]}/{row.counters[1]}" if row.counters else ""
            line += f"  {after:>10}  {_range(*row.truth) if row.truth else '':>6}"
            if row.counters and row.truth and not row.truth[0] <= row.counters[0] <= row.truth[1]:
                line += "  <- off"
        block = [line]
        for exchange in row.exchanges or []:
            sent, answer = focused(exchange.request, exchange.reply, f"{{u{user}}}")
            answer = f"lost: {exchange.lost}" if exchange.lost else answer
            retry = f" (retry {exchange.attempt})" if exchange.attempt else ""
            block.append(f"{exchange.at:>10.4f}  {'':>7}    {_cut('> ' + sent + retry)}")
            block.append(f"{'':>10}  {'':>7}    {_cut('< ' + answer)}")
        events.append((row.completed, 1, block))
    events.sort(key=lambda event: (event[0], event[1]))
    for _, _, block in events:
        lines += block
    lines += ["", f"so: {story.cause}" + (f" ({story.drift:+d})" if story.drift else "")]
    return "\n".join(lines) + "\n"
