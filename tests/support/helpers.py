"""Test helpers: a movable clock, a fake backend, and the real agent on a temporary socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from secrets_agent.backends import registry
from secrets_agent.backends.base import Backend, Prefetched, Versioned
from secrets_agent.config.loader import load_config
from secrets_agent.config.schema import AgentConfig
from secrets_agent.daemon import Agent
from secrets_agent.kinds import Kind

T = TypeVar("T")


class FakeClock:
    """Time that only moves when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class ScriptOptions:
    pass


@dataclass
class Script:
    """What a ``ScriptedBackend`` answers: values, errors to raise, and a gate to hold calls."""

    values: dict[tuple[Kind, str], str] = field(default_factory=dict)
    error: Exception | None = None
    gate: asyncio.Event | None = None
    calls: list[tuple[Kind, str]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    versions: dict[tuple[Kind, str], str] = field(default_factory=dict)
    revalidations: int = 0


class ScriptedBackend(Backend):
    """A backend whose answers the test scripts: the layer behind the chain, faked."""

    type_name = "scripted"
    Options = ScriptOptions
    scripts: dict[str, Script] = {}  # noqa: RUF012 - keyed by backend name, reset per test

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        script = self.scripts[self.name]
        script.calls.append((kind, secret_id))
        script.called.set()
        if script.gate is not None:
            await script.gate.wait()
        if script.error is not None:
            raise script.error
        return script.values.get((kind, secret_id))

    async def fetch_versioned(self, kind: Kind, secret_id: str) -> Versioned | None:
        value = await self.fetch(kind, secret_id)
        version = self.scripts[self.name].versions.get((kind, secret_id))
        return None if value is None else Versioned(value, version)

    async def revalidate(self, kind: Kind, secret_id: str, version: str) -> bool:
        script = self.scripts[self.name]
        script.revalidations += 1
        if script.error is not None:
            raise script.error
        return script.versions.get((kind, secret_id)) == version


class SlowToPrefetch(ScriptedBackend):
    """A backend that starts, then never finishes its warm-up reads (an upstream that hangs)."""

    prefetching = asyncio.Event()
    closed = 0

    @classmethod
    def installed(cls, monkeypatch: pytest.MonkeyPatch) -> type[SlowToPrefetch]:
        """Registered as type "scripted" (named "slow") for one test, with fresh counters."""
        monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", cls)
        monkeypatch.setattr(cls, "prefetching", asyncio.Event())
        monkeypatch.setattr(cls, "closed", 0)
        monkeypatch.setattr(cls, "scripts", {"slow": Script()})
        return cls

    async def prefetch(self) -> list[Prefetched]:
        SlowToPrefetch.prefetching.set()
        await asyncio.Event().wait()
        return []

    async def close(self) -> None:
        SlowToPrefetch.closed += 1


def write_config(directory: Path, body: str, name: str = "agent.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def demo_files(directory: Path) -> None:
    (directory / "connections.json").write_text(
        json.dumps(
            {
                "pg": "postgresql://user:s3cret-pg@db.local:5432/app",
                "http_api": {
                    "conn_type": "http",
                    "host": "api.local",
                    "password": "s3cret-http",
                    "extra": {"verify": False},
                },
            }
        )
    )
    (directory / "variables.json").write_text(
        json.dumps({"greeting": "hello", "settings": {"retries": 3}})
    )
    (directory / "config.env").write_text("sql_alchemy_conn=sqlite:////tmp/s3cret.db\n")


# The file backend serving ``demo_files``.
DEMO_BACKEND = """
[[backends]]
name = "local"
type = "file"
connections_file = "connections.json"
variables_file = "variables.json"
config_file = "config.env"
"""


def agent_config(directory: Path, extra: str = "", backends: str | None = None) -> AgentConfig:
    """A config serving the demo files on ``directory/agent.sock``."""
    demo_files(directory)
    backends = backends if backends is not None else DEMO_BACKEND
    body = f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        {textwrap.dedent(extra)}
    """
    return load_config(write_config(directory, textwrap.dedent(body) + textwrap.dedent(backends)))


class RunningAgent:
    """The real agent, running in its own thread and event loop, so sync clients can call it."""

    def __init__(self, agent: Agent, loop: asyncio.AbstractEventLoop) -> None:
        self.agent, self.loop = agent, loop

    @property
    def socket_path(self) -> str:
        return self.agent.socket_path

    def call(self, coro: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=120)

    def metric(self, name: str, **labels: str) -> float:
        value = self.agent.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.contextmanager
def running_agent(
    config: AgentConfig,
    clock: FakeClock | None = None,
    config_path: Path | None = None,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> Iterator[RunningAgent]:
    loop = new_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agent = Agent(
        config, clock=clock or FakeClock(), config_path=str(config_path) if config_path else None
    )
    running = RunningAgent(agent, loop)
    try:
        running.call(agent.startup())
        yield running
    finally:
        with contextlib.suppress(Exception):
            running.call(agent.shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def raw_request(socket_path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are and return everything the agent answers before closing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        # The agent may answer before reading (503 agent_busy at its connection cap) and close:
        # what it sent is still in this socket's buffer, so read it rather than fail on the send.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def read_over(socket_path: str, path: str, http: str = "1.1") -> bytes:
    """A GET on the lean path (HTTP/1.1), or one the lean path hands to aiohttp (HTTP/1.0)."""
    return raw_request(socket_path, f"GET {path} HTTP/{http}\r\nHost: x\r\n\r\n".encode())


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


AGENT_SCRIPT = str(Path(sys.executable).parent / "secrets-agent")


def wait_for_socket(path: Path, process: subprocess.Popen[str], seconds: float = 180) -> None:
    """Poll (a readiness wait, not a timing assertion) until the agent's socket exists."""
    deadline = time.monotonic() + seconds
    while not _listening(path):  # the file appears at bind(), a moment before listen()
        if process.poll() is not None:
            raise AssertionError(f"agent exited early with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"agent did not listen on {path} within {seconds} s")
        time.sleep(0.02)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


@contextlib.contextmanager
def agent_process(
    config_path: Path, env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[subprocess.Popen[str]]:
    """``secrets-agent run`` as a real process; killed at the end if a test left it running."""
    process = subprocess.Popen(
        [AGENT_SCRIPT, "run", "--config", str(config_path)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: a test's signals never reach pytest
    )
    try:
        if wait:
            socket_path = load_config(config_path).listener.socket_path
            wait_for_socket(Path(socket_path), process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def stop_process(process: subprocess.Popen[str]) -> str:
    """SIGTERM the agent, wait for it to exit, and return everything it logged."""
    if process.poll() is None:
        process.terminate()
    _, stderr = process.communicate(timeout=60)
    return stderr or ""


def need(tool: str, package: str) -> str:
    """A Debian tool the test drives: skipped where absent, but a failure in CI."""
    import os
    import shutil

    import pytest

    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing; the test command installs Debian's {package}")
        pytest.skip(f"{tool} is not installed (Debian package {package})")
    return path
