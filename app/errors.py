"""Errors the command line prints as one line."""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""
