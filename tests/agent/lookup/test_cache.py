"""SecretCache and Cipher: TTLs, negative entries, bounded staleness, encryption at rest."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import SECOND_CHANCES, Persisted, RefreshAhead, SecretCache, _Entry
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


def test_eviction_gives_a_read_entry_a_second_chance() -> None:
    cache = make_cache(FakeClock(), max_entries=3)
    for name in "abc":
        cache.put(V, name, name)
    assert cache.get(V, "a") is not None  # read: passed over once, to the young end
    cache.put(V, "d", "d")
    assert [key[1] for key in cache._entries] == ["c", "d", "a"]  # b: the oldest unread
    cache.put(V, "e", "e")
    cache.put(V, "f", "f")
    assert [key[1] for key in cache._entries] == ["a", "e", "f"]
    cache.put(V, "g", "g")  # a's chance was spent, and it was not read since: its turn
    assert [key[1] for key in cache._entries] == ["e", "f", "g"]


def test_a_store_passes_over_a_bounded_number_of_read_entries() -> None:
    """Even when every entry was read since the last store: a store moves at most
    ``SECOND_CHANCES`` of them, then evicts the next."""
    size = SECOND_CHANCES * 3
    cache = make_cache(FakeClock(), max_entries=size)
    for i in range(size):
        cache.put(V, f"k{i}", "v")
    for i in range(size):
        assert cache.get(V, f"k{i}") is not None
    cache.put(V, "new", "v")
    order = [key[1] for key in cache._entries]
    assert f"k{SECOND_CHANCES}" not in order  # the first read entry past the bound
    assert order[-SECOND_CHANCES - 1 :] == ["new"] + [f"k{i}" for i in range(SECOND_CHANCES)]
    assert len(cache) == size


def test_a_lone_new_entry_beyond_a_zero_bound_goes() -> None:
    cache = make_cache(FakeClock(), max_entries=0)
    cache.put(V, "a", "v")
    assert len(cache) == 0


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "put",
                "put miss",
                "put ttl 0",
                "get",
                "fresh",
                "restamp",
                "expire",
                "drop",
                "invalidate id",
                "invalidate kind",
                "sweep",
                "restore",
                "advance",
            ]
        ),
        st.sampled_from("abcd"),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations=OPERATIONS)
def test_an_entry_is_gone_exactly_when_the_cache_no_longer_holds_it(
    operations: list[tuple[str, str]],
) -> None:
    """What the compiled read path relies on instead of a lookup (``_Entry.gone``); and a gone
    entry no longer holds its value."""
    clock = FakeClock()
    cache = make_cache(clock, max_entries=3, max_stale=20.0)
    seen: dict[int, _Entry] = {}  # by identity: two entries may be equal field for field
    for operation, name in operations:
        key = (V, name, None)
        if operation == "put":
            cache.put(V, name, f"value of {name}", source="local")
        elif operation == "put miss":
            cache.put(V, name, None)
        elif operation == "put ttl 0":
            cache.put(V, name, "v", ttl=0)
        elif operation == "get":
            cache.get(V, name)
        elif operation == "fresh":
            cache.fresh(key)
        elif operation == "restamp":
            cache.restamp(V, name)
        elif operation == "expire":
            cache.expire(key)
        elif operation == "drop":
            cache.drop(key)
        elif operation == "invalidate id":
            cache.invalidate(V, name)
        elif operation == "invalidate kind":
            cache.invalidate(V)
        elif operation == "sweep":
            cache.sweep()
        elif operation == "restore":
            cache.restore([Persisted(key, _token(cache, name), 1.0, "s", None)])
        else:
            clock.advance(12.0)
        seen |= {id(entry): entry for entry in cache._entries.values()}
        held = [id(entry) for entry in cache._entries.values()]
        for entry in seen.values():
            assert entry.gone is (id(entry) not in held)
            assert entry.token is None or not entry.gone


def _token(cache: SecretCache, name: str) -> bytes:
    return cache.cipher.seal(f"restored {name}")


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
