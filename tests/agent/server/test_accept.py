"""The agent's own accept loop, on asyncio's loop and on uvloop's: out of descriptors, a
connection waits in the backlog and is served once accept() works again (never dropped)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import uvloop

from secrets_agent.server.accept import Acceptor

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Echo(asyncio.Protocol):
    """Echoes; ``lost`` holds a future per connection, done once the server's side closed."""

    lost: ClassVar[list[asyncio.Future[None]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.done = asyncio.get_running_loop().create_future()
        Echo.lost.append(self.done)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


async def all_closed() -> None:
    """Wait until the server's side of every connection is closed (the client closed first)."""
    await asyncio.gather(*Echo.lost)
    Echo.lost.clear()


class Exhausted:
    """A listening socket whose next ``failures`` accept() calls fail as out of descriptors."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self._sock, self.failures, self.calls = sock, failures, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    made = LOOPS[request.param]()
    yield made
    made.close()


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


async def echo_once(path: Path, message: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(message)
    answer = await reader.readexactly(len(message))
    writer.close()
    return answer


def test_serves_many_connections_then_closes_the_socket(
    loop: asyncio.AbstractEventLoop, short_tmp: Path
) -> None:
    sock = listening(short_tmp / "a.sock")

    async def scenario() -> list[bytes]:
        acceptor = Acceptor(sock, Echo, asyncio.get_running_loop(), backlog=256)
        acceptor.start()
        try:
            answers = await asyncio.gather(
                *(echo_once(short_tmp / "a.sock", b"m%d" % i) for i in range(200))
            )
            await all_closed()
            return answers
        finally:
            acceptor.close()
            acceptor.close()  # twice is fine

    assert loop.run_until_complete(scenario()) == [b"m%d" % i for i in range(200)]
    assert sock.fileno() == -1  # closed, as asyncio.Server.close closes its sockets


def test_out_of_descriptors_the_connection_waits_and_is_served(
    loop: asyncio.AbstractEventLoop, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = Exhausted(listening(short_tmp / "a.sock"), failures=3)

    async def scenario() -> bytes:
        acceptor = Acceptor(sock, Echo, asyncio.get_running_loop(), backlog=16, retry=0.05)  # type: ignore[arg-type]
        acceptor.start()
        try:
            answer = await echo_once(short_tmp / "a.sock", b"still here")
            await all_closed()
            return answer
        finally:
            acceptor.close()

    with caplog.at_level(logging.ERROR, logger="secrets_agent.server.accept"):
        assert loop.run_until_complete(scenario()) == b"still here"
    assert sock.calls >= 4 and sock.failures == 0  # retried until accept() worked
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["accept() failed: Too many open files; the agent retries every second"]
