"""Audit of reads: one JSON line per lookup — who asked, for what, how it was answered.

Never a value. Written to a file (rotated by size here, or left to logrotate with a reopen on
SIGHUP) or to stderr (the journal under systemd). A token bucket bounds the rate, so a peer
hammering the socket cannot fill the disk, and each local user (uid) has its own share of it, so
one peer's burst cannot keep another's reads out; what is dropped is counted and summarised.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import stat
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


@dataclass(frozen=True)
class Invalidation:
    """One ``POST /v1/cache/invalidate``: result is invalidated or denied (not an admin, or its
    access rules do not cover what it named); kind and id as named (None: all)."""

    uid: int
    gid: int
    pid: int
    kind: str | None
    id: str | None
    result: str
    count: int | None  # entries dropped here; None when refused


@dataclass
class _Share:
    """One uid's part of the budget: its tokens, and what it lost since its last line."""

    tokens: float
    last: float
    dropped: int = 0
    denied: int = 0  # of ``dropped``: the reads refused to this peer


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
        self._shares: dict[int, _Share] = {}
        self._swept = clock()
        self._failing = False
        self._open()

    def reconfigure(self, settings: AuditSettings) -> None:
        """Apply new settings and reopen the file (SIGHUP: after logrotate moved it)."""
        self.close()
        self._settings = settings
        self.enabled = settings.output != "off"
        self._open()

    def record(self, read: Read | Invalidation) -> None:
        """Write one read's line (or an invalidation's), within its peer's share of ``rate``
        (summaries included).

        Each uid seen in the last second has an equal share (bursts of one second's worth):
        one peer hammering the socket drops its own lines, never another peer's. What a peer
        loses is summarised in one ``dropped`` line (with how many were denied reads) before
        its next line, or once it stopped with the next line a second later (or at close).
        """
        if not self.enabled:
            return
        now = self._clock()
        if now - self._swept >= 1.0:
            self._sweep(now)
        share = self._share(read.uid, now)
        need = 2.0 if share.dropped else 1.0  # its summary comes first, from the same share
        if share.tokens < need:
            share.dropped += 1
            share.denied += read.result == "denied"
            self._metrics.audit_dropped.labels("rate").inc()
            return
        when = self._when()
        if share.dropped:
            self._summarise(read.uid, share, when)
        share.tokens -= 1.0
        event: dict[str, object] = {
            "time": when,
            "event": "read" if isinstance(read, Read) else "invalidate",
            "uid": read.uid,
            "gid": read.gid,
            "pid": read.pid,
            "kind": read.kind,
            "id": read.id,
        }
        if isinstance(read, Read):
            event.update(team=read.team, result=read.result, backend=read.backend)
        else:
            event.update(result=read.result, count=read.count)
        if self._write(event):
            self._metrics.audit_events.labels(read.result).inc()

    def _share(self, uid: int, now: float) -> _Share:
        shares = self._shares
        share = shares.get(uid)
        size = self._share_size(len(shares) + (share is None))
        if share is None:
            share = shares[uid] = _Share(size, now)
            return share
        share.tokens = min(size, share.tokens + (now - share.last) * size)
        share.last = now
        return share

    def _share_size(self, peers: int) -> float:
        """Tokens a second (and the burst) of each of ``peers``: never less than one line."""
        return max(1.0, self._settings.rate / max(1, peers))

    def _sweep(self, now: float) -> None:
        """Forget peers quiet for a second (their share goes back to the others); a peer that
        lost lines gets its summary now, since it may never read again."""
        self._swept = now
        for uid, share in list(self._shares.items()):
            if now - share.last < 1.0:
                continue
            if share.dropped:
                self._summarise(uid, share, self._when())
            del self._shares[uid]

    def _summarise(self, uid: int, share: _Share, when: str) -> None:
        share.tokens -= 1.0
        event = {
            "time": when,
            "event": "dropped",
            "uid": uid,
            "count": share.dropped,
            "denied": share.denied,
        }
        share.dropped = share.denied = 0
        self._write(event)

    def _when(self) -> str:
        stamp = datetime.datetime.fromtimestamp(self._wall(), datetime.UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def close(self) -> None:
        if self._stream is not None:  # what was lost is never lost silently, even at the end
            for uid, share in self._shares.items():
                if share.dropped:
                    share.tokens = max(share.tokens, 1.0)
                    self._summarise(uid, share, self._when())
        self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None and self._stream is not sys.stderr:
            with contextlib.suppress(OSError):
                self._stream.close()
        self._stream = None

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
            self._close_stream()
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
                fd = _open_private(self._settings.path)
                self._stream = os.fdopen(fd, "a", encoding="utf-8")
                self._size = os.fstat(fd).st_size
            except OSError as exc:
                if strict:
                    raise
                log.error("cannot open the audit log %s: %s", self._settings.path, exc.strerror)
                self._failing = True

    def _rotate(self) -> None:
        """audit.log → audit.log.1 → … → audit.log.<backups>; the oldest goes."""
        self._close_stream()
        path = Path(self._settings.path)
        for index in range(self._settings.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))
        self._open(strict=True)


def _open_private(path: str) -> int:
    """The audit file for appending: never through a symlink, a regular file, mode 0600.

    An existing file keeps whatever mode it had unless we set it: who read what is not for
    every local user to see.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd
