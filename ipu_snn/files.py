"""Files that a reader, a crash or a second process never sees half of.

``replace_atomically`` writes a whole file or nothing; ``held_lock`` is an
exclusive lock that dies with the process holding it (``fcntl.flock``), so a
process killed at any moment never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

#: Prefix of the temporary files ``replace_atomically`` writes beside their target.
TEMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process umask, read without changing it (other threads may be creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain open() or mkdir() would have (mkstemp and mkdtemp make it private)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and flush it to disk before returning."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        honour_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LockBusy(Exception):
    """Another live process holds the lock; ``holder`` says which, as far as it wrote down."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def lock_holder(path: Path, settle_s: float = 0.5) -> str:
    """Who holds (or last held) the lock at ``path``: "pid N on HOST", as its holder wrote it.

    A holder writes its pid just after taking the lock, so an empty file is read again for up to
    ``settle_s``: a run refused in that instant still names its owner."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            text = Path(path).read_text(errors="replace").strip()
        except OSError:
            text = ""
        if text or time.monotonic() >= deadline:
            return text or "another process (it has not written its pid yet)"
        time.sleep(0.01)


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path`` (a lock file alone means nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file (or none this process may read): nobody to wait for that it can see
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def held_lock(path: Path, *, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None,
              poll_s: float = 0.2) -> Iterator[None]:
    """Hold the exclusive lock at ``path`` (created if missing) for the ``with`` block.

    Waits up to ``wait_s`` for a holder to finish, calling ``on_wait(holder)`` once
    when it starts waiting; then raises ``LockBusy``. The lock file stays behind
    (removing it would race with a process opening it), but the lock itself is
    released when the block ends or the process dies, however it dies.
    """
    deadline = time.monotonic() + wait_s
    fd = _try_lock(path)
    if fd is None and on_wait is not None and wait_s > 0:
        on_wait(lock_holder(path))
    while fd is None:
        if time.monotonic() >= deadline:
            raise LockBusy(Path(path), lock_holder(path))
        time.sleep(poll_s)
        fd = _try_lock(path)
    try:
        yield
    finally:
        os.close(fd)  # releases the flock
