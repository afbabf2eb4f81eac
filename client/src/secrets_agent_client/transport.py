"""HTTP/1.1 over a Unix socket with the standard library: one kept-alive connection per process."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from dataclasses import dataclass


class AgentUnreachable(Exception):
    """The agent's socket could not be reached or the connection broke mid-request."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixTransport:
    """Thread-safe and fork-aware: a child process never reuses its parent's connection."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: _UnixHTTPConnection | None = None
        self._pid = os.getpid()

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        with self._lock:
            if self._pid != os.getpid():
                self._conn, self._pid = None, os.getpid()
            reused = self._conn is not None
            try:
                return self._send(method, path, body)
            except (ConnectionError, http.client.BadStatusLine) as exc:
                self.close()
                if not reused:
                    raise AgentUnreachable(_describe(exc, self.socket_path)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise AgentUnreachable(_describe(exc, self.socket_path)) from None
            # The kept-alive connection died (the agent restarted): one retry on a new one.
            try:
                return self._send(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise AgentUnreachable(_describe(exc, self.socket_path)) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        # Backends live as long as the Airflow process; close quietly when one is dropped.
        if getattr(self, "_pid", None) == os.getpid():
            self.close()

    def _send(self, method: str, path: str, body: bytes | None) -> Response:
        if self._conn is None:
            self._conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        conn = self._conn
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        raw = conn.getresponse()
        payload = raw.read()
        if raw.will_close:
            self.close()
        return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, payload)


def _describe(exc: BaseException, socket_path: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"the agent at {socket_path} did not answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"no agent socket at {socket_path}"
    if isinstance(exc, PermissionError):
        return f"no permission to open the agent socket {socket_path}"
    if isinstance(exc, ConnectionRefusedError):
        return f"no agent is listening on {socket_path}"
    return f"cannot talk to the agent at {socket_path} ({type(exc).__name__})"
