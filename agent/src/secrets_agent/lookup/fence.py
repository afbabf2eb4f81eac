"""Reads kept off another kind's names, on a backend whose kinds nest, while rules are in force.

With ``connections_prefix = "airflow"`` and ``variables_prefix = "airflow/variables"`` the
connection ``variables/x`` reads the variable ``x``'s secret (``backends/namespaces.py``). With
``[[access]]`` rules that is a way around a rule on variables, so such a read is not one the
backend accepts: a miss there, no upstream call, as a ``*_lookup_pattern`` that excludes the id.
Without rules nothing is fenced: the agent reads what Airflow's backend would.

Only backends whose kinds nest get a ``FencedLink``, so every other backend's ``accepts`` costs
what it always did; the fence itself runs where ``accepts`` runs (misses, negatives, feeds).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from secrets_agent.backends.namespaces import Naming, naming_of
from secrets_agent.config.schema import AgentConfig
from secrets_agent.kinds import Kind
from secrets_agent.lookup.cache import Key, SecretCache
from secrets_agent.lookup.chain import Link
from secrets_agent.ops.logs import RateLimited

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FencedLink(Link):
    """A link whose backend's kinds nest: a read that lands on another kind's names is not
    accepted."""

    naming: Naming | None = None
    # Peers choose the ids: a line a minute for the backend.
    said: RateLimited = field(default_factory=lambda: RateLimited(log), compare=False, repr=False)

    def accepts(self, kind: Kind, secret_id: str, team: str | None = None) -> bool:
        if not super().accepts(kind, secret_id, team):
            return False
        other = self.fences(kind, secret_id, team)
        if other is None:
            return True
        # Said where ``accepts`` is asked: a read, a negative answered, a feed's hint.
        self.said.log(
            self.backend.name,
            logging.INFO,
            "backend %r: %s ids that name %ss' secrets are not read there ([[access]] rules "
            "are in force and its prefixes nest; check-config says more)",
            self.backend.name,
            kind.value,
            other.value,
        )
        return False

    def fences(self, kind: Kind, secret_id: str, team: str | None = None) -> Kind | None:
        """The other kind whose name this read would ask for, if any."""
        return None if self.naming is None else self.naming.intrudes(kind, secret_id, team)


def fences(config: AgentConfig) -> bool:
    """Whether ``config`` fences any backend (rules in force, and some backend's kinds nest)."""
    return bool(config.access) and any(
        (naming := naming_of(b.options)) is not None and bool(naming.nestings())
        for b in config.backends
    )


def fence(link: Link, rules: bool) -> Link:
    """``link``, fenced when ``[[access]]`` rules are in force and its backend's kinds nest."""
    naming = naming_of(link.backend.options) if rules else None
    if naming is None or not naming.nestings():
        return link
    return FencedLink(link.backend, link.patterns, link.teams, link.deadline, naming)


def fenced_off(links: Iterable[Link], source: str | None, key: Key) -> bool:
    """Whether a value ``source`` produced for ``key`` is one its link now fences off."""
    return any(
        isinstance(link, FencedLink)
        and link.backend.name == source
        and link.fences(*key) is not None
        for link in links
    )


def scrub(cache: SecretCache, links: Iterable[Link], before: Iterable[Link] = ()) -> int:
    """Drop the values a fenced link would no longer read (cached before rules came in, carried
    over a reload, restored from a snapshot), and the misses the ``before`` chain's fence
    answered (a reload may lift it); return how many entries went."""
    links = tuple(links)
    lifted = [link for link in before if isinstance(link, FencedLink)]
    if not lifted and not any(isinstance(link, FencedLink) for link in links):
        return 0
    doomed = [
        key
        for key, source, _ in cache.holding()
        if fenced_off(links, source, key)
        or (source is None and any(_lifted(link, links, key) for link in lifted))
    ]
    for key in doomed:
        cache.drop(key)
    if doomed:
        log.info("dropped %d cached entries the fence on nested kinds decided", len(doomed))
    return len(doomed)


def _lifted(before: FencedLink, links: tuple[Link, ...], key: Key) -> bool:
    """Whether ``before`` fenced ``key`` off its backend and the new chain no longer does."""
    return before.fences(*key) is not None and not fenced_off(links, before.backend.name, key)
