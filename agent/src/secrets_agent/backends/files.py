"""Local files a backend needs (credentials, CAs), read with one wording for what went wrong."""

from __future__ import annotations

import os
from pathlib import Path

from secrets_agent.errors import BackendError


def read_local(
    backend: str, path: str, what: str, error: type[BackendError] = BackendError
) -> bytes:
    """The file's bytes, or ``error`` naming it (its path and the system's reason, no content)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(backend, f"cannot read the {what} file {path}: {exc.strerror}") from None


Stamp = tuple[int, int, int] | None


def stamp(path: str) -> Stamp:
    """What tells a rewritten file from the one read: inode, size, modification time (None:
    absent or unreadable). A credential file a rotation rewrites is read again when it
    changes (SDKs read it once)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
