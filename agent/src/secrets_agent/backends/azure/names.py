"""Key Vault's secret names: 1-127 letters, digits and ``-`` (the provider checks the same)."""

from __future__ import annotations

from secrets_agent.backends.names import PatternNames

SECRET_NAMES = PatternNames("[0-9A-Za-z-]", 127)
