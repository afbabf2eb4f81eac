"""What the store sees: HMAC names and Fernet tokens; nothing readable about a secret.

Each configured key is turned, per namespace, into keys of its own (HKDF): one names entries,
one seals entries, one seals messages. Nothing written in one namespace opens, or can be linked
by name, in another, even where two fleets share a Fernet key.

An entry's plaintext repeats the kind, id and team it was written for, when its value was
fetched from the upstream and its wall-clock expiry: an entry copied to another name, or put
back after it expired, is a miss rather than a value (``floors`` refuses one put back earlier).

Names are built for a cluster: everything of one (kind, id) under one key lives in one hash
slot, tagged with its HMAC: every team's entry and lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secrets_agent.kinds import Kind
from secrets_agent.lookup.chain import Found

_LABEL = b"airflow-secrets-agent shared-cache v2 "
MESSAGE_MAX_AGE = 300  # seconds: a replayed old invalidation is refused after this
MESSAGE_MAX_AHEAD = 60  # seconds: Fernet's bound on a token from the future (a clock ahead)
# An agent's message is an id, a topic and a few short strings: a few KiB sealed at most, even
# with every character of a 250-character id escaped. Far longer is not one of ours.
MESSAGE_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Place:
    """Where one entry lives under one key, and its refresh lock (the same slot)."""

    entry: str
    lock: str


@dataclass(frozen=True)
class Names:
    places: tuple[Place, ...]  # the entry's place under every key, primary (where we write) first

    @property
    def primary(self) -> Place:
        return self.places[0]

    @property
    def entry(self) -> str:
        return self.places[0].entry

    @property
    def lock(self) -> str:
        return self.places[0].lock


@dataclass(frozen=True)
class Opened:
    found: Found | None
    ttl: float  # seconds left
    fetched: float  # wall time of the upstream read it came from


@dataclass(frozen=True)
class Invalidation:
    kind: Kind | None
    secret_id: str | None
    at: float  # the sender's wall clock: store copies fetched earlier are refused
    sender: str


@dataclass(frozen=True)
class Hint:
    """A note for every other node (e.g. a change feed's "this id changed"), sealed like an
    invalidation: readable only in this namespace, under this key set."""

    topic: str
    data: dict[str, str | None]
    sender: str


Message = Invalidation | Hint


@dataclass(frozen=True)
class _Space:
    entries: Fernet
    messages: Fernet
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
        self._spaces = [_space(k, namespace, prefix) for k in keys]
        self._entries = MultiFernet([s.entries for s in self._spaces])
        self._messages = MultiFernet([s.messages for s in self._spaces])
        self.wall = wall

    @property
    def channels(self) -> list[str]:
        return [f"{s.prefix}invalidate" for s in self._spaces]

    def names(self, kind: Kind, secret_id: str, team: str | None) -> Names:
        return Names(tuple(_place(s, kind, secret_id, team) for s in self._spaces))

    def entries(self, kind: Kind, secret_id: str, teams: Iterable[str | None]) -> list[str]:
        """The exact names of (kind, id)'s entries for ``teams`` under every key."""
        return [_place(s, kind, secret_id, t).entry for s in self._spaces for t in teams]

    def seal(
        self,
        kind: Kind,
        secret_id: str,
        team: str | None,
        found: Found | None,
        ttl: float,
        fetched: float,
    ) -> bytes:
        body = {
            "k": kind.value,
            "i": secret_id,
            "t": team,
            "f": fetched,
            "x": fetched + ttl,
            "v": None if found is None else found.value,
            "s": None if found is None else found.source,
            "r": None if found is None else found.version,
        }
        return self._entries.encrypt(json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def open(self, token: bytes, kind: Kind, secret_id: str, team: str | None) -> Opened | None:
        """The entry, or None when it is not ours to read (other keys, other name, expired)."""
        try:
            body = json.loads(self._entries.decrypt(token))
            if (body["k"], body["i"], body["t"]) != (kind.value, secret_id, team):
                return None
            now = self.wall()
            fetched, ttl = float(body["f"]), float(body["x"]) - now
            value, source, version = body["v"], body["s"], body["r"]
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if ttl <= 0:
            return None
        if value is None:
            return Opened(None, ttl, fetched)
        if not isinstance(value, str) or not isinstance(source, str):
            return None
        version = version if isinstance(version, str) else None
        return Opened(Found(value, source, version), ttl, fetched)

    def lease(self, purpose: str) -> str:
        """A lease's name: one key (one slot), under the primary key's space."""
        space = self._spaces[0]
        return f"{space.prefix}{{{_mac(space, 'lease', purpose)[:32]}}}:lease"

    def seal_messages(self, message: Message) -> list[tuple[str, bytes]]:
        """One message per key's channel, each sealed under that key, so every node reads one."""
        body: dict[str, object]
        if isinstance(message, Hint):
            body = {"h": message.topic, "d": message.data, "n": message.sender}
        else:
            kind = None if message.kind is None else message.kind.value
            body = {"k": kind, "i": message.secret_id, "a": message.at, "n": message.sender}
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        now = int(self.wall())
        return [
            (f"{s.prefix}invalidate", s.messages.encrypt_at_time(data, now)) for s in self._spaces
        ]

    def open_message(self, token: bytes) -> Message | None:
        try:
            plain = self._messages.decrypt_at_time(token, MESSAGE_MAX_AGE, int(self.wall()))
            body = json.loads(plain)
            if "h" in body:
                return _hint(body)
            kind = None if body["k"] is None else Kind(body["k"])
            secret_id, at, sender = body["i"], float(body["a"]), body["n"]
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        if not isinstance(sender, str) or not (secret_id is None or isinstance(secret_id, str)):
            return None
        if kind is None and secret_id is not None:
            return None
        return Invalidation(kind, secret_id, at, sender)

    def message_age(self, token: bytes) -> float | None:
        """How long ago, by our clock, ``token`` was sealed (negative: in our future); None when
        our keys do not open it."""
        try:
            return self.wall() - self._messages.extract_timestamp(token)
        except InvalidToken:
            return None


def _hint(body: dict[str, object]) -> Hint | None:
    topic, data, sender = body["h"], body["d"], body["n"]
    if not isinstance(topic, str) or not isinstance(sender, str) or not isinstance(data, dict):
        return None
    if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in data.items()):
        return None
    return Hint(topic, data, sender)


def _space(key: bytes, namespace: str, prefix: str) -> _Space:
    # One key per purpose and namespace, derived from the Fernet key: no key serves two
    # purposes, and one namespace's keys say nothing about another's.
    secret = base64.urlsafe_b64decode(key)

    def derive(purpose: str, length: int) -> bytes:
        info = _LABEL + purpose.encode("ascii") + b"\0" + namespace.encode("utf-8")
        return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(secret)

    name_key = derive("names", 32)
    tag = hmac.new(name_key, b"namespace", hashlib.sha256).hexdigest()[:16]
    return _Space(
        entries=Fernet(base64.urlsafe_b64encode(derive("entries", 32))),
        messages=Fernet(base64.urlsafe_b64encode(derive("messages", 32))),
        name_key=name_key,
        prefix=f"{prefix}{tag}:",
    )


def _place(space: _Space, kind: Kind, secret_id: str, team: str | None) -> Place:
    # The braces make the HMAC the cluster hash tag: the entry and its locks share one slot.
    slot = f"{space.prefix}{{{_mac(space, 'entry', kind.value, secret_id)[:32]}}}"
    team_tag = _mac(space, "team", "" if team is None else f"={team}")[:16]
    return Place(entry=f"{slot}:e:{team_tag}", lock=f"{slot}:l:{team_tag}")


def _mac(space: _Space, *parts: str) -> str:
    message = "\0".join(parts).encode("utf-8")
    return hmac.new(space.name_key, message, hashlib.sha256).hexdigest()
