"""Audit of reads: one JSON line per lookup — who asked, for what, how it was answered.

Never a value. Written to a file (rotated by size here, or left to logrotate with a reopen on
SIGHUP) or to stderr (the journal under systemd). A token bucket bounds the rate, so a peer
hammering the socket cannot fill the disk; what it drops is counted and summarised in one line.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSettings:
    output: str = "off"
    path: str = ""
    max_bytes: int = 0  # 0: never rotate here (logrotate moves the file, SIGHUP reopens it)
    backups: int = 5
    rate: float = 1000.0  # events per second, with a burst of one second's worth


@dataclass(frozen=True)
class Read:
    """One lookup as the audit sees it: result is hit, miss, stale, negative, denied or error."""

    uid: int
    gid: int
    pid: int
    kind: str
    id: str
    team: str | None
    result: str
    backend: str | None


class AuditLog:
    def __init__(
        self,
        settings: AuditSettings,
        metrics: Metrics,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics, self._wall, self._clock = metrics, wall, clock
        self._settings = settings
        # An attribute, not a property: every lookup asks it.
        self.enabled = settings.output != "off"
        self._stream: TextIO | None = None
        self._size = 0
        self._tokens, self._last = settings.rate, clock()
        self._dropped = 0
        self._failing = False
        self._open()

    def reconfigure(self, settings: AuditSettings) -> None:
        """Apply new settings and reopen the file (SIGHUP: after logrotate moved it)."""
        self.close()
        self._settings = settings
        self.enabled = settings.output != "off"
        self._tokens = min(self._tokens, settings.rate)
        self._open()

    def record(self, read: Read) -> None:
        if not self.enabled:
            return
        if not self._admit():
            self._dropped += 1
            self._metrics.audit_dropped.labels("rate").inc()
            return
        stamp = datetime.datetime.fromtimestamp(self._wall(), datetime.UTC)
        when = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self._dropped:
            self._write({"time": when, "event": "dropped", "count": self._dropped})
            self._dropped = 0
        event = {
            "time": when,
            "event": "read",
            "uid": read.uid,
            "gid": read.gid,
            "pid": read.pid,
            "kind": read.kind,
            "id": read.id,
            "team": read.team,
            "result": read.result,
            "backend": read.backend,
        }
        if self._write(event):
            self._metrics.audit_events.labels(read.result).inc()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stderr:
            with contextlib.suppress(OSError):
                self._stream.close()
        self._stream = None

    def _admit(self) -> bool:
        now = self._clock()
        rate = self._settings.rate
        self._tokens = min(rate, self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _write(self, event: dict[str, object]) -> bool:
        line = json.dumps(event, ensure_ascii=True, separators=(",", ":")) + "\n"
        try:
            if self._stream is None:
                self._open(strict=True)
            limit = self._settings.max_bytes
            if self._settings.output == "file" and limit and self._size + len(line) > limit:
                self._rotate()
            assert self._stream is not None
            self._stream.write(line)
            self._stream.flush()
        except OSError as exc:
            self._metrics.audit_dropped.labels("error").inc()
            if not self._failing:  # one line per failure streak, not one per lookup
                log.error("cannot write the audit log: %s", exc.strerror or type(exc).__name__)
                self._failing = True
            self.close()
            return False
        self._size += len(line)
        if self._failing:
            log.info("writing the audit log again")
            self._failing = False
        return True

    def _open(self, *, strict: bool = False) -> None:
        output = self._settings.output
        if output == "stderr":
            self._stream = sys.stderr
        elif output == "file":
            try:
                fd = os.open(self._settings.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._stream = os.fdopen(fd, "a", encoding="utf-8")
                self._size = os.fstat(fd).st_size
            except OSError as exc:
                if strict:
                    raise
                log.error("cannot open the audit log %s: %s", self._settings.path, exc.strerror)
                self._failing = True

    def _rotate(self) -> None:
        """audit.log → audit.log.1 → … → audit.log.<backups>; the oldest goes."""
        self.close()
        path = Path(self._settings.path)
        for index in range(self._settings.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
        self._open(strict=True)
