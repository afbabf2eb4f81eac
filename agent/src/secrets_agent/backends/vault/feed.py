"""The Vault backend's change feed: a cheap poll, since neither OpenBao nor Vault CE pushes.

OpenBao (2.2 and later) answers ``<mount>/detailed-metadata/<path>?scan=true`` with every key's
``current_version`` under a path in one call, so each kind's path is one call per interval
(``method = "scan"``). Vault CE has no such call: ``method = "metadata"`` reads the KV v2
metadata of each key the node holds instead. A version that moved is a hint; a key whose
current version was deleted or destroyed, or that disappeared, is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from secrets_agent.backends.feeds import Feed, FeedOptions, Held, Hint, Message, event_time, ids_for
from secrets_agent.config.validators import setting
from secrets_agent.kinds import Kind

if TYPE_CHECKING:
    from secrets_agent.backends.vault.backend import VaultBackend

CLOCK_SLACK = 60.0  # seconds the node's clock and the server's may disagree
State = tuple[int, bool]  # current version, and whether that version is deleted or destroyed
Clock = Callable[[], float]
# What a poll looks at: the (kind, id) a change of it is about, and the path it reads there.
Spot = tuple[Kind, str, str]


@dataclass(frozen=True, kw_only=True)
class VaultFeedOptions(FeedOptions):
    """``[backends.feed]`` of a Vault backend: how often, and how, to look for changes."""

    poll_interval: float = setting(10.0, min=0.1, max=3600.0)
    method: str = setting("scan", choices=("scan", "metadata"))


class VaultPollFeed(Feed):
    """Each round waits the poll interval, then reports what changed since the last round."""

    options: VaultFeedOptions

    def __init__(
        self, backend: VaultBackend, options: VaultFeedOptions, clock: Clock = time.time
    ) -> None:
        super().__init__(backend.name, options)
        self._backend = backend
        self._clock = clock
        self._seen: dict[Spot, State] | None = None  # None: no baseline yet
        self._polled = False

    @property
    def round_time(self) -> float:
        return self.options.poll_interval

    @property
    def poll_delay(self) -> float:
        return self.options.poll_interval

    async def receive(self, held: Held) -> list[Message]:
        if self._polled:
            await asyncio.sleep(self.options.poll_interval)
        self._polled = True
        if self.options.method == "scan":
            now = await self._scan()
            asked: set[Spot] | None = None  # a scan sees every key there is
        else:
            asked = self._spots(held())
            now = await self._metadata(asked)
        seen, self._seen = self._seen, {key: state for key, (state, _) in now.items()}
        if seen is None:
            return self._recent(now)  # the baseline: nothing to compare with yet
        hints = []
        for key, (state, at) in now.items():
            # A key new to a scan was created; one newly held (metadata) was just read.
            if (key in seen and seen[key] != state) or (key not in seen and asked is None):
                hints.append(Hint(key[0], key[1], str(state[0]), at, gone=state[1]))
        vanished = {k for k in seen if k not in now and (asked is None or k in asked)}
        hints += [Hint(k[0], k[1], gone=True) for k in sorted(vanished)]
        return [Message((hint,)) for hint in hints]

    def _recent(self, now: dict[Spot, tuple[State, float | None]]) -> list[Message]:
        """What the first poll reports: keys written within the time nobody may have polled
        (a fleet's feed taken over from a holder that died: the lease's time and one poll,
        with a minute for the clocks), so the change reaches every node, not only the new
        holder's own copies (which it revalidates)."""
        since = self._clock() - self.lease_ttl - self.options.poll_interval - CLOCK_SLACK
        return [  # no time: seen a while after the write, not late (the lag metric)
            Message((Hint(key[0], key[1], str(state[0]), gone=state[1]),))
            for key, (state, at) in now.items()
            if at is not None and at >= since
        ]

    async def _scan(self) -> dict[Spot, tuple[State, float | None]]:
        found: dict[Spot, tuple[State, float | None]] = {}
        for kind in Kind:
            where = self._backend.location(kind, "x")
            if where is None:
                continue
            mount, path = where
            base = path[:-1].rstrip("/")
            listing = await self._backend.detailed_metadata(mount, base)
            for relative, info in listing.items():
                name = f"{mount}/{base}/{relative}" if base else f"{mount}/{relative}"
                for key in self._ids(kind, name):
                    found[(*key, name)] = version_state(info, self._clock())
        return found

    def _spots(self, held: Iterable[tuple[Kind, str, str | None]]) -> set[Spot]:
        """The paths the held keys were read from: a team's copy, from its team's path or
        (without one) the global path, so both."""
        spots = set()
        for kind, secret_id, team in held:
            for scope in {team, None}:
                where = self._backend.location(kind, secret_id, scope)
                if where is not None:
                    spots.add((kind, secret_id, "/".join(where)))
        return spots

    async def _metadata(self, spots: Iterable[Spot]) -> dict[Spot, tuple[State, float | None]]:
        found: dict[Spot, tuple[State, float | None]] = {}
        for spot in sorted(spots):
            mount, _, path = spot[2].partition("/")
            info = await self._backend.metadata(mount, path)
            if info is not None:
                found[spot] = version_state(info, self._clock())
        return found

    def _ids(self, kind: Kind, name: str) -> list[tuple[Kind, str]]:
        def named(k: Kind, secret_id: str, team: str | None) -> str | None:
            where = self._backend.location(k, secret_id, team)
            return None if where is None else "/".join(where)

        return ids_for(name, (kind,), named, team_sep="/")


def version_state(info: dict[str, Any], now: float) -> tuple[State, float | None]:
    """A key's current version and whether it is deleted now, and when it last changed."""
    current = int(info.get("current_version") or 0)
    version = (info.get("versions") or {}).get(str(current)) or {}
    # A deletion_time ahead is one scheduled (the mount's or the key's delete_version_after):
    # the version reads until then, and is gone at the first poll past it. (No slack for the
    # clocks: seen gone early, its re-read would hold the value on past the deletion.)
    deleted = event_time(version.get("deletion_time"))
    gone = bool(version.get("destroyed")) or (deleted is not None and deleted <= now)
    written = event_time(info.get("updated_time"))
    if deleted is not None and deleted <= now:
        # It changed when it was deleted: a scheduled deletion comes long after the last
        # write, and a feed that sees it within a poll is not late by the key's age.
        written = deleted if written is None else max(written, deleted)
    return (current, gone), written
