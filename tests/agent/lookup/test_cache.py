"""SecretCache and Cipher: TTLs, negative entries, bounded staleness, encryption at rest."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import Persisted, RefreshAhead, SecretCache
from secrets_agent.lookup.cipher import Cipher
from support.helpers import FakeClock

V, C = Kind.VARIABLE, Kind.CONNECTION


def make_cache(clock: FakeClock, cipher: Cipher | None = None, **overrides: float) -> SecretCache:
    ttls = {Kind.CONNECTION: 60.0, Kind.VARIABLE: 30.0, Kind.CONFIG: 0.0}
    settings = {"max_entries": 100, "negative_ttl": 5.0, "max_stale": 100.0} | overrides
    return SecretCache(
        max_entries=int(settings["max_entries"]),
        ttl=ttls.__getitem__,
        negative_ttl=settings["negative_ttl"],
        max_stale=settings["max_stale"],
        cipher=cipher or Cipher([]),
        clock=clock,
    )


def test_value_is_fresh_until_its_kind_ttl_then_stale_then_gone() -> None:
    clock = FakeClock()
    cache = make_cache(clock)
    cache.put(V, "k", "v1")
    cache.put(C, "k", "c1")
    clock.advance(29.9)
    fresh = cache.get(V, "k")
    assert fresh is not None and fresh.fresh and fresh.value == "v1"
    assert fresh.age == pytest.approx(29.9)
    clock.advance(0.2)
    stale = cache.get(V, "k")
    assert stale is not None and not stale.fresh and stale.value == "v1"
    assert cache.get(C, "k") is not None and cache.get(C, "k").fresh  # type: ignore[union-attr]
    clock.advance(100.0)
    assert cache.get(V, "k") is None
    assert len(cache) == 1


def test_negative_entries_use_the_negative_ttl_and_are_never_stale() -> None:
    clock = FakeClock()
    cache = make_cache(clock)
    cache.put(V, "missing", None)
    hit = cache.get(V, "missing")
    assert hit is not None and hit.value is None and hit.fresh
    clock.advance(5.0)
    assert cache.get(V, "missing") is None


def test_zero_ttl_means_not_cached() -> None:
    cache = make_cache(FakeClock())
    cache.put(Kind.CONFIG, "k", "v")
    assert cache.get(Kind.CONFIG, "k") is None
    assert len(cache) == 0


def test_max_entries_evicts_the_least_recently_used() -> None:
    cache = make_cache(FakeClock(), max_entries=2)
    cache.put(V, "a", "1")
    cache.put(V, "b", "2")
    assert cache.get(V, "a") is not None  # a is now more recent than b
    cache.put(V, "c", "3")
    assert cache.get(V, "b") is None
    assert {cache.get(V, "a").value, cache.get(V, "c").value} == {"1", "3"}  # type: ignore[union-attr]


def test_values_are_encrypted_in_memory() -> None:
    cache = make_cache(FakeClock())
    cache.put(V, "k", "plaintext-secret")
    tokens = [entry.token for entry in cache._entries.values()]
    assert tokens and all(b"plaintext-secret" not in (t or b"") for t in tokens)


def test_invalidate_all_one_kind_or_one_id() -> None:
    cache = make_cache(FakeClock())
    for kind in (V, C):
        for key in ("a", "b"):
            cache.put(kind, key, "x")
    assert cache.invalidate(V, "a") == 1
    assert cache.invalidate(C) == 2
    assert cache.invalidate() == 1
    assert len(cache) == 0


def test_sweep_drops_only_unservable_entries() -> None:
    clock = FakeClock()
    cache = make_cache(clock)
    cache.put(V, "old", "x")
    cache.put(V, "miss", None)
    clock.advance(31.0)
    cache.put(V, "new", "y")
    assert cache.sweep() == 1  # the expired miss; "old" is still servable stale
    clock.advance(100.0)
    assert cache.sweep() == 1
    assert cache.get(V, "new") is not None


def test_cipher_rotation_old_key_still_decrypts() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = Cipher([old]).encrypt("value")
    rotated = Cipher([new, old])
    assert rotated.decrypt(token) == "value"
    assert Cipher([new]).decrypt(token) is None
    assert Cipher([old]).decrypt(rotated.encrypt("v2")) is None  # new values use the new key


def test_restored_tokens_no_current_key_opens_are_left_out() -> None:
    clock, key = FakeClock(), Fernet.generate_key()
    cache = make_cache(clock, cipher=Cipher([key]))
    ours = Fernet(key).encrypt(b"ours")
    foreign = Fernet(Fernet.generate_key()).encrypt(b"theirs")
    items = [Persisted((V, "ours", None), ours, 1.0, "b", None)]
    items.append(Persisted((V, "foreign", None), foreign, 1.0, "b", None))
    assert cache.restore(items) == 1
    assert cache.get(V, "foreign") is None
    held = cache.get(V, "ours")
    assert held is not None and held.value == "ours" and not held.fresh


def test_background_scans_do_not_reorder_the_lru() -> None:
    clock = FakeClock()
    cache = make_cache(clock, max_entries=2)
    cache.put(V, "a", "1")
    cache.put(V, "b", "2")
    assert cache.get(V, "a") is not None  # a is now the most recently used
    cache.due_for_refresh()
    cache.persisted()
    cache.sweep()
    cache.put(V, "c", "3")
    assert cache.get(V, "b") is None
    assert cache.get(V, "a") is not None


def test_refresh_ahead_is_due_only_for_read_values_past_their_point() -> None:
    clock = FakeClock()
    cache = SecretCache(
        max_entries=10,
        ttl=lambda k: 100.0,
        negative_ttl=100.0,
        max_stale=0.0,
        cipher=Cipher([]),
        clock=clock,
        refresh=RefreshAhead(0.8, 0.0),
    )
    cache.put(V, "read", "1")
    cache.put(V, "unread", "2")
    cache.put(V, "missing", None)
    clock.advance(79)
    hit = cache.get(V, "read")
    assert hit is not None and not hit.refresh_due
    assert cache.get(V, "missing") is not None
    clock.advance(1)
    assert cache.due_for_refresh() == [((V, "read", None), None)]
    due = cache.get(V, "read")
    assert due is not None and due.refresh_due
    clock.advance(20)  # expired: no longer a refresh-ahead, the lookup's own path takes over
    assert cache.due_for_refresh() == []


def test_a_failed_refresh_marks_only_a_stale_value_failing_until_it_is_stored_again() -> None:
    clock = FakeClock()
    cache = make_cache(clock, max_stale=1e9)
    key = (V, "k", None)
    cache.put(V, "k", "v1")
    cache.failed(key)  # fresh (a refresh-ahead failed): nothing changes
    fresh = cache.get(V, "k")
    assert fresh is not None and fresh.fresh and not fresh.failing
    clock.advance(31)
    for _ in range(2000):  # the backoff doubles, capped, and never overflows
        cache.failed(key)
    clock.advance(9.9)
    held = cache.get(V, "k")
    assert held is not None and held.failing and not held.retry_due
    clock.advance(0.1)
    due = cache.get(V, "k")
    assert due is not None and due.failing and due.retry_due
    cache.retry_now(key)
    assert not cache.get(V, "k").failing  # type: ignore[union-attr]
    cache.failed(key)
    assert cache.expire(key) and not cache.get(V, "k").failing  # type: ignore[union-attr]
    cache.failed(key)
    cache.put(V, "k", "v2")
    assert not cache.get(V, "k").failing  # type: ignore[union-attr]
