"""Secret Manager's secret ids: 1-255 letters, digits, ``_`` and ``-`` (else INVALID_ARGUMENT)."""

from __future__ import annotations

from secrets_agent.backends.names import PatternNames

SECRET_NAMES = PatternNames("[A-Za-z0-9_-]", 255)
