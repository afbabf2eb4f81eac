"""Process hardening: no core files, and not dumpable (no same-uid ptrace or /proc/<pid>/mem)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import ctypes, resource
from secrets_agent.ops.hardening import forbid_core_dumps
libc = ctypes.CDLL(None)
before = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
forbid_core_dumps()
print(before, libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
"""


def test_the_process_stays_undumpable_and_writes_no_core() -> None:
    # In a child: the test process itself must stay debuggable.
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split(maxsplit=2) == ["1", "0", "(0, 0)\n"]
    assert result.stderr == ""  # no warning: libc's prctl was found and worked
