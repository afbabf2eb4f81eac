"""Property-based tests of the id rules: any text is either a valid id or an InvalidIdError."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from secrets_agent.errors import InvalidIdError
from secrets_agent.kinds import MAX_ID_LENGTH, validate_id

REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
ids = st.text(st.characters(codec=None), max_size=300) | st.text(
    st.sampled_from("ab/._-\\\u200b\u202e\ufeff\u2066\u00ad\x00\x7f"), max_size=20
)


@settings(max_examples=1000, deadline=None, database=None)
@given(ids)
def test_an_id_is_valid_or_refused_with_reason(raw: str) -> None:
    try:
        accepted = validate_id(raw)
    except InvalidIdError as exc:
        reason = str(exc)
        assert reason.startswith("id "), reason
        return
    assert accepted == raw
    assert 0 < len(raw) <= MAX_ID_LENGTH
    assert not {unicodedata.category(ch) for ch in raw} & REFUSED_CATEGORIES
    parts = raw.split("/")
    assert "\\" not in raw and all(part not in ("", ".", "..") for part in parts)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1, max_size=20), st.sampled_from(sorted(REFUSED_CATEGORIES - {"Cs"})))
def test_one_invisible_character_anywhere_is_refused(text: str, category: str) -> None:
    char = {"Cc": "\x01", "Cf": "\u200b", "Co": "\ue000", "Cn": "\u0378"}[category]
    middle = len(text) // 2
    try:
        validate_id(text[:middle] + char + text[middle:])
    except InvalidIdError:
        return
    raise AssertionError("accepted an id with an invisible character")
