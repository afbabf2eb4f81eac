"""Debian's real ``redis-server`` on a loopback port, in its own process group; restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.bao import free_port
from support.helpers import need
from support.tls import self_signed

_ADMIN = ("test-admin on", "test-admin-password")  # the helper's own user, with every right


def server_binary() -> str:
    """valkey-server where the system has one, else Debian's redis-server (a test is skipped
    where neither is installed, and fails in CI, whose test command installs redis-server)."""
    return shutil.which("valkey-server") or need("redis-server", "redis-server")


class RedisServer:
    """No persistence, no config file: a fresh store every start, on the same port.

    ``tls``: TLS only, with a self-signed certificate (``ca_file``); ``user``: an ACL user and
    password with the rules ``acl``, the default user off, and an admin user for ``command``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        maxmemory: str = "",
        tls: bool = False,
        user: tuple[str, str] | None = None,
        acl: str = "~* &* +@all",
    ) -> None:
        self.workdir, self.maxmemory, self.tls, self.user = workdir, maxmemory, tls, user
        self.acl = acl
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if tls:
            key_pem, cert_pem = self_signed()
            (workdir / "key.pem").write_bytes(key_pem)
            (workdir / "cert.pem").write_bytes(cert_pem)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> str:
        return str(self.workdir / "cert.pem")

    def start(self) -> None:
        args = [
            server_binary(),
            "--port", "0" if self.tls else str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.tls:
            args += ["--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += [
                "--tls-cert-file",
                self.ca_file,
                "--tls-key-file",
                str(self.workdir / "key.pem"),
            ]
        if self.user is not None:
            name, password = self.user
            args += ["--user", "default", "off", "--user", name, "on", f">{password}"]
            args += [*self.acl.split(), "--user", *_ADMIN[0].split(), f">{_ADMIN[1]}", "~*", "&*"]
            args += ["+@all"]
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
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        with sock, sock.makefile("rb") as reader:
            if self.user is not None:
                sock.sendall(_request(("AUTH", _ADMIN[0].split()[0], _ADMIN[1])))
                _read_reply(reader)
            sock.sendall(_request(args))
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


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching ``master`` under the name ``name``."""

    def __init__(self, workdir: Path, master: RedisServer, name: str = "mymaster") -> None:
        super().__init__(workdir)
        self.master, self.name = master, name

    def start(self) -> None:
        config = self.workdir / "sentinel.conf"  # sentinel rewrites its config: a file of ours
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
        )
        with (self.workdir / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                [server_binary(), str(config), "--sentinel"],
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._wait_for_pong()
        deadline = time.monotonic() + 30
        while self.command("SENTINEL", "get-master-addr-by-name", self.name) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("sentinel does not know its master")
            time.sleep(0.02)  # polling for readiness, not timing behaviour

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"


def _request(args: tuple[str | bytes, ...]) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


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
