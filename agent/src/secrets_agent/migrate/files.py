"""Files the command writes: all or none, never over an existing file, never through a symlink."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from secrets_agent.backends.migration import MigrationError

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_all(dirs: Sequence[Path], files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Make ``dirs`` (0700) and write ``files`` (path, content, mode), or leave nothing behind.

    Checked first: a second run into the same directory must not add a credential file
    beside the first run's before it stops at ``agent.toml``.
    """
    taken = [path for path, _, _ in files if os.path.lexists(path)]
    if taken:
        raise MigrationError(
            f"{taken[0]}: already exists; move it away or choose --output; nothing written"
        )
    made: list[Path] = []
    try:
        for directory in dirs:
            if make_dir(directory, 0o700):
                made.append(directory)
        for path, content, mode in files:
            write_new(path, content, mode)
            made.append(path)
    except MigrationError:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        raise


def make_dir(path: Path, mode: int) -> bool:
    """Create ``path`` (``mode``; True), or accept an existing real directory (False)."""
    try:
        path.mkdir(mode=mode)
        return True
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise MigrationError(f"{path}: exists and is not a directory") from None
        return False
    except OSError as exc:
        raise MigrationError(f"{path}: cannot create ({exc.strerror})") from None


def write_new(path: Path, content: bytes, mode: int) -> None:
    """Write a file that must not exist yet, created with ``mode`` (umask cannot widen it)."""
    try:
        fd = os.open(path, _FLAGS, mode)
    except FileExistsError:
        raise MigrationError(f"{path}: already exists; move it away or choose --output") from None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot create ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(content)
    except OSError as exc:  # a full disk, a quota: no half-written file left behind
        path.unlink(missing_ok=True)
        raise MigrationError(f"{path}: cannot write ({exc.strerror})") from None
    finally:
        if fd >= 0:
            os.close(fd)
