"""What every strategy is: three chat operations and a way to read its counters back.

A strategy's operations are generators of backend-neutral requests
(:mod:`sim.commands`): the simulated and the real backend run the same code.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from sim.commands import Operation, Pipeline
from sim.lua import LuaScript
from strategies import keys


class StrategyOptionError(ValueError):
    pass


class Strategy:
    name: ClassVar[str]
    summary: ClassVar[str]
    scripts: ClassVar[tuple[LuaScript, ...]] = ()
    # Options this strategy accepts, with their defaults.
    defaults: ClassVar[dict[str, Any]] = {}
    # Options every strategy accepts: after each write, WAIT for this many
    # replicas (the driver sends the WAIT; 0 = never).
    common_defaults: ClassVar[dict[str, Any]] = {"wait_replicas": 0}

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
            setattr(self, name, value)

    def deliver(self, message: int, conversation: int, recipients: Sequence[int]) -> Operation:
        """A message was stored: count it as unread for every recipient."""
        raise NotImplementedError

    def open_conversation(self, user: int, conversation: int) -> Operation:
        """The user read the conversation: clear its count and lower the total."""
        raise NotImplementedError

    def fetch_badge(self, user: int) -> Operation:
        """A push needs the user's total; returns it as an int."""
        reply = yield ("GET", keys.total(user))
        return int(reply or 0)

    def counters(self, user: int) -> Operation:
        """Read back (per-conversation counts, total) for the checker."""
        flat, total = yield Pipeline((("HGETALL", keys.unread(user)), ("GET", keys.total(user))))
        return counts_from_flat(flat), int(total or 0)


def counts_from_flat(flat: list) -> dict[int, int]:
    """HGETALL's flat [field, value, ...] of conversation -> count, as ints."""
    return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
