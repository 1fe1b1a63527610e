"""`countdrift cost`: what one operation of each kind costs the server, per
strategy, and what a user's counters weigh in memory.

Each strategy's operations run one at a time, from one client, with no
fault and no contention, against a fresh server of the chosen backend
(a :class:`CostTarget`). For each kind (a delivery in a 1:1 conversation, a
delivery to a group of N, opening a conversation with unread messages,
fetching the badge) the probe counts, per operation: round trips (requests
the strategy sends: the same on every backend, since the strategy's code is
the same), commands executed as INFO commandstats counts them (a script's
redis.call included), server time, and bytes on the wire each way. A
strategy with background work (a flusher, a queue's consumers) runs it
after the operations, until it is drained, in the same reckoning: its
commands, server time and bytes count, shared by the operations that
caused it (round trips are the operations' own). Server
time is the server's CPU (INFO cpu) on real servers and the calibrated
service time in the simulation: the same quantity, which is how the
simulation was calibrated (sim/experiments/calibrate.py).

A heavy user has 1,000 conversations and 10,000 unread messages spread
over them: fetching their badge and opening one of their conversations
show what grows with a user's data (HVALS over 1,000 conversations, a
badge summed over 1,000 read positions, an id hash of 10,000).

A strategy that keeps a total adds a row for a reconciler (option
``reconcile_every_s``): a changed user's share of a pass.

Memory: a user with 10 conversations receives U unread messages (spread
evenly over them); the user's keys (every key carrying the user's hash tag)
are weighed with MEMORY USAGE. Only real servers answer this: the
simulation does not model Redis's encodings, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sim.backend import CostTarget, Meter
from sim.commands import Operation, Request, run_now
from strategies import make_strategy
from strategies.base import Strategy
from strategies.reconciler import mark

COST_SCHEMA = 1
GROUP_SIZES = (10, 100)
MEMORY_CONVERSATIONS = 10
UNREAD_BEFORE_OPEN = 5   # messages waiting in a conversation that is opened


@dataclass(frozen=True)
class Scale:
    """How far the probes fill a user: the heavy user's conversations and
    unread messages, and the unread messages at which memory is weighed."""

    heavy_conversations: int = 1_000
    heavy_unread: int = 10_000
    unread_levels: tuple[int, ...] = (10, 100, 10_000)

    @property
    def heavy_badge(self) -> str:
        return (f"fetch badge (heavy user: {self.heavy_conversations:,} conversations, "
                f"{self.heavy_unread:,} unread)")

    @property
    def heavy_open(self) -> str:
        return f"open conversation (heavy user: {self.heavy_unread // self.heavy_conversations} unread)"


FULL = Scale()
HEAVY_CONVERSATIONS = FULL.heavy_conversations
HEAVY_BADGE = FULL.heavy_badge
HEAVY_OPEN = FULL.heavy_open
LABEL = len(HEAVY_BADGE) + 2   # the table's operation column


@dataclass(frozen=True)
class Kind:
    """An operation kind: each operation's conversation and its members
    (the sender first), what to set up first (not metered), then the
    operation."""

    label: str
    members: Callable[[int], list[int]]
    setup: Callable[[Strategy, int], Iterator[Operation]]
    operation: Callable[[Strategy, int], Operation]


def _block(size: int) -> Callable[[int], list[int]]:
    # Conversation i: users i * (size + 1) .. (i + 1) * (size + 1) - 1, the first of them its sender.
    return lambda i: list(range(i * (size + 1), (i + 1) * (size + 1)))


def _deliver_to(size: int) -> Callable[[Strategy, int], Operation]:
    # Operation i: message i to conversation i, from its sender to the others.
    def operation(strategy: Strategy, i: int) -> Operation:
        sender, *recipients = _block(size)(i)
        return strategy.deliver(i, i, sender, recipients)
    return operation


def _nothing(strategy: Strategy, i: int) -> Iterator[Operation]:
    return iter(())


def _reader(i: int) -> int:
    """The user who opens conversation i, or whose badge is fetched
    (conversation i is theirs and its sender's: ``_block(1)``)."""
    return 2 * i + 1


def _unread_before_open(strategy: Strategy, i: int) -> Iterator[Operation]:
    for message in range(UNREAD_BEFORE_OPEN):
        yield strategy.deliver(i * UNREAD_BEFORE_OPEN + message, i, 2 * i, [_reader(i)])


KINDS = (
    Kind("deliver 1:1", _block(1), _nothing, _deliver_to(1)),
    *(Kind(f"deliver group {size}", _block(size), _nothing, _deliver_to(size)) for size in GROUP_SIZES),
    Kind(f"open conversation ({UNREAD_BEFORE_OPEN} unread)", _block(1), _unread_before_open,
         lambda strategy, i: strategy.open_conversation(_reader(i), i)),
    Kind("fetch badge", _block(1), _unread_before_open, lambda strategy, i: strategy.fetch_badge(_reader(i))),
)


class _Counting:
    """Counts the round trips of the operations it runs."""

    def __init__(self, target: CostTarget) -> None:
        self.target = target
        self.round_trips = 0

    def __call__(self, request: Request) -> Any:
        self.round_trips += 1
        return self.target.execute(request)


def _in_one_process(strategy: Strategy) -> tuple[Strategy, list]:
    """The strategy as one application process runs it, and its background jobs."""
    view = strategy.in_process(0, 1)
    return view, list(view.jobs())


def _drain(jobs: list, execute: Callable[[Request], Any]) -> None:
    """Every job's passes until one finds nothing left."""
    for job in jobs:
        while run_now(job.step(), execute):
            pass


def _metered(strategy: Strategy, target: CostTarget, jobs: list, operations: list[Operation]) -> dict[str, float]:
    """Per-operation figures of the operations, their background work included."""
    counting = _Counting(target)
    target.begin()
    for operation in operations:
        run_now(operation, counting)
    _drain(jobs, target.execute)
    return _per(target.end(), counting.round_trips, len(operations))


def _per(spent: Meter, round_trips: int, count: int) -> dict[str, float]:
    """What the server counted, and the round trips, per operation."""
    return {"round_trips": round_trips / count, "commands": spent.commands / count,
            "server_us": round(spent.server_us / count, 3), "bytes_in": spent.bytes_in / count,
            "bytes_out": spent.bytes_out / count}


def probe_kind(strategy: Strategy, target: CostTarget, kind: Kind, repeats: int) -> dict[str, float]:
    """Per-operation figures of ``repeats`` operations of one kind."""
    members = [kind.members(i) for i in range(repeats)]
    strategy.prepare(members, max(max(conversation) for conversation in members) + 1)
    strategy, jobs = _in_one_process(strategy)
    target.reset()
    for i in range(repeats):
        for operation in kind.setup(strategy, i):
            run_now(operation, target.execute)
    _drain(jobs, target.execute)
    return _metered(strategy, target, jobs, [kind.operation(strategy, i) for i in range(repeats)])


RECONCILE = "reconcile a changed user (its share of a pass)"


def probe_reconciler(strategy: Strategy, target: CostTarget, repeats: int) -> dict[str, float]:
    """What a reconciler's pass costs per changed user (SPOP, the re-sum),
    for ``repeats`` users with a few unread messages each, marked changed.
    (The marks ride with the operations' writes: one command more per write
    request, no round trip.) ``strategy`` runs with a reconciler."""
    members = [_block(1)(i) for i in range(repeats)]
    strategy.prepare(members, 2 * repeats)
    target.reset()
    for i in range(repeats):
        for operation in _unread_before_open(strategy, i):
            run_now(operation, target.execute)
    target.execute(mark([_reader(i) for i in range(repeats)]))
    counting = _Counting(target)
    target.begin()
    _drain(list(strategy.shared_jobs()), counting)
    return _per(target.end(), counting.round_trips, repeats)


def probe_heavy_user(strategy: Strategy, target: CostTarget, repeats: int,
                     scale: Scale = FULL) -> dict[str, dict[str, float]]:
    """A user in ``scale.heavy_conversations`` conversations with
    ``scale.heavy_unread`` unread messages: ``repeats`` badge fetches, then
    ``repeats`` conversations opened."""
    user, conversations = 0, scale.heavy_conversations   # conversation c: its sender 1 + c, and the heavy user
    strategy.prepare([[1 + conversation, user] for conversation in range(conversations)], conversations + 1)
    strategy, jobs = _in_one_process(strategy)
    target.reset()
    for message in range(scale.heavy_unread):
        conversation = message % conversations
        run_now(strategy.deliver(message, conversation, 1 + conversation, [user]), target.execute)
    _drain(jobs, target.execute)
    badge = _metered(strategy, target, jobs, [strategy.fetch_badge(user) for _ in range(repeats)])
    opened = _metered(strategy, target, jobs, [strategy.open_conversation(user, conversation)
                                               for conversation in range(min(repeats, conversations))])
    return {scale.heavy_badge: badge, scale.heavy_open: opened}


def probe_memory(strategy: Strategy, target: CostTarget, unread: int) -> int | None:
    """Bytes of one user's keys after ``unread`` messages reached it."""
    user = 0   # in MEMORY_CONVERSATIONS conversations, each with a sender of its own
    strategy.prepare([[user, 1 + conversation] for conversation in range(MEMORY_CONVERSATIONS)],
                     MEMORY_CONVERSATIONS + 1)
    target.reset()
    for message in range(unread):
        conversation = message % MEMORY_CONVERSATIONS
        run_now(strategy.deliver(message, conversation, 1 + conversation, [user]), target.execute)
    return target.memory(f"{{u{user}}}")


def measure(strategies: list[str], make_target: Callable[[Strategy], CostTarget], backend: str,
            repeats: int, progress: Callable[[str], None] | None = None, scale: Scale = FULL) -> dict:
    """The cost document: per strategy, per kind, and memory per user."""
    rows = {}
    for name in strategies:
        strategy = make_strategy(name)
        with make_target(strategy) as target:
            kinds = {}
            for kind in KINDS:
                if progress:
                    progress(f"{name}: {kind.label}")
                kinds[kind.label] = probe_kind(strategy, target, kind, repeats)
            if progress:
                progress(f"{name}: heavy user")
            kinds.update(probe_heavy_user(strategy, target, repeats, scale))
            memory = {str(unread): probe_memory(strategy, target, unread) if target.measures_memory else None
                      for unread in scale.unread_levels}
        if strategy.keeps_total:
            reconciled = make_strategy(name, reconcile_every_s=1.0)
            with make_target(reconciled) as target:
                kinds[RECONCILE] = probe_reconciler(reconciled, target, repeats)
        rows[name] = {"kinds": kinds, "memory_bytes_per_user": memory}
    return {"cost_schema": COST_SCHEMA, "backend": backend, "repeats": repeats,
            "memory_conversations": MEMORY_CONVERSATIONS, "strategies": rows}


def format_cost(document: dict) -> str:
    """The cost table as text: one row per (strategy, kind), then memory."""
    lines = [f"cost per operation on {document['backend']} ({document['repeats']} operations of each kind, "
             "one client, no fault)",
             f"{'strategy':<16}{'operation':<{LABEL}}{'round trips':>12}{'commands':>10}{'server us':>11}"
             f"{'bytes in':>10}{'bytes out':>11}"]
    for name, row in document["strategies"].items():
        for label, figures in row["kinds"].items():
            lines.append(f"{name:<16}{label:<{LABEL}}{figures['round_trips']:>12.2f}{figures['commands']:>10.2f}"
                         f"{figures['server_us']:>11.2f}{figures['bytes_in']:>10.0f}{figures['bytes_out']:>11.0f}")
    rows = list(document["strategies"].values())
    levels = list(rows[0]["memory_bytes_per_user"]) if rows else []
    lines += ["", f"memory per user, bytes (MEMORY USAGE of the user's keys; "
                  f"{document['memory_conversations']} conversations)",
              f"{'strategy':<16}" + "".join(f"{level + ' unread':>16}" for level in levels)]
    for name, row in document["strategies"].items():
        memory = row["memory_bytes_per_user"]
        lines.append(f"{name:<16}" + "".join(f"{'not modelled' if memory[level] is None else f'{memory[level]:,}':>16}"
                                             for level in levels))
    return "\n".join(lines)
