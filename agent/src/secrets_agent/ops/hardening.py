"""Process-level protection for memory that holds secrets."""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """No core files, and no ptrace/proc-mem reads by same-uid processes (not dumpable)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except OSError:  # e.g. a seccomp filter without @resources: the unit's LimitCORE=0 holds
        log.debug("setrlimit(RLIMIT_CORE) refused; relying on the service manager's limit")
    # The process's own symbols (libc's prctl among them), as peers.py reads getsockopt:
    # ctypes.util.find_library would run /sbin/ldconfig at every start to find the same libc.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: errno %d", ctypes.get_errno())
