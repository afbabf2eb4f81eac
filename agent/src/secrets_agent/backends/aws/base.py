"""What the two AWS backends share: the client's lifetime, naming, readiness, prefetch."""

from __future__ import annotations

import re
from typing import ClassVar

from secrets_agent.backends.aws.client import AwsClient, check_credentials_file
from secrets_agent.backends.aws.options import AwsOptions
from secrets_agent.backends.base import Backend, BackendContext, Health, Prefetched, Versioned
from secrets_agent.backends.feeds import Feed
from secrets_agent.kinds import Kind

BATCH = 10  # ids per BatchGetSecretValue / GetParameters call


class AwsBackend(Backend):
    service: ClassVar[str]
    manages_auth = True
    lookup_pattern_flags = re.IGNORECASE  # the amazon provider's re.match(..., re.IGNORECASE)
    options: AwsOptions

    def __init__(
        self, name: str, options: AwsOptions, context: BackendContext | None = None
    ) -> None:
        super().__init__(name, options, context)
        self.client = AwsClient(name, self.service, options, self.context)

    async def start(self) -> None:
        await self.client.start()

    async def check_local(self) -> None:
        check_credentials_file(self.name, self.options)

    async def close(self) -> None:
        await self.client.close()

    def health(self) -> Health:
        error = self.client.credentials_error
        return Health(ready=error is None, detail=error or "ok")

    def upstream_failure(self) -> str | None:
        return self.client.calls.last_failure

    def supports(self, kind: Kind) -> bool:
        return self.options.serves(kind)

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        found = await self.fetch_versioned(kind, secret_id)
        return None if found is None else found.value

    async def fetch_versioned(self, kind: Kind, secret_id: str) -> Versioned | None:
        return await self.fetch_for_team(kind, secret_id, None)

    async def fetch_for_team(
        self, kind: Kind, secret_id: str, team: str | None
    ) -> Versioned | None:
        """The team's name first (with ``team_layout``), then the global one."""
        name = self.options.name_for(kind, secret_id)
        if name is None:
            return None
        team_name = self.options.team_name_for(kind, secret_id, team) if team else None
        found = await self.fetch_name(team_name) if team_name else None
        if found is None:
            found = await self.fetch_name(name)
        return None if found is None else self.shape(kind, found)

    async def fetch_name(self, name: str) -> Versioned | None:
        """The raw value stored under the upstream ``name``; None when there is none."""
        raise NotImplementedError

    async def prefetch(self) -> list[Prefetched]:
        wanted = {
            name: (kind, secret_id)
            for kind in Kind
            for secret_id in self.options.prefetch(kind)
            if (name := self.options.name_for(kind, secret_id)) is not None
        }
        names = list(wanted)
        loaded: list[Prefetched] = []
        for start in range(0, len(names), BATCH):
            for name, found in (await self.fetch_batch(names[start : start + BATCH])).items():
                kind, secret_id = wanted[name]
                loaded.append(Prefetched(kind, secret_id, self.shape(kind, found)))
        return loaded

    async def fetch_batch(self, names: list[str]) -> dict[str, Versioned]:
        """Raw values for up to ``BATCH`` upstream names, by name; missing ones are left out."""
        raise NotImplementedError

    def change_feed(self) -> Feed | None:
        if self.options.feed is None:
            return None
        from secrets_agent.backends.aws.feed import SqsFeed

        return SqsFeed(self, self.options.feed)

    def shape(self, kind: Kind, found: Versioned) -> Versioned:
        """Turn the raw upstream value into what Airflow expects for ``kind``."""
        return found
