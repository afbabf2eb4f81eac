"""The two systemd protocols the agent speaks: sd_notify, and sockets passed by socket units."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


class Notifier:
    """sd_notify(3): datagrams to $NOTIFY_SOCKET; silently nothing when not under systemd."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket; the kernel spells that with a leading NUL.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> None:
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError as exc:  # systemd gone or the socket unreachable: nothing to do
                log.debug("sd_notify failed: %s", exc.strerror)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 match this to the reload it asked for.
        self.send(
            RELOADING="1",
            MONOTONIC_USEC=str(time.monotonic_ns() // 1000),
            STATUS="reloading configuration",
        )

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="draining requests and stopping")

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of WatchdogSec=, as sd_watchdog_enabled(3) recommends; None when not asked."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


def inherited_socket(environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The listening socket systemd passed (sd_listen_fds(3)), if it passed one to us."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(environ.get("LISTEN_FDS", "0") or "0")
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(variable, None)  # children of ours must not think these are theirs
    chosen: socket.socket | None = None
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        sock = socket.socket(fileno=fd)
        usable = sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        if usable and chosen is None:
            name = names[index] if index < len(names) else "unknown"
            log.info("using the socket systemd passed (fd %d, name %s)", fd, name)
            chosen = sock
        else:
            log.warning("ignoring passed fd %d: not a Unix stream socket, or one too many", fd)
            sock.detach()
    if chosen is not None:
        chosen.setblocking(False)
    return chosen
