"""What the store sees: HMAC names and Fernet tokens; nothing readable about a secret.

An entry's plaintext repeats the kind, id and team it was written for and its wall-clock expiry,
so an entry copied to another name, or put back after it expired, is a miss rather than a value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from secrets_agent.kinds import Kind
from secrets_agent.lookup.chain import Found

_NAME_KEY_LABEL = b"airflow-secrets-agent shared-cache names v1"
_MESSAGE_MAX_AGE = 300  # seconds: a replayed old invalidation is refused after this


@dataclass(frozen=True)
class Names:
    entry: str  # where this node writes (named under the primary key)
    lock: str
    reads: tuple[str, ...]  # where it looks: the entry's name under every key, primary first


@dataclass(frozen=True)
class Opened:
    found: Found | None
    ttl: float


@dataclass(frozen=True)
class _Space:
    fernet: Fernet
    name_key: bytes
    prefix: str


class Sealer:
    """Names and seals entries for one namespace under one key set (the first key encrypts).

    Each key names its own space. A node writes under its primary key and reads under all of
    them, so a rotation (new key first everywhere, then the old one dropped) never empties the
    shared cache: nodes still on the old key write where the rotated ones look too.
    """

    def __init__(
        self,
        keys: list[bytes],
        namespace: str,
        prefix: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("the shared tier needs configured keys")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._spaces = [_space(k, namespace, prefix) for k in keys]
        self._wall = wall

    @property
    def channels(self) -> list[str]:
        return [f"{s.prefix}invalidate" for s in self._spaces]

    def names(self, kind: Kind, secret_id: str, team: str | None) -> Names:
        reads = tuple(self._entry(s, kind, secret_id, team) for s in self._spaces)
        primary = self._spaces[0]
        lock = reads[0].replace(f"{primary.prefix}e:", f"{primary.prefix}l:", 1)
        return Names(entry=reads[0], lock=lock, reads=reads)

    def groups(self, kind: Kind | None, secret_id: str | None) -> list[str]:
        """Patterns for the entries to invalidate (names hide the kind: no id, every entry)."""
        if kind is None or secret_id is None:
            return [f"{s.prefix}e:*" for s in self._spaces]
        return [f"{s.prefix}e:{_mac(s, 'entry', kind.value, secret_id)}:*" for s in self._spaces]

    def _entry(self, space: _Space, kind: Kind, secret_id: str, team: str | None) -> str:
        mac, tag = _mac(space, "entry", kind.value, secret_id), _mac(space, "team", team or "")
        return f"{space.prefix}e:{mac}:{tag[:16]}"

    def seal(
        self, kind: Kind, secret_id: str, team: str | None, found: Found | None, ttl: float
    ) -> bytes:
        body = {
            "k": kind.value,
            "i": secret_id,
            "t": team,
            "x": self._wall() + ttl,
            "v": None if found is None else found.value,
            "s": None if found is None else found.source,
            "r": None if found is None else found.version,
        }
        return self._fernet.encrypt(json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def open(self, token: bytes, kind: Kind, secret_id: str, team: str | None) -> Opened | None:
        """The entry, or None when it is not ours to read (other keys, other name, expired)."""
        try:
            body = json.loads(self._fernet.decrypt(token))
            if (body["k"], body["i"], body["t"]) != (kind.value, secret_id, team):
                return None
            ttl = float(body["x"]) - self._wall()
            value, source, version = body["v"], body["s"], body["r"]
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if ttl <= 0:
            return None
        if value is None:
            return Opened(None, ttl)
        if not isinstance(value, str) or not isinstance(source, str):
            return None
        return Opened(Found(value, source, version if isinstance(version, str) else None), ttl)

    def seal_messages(
        self, kind: Kind | None, secret_id: str | None, sender: str
    ) -> list[tuple[str, bytes]]:
        """One message per key's channel, each sealed under that key, so every node reads one."""
        body = json.dumps({"k": None if kind is None else kind.value, "i": secret_id, "n": sender})
        return [
            (f"{s.prefix}invalidate", s.fernet.encrypt(body.encode("utf-8"))) for s in self._spaces
        ]

    def open_message(self, token: bytes) -> tuple[Kind | None, str | None, str] | None:
        try:
            body = json.loads(self._fernet.decrypt(token, ttl=_MESSAGE_MAX_AGE))
            kind = None if body["k"] is None else Kind(body["k"])
            secret_id, sender = body["i"], body["n"]
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if not isinstance(sender, str) or not (secret_id is None or isinstance(secret_id, str)):
            return None
        return kind, secret_id, sender


def _space(key: bytes, namespace: str, prefix: str) -> _Space:
    # A key of its own for names, derived from the Fernet key, so no key serves two purposes.
    name_key = hmac.new(base64.urlsafe_b64decode(key), _NAME_KEY_LABEL, hashlib.sha256).digest()
    space = _Space(Fernet(key), name_key, "")
    return _Space(space.fernet, name_key, f"{prefix}{_mac(space, 'namespace', namespace)[:16]}:")


def _mac(space: _Space, *parts: str) -> str:
    message = "\0".join(parts).encode("utf-8")
    return hmac.new(space.name_key, message, hashlib.sha256).hexdigest()
