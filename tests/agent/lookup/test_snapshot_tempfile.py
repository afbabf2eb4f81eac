"""The snapshot's temporary file: a fresh unpredictable name, never one placed there for us."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SecretCache
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.snapshot import MAGIC, Snapshot
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock


def cache() -> SecretCache:
    made = SecretCache(
        max_entries=10,
        ttl=lambda k: 60.0,
        negative_ttl=30.0,
        max_stale=600.0,
        cipher=Cipher([Fernet.generate_key()]),
        clock=FakeClock(),
    )
    made.put(Kind.VARIABLE, "greeting", "s3cret-hello", "vault")
    return made


@pytest.mark.parametrize("how", ["hardlink", "symlink", "file"])
def test_a_precreated_temporary_file_is_never_written_through(tmp_path: Path, how: str) -> None:
    path = tmp_path / "cache.snapshot"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    # The name the agent used to write to: its pid made it predictable.
    placed = tmp_path / f".{path.name}.{os.getpid()}.tmp"
    if how == "hardlink":
        os.link(victim, placed)
    elif how == "symlink":
        placed.symlink_to(victim)
    else:
        placed.write_bytes(b"theirs")
        placed.chmod(0o666)
    assert Snapshot(path, Metrics(), backends={}).save(cache())
    assert victim.read_bytes() == b"keep"
    assert path.read_bytes().startswith(MAGIC) and (path.stat().st_mode & 0o777) == 0o600
    leftovers = {p.name for p in tmp_path.iterdir()} - {"cache.snapshot", "victim", placed.name}
    assert leftovers == set()  # its own temporary file is gone (renamed into place)
