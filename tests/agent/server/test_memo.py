"""The two-generation memo: bounded, and hot keys survive any stream of new ones."""

from __future__ import annotations

import random

from secrets_agent.server.memo import LARGEST, SMALLEST, Generations, sized_for


def test_stays_within_its_size_whatever_comes() -> None:
    memo: Generations[int, int] = Generations(100)
    for key in range(10_000):
        memo.put(key, key)
        assert len(memo) <= 100
    assert memo.get(9_999) == 9_999 and memo.get(0) is None and 0 not in memo


def test_hot_keys_keep_hitting_through_a_stream_of_new_ones() -> None:
    memo: Generations[str, int] = Generations(100)
    hot = [f"hot{i}" for i in range(10)]
    for i, key in enumerate(hot):
        memo.put(key, i)
    for turn in range(2_000):  # 20 generations of keys asked for once each
        memo.put(f"cold{turn}", turn)
        key = hot[turn % len(hot)]
        assert memo.get(key) == hot.index(key), turn  # a clear-all memo would have lost it
    assert len(memo) <= 100


def test_a_working_set_up_to_a_generation_always_hits() -> None:
    memo: Generations[int, int] = Generations(100)
    rng = random.Random(29)
    for _ in range(5_000):
        key = rng.randrange(50)
        if memo.get(key) is None:
            memo.put(key, key)
    misses = 0
    for _ in range(5_000):
        key = rng.randrange(50)
        if memo.get(key) is None:
            misses += 1
            memo.put(key, key)
    assert misses == 0


def test_a_working_set_above_a_generation_degrades_gently() -> None:
    # 75 keys against generations of 50: a memo cleared whole at 75 would miss all of them
    # after each clear; this one keeps most of them, and asking again finds the rest.
    memo: Generations[int, int] = Generations(100)
    rng = random.Random(29)
    hits = 0
    for turn in range(20_000):
        key = rng.randrange(75)
        if memo.get(key, -1) == key:
            hits += turn >= 1_000
        else:
            memo.put(key, key)
    assert hits / 19_000 > 0.7


def test_a_hit_in_the_old_generation_moves_to_the_young_one() -> None:
    memo: Generations[str, str] = Generations(4)
    memo.put("a", "A")
    memo.put("b", "B")
    memo.put("c", "C")  # a full young generation becomes the old one
    assert "a" in memo.old and "a" not in memo.young
    assert memo.get("a") == "A" and memo.young.get("a") == "A"
    assert memo.get("z", "default") == "default"


def test_sized_for_holds_every_key_of_the_cache_in_one_generation_within_a_bound() -> None:
    assert sized_for(0) == sized_for(100) == SMALLEST  # a small cache: the memos as they were
    assert sized_for(10_000) == 20_000  # the default max_entries: each key in the young half
    assert sized_for(10_000_000) == LARGEST  # a huge cache: a hostile stream still fills less
