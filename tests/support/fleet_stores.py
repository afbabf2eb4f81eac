"""The shared-cache store in each mode the agent supports (one server, a Sentinel's master, a
three-primary cluster with TLS and the documented ACL user), as the system tests use it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.redis_server import ClusterServers, RedisServer, SentinelServer, Store

MODES = ("standalone", "sentinel", "cluster")
PREFIX = "airflow-secrets-agent:"
# The ACL docs/fleet.md documents: only the commands the tier uses, only its prefix. A cluster
# client also asks for the slot map and the command table.
ACL = (
    f"~{PREFIX}* &{PREFIX}* -@all +get +set +pttl +exists +eval +del +unlink +publish +subscribe"
    " +spublish +ssubscribe +ping +cluster|slots +command"
)
AGENT_USER = ("agent", "agent-store-password-3c1e")


@dataclass
class Deployment:
    mode: str
    url: str
    data: Store  # where entries live: the server, the master, or the cluster
    servers: list[RedisServer] = field(default_factory=list)  # every process, sentinels too
    tls: bool = False

    def settings(self, directory: Path) -> str:
        """The ``[shared_cache]`` lines that reach this store (a password file if it has one)."""
        lines = [f'url = "{self.url}"']
        if self.tls:
            lines.append(f'ca_file = "{self.data.ca_file}"')
        if isinstance(self.data, ClusterServers):
            password = directory / "store.pw"
            password.write_text(AGENT_USER[1] + "\n")
            password.chmod(0o600)
            lines += [f'username = "{AGENT_USER[0]}"', f'password_file = "{password}"']
        return "\n".join(lines)

    def node_of(self, key: bytes) -> RedisServer:
        """The process serving ``key`` (the one to kill to take its slot away)."""
        if isinstance(self.data, ClusterServers):
            return self.data.owner(key)
        assert isinstance(self.data, RedisServer)
        return self.data

    def restart(self, node: RedisServer) -> None:
        node.start()
        if isinstance(self.data, ClusterServers):
            self.data.wait_ok()

    def reset(self) -> None:
        """Every process running and every entry gone (between tests)."""
        for server in self.servers:
            if server.process is None:
                server.start()
        if isinstance(self.data, ClusterServers):
            self.data.wait_ok()
        self.data.command("FLUSHALL")

    def subscribers(self) -> int:
        """Subscribers to the invalidation channels (sharded ones on their shard's node)."""
        total = 0
        nodes = self.data.running() if isinstance(self.data, ClusterServers) else [self.data]
        for node in nodes:
            for kind in ("", "SHARD"):
                # Ours only: a Sentinel subscribes to its master's __sentinel__:hello.
                names = node.command("PUBSUB", f"{kind}CHANNELS", f"{PREFIX}*")
                assert isinstance(names, list)
                counts = node.command("PUBSUB", f"{kind}NUMSUB", *names) if names else []
                assert isinstance(counts, list)
                total += sum(int(n) for n in counts[1::2])
        return total

    def entries(self) -> list[bytes]:
        return [k for k in self.data.scan_all() if b":e:" in k]


@contextlib.contextmanager
def deployment(mode: str, workdir: Path) -> Iterator[Deployment]:
    servers: list[RedisServer] = []
    try:
        if mode == "cluster":
            cluster = ClusterServers(workdir / "cluster", tls=True, user=AGENT_USER, acl=ACL)
            servers += cluster.nodes
            cluster.start()
            yield Deployment(mode, cluster.url, cluster, servers, tls=True)
            return
        master = RedisServer(workdir / "redis")
        servers.append(master)
        master.start()
        if mode == "standalone":
            yield Deployment(mode, master.url, master, servers)
            return
        sentinel = SentinelServer(workdir / "sentinel", master)
        servers.append(sentinel)
        sentinel.start()
        yield Deployment(mode, sentinel.url, master, servers)
    finally:
        for server in servers:
            server.stop()
