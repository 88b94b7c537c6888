"""Writing files: atomically (an interruption never leaves a half-written one), with the
user's umask, and only where writing is possible (checked before the work starts)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require_writable_directory(path: Path, what: str) -> None:
    """Create ``path`` if needed and check that a file can be written in it: one error line
    (``what`` names it) instead of a failure after the work is done."""
    from metalora.errors import MetaloraError

    if path.exists() and not path.is_dir():
        raise MetaloraError(f"{what} {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".metalora-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MetaloraError(f"cannot write {what} {str(path)!r}: {reason}") from None


def give_plain_permissions(path: Path) -> None:
    """The permissions ``open()`` would have given ``path`` (the umask's), not mkstemp's 0600."""
    os.chmod(path, 0o666 & ~current_umask())


TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}$")
"""How the temporary files of :func:`atomic_write_bytes` are named (``.<name>.<random>``)."""


def remove_stale_temporaries(directory: Path) -> int:
    """Delete the temporary files that writes killed mid-way left under ``directory`` (call
    it only when no process writes there); return how many."""
    removed = 0
    for path in directory.rglob(".*"):
        if path.is_file() and TEMPORARY_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) while the body runs.

    Other processes (torchrun's ranks among them) that ask for the same lock
    wait until it is released; ``on_wait`` is called once if this one has to
    wait. The operating system releases the lock if the process dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            windows: Any = msvcrt  # its locking functions exist on Windows only

            def lock(blocking: bool) -> None:
                windows.locking(handle.fileno(), windows.LK_LOCK if blocking
                                else windows.LK_NBLCK, 1)

            def unlock() -> None:
                windows.locking(handle.fileno(), windows.LK_UNLCK, 1)
        else:
            import fcntl

            def lock(blocking: bool) -> None:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))

            def unlock() -> None:
                fcntl.flock(handle, fcntl.LOCK_UN)
        try:
            lock(blocking=False)
        except OSError:
            if on_wait is not None:
                on_wait()
            lock(blocking=True)
        try:
            yield
        finally:
            unlock()


def current_umask() -> int:
    """The process's umask (read without changing it)."""
    current = os.umask(0)
    os.umask(current)
    return current
