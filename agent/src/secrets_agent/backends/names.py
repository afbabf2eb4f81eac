"""What names an upstream can hold, checked before any call: an impossible name is a miss.

Each backend has its rules beside it (``gcp/names.py``, ``azure/names.py``, ...). A name that
breaks them can hold no secret, so the lookup is a miss with no upstream call, as the providers
that return nothing for it; what the upstream would answer instead (``INVALID_ARGUMENT``, a
validation error, a 400) would otherwise reach the caller as a 502.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass


class NameRules(abc.ABC):
    """One upstream's rules for the names the agent builds from ids."""

    @abc.abstractmethod
    def why_not(self, name: str) -> str | None:
        """Why the upstream cannot hold ``name``, or None when it can."""

    def holds(self, name: str) -> bool:
        return self.why_not(name) is None


@dataclass(frozen=True)
class PatternNames(NameRules):
    """Names of ``min_length``..``max_length`` characters, each in ``allowed``."""

    allowed: str  # a regex character class, e.g. "[A-Za-z0-9_-]"
    max_length: int
    min_length: int = 1

    def why_not(self, name: str) -> str | None:
        if not self.min_length <= len(name) <= self.max_length:
            return f"not {self.min_length}-{self.max_length} characters long"
        if not re.fullmatch(f"{self.allowed}*", name):
            return f"a character outside {self.allowed}"
        return None
