"""A Unix-socket server on threads for the client's tests: each connection goes to a function."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class ThreadedUnixServer:
    """Runs ``handle(conn, index)`` in a thread of its own for each connection it accepts
    (``index`` counts from 1); the connection is closed when ``handle`` returns."""

    def __init__(self, path: str, handle: Callable[[socket.socket, int], None]) -> None:
        self.path = path
        self.handle = handle
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn, self.connections), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):  # the client may have gone first
            self.handle(conn, index)

    def close(self) -> None:
        self.sock.close()
