"""Change feeds: the one small interface every manager's change announcements come through.

A feed turns the manager's events (a queue's messages, a poll's differences) into *hints*:
this (kind, id) changed, maybe to this version, at this time. A hint is never a value; the
lookup layer (``lookup/feeds.py``) decides what to drop and fetch again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from secrets_agent.config.validators import setting
from secrets_agent.errors import InvalidIdError
from secrets_agent.kinds import Kind, validate_id

TEAM_SEP = "--"  # the providers' separator between a team and an id, in every cloud's names
Named = Callable[[Kind, str, str | None], str | None]  # (kind, id, team) -> upstream name
# The (kind, id, team)s the node holds from a backend (team None: the global name's copy).
Held = Callable[[], Sequence[tuple[Kind, str, str | None]]]


@dataclass(frozen=True)
class FeedOptions:
    """What every feed accepts, beside its manager's own keys (``[backends.feed]``)."""

    # Background refetches a feed may start per second, and one key's shortest gap between
    # two: a flood of events never becomes a flood of upstream reads.
    refetch_rate: float = setting(10.0, min=0.1, max=10000.0)
    key_interval: float = setting(1.0, min=0.0, max=3600.0)
    # A failing feed is retried after backoff_initial, doubling up to backoff_max.
    backoff_initial: float = setting(1.0, min=0.01, max=600.0)
    backoff_max: float = setting(60.0, min=0.01, max=3600.0)
    # One log line per interval for a failing feed and for unparseable messages.
    log_interval: float = setting(60.0, min=1.0, max=86400.0)
    # Events older than this (from their own time) mark the feed as lagging in /readyz.
    lag_warning: float = setting(60.0, min=1.0, max=86400.0)
    # With [shared_cache]: how long one node's hold on this feed lasts unrenewed (another node
    # takes over within it when the holder dies); 0: three rounds, at least 30 s.
    lease_ttl: float = setting(0.0, min=0.0, max=3600.0)

    def validate(self) -> list[tuple[str, str]]:
        if self.backoff_initial > self.backoff_max:
            return [("backoff_initial", "must not exceed backoff_max")]
        return []


@dataclass(frozen=True)
class Hint:
    """This secret changed: drop what is held, fetch again. ``gone``: deleted or disabled."""

    kind: Kind
    secret_id: str  # as ``Feed.fold`` gives it, for names that stand for several ids
    version: str | None = None
    at: float | None = None  # the event's own time (Unix seconds), for the lag metric
    gone: bool = False


@dataclass(frozen=True)
class Message:
    """One event as received: its hints (none: not ours), or malformed; ``receipt`` acks it."""

    hints: tuple[Hint, ...] = ()
    malformed: bool = False
    receipt: Any = None
    # About another account's, region's, project's or vault's secret (a shared queue or
    # topic): which, for the log ("region (eu-west-1; this backend's: us-east-1)"); "": ours.
    foreign: str = ""


class Feed(abc.ABC):
    """Receives one backend's change events; SDK errors become ``BackendError`` here."""

    def __init__(self, backend: str, options: FeedOptions) -> None:
        self.backend = backend
        self.options = options

    async def start(self) -> None:
        """Build clients; a feed that cannot start raises ``BackendError`` (the loop retries)."""
        return None

    async def close(self) -> None:
        return None

    @abc.abstractmethod
    async def receive(self, held: Held) -> list[Message]:
        """One round: wait (bounded) for events; raise ``BackendError`` when the feed fails."""

    @property
    def round_time(self) -> float:
        """The longest one ``receive`` waits (a long poll, or a poll interval)."""
        return 20.0

    @property
    def poll_delay(self) -> float:
        """How long a change may wait to be seen by design (a poll's interval; 0: pushed)."""
        return 0.0

    @property
    def lease_ttl(self) -> float:
        """How long a fleet's lease on this feed lasts unrenewed: rounds renew it, so a few
        rounds' time (a dead holder's feed is taken over within it)."""
        return self.options.lease_ttl or max(30.0, 3 * self.round_time)

    async def ack(self, messages: Sequence[Message]) -> None:
        """Remove handled messages (applied, ignored, foreign and malformed alike: never a
        poison loop)."""
        return None

    def fold(self, secret_id: str) -> str:
        """The form hints use for ``secret_id``: ids naming one upstream secret fold together."""
        return secret_id

    @property
    def folds(self) -> bool:
        """Whether ``fold`` joins several ids into one name: a hint's id is then one spelling of
        them, which a lookup pattern (written for ids) cannot rule out."""
        return False


def named_by(
    single: Callable[[Kind, str], str | None], scoped: Callable[[Kind, str, str], str | None]
) -> Named:
    """A backend's naming as ``ids_for`` takes it: its global name, or its team-scoped one."""
    return lambda kind, secret_id, team: (
        scoped(kind, secret_id, team) if team else single(kind, secret_id)
    )


def ids_for(
    name: str, kinds: Iterable[Kind], named: Named, *, team_sep: str = TEAM_SEP
) -> list[tuple[Kind, str]]:
    """The (kind, id)s whose upstream name is ``name``, by the backend's own naming function.

    Any name the backend builds is some head (prefix and separator), then the id or
    ``{team}{team_sep}{id}``; the head comes from naming a probe id, and every candidate is
    checked by naming it again, so this never disagrees with what a lookup reads.
    """
    found: list[tuple[Kind, str]] = []
    for kind in kinds:
        probe = named(kind, "x", None)
        if probe is None or not probe.endswith("x"):
            continue
        head = probe[:-1]
        if not name.startswith(head) or len(name) == len(head):
            continue
        rest = name[len(head) :]
        if _valid(rest) and named(kind, rest, None) == name:
            found.append((kind, rest))
        team, sep, secret_id = rest.partition(team_sep)
        if sep and _valid(secret_id) and named(kind, secret_id, team) == name:
            found.append((kind, secret_id))
    return found


def _valid(secret_id: str) -> bool:
    try:
        validate_id(secret_id)
    except InvalidIdError:
        return False
    return True


def event_time(raw: object) -> float | None:
    """An event's ISO 8601 time as Unix seconds; None when absent or unreadable."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
