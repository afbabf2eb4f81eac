"""Run a piece of client code as another local user (the suite runs as root)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable


def as_other_user(uid: int, gid: int, groups: list[int], call: Callable[[], str]) -> str:
    """Run ``call`` in a forked child that dropped to uid/gid, and return what it answered.

    A fork rather than a new interpreter: the venv's python lives under /root, which another
    uid cannot even execute. The child only touches the stdlib client, then ``_exit``s.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            answer = call()
        except BaseException as exc:  # report anything to the parent
            answer = f"ERROR {type(exc).__name__}: {exc}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer
