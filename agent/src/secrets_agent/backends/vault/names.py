"""Vault and OpenBao refuse a path with a non-printable character (400, "invalid request")."""

from __future__ import annotations

import unicodedata

from secrets_agent.backends.names import NameRules


class VaultPaths(NameRules):
    """Go's ``unicode.IsPrint``, which Vault checks every request path with: letters, marks,
    numbers, punctuation, symbols and the ASCII space; not other spaces, nor U+2028/U+2029."""

    def why_not(self, name: str) -> str | None:
        for ch in name:
            if ch != " " and unicodedata.category(ch)[0] not in "LMNPS":
                return f"a non-printable character (U+{ord(ch):04X})"
        return None


SECRET_PATHS = VaultPaths()
