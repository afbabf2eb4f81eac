"""Log setup: text or JSON lines. Callers never pass secret values to the logger.

Third-party SDKs log request headers and response bodies (secret values, session tokens) at
DEBUG, so their loggers stay at WARNING whatever ``[log] level`` says, and the handler drops
anything below WARNING that does not come from the agent itself.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from time import monotonic

OURS = "secrets_agent"
# The SDKs the backends use and the libraries under them; pinned so even a handler added by
# someone else (or a library calling basicConfig) does not see their DEBUG/INFO records.
PINNED = (
    "botocore",
    "aiobotocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "hvac",
    "requests",
    "google",
    "grpc",
    "azure",
    "asyncio",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.web",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # What the text format prints on the lines after the message, escaped into this object:
        # one line per event, and a traceback logged with exc_info is not lost.
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


class OnlyOursBelowWarning(logging.Filter):
    """Records below WARNING pass only from the agent's own loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.name == OURS or record.name.startswith(OURS + ".")


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OnlyOursBelowWarning())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """Apply ``[log] level`` to the agent's logs (at start and on reload); SDKs stay pinned."""
    logging.getLogger().setLevel(level.upper())
    for name in PINNED:
        logging.getLogger(name).setLevel(logging.WARNING)


class RateLimited:
    """At most one line per ``interval`` for each key; the next line says how many were dropped.

    For what other processes can cause (bad requests, denied peers, accept() failures): a
    hostile or broken peer must not be able to grow the log faster than this.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = monotonic
    ) -> None:
        self._logger, self._interval, self._clock = logger, interval, clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def log(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True when logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            message += " (%d more like it in the last %.0f s not logged)"
            args = (*args, dropped, now - last if last is not None else 0.0)
        self._logger.log(level, message, *args)
        return True
