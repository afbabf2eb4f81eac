"""The three kinds of Airflow secrets and the rules for their ids."""

from __future__ import annotations

import enum
import unicodedata
from typing import Any

from secrets_agent.errors import InvalidIdError

MAX_ID_LENGTH = 250  # Airflow's own limit for connection ids and variable keys
_INVISIBLE = frozenset({"Cf", "Cs", "Co", "Cn"})


class Kind(enum.StrEnum):
    CONNECTION = "connection"
    VARIABLE = "variable"
    CONFIG = "config"

    @property
    def plural(self) -> str:
        """The URL segment and config-key stem for this kind."""
        return _PLURALS[self]


_PLURALS = {Kind.CONNECTION: "connections", Kind.VARIABLE: "variables", Kind.CONFIG: "config"}
KIND_BY_SEGMENT = {plural: kind for kind, plural in _PLURALS.items()}


def per_kind(options: object, kind: Kind, name: str) -> Any:
    """The option named for ``kind`` after the providers' convention: ``name.format(plural)``.

    ``"{}_prefix"`` is ``connections_prefix``, ``variables_prefix`` or ``config_prefix``.
    """
    return getattr(options, name.format(kind.plural))


def validate_id(raw: str) -> str:
    """Return ``raw`` if it can be an Airflow id, else raise ``InvalidIdError``."""
    if not raw:
        raise InvalidIdError("id is empty")
    if len(raw) > MAX_ID_LENGTH:
        raise InvalidIdError(f"id is longer than {MAX_ID_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in raw):
        raise InvalidIdError("id contains control characters")
    # Format (zero-width, bidi overrides, BOM, soft hyphen), surrogate, private-use and
    # unassigned characters: invisible or ambiguous, never part of a real id.
    if any(unicodedata.category(ch) in _INVISIBLE for ch in raw):
        raise InvalidIdError("id contains invisible, private-use or unassigned characters")
    # Backends build upstream paths from ids, so an id must never climb out of its prefix.
    if "\\" in raw or raw.startswith("/") or raw.endswith("/"):
        raise InvalidIdError("id contains a path separator in an invalid position")
    if any(part in ("", ".", "..") for part in raw.split("/")):
        raise InvalidIdError("id contains a path traversal segment")
    return raw
