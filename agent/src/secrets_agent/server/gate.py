"""The cap on open connections, and the answer a connection past it gets before any read."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from secrets_agent.ops.logs import RateLimited

log = logging.getLogger("secrets_agent.server.connections")


def _canned(status: int, reason: str, error: str, detail: str) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Agent-Busy: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# Sent before anything is read: the client treats it as "busy" and retries within its timeout.
BUSY = _canned(503, "Service Unavailable", "agent_busy", "too many open connections; retry")


@dataclass
class Gate:
    """How many connections are open, how many may be, and the site's rate-limited log."""

    limit: int
    open: int = 0
    log: RateLimited = field(default_factory=lambda: RateLimited(log))

    def enter(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1
