"""Log setup: text or JSON lines. Callers never pass secret values to the logger.

Third-party SDKs log request headers and response bodies (secret values, session tokens) at
DEBUG, so their loggers stay at WARNING whatever ``[log] level`` says, and the handler drops
anything below WARNING that does not come from the agent itself.
"""

from __future__ import annotations

import json
import logging
import sys

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
