"""The cache's Fernet opener and sealer against cryptography's own Fernet: same tokens, same
verdicts."""

from __future__ import annotations

import base64
import threading
import time

import pytest
from cryptography.fernet import Fernet, InvalidToken
from hypothesis import given, settings
from hypothesis import strategies as st

from secrets_agent.lookup.cipher import Cipher
from secrets_agent.lookup.fernet import FernetOpener, FernetSealer

KEY = Fernet.generate_key()
OPENER = FernetOpener(KEY)
SEALER = FernetSealer(KEY)


def reference(token: bytes, key: bytes = KEY) -> str | None:
    try:
        return Fernet(key).decrypt(token).decode("utf-8")
    except (InvalidToken, UnicodeDecodeError):
        return None


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_opens_what_fernet_made(plaintext: str) -> None:
    token = Fernet(KEY).encrypt(plaintext.encode("utf-8"))
    assert OPENER.open(token) == plaintext == reference(token)


@given(
    st.text(max_size=64),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "add"]),
            st.integers(0, 400),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
)
@settings(max_examples=500)
def test_a_damaged_token_gets_fernets_verdict(
    plaintext: str, damage: list[tuple[str, int, bytes]]
) -> None:
    token = bytearray(Fernet(KEY).encrypt(plaintext.encode("utf-8")))
    for op, where, data in damage:
        at = where % (len(token) + 1)
        if op == "flip" and token:
            token[at % len(token)] ^= data[0] or 1
        elif op == "cut":
            del token[at:]
        else:
            token[at:at] = data
    assert OPENER.open(bytes(token)) == reference(bytes(token))


def test_refuses_other_keys_garbage_and_non_utf8() -> None:
    other = Fernet(Fernet.generate_key())
    assert OPENER.open(other.encrypt(b"x")) is None
    for junk in (b"", b"gAAAAA", b"\x00" * 100, b"not base64 at all!!"):
        assert OPENER.open(junk) is None
    assert OPENER.open(Fernet(KEY).encrypt(b"\xff\xfe")) is None  # not text: never ours
    with pytest.raises(ValueError, match="32 url-safe"):
        FernetOpener(b"c2hvcnQ=")


def test_cipher_rotation_decrypts_with_every_key_and_encrypts_with_the_first() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    rotated = Cipher([new, old])
    assert rotated.decrypt(Fernet(old).encrypt(b"from before")) == "from before"
    token = rotated.encrypt("now")
    assert reference(token, new) == "now" and reference(token, old) is None
    assert Cipher([new]).decrypt(token) == "now"


@given(st.text(max_size=300))
@settings(max_examples=200)
def test_verify_then_unseal_is_open(plaintext: str) -> None:
    token = Fernet(KEY).encrypt(plaintext.encode("utf-8"))
    data = OPENER.verify(token)
    assert data is not None and OPENER.unseal(data) == plaintext
    assert OPENER.verify(Fernet(Fernet.generate_key()).encrypt(b"x")) is None


def test_the_cache_holds_tokens_under_the_first_key_as_bytes() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    cipher = Cipher([new, old])
    sealed = cipher.seal("plaintext-secret")
    assert b"plaintext-secret" not in sealed and cipher.unseal(sealed) == "plaintext-secret"
    assert reference(Cipher.token(sealed), new) == "plaintext-secret"


def test_admit_verifies_a_token_from_outside_and_reseals_an_old_keys() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    cipher = Cipher([new, old])
    sealed = cipher.admit(Fernet(old).encrypt(b"from before"))
    assert sealed is not None and cipher.unseal(sealed) == "from before"
    assert reference(Cipher.token(sealed), new) == "from before"  # now under the first key
    current = Fernet(new).encrypt(b"current")
    assert cipher.admit(current) == FernetOpener(new).verify(current)  # kept as it is
    tampered = current[:-8] + (b"A" if current[-8:-7] != b"A" else b"B") + current[-7:]
    for refused in (
        Fernet(Fernet.generate_key()).encrypt(b"x"),  # a key we do not hold
        tampered,  # its HMAC no longer matches
        Fernet(new).encrypt(b"\xff\xfe"),  # not text: never ours
        b"garbage",
    ):
        assert cipher.admit(refused) is None


def test_threads_share_one_opener() -> None:
    tokens = [Fernet(KEY).encrypt(f"value-{i}".encode()) for i in range(50)]
    wrong: list[int] = []

    def work() -> None:
        for _ in range(40):
            for i, token in enumerate(tokens):
                if OPENER.open(token) != f"value-{i}":
                    wrong.append(i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@given(st.lists(st.text(max_size=100), min_size=1, max_size=8))
@settings(max_examples=300)
def test_fernet_opens_what_the_sealer_made(plaintexts: list[str]) -> None:
    # Several in a row: each token's CBC must not depend on the ones sealed before it.
    for plaintext in plaintexts:
        token = base64.urlsafe_b64encode(SEALER.seal(plaintext.encode("utf-8")))
        assert Fernet(KEY).decrypt(token, ttl=60).decode("utf-8") == plaintext
        assert OPENER.open(token) == plaintext


def test_each_seal_has_its_own_iv_and_the_time_in_its_head() -> None:
    first, second = SEALER.seal(b"same"), SEALER.seal(b"same")
    assert first[9:25] != second[9:25] and first != second
    assert first[0] == 0x80
    token = base64.urlsafe_b64encode(first)
    assert abs(Fernet(KEY).extract_timestamp(token) - time.time()) < 5
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(token)  # signed with our key only


def test_threads_share_one_sealer() -> None:
    wrong: list[str] = []

    def work(name: str) -> None:
        for i in range(300):
            value = f"{name}-{i}-" + "x" * (i % 40)
            token = base64.urlsafe_b64encode(SEALER.seal(value.encode()))
            if reference(token) != value:
                wrong.append(value)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
