"""Snapshot files: round trip as stale, bounded staleness, keys, corruption, no misses, 0600."""

from __future__ import annotations

import json
import logging
import resource
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SecretCache
from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.snapshot import MAGIC, Snapshot
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock

V, C = Kind.VARIABLE, Kind.CONNECTION
KEY_A, KEY_B = Fernet.generate_key(), Fernet.generate_key()


class Node:
    """One agent's cache and snapshot; ``wall`` is the real-time clock a reboot keeps."""

    def __init__(
        self,
        path: Path,
        keys: list[bytes],
        wall: FakeClock,
        backends: dict[str, str] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.cache = SecretCache(
            max_entries=100,
            ttl=lambda k: 60.0,
            negative_ttl=30.0,
            max_stale=600.0,
            cipher=Cipher(keys),
            clock=self.clock,
        )
        backends = {"vault": "vault-config-1"} if backends is None else backends
        self.snapshot = Snapshot(path, self.metrics, backends=backends, wall=wall)

    def loads(self, result: str) -> float:
        labels = {"result": result}
        return (
            self.metrics.registry.get_sample_value("secrets_agent_snapshot_loads_total", labels)
            or 0
        )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache.snapshot"


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def filled(path: Path, wall: FakeClock, keys: list[bytes] | None = None) -> Node:
    node = Node(path, keys or [KEY_A], wall)
    node.cache.put(V, "greeting", "s3cret-hello", "vault", "ver-3")
    node.cache.put(C, "pg", "postgresql://u:s3cret@db/app", "vault", team="team_a")
    node.cache.put(V, "absent", None)  # a miss: never persisted
    node.clock.advance(20)
    assert node.snapshot.save(node.cache)
    return node


def test_values_come_back_stale_with_their_age_and_misses_do_not(
    path: Path, wall: FakeClock
) -> None:
    filled(path, wall)
    wall.advance(100)  # the node was down for 100 s
    node = Node(path, [KEY_A], wall)
    assert node.snapshot.load(node.cache) == 2
    greeting = node.cache.get(V, "greeting")
    assert greeting is not None and not greeting.fresh
    assert (greeting.value, greeting.age, greeting.source, greeting.version) == (
        "s3cret-hello",
        120.0,
        "vault",
        "ver-3",
    )
    pg = node.cache.get(C, "pg", "team_a")
    assert pg is not None and pg.value == "postgresql://u:s3cret@db/app"
    assert node.cache.get(C, "pg") is None  # the team scope came back with it
    assert node.cache.get(V, "absent") is None
    assert node.loads("loaded") == 1


def test_the_file_is_0600_and_holds_neither_values_nor_ids(path: Path, wall: FakeClock) -> None:
    filled(path, wall)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    # Long enough not to turn up in base64 by chance (a two-letter id would, now and then).
    for plain in (b"s3cret", b"greeting", b"postgresql", b"team_a", b"vault"):
        assert plain not in data
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_staleness_is_bounded_by_max_stale_from_when_the_value_was_stored(
    path: Path, wall: FakeClock
) -> None:
    filled(path, wall)
    wall.advance(500)  # stored 520 s ago; max_stale is 600
    node = Node(path, [KEY_A], wall)
    assert node.snapshot.load(node.cache) == 2
    node.clock.advance(79)
    assert node.cache.get(V, "greeting") is not None
    node.clock.advance(2)
    assert node.cache.get(V, "greeting") is None
    wall.advance(600)
    late = Node(path, [KEY_A], wall)
    assert late.snapshot.load(late.cache) == 0


def test_values_of_a_backend_configured_differently_or_removed_are_left_out(
    path: Path, wall: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that now points at another Vault (mount, account...) must not serve the old
    one's values, even stale; a backend added since changes nothing for the others'."""
    node = Node(path, [KEY_A], wall, {"vault": "config-1", "aws": "config-2"})
    node.cache.put(V, "greeting", "s3cret-hello", "vault")
    node.cache.put(V, "other", "s3cret-other", "aws")
    assert node.snapshot.save(node.cache)
    moved = Node(path, [KEY_A], wall, {"vault": "config-1b", "aws": "config-2", "gcp": "c3"})
    with caplog.at_level(logging.INFO):
        assert moved.snapshot.load(moved.cache) == 1
    assert moved.cache.get(V, "greeting") is None
    other = moved.cache.get(V, "other")
    assert other is not None and other.value == "s3cret-other"
    assert caplog.records[-1].getMessage() == (
        "cache snapshot: 1 values restored as stale until refreshed; 1 left out, their backend "
        "removed or configured differently"
    )
    removed = Node(path, [KEY_A], wall, {"vault": "config-1"})
    assert removed.snapshot.load(removed.cache) == 1  # only the vault's
    assert removed.cache.get(V, "other") is None


def test_a_file_without_backend_configurations_restores_nothing(
    path: Path, wall: FakeClock
) -> None:
    cipher = Cipher([KEY_A])
    token = Cipher.token(cipher.seal("s3cret")).decode()
    entry = ["variable", "k", None, token, 1.0, "vault", None]
    document = f'{{"written_at": {wall()}, "entries": [{json.dumps(entry)}]}}'
    path.write_bytes(MAGIC + cipher.encrypt(document))
    node = Node(path, [KEY_A], wall)
    assert node.snapshot.load(node.cache) == 0
    assert node.loads("loaded") == 1 and len(node.cache) == 0


def test_a_rotated_key_still_reads_it_but_a_replaced_key_ignores_it(
    path: Path, wall: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    filled(path, wall)
    rotated = Node(path, [KEY_B, KEY_A], wall)  # new key first, the old one still listed
    assert rotated.snapshot.load(rotated.cache) == 2
    assert rotated.snapshot.save(rotated.cache)  # now written under the new key
    replaced = Node(path, [KEY_A], wall)
    with caplog.at_level(logging.WARNING):
        assert replaced.snapshot.load(replaced.cache) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"cache snapshot {path} cannot be decrypted: written under a key no longer configured, "
        "or corrupt; starting without it"
    ]
    assert replaced.loads("ignored") == 1 and len(replaced.cache) == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: data[:-10] + bytes(10),  # corrupt
        lambda data: b"",  # empty
        lambda data: b"not a snapshot at all",
    ],
    ids=["truncated", "corrupt", "empty", "foreign"],
)
def test_a_damaged_file_is_ignored_with_one_warning(
    path: Path, wall: FakeClock, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    filled(path, wall)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    node = Node(path, [KEY_A], wall)
    with caplog.at_level(logging.WARNING):
        assert node.snapshot.load(node.cache) == 0
    assert len(caplog.records) == 1 and "starting without it" in caplog.records[0].getMessage()
    assert node.loads("ignored") == 1


def test_a_well_encrypted_but_malformed_document_is_ignored(path: Path, wall: FakeClock) -> None:
    cipher = Cipher([KEY_A])
    path.write_bytes(MAGIC + cipher.encrypt('{"written_at": 1, "entries": [[1, 2]]}'))
    node = Node(path, [KEY_A], wall)
    assert node.snapshot.load(node.cache) == 0
    assert node.loads("ignored") == 1


def test_no_file_is_not_a_warning_and_an_unwritable_place_is_one(
    tmp_path: Path, wall: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path / "absent", [KEY_A], wall)
    with caplog.at_level(logging.WARNING):
        assert node.snapshot.load(node.cache) == 0
        assert caplog.records == []
        node.cache.put(V, "k", "s3cret")
        broken = Snapshot(tmp_path / "no-such-dir" / "snap", node.metrics, backends={}, wall=wall)
        assert not broken.save(node.cache)
    assert node.loads("absent") == 1
    assert len(caplog.records) == 1 and "s3cret" not in caplog.text
    failures = node.metrics.registry.get_sample_value(
        "secrets_agent_snapshot_writes_total", {"result": "failure"}
    )
    assert failures == 1


def test_a_write_cut_short_by_a_full_disk_keeps_the_last_good_file(
    path: Path, wall: FakeClock
) -> None:
    """A write the filesystem ends early (no space left, a file size limit) writes part of the
    data without an error: the partial file must never replace the last good one."""
    node = filled(path, wall)
    good = path.read_bytes()
    node.cache.put(V, "large", "x" * 65536, "vault")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Past this size a write stops short, then fails (EFBIG): as on a disk that fills up.
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) + 4096, hard))
    try:
        saved = node.snapshot.save(node.cache)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert not saved
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    restarted = Node(path, [KEY_A], wall)
    assert restarted.snapshot.load(restarted.cache) == 2


def test_a_snapshot_needs_configured_keys() -> None:
    """``run`` (the runtime's cache) and ``check-config`` refuse it with the same message."""
    from secrets_agent.config.schema import CacheConfig
    from secrets_agent.errors import StartupError
    from secrets_agent.lookup.snapshot import require_snapshot_keys

    with pytest.raises(StartupError, match=r"cache\.snapshot_file needs a configured encryption"):
        require_snapshot_keys(CacheConfig(snapshot_file="/var/lib/agent/snapshot"), [])
    require_snapshot_keys(CacheConfig(snapshot_file="/var/lib/agent/snapshot"), [b"k"])
    require_snapshot_keys(CacheConfig(), [])
