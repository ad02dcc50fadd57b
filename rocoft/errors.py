"""Errors a user can fix: printed as one clear paragraph by train.py, without a traceback."""


class UserError(Exception):
    """A problem with the user's configuration, data or environment, with a fix in its message."""
