"""Errors that end a command with one line and exit status 2."""


class UsageError(Exception):
    """A bad command line, or a run that this backend or machine cannot do."""


class StrategyError(UsageError):
    """A strategy raised what it does not declare (a bug of the strategy's):
    the run ends, naming the strategy, the operation and the line."""


class ReportError(ValueError):
    """Results that reports and compare cannot read."""


class NotModelled(UsageError):
    """A request the simulation does not model: the run ends, naming it,
    rather than answer otherwise than Redis would."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not modelled by the simulation: {what}")
