"""Errors that reach the user as one clear message instead of a traceback.

Anything raised as a ``UserError`` is the user's to fix (a config field, a file,
a device); the CLI prints its message and exits non-zero.
"""


class UserError(Exception):
    """A problem in the user's input or environment, explained in the message."""


class ConfigError(UserError):
    """The YAML config or a command-line override is invalid."""


class DataError(UserError):
    """A dataset file is missing or does not have the expected layout."""


class DeviceError(UserError):
    """The requested device is not available on this machine."""


class TrainingError(UserError):
    """Training cannot continue (diverged loss, unusable checkpoint, ...)."""
