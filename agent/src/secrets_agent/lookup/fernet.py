"""Fernet for the cache's hot paths, with each key's AES and HMAC contexts built once.

``cryptography``'s ``Fernet.decrypt`` builds a new CBC context and runs an OpenSSL HMAC per
call: ~15 µs, the largest single cost of a cached lookup. This opens the same tokens, with the
same checks (version byte, length, HMAC-SHA256 over everything before it in constant time,
PKCS7 padding), in ~4 µs: the HMAC from precomputed ``hashlib`` pads, and AES-CBC from one
long-lived context (see ``__init__``). ``unseal`` opens again, without any check (~1 µs), the
bytes of a token that ``open`` accepted once. ``FernetSealer`` makes tokens the same way
(~14 µs with ``Fernet.encrypt``, which builds a CBC context and an HMAC per call; a few µs
here): what a cache miss stores. The tests check both against ``cryptography``'s ``Fernet``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import threading
import time

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

_URLSAFE = bytes.maketrans(b"-_", b"+/")
_VERSION = 0x80
_HEAD = 25  # version (1) + timestamp (8) + IV (16)
_MAC = 32
_BLOCK = 16


class FernetOpener:
    """Decrypts Fernet tokens made with one key; thread-safe (the snapshot writer is a thread)."""

    def __init__(self, key: bytes) -> None:
        raw = _raw(key)
        signing, encryption = raw[:16], raw[16:]
        self._inner, self._outer = _pads(signing)
        self.aes_key = encryption  # for the compiled read path's own AES (server/_aes.h)
        # One CBC context for every token, never finalized: CBC decrypts a block with the
        # block before it, so feeding it a token's IV and then its ciphertext yields one block
        # of garbage (the IV "decrypted" against the previous token's last block) and then
        # exactly this token's plaintext.
        self._cipher = Cipher(algorithms.AES(encryption), modes.CBC(bytes(16)))
        self._cbc = self._cipher.decryptor()
        self._lock = threading.Lock()

    def decryptor(self) -> CipherContext:
        """Another long-lived CBC context for this key, for one thread's own use (``unseal``'s
        way: a token's IV, then its ciphertext; the first block out is dropped)."""
        return self._cipher.decryptor()

    def open(self, token: bytes) -> str | None:
        """The plaintext (UTF-8), or None if the token is malformed or not made with this key."""
        data = self.verify(token)
        return None if data is None else self.plaintext(data)

    def plaintext(self, data: bytes) -> str | None:
        """The plaintext of token bytes ``verify`` accepted; None if not padded UTF-8 text."""
        with self._lock:
            padded = self._cbc.update(memoryview(data)[9:-_MAC])[_BLOCK:]
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes((pad,)) * pad:
            return None
        try:
            return padded[:-pad].decode("utf-8")
        except UnicodeDecodeError:
            return None

    def verify(self, token: bytes) -> bytes | None:
        """The token's bytes (base64 decoded) if it is well formed and signed with this key."""
        try:
            data = binascii.a2b_base64(token.translate(_URLSAFE))  # lenient, as Fernet's
        except (binascii.Error, ValueError, TypeError):
            return None
        size = len(data) - _HEAD - _MAC
        if size <= 0 or size % _BLOCK or data[0] != _VERSION:
            return None
        inner = self._inner.copy()
        inner.update(memoryview(data)[:-_MAC])
        outer = self._outer.copy()
        outer.update(inner.digest())
        return data if hmac.compare_digest(outer.digest(), data[-_MAC:]) else None

    def unseal(self, data: bytes) -> str:
        """The plaintext of token bytes that ``plaintext`` accepted before (see ``Cipher``).

        Neither the HMAC nor the padding and UTF-8 are checked again: they were when the token
        was taken in, and its bytes have not left this process's memory since.
        """
        with self._lock:  # IV + ciphertext through the shared context (see __init__)
            padded = self._cbc.update(memoryview(data)[9:-_MAC])
        return padded[_BLOCK : -padded[-1]].decode("utf-8")  # the first block out dropped


class FernetSealer:
    """Makes Fernet tokens (their bytes, not base64) with one key; thread-safe."""

    def __init__(self, key: bytes) -> None:
        raw = _raw(key)
        self._inner, self._outer = _pads(raw[:16])
        # One CBC context for every token, never finalized. CBC encrypts a block XORed with
        # the ciphertext block before it, which the context keeps from the previous token: a
        # token's first block is fed XORed with that block and with the token's own IV, so
        # the context's chaining cancels out and the token is exactly CBC under its IV.
        self._cbc = Cipher(algorithms.AES(raw[16:]), modes.CBC(bytes(_BLOCK))).encryptor()
        self._chain = 0  # the context's last ciphertext block (the zero IV at first)
        self._lock = threading.Lock()

    def seal(self, plaintext: bytes) -> bytes:
        """A token's bytes, as ``Fernet.encrypt`` makes them before base64."""
        pad = _BLOCK - len(plaintext) % _BLOCK
        padded = plaintext + bytes((pad,)) * pad
        iv = os.urandom(_BLOCK)
        head = bytes((_VERSION,)) + int(time.time()).to_bytes(8, "big") + iv
        mask = int.from_bytes(iv, "big")
        with self._lock:
            first = int.from_bytes(padded[:_BLOCK], "big") ^ mask ^ self._chain
            body = self._cbc.update(first.to_bytes(_BLOCK, "big") + padded[_BLOCK:])
            self._chain = int.from_bytes(body[-_BLOCK:], "big")
        signed = head + body
        inner = self._inner.copy()
        inner.update(signed)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return signed + outer.digest()


def _raw(key: bytes) -> bytes:
    raw = binascii.a2b_base64(key.translate(_URLSAFE))
    if len(raw) != 32:
        raise ValueError("a Fernet key is 32 url-safe base64-encoded bytes")
    return raw


def _pads(signing: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's two keyed pad states, hashed once: a token then costs two copy+update."""
    block = signing.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(
        bytes(b ^ 0x5C for b in block)
    )
