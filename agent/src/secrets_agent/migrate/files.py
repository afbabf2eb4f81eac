"""Files the command writes: never over an existing file, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

from secrets_agent.backends.migration import MigrationError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def make_dir(path: Path, mode: int) -> None:
    """Create ``path`` (``mode``), or accept an existing real directory only we can write."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise MigrationError(f"{path}: exists and is not a directory") from None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot create ({exc.strerror})") from None


def write_new(path: Path, content: str, mode: int) -> None:
    """Write a file that must not exist yet, created with ``mode`` (umask cannot widen it)."""
    try:
        fd = os.open(path, _FLAGS, mode)
    except FileExistsError:
        raise MigrationError(f"{path}: already exists; move it away or choose --output") from None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot create ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            fd = -1
            out.write(content)
    finally:
        if fd >= 0:
            os.close(fd)
