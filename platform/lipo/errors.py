"""User-facing errors.

A `LipoError` is a mistake the user can fix (bad config, bad data row, missing model). The CLI prints its message
as one line and exits with status 2, never a stack trace. Anything else is a bug and keeps its traceback.
"""


class LipoError(Exception):
    """A user mistake, reported as one clear line."""


class ConfigError(LipoError):
    """A config key is unknown, missing or has a bad value."""


class DataError(LipoError):
    """A dataset row is malformed; the message names the file, row and field."""
