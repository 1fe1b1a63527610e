"""Errors that end a command with one line and exit status 2."""


class UsageError(Exception):
    """A bad command line, or a run that this backend or machine cannot do."""


class StrategyError(UsageError):
    """A strategy raised what it does not declare (a bug of the strategy's):
    the run ends, naming the strategy, the operation and the line."""


class ReportError(ValueError):
    """Results that reports and compare cannot read."""
