"""Debian's real ``redis-server`` on a loopback port, in its own process group; restartable."""

from __future__ import annotations

import contextlib
import os
import random
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
        cluster: bool = False,
        certificate: tuple[bytes, bytes] | None = None,
        replica_of: RedisServer | None = None,
    ) -> None:
        self.workdir, self.maxmemory, self.tls, self.user = workdir, maxmemory, tls, user
        self.acl, self.cluster, self.replica_of = acl, cluster, replica_of
        # A cluster node's bus listens on port + 10000: both must be free and valid.
        self.port = cluster_port() if cluster else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if tls:
            key_pem, cert_pem = certificate or self_signed()
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
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        if self.cluster:
            # nodes.conf stays in the workdir: a restarted node rejoins with its slots. Without
            # full coverage, the other primaries keep serving while one is down.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]
            if self.tls:  # the nodes share one self-signed certificate: it is their CA too
                args += ["--tls-cluster", "yes", "--tls-ca-cert-file", self.ca_file]
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

    def auth_args(self) -> list[str]:
        """redis-cli's options to reach this server as the admin user."""
        args = ["-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            args += ["--tls", "--cacert", self.ca_file]
        if self.user is not None:
            args += ["--user", _ADMIN[0].split()[0], "--pass", _ADMIN[1], "--no-auth-warning"]
        return args

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


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterServers:
    """Three primaries made one cluster with ``redis-cli --cluster create``; each node is a
    ``RedisServer`` (own process group, killable and restartable with its slots)."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool = False,
        user: tuple[str, str] | None = None,
        acl: str = "~* &* +@all",
        size: int = 3,
    ) -> None:
        certificate = self_signed() if tls else None
        self.nodes = [
            RedisServer(
                workdir / f"node{i}", tls=tls, user=user, acl=acl, cluster=True,
                certificate=certificate,
            )
            for i in range(size)
        ]  # fmt: skip
        self.tls, self.created = tls, False

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])
        return f"{'rediss' if self.tls else 'redis'}+cluster://{seeds}"

    @property
    def ca_file(self) -> str:
        return self.nodes[0].ca_file

    def start(self) -> None:
        """Create the cluster; once created, start the nodes that were stopped (they rejoin)."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        if self.created:
            self.wait_ok()
            return
        cli = need("redis-cli", "redis-server")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, *self.nodes[0].auth_args(), "--cluster", "create", *addresses, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
            start_new_session=True,
        )
        self.created = True
        self.wait_ok()

    def wait_ok(self) -> None:
        """Every node says cluster_state:ok (polling for readiness, not timing behaviour)."""
        deadline = time.monotonic() + 60
        while not all(self._ok(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        try:
            info = node.command("CLUSTER", "INFO")
        except (OSError, RuntimeError):
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def owner(self, key: str | bytes) -> RedisServer:
        """The node serving ``key``'s slot (asked of a running node)."""
        ask = self.running()[0]
        slot, table = ask.command("CLUSTER", "KEYSLOT", key), ask.command("CLUSTER", "SLOTS")
        assert isinstance(slot, int) and isinstance(table, list)
        for start, end, primary, *_ in table:
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def command(self, *args: str | bytes) -> object:
        """FLUSHALL and CONFIG on every running node; a command on a key on its slot's node."""
        name = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if name.upper() in ("FLUSHALL", "CONFIG"):
            replies = [n.command(*args) for n in self.running()]
            return replies[0]
        return self.owner(args[1]).command(*args)

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None]

    def scan_all(self) -> dict[bytes, bytes]:
        result: dict[bytes, bytes] = {}
        for node in self.running():
            result.update(node.scan_all())
        return result


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching ``master`` under the name ``name``."""

    def __init__(
        self,
        workdir: Path,
        master: RedisServer,
        name: str = "mymaster",
        down_after_ms: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.master, self.name, self.down_after_ms = master, name, down_after_ms

    def start(self) -> None:
        config = self.workdir / "sentinel.conf"  # sentinel rewrites its config: a file of ours
        quick = (  # a master gone this long is down, and its replica promoted at once
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} 5000\n"
            if self.down_after_ms is not None
            else ""
        )
        config.write_text(
            # ::1 too where the host has it ("-": not a failure where it does not)
            f"port {self.port}\nbind 127.0.0.1 -::1\ndir {self.workdir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n" + quick
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


Store = RedisServer | ClusterServers


@contextlib.contextmanager
def redis_server(workdir: Path, maxmemory: str = "") -> Iterator[RedisServer]:
    server = RedisServer(workdir, maxmemory=maxmemory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
