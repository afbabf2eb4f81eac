"""Fernet keys for the in-memory cache: from a file, an env var, a systemd credential, or random."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from secrets_agent.config.schema import EncryptionConfig
from secrets_agent.errors import StartupError
from secrets_agent.lookup.fernet import FernetOpener, FernetSealer


class Cipher:
    """Encrypts cache values; the first key encrypts, every key decrypts (rotation).

    The cache holds values *sealed*: a Fernet token under the first key, kept as its bytes
    rather than base64. A sealed value's HMAC is checked when it enters the cache (``seal``
    makes it, ``admit`` verifies one that comes from outside, such as a snapshot), not on every
    read: the bytes stay in this process's memory, where nobody who could alter them would
    need to (they could read the key as well), so a read only decrypts (``unseal``).
    """

    def __init__(self, keys: list[bytes]) -> None:
        self.keys_id = keys_id(keys)  # which configured keys (a reload compares them)
        # With no configured key the cache lives and dies with this process, so a random one is
        # as good as any and never touches disk.
        keys = keys or [Fernet.generate_key()]
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._openers = tuple(FernetOpener(k) for k in keys)
        self._sealer = FernetSealer(keys[0])
        # The read path's one call: straight to the first key's opener, a frame less.
        self.unseal = self._openers[0].unseal
        # The compiled read path's own context (``server.hit``): used on the event loop's
        # thread alone, so it needs no lock (see ``FernetOpener.__init__`` on sharing one).
        self.loop_decryptor = self._openers[0].decryptor()
        # The same key's AES half, for the compiled path's decryption with the CPU's AES
        # instructions (``server/_aes.h``), where the CPU has them; the context otherwise.
        self.loop_aes_key = self._openers[0].aes_key

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, token: bytes) -> str | None:
        """Return the plaintext, or None if no current key can open the token."""
        for opener in self._openers:
            if (plaintext := opener.open(token)) is not None:
                return plaintext
        return None

    def seal(self, plaintext: str) -> bytes:
        """A value as the cache holds it (``unseal`` opens it): a Fernet token's bytes."""
        return self._sealer.seal(plaintext.encode("utf-8"))

    def admit(self, token: bytes) -> bytes | None:
        """A Fernet token from outside the cache, sealed: verified and under the first key
        (re-encrypted if an older key made it); None if no current key opens it."""
        for index, opener in enumerate(self._openers):
            data = opener.verify(token)
            if data is None:
                continue
            plaintext = opener.plaintext(data)
            if plaintext is None:
                return None  # signed with our key, yet not text: never one of ours
            return data if index == 0 else self.seal(plaintext)
        return None

    @staticmethod
    def token(sealed: bytes) -> bytes:
        """A sealed value as a Fernet token again (what a snapshot stores)."""
        return base64.urlsafe_b64encode(sealed)


def keys_id(keys: list[bytes]) -> str:
    """Tells key lists apart (a reload that changed a key file's contents), revealing none."""
    return hashlib.sha256(b"airflow-secrets-agent keys\0" + b",".join(keys)).hexdigest()


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def load_keys(config: EncryptionConfig, environ: Mapping[str, str] = os.environ) -> list[bytes]:
    """Collect keys from every configured source, in the order file, env var, credential."""
    sources: list[tuple[str, str]] = []
    if config.key_file:
        where = "encryption.key_file"
        sources.append((f"{where} ({config.key_file})", _read(Path(config.key_file), where)))
    if config.key_env:
        if config.key_env not in environ:
            raise StartupError(
                f"encryption.key_env: environment variable {config.key_env} is unset"
            )
        sources.append((f"encryption.key_env ({config.key_env})", environ[config.key_env]))
    if config.credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise StartupError(
                "encryption.credential: $CREDENTIALS_DIRECTORY is unset "
                "(use LoadCredential= in the systemd unit)"
            )
        path = Path(directory) / config.credential
        sources.append(
            (f"encryption.credential ({config.credential})", _read(path, "encryption.credential"))
        )
    keys: list[bytes] = []
    for where, text in sources:
        # One key per line or separated by commas, newest first, as for Airflow's fernet_key.
        for index, key in enumerate(k for k in re.split(r"[\s,]+", text) if k):
            try:
                Fernet(key.encode("ascii"))
            except (ValueError, UnicodeEncodeError):
                raise StartupError(f"{where}: key #{index + 1} is not a valid Fernet key") from None
            keys.append(key.encode("ascii"))
    if sources and not keys:
        raise StartupError("encryption: the configured key sources hold no key")
    return keys


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"{key}: cannot read key file {path}: {exc.strerror}") from None
