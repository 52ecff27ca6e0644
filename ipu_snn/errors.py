"""Errors that reach the user as one clear message instead of a traceback.

A ``UserError`` is what the user can fix: a config field, a file, the data, a
device, a run folder. Its message names the thing to fix; the CLI prints it and
exits with status 2. A broken internal contract (a function called with
arguments it does not take, a state that cannot happen) is a bug, not a
``UserError``: it raises an ordinary exception (ValueError, TypeError,
RuntimeError, ...), and the CLI prints its traceback and exits with status 1.
"""

import errno

#: OS errors of the machine's storage, never of ipu_snn: a full disk or quota, a file over ``ulimit -f``, a
#: read-only filesystem, no permission. Whatever command meets one exits 2 naming the path.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


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


class StorageError(TrainingError):
    """The run folder cannot be written or has gone (a full disk, a read-only filesystem, a deleted folder)."""
