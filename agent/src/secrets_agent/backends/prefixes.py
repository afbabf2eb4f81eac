"""The breaking change of ``""`` prefixes for gcp_secret_manager and azure_key_vault.

Before ``kinds`` existed on these two, a prefix ``""`` turned its kind off; it now means what
the provider means. A config that sets a prefix to ``""`` and no ``kinds`` was written for the
old meaning, so ``check-config`` and the agent's start say what it now reads.
"""

from __future__ import annotations

from typing import Any

from secrets_agent.kinds import Kind, per_kind


def legacy_empty_prefixes(
    options: Any, explicit: frozenset[str], meaning: str
) -> list[tuple[str, str]]:
    """(key, notice) for each ``*_prefix = ""`` a config without ``kinds`` sets."""
    if "kinds" in explicit:
        return []
    notices = []
    for kind in Kind:
        key = f"{kind.plural}_prefix"
        if key in explicit and per_kind(options, kind, "{}_prefix") == "" and options.serves(kind):
            notices.append(
                (
                    key,
                    f'"" now reads {meaning}, as the provider does (it used to disable the '
                    f'kind); to keep {kind.plural} off, set kinds without "{kind.plural}"',
                )
            )
    return notices
