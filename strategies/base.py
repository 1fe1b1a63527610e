"""What every strategy is: three chat operations and a way to read its counters back.

A strategy's operations are generators of backend-neutral requests
(:mod:`sim.commands`): the simulated and the real backend run the same code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

from sim.commands import Operation, Pipeline
from sim.lua import Code, LuaLibrary, LuaScript
from strategies import keys
from strategies.reconciler import RECOUNT, reconcile_pass


class StrategyOptionError(ValueError):
    pass


class GaveUp(Exception):
    """The way a strategy fails an operation on purpose (a lock that stayed
    busy, WATCH that kept aborting): the client loop records a failed
    operation. Any other exception out of a strategy is a bug of the
    strategy's, and ends the run."""


@dataclass(frozen=True)
class Job:
    """A strategy's background work (a flusher, a queue's consumer), run by
    a worker of its own beside the clients, on both backends
    (sim/worker.py): ``step`` is one pass over what waits, an operation
    that returns how many items it handled; the worker runs it every
    ``every_s`` seconds, at once again after a pass that handled items when
    ``again_at_once``. When the clients are done, the worker steps until a
    pass handles nothing (the last flush, the last consume). ``crash``: the
    worker's process died; it returns how many items it held in memory,
    lost with it. A worker_crash strikes a pass before a request, once the
    pass has done ``crash_after`` requests (a consumer's 1: after its read,
    so that what it read stays pending), or after a second whatever it did.
    ``left``: an operation that returns how many items wait that a pass
    could not take yet (a queue's entries pending, not yet idle long enough
    to claim); the drain goes on while there are any.
    """

    name: str
    every_s: float
    step: Callable[[], Operation]
    crash: Callable[[], int] = lambda: 0
    again_at_once: bool = False
    crash_after: int = 0
    left: Callable[[], Operation] | None = None


class Strategy:
    name: ClassVar[str]
    summary: ClassVar[str]
    scripts: ClassVar[tuple[LuaScript, ...]] = ()    # EVALSHA'd: loaded on every connection
    libraries: ClassVar[tuple[LuaLibrary, ...]] = ()  # FCALL'd: loaded once, kept with the data
    # What drift attribution needs to know of it (sim/causes.py):
    # holds_lock: its operations hold a lock with a TTL, which a paused holder
    # can outlive and a failover can lose (two holders at once);
    # repairs: it puts the total right after the fact (the cause `repaired`);
    # backs_off: a client waits and tries again while another holds what it
    # needs (calibration's contended runs price those waits).
    holds_lock: ClassVar[bool] = False
    repairs: ClassVar[bool] = False
    repair_off: ClassVar[dict[str, Any]] = {}   # options that switch its repair off (a replay without it)
    backs_off: ClassVar[bool] = False
    # buffers: it keeps acknowledged changes in the application's memory
    # before they reach Redis (a crash loses them: the cause `lost_in_buffer`);
    # its operations then have no single moment of effect (the memory and
    # Redis change at different moments): the truth gives them their span.
    buffers: bool = False
    # Keys it keeps for no one user (a queue, a set of users): not stray.
    shared_keys: ClassVar[tuple[str, ...]] = ()
    # total_lags: its total is brought up to date after the operation, by
    # background work (a queue's consumer): exact once that work is done,
    # its badges in between may be stale (check-strategy holds its end only).
    total_lags: ClassVar[bool] = False
    # cross_slot: a command or script of it touches several users' slots,
    # so it cannot run on a Redis Cluster (check-strategy does not hold it to one slot).
    cross_slot: ClassVar[bool] = False
    # Options this strategy accepts, with their defaults.
    defaults: ClassVar[dict[str, Any]] = {}
    # Options every strategy accepts: after each write, WAIT for this many
    # replicas (the driver sends the WAIT; 0 = never); untagged_total: the
    # total key without the user's hash tag (``total:u42``), so that on a
    # Redis Cluster a script or MULTI/EXEC over both counters fails with
    # CROSSSLOT (on a single server it changes nothing but the key's name).
    # reconcile_every_s: run a reconciler (strategies/reconciler.py) that often; 0: none.
    common_defaults: ClassVar[dict[str, Any]] = {"wait_replicas": 0, "untagged_total": False,
                                                 "reconcile_every_s": 0.0}
    # (low, high) of each numeric option; those not named: 0 to 1e9.
    bounds: ClassVar[dict[str, tuple[float, float]]] = {"wait_replicas": (0, 5), "reconcile_every_s": (0, 3600)}
    # keeps_total: a total beside the conversation counts (unread hash, total
    # key), which a reconciler can re-sum; a strategy that derives its badge has none.
    keeps_total: ClassVar[bool] = True
    reconcile_every_s: float = 0.0   # set from the options
    # The values each text option may take.
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, **options: Any) -> None:
        defaults = {**self.common_defaults, **self.defaults}
        unknown = set(options) - set(defaults)
        if unknown:
            allowed = ", ".join(sorted(defaults))
            raise StrategyOptionError(
                f"unknown option(s) {', '.join(sorted(unknown))} for strategy "
                f"'{self.name}'; allowed: {allowed}")
        self.options = {**defaults, **options}
        for name, value in self.options.items():
            default = defaults[name]
            if type(default) is float and type(value) is int:
                value = float(value)
            if type(value) is not type(default):
                raise StrategyOptionError(
                    f"option '{name}' of strategy '{self.name}' must be "
                    f"{type(default).__name__}, got {value!r}")
            if type(value) is str:
                allowed = self.choices.get(name, ())
                if value not in allowed:
                    raise StrategyOptionError(f"option '{name}' of strategy '{self.name}' must be one of "
                                              f"{', '.join(allowed)}, got {value!r}")
                setattr(self, name, value)
                continue
            low, high = self.bounds.get(name, (0, 1e9))
            if not (math.isfinite(value) and low <= value <= high):
                raise StrategyOptionError(f"option '{name}' of strategy '{self.name}' must be between "
                                          f"{low:g} and {high:g}, got {value!r}")
            setattr(self, name, value)
        if self.reconcile_every_s and not self.keeps_total:
            raise StrategyOptionError(f"option 'reconcile_every_s' of strategy '{self.name}' must be 0: it keeps "
                                      f"no total to reconcile, got {self.reconcile_every_s!r}")
        if 0 < self.reconcile_every_s < 0.01:
            raise StrategyOptionError(f"option 'reconcile_every_s' of strategy '{self.name}' must be 0 (off) or "
                                      f"at least 0.01, got {self.reconcile_every_s!r}")

    @property
    def code(self) -> tuple[Code, ...]:
        """What a connection loads as it opens (sim.lua.load_command)."""
        reconciler = (RECOUNT,) if self.reconcile_every_s and RECOUNT not in self.scripts else ()
        return (*self.scripts, *self.libraries, *reconciler)

    def shared_jobs(self) -> tuple[Job, ...]:
        """Background work for the whole application rather than each of
        its processes: the reconciler, when on."""
        if not self.reconcile_every_s:
            return ()
        return (Job("reconciler", self.reconcile_every_s, lambda: reconcile_pass(self.total_key),
                    again_at_once=True),)

    def repairs_off(self, causes: frozenset[str]) -> dict[str, Any]:
        """Options that switch off its repairs whose cause is not in
        ``causes`` (a replay of the drift attribution, sim/causes.py)."""
        off = dict(self.repair_off) if self.repairs and "repaired" not in causes else {}
        if self.reconcile_every_s and "repaired_by_reconciler" not in causes:
            off["reconcile_every_s"] = 0.0
        return off

    def run_figures(self, users: int) -> Operation:
        """What only this strategy counts, read once the run is over (users
        0 .. ``users`` - 1): counts by name, into results.json's
        ``strategy_figures``. None by default."""
        return {}
        yield   # (an operation that sends nothing)

    def marks_changes(self) -> bool:
        """Whether a client tells the reconciler which users an operation changed."""
        return bool(self.reconcile_every_s)

    def total_key(self, user: int) -> str:
        """The key of the user's total (tagged unless ``untagged_total``)."""
        return keys.total_untagged(user) if self.untagged_total else keys.total(user)

    def prepare(self, members: Sequence[Sequence[int]], users: int) -> None:
        """Before a run: every conversation's members (by conversation id),
        as the application's database knows them; ``users`` ids from 0. A
        strategy that keeps state per conversation (read positions) needs
        them; counters do not."""

    def in_process(self, process: int, processes: int) -> "Strategy":
        """The strategy as application process ``process`` of ``processes``
        runs it (a virtual client is one process). One that keeps nothing in
        a process's memory is the same object in all of them."""
        return self

    def jobs(self) -> tuple[Job, ...]:
        """The background work this strategy needs (none: every change is
        made by the operation that causes it)."""
        return ()

    def crashed(self, process: int) -> int:
        """Process ``process`` died: how many changes it held in memory,
        now lost (what ``buffers`` declares)."""
        return 0

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        """A message was stored: count it as unread for every recipient
        (the conversation's members but its sender)."""
        raise NotImplementedError

    def open_conversation(self, user: int, conversation: int) -> Operation:
        """The user read the conversation: clear its count and lower the
        total. Returns the count the user was shown (what it read before
        clearing), as an int; a strategy that returns None shows nothing
        that can be judged."""
        raise NotImplementedError

    def fetch_badge(self, user: int) -> Operation:
        """A push needs the user's total; returns it as an int."""
        reply = yield ("GET", self.total_key(user))
        return int(reply or 0)

    def login(self, user: int) -> Operation:
        """The user opened the app, which shows the badge; returns it as an int."""
        return self.fetch_badge(user)

    def counters(self, user: int) -> Operation:
        """Read back (per-conversation counts, total, values that are not
        integers) for the checker."""
        flat, total = yield Pipeline((("HGETALL", keys.unread(user)), ("GET", self.total_key(user))))
        counts, bad = counts_from_flat(flat)
        value = whole(total or 0)
        return counts, value or 0, bad + (value is None)


def whole(value: Any) -> int | None:
    """A counter's integer, or None when what Redis holds is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def counts_from_flat(flat: Any) -> tuple[dict[int, int], int]:
    """HGETALL's flat [field, value, ...] of conversation -> count, as ints,
    and how many fields or values were not integers (left out)."""
    if not isinstance(flat, list):
        return {}, 1   # the key holds something other than a hash
    counts: dict[int, int] = {}
    bad = 0
    for i in range(0, len(flat) - 1, 2):
        conversation, count = whole(flat[i]), whole(flat[i + 1])
        if conversation is None or count is None:
            bad += 1
        else:
            counts[conversation] = count
    return counts, bad
