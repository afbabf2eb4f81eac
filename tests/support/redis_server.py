"""Debian's real ``redis-server`` on a loopback port, in its own process group; restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.bao import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """No persistence, no config file: a fresh store every start, on the same port."""

    def __init__(self, workdir: Path, *, maxmemory: str = "") -> None:
        self.workdir, self.maxmemory = workdir, maxmemory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=log, cwd=self.workdir, start_new_session=True
            )
        self._wait_for_pong()

    def stop(self) -> None:
        """Kill it (as a crash would) and reap it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def command(self, *args: str | bytes) -> object:
        """One command over a plain socket (RESP), for tests that inspect the store."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            parts = [a.encode() if isinstance(a, str) else a for a in args]
            request = b"*%d\r\n" % len(parts) + b"".join(
                b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
            )
            sock.sendall(request)
            reader = sock.makefile("rb")
            return _read_reply(reader)

    def scan_all(self) -> dict[bytes, bytes]:
        """Every key and its string value (non-string keys map to b"")."""
        result: dict[bytes, bytes] = {}
        keys = self.command("KEYS", "*")
        assert isinstance(keys, list)
        for key in keys:
            value = self.command("GET", key) if self.command("TYPE", key) == b"string" else b""
            result[key] = value if isinstance(value, bytes) else b""
        return result

    def _wait_for_pong(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.command("PING") == b"PONG":
                    return
            except OSError:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.workdir}/redis.log")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.02)  # polling for readiness, not timing behaviour


def _read_reply(reader: object) -> object:
    line: bytes = reader.readline()  # type: ignore[attr-defined]
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if rest == b"-1":
            return None
        data: bytes = reader.read(int(rest) + 2)  # type: ignore[attr-defined]
        return data[:-2]
    if kind == b"*":
        return None if rest == b"-1" else [_read_reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


@contextlib.contextmanager
def redis_server(workdir: Path, maxmemory: str = "") -> Iterator[RedisServer]:
    server = RedisServer(workdir, maxmemory=maxmemory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
