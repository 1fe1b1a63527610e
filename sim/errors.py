"""Errors that end a command with one line and exit status 2."""


class UsageError(Exception):
    """A bad command line, or a run that this backend or machine cannot do."""


class ReportError(ValueError):
    """Results that reports and compare cannot read."""
