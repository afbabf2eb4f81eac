"""Keys naming a file: a value is kept only when it is evidently a path, never echoed otherwise.

Operators paste the secret itself into ``password_file`` or ``token_file``. Every reader's error
("cannot read <path>: No such file") and log line would then carry it to journald and CI logs, so
the loader refuses such a value by its key, before anything reads or names it; what it keeps is
safe to show, and the readers keep naming the path as they always did.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

NOT_SHOWN = "its value is not shown: it may be a secret"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)


def text_problem(value: str) -> str | None:
    """A value no path holds (a line break, a control character): pasted text, a key perhaps."""
    if _CONTROL.search(value):
        return f"must be a path, not text with line breaks or control characters ({NOT_SHOWN})"
    return None


def local_problem(written: str, resolved: Path, base_dir: Path) -> str | None:
    """Why ``written`` (read as ``resolved``) is not evidently a path on this machine, or None.

    Evidently a path: something is there, or it is absolute under a top-level directory this
    machine has (``/run/secrets/...`` not mounted yet: the reader then names it, as missing). A
    relative value naming nothing is as likely a password as a file name; so is an absolute one
    under no such directory (base64 keys start with ``/`` once in 64).
    """
    if _there(resolved):
        return None
    if Path(written).expanduser().is_absolute():
        if len(resolved.parts) > 1 and Path(resolved.anchor, resolved.parts[1]).is_dir():
            return None
        return f"names no file, under no top-level directory of this machine ({NOT_SHOWN})"
    return (
        f"names no file in {base_dir}, the config file's directory, which a relative path is "
        f"read from ({NOT_SHOWN})"
    )


def _there(path: Path) -> bool:
    """Something is at ``path``, or an existing directory on the way hides it (EACCES)."""
    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno not in _ABSENT
    except ValueError:  # a NUL: text_problem has refused it already
        return False
    return True
