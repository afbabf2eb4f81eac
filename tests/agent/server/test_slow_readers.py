"""Clients that take the agent away from others: requests sent, answers never read; bare LF."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.helpers import agent_config, running_agent, status_of

pytestmark = pytest.mark.integration

DENIED = 4667
SLOTS = 3
LISTENER = f"""
socket_mode = "0666"
allowed_uids = [0]
max_connections = {SLOTS}
header_timeout = 0.5
idle_timeout = 0.5
write_timeout = 0.5
"""
LEAN = b"GET /v1/variables/greeting HTTP/1.1\r\nHost: x\r\n\r\n"
AIOHTTP = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # the lean path hands it to aiohttp


def stall(path: str, request: bytes) -> socket.socket:
    """A connection that sends enough requests to fill every buffer, and never reads."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(request * 3000)
    return sock


@contextlib.contextmanager
def stalled_as(uid: int, path: str, request: bytes) -> Iterator[None]:
    """``SLOTS`` stalled connections held by a child running as ``uid`` until the block ends."""
    ready_read, ready_write = os.pipe()
    hold_read, hold_write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(ready_read)
            os.close(hold_write)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            held = [stall(path, request) for _ in range(SLOTS)]
            os.write(ready_write, b"1")
            os.read(hold_read, 1)  # until the parent closes its end
            del held
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(hold_read)
    try:
        with os.fdopen(ready_read, "rb") as ready:
            assert ready.read(1) == b"1"  # all connected and sent: a signal, not a sleep
        yield
    finally:
        os.close(hold_write)
        os.waitpid(pid, 0)


def status(path: str) -> int:
    """One read on a new connection: its status (a refusal may come before the send ends)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(LEAN)  # refused at the cap: the agent answered and closed already
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        return status_of(answer)


def served_again(path: str) -> int:
    """Wait (a readiness poll, bounded) until a new client is answered rather than refused."""
    deadline = time.monotonic() + 60
    while True:
        code = status(path)
        if code != 503 or time.monotonic() > deadline:
            return code
        time.sleep(0.05)


@pytest.mark.parametrize("request_bytes", [LEAN, AIOHTTP], ids=["lean", "aiohttp"])
def test_clients_that_stop_reading_are_aborted_and_their_slots_come_back(
    short_tmp: Path, request_bytes: bytes
) -> None:
    with running_agent(agent_config(short_tmp, extra=LISTENER)) as agent:
        held = [stall(agent.socket_path, request_bytes) for _ in range(SLOTS)]
        try:
            # Every slot is taken until the stalled connections are aborted (not asserted as
            # 503 first: on a slow machine write_timeout may already have passed).
            assert served_again(agent.socket_path) == 200
            for sock in held:  # aborted: what the agent had written, then a reset or EOF
                sock.settimeout(30)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(1 << 20):
                        pass
        finally:
            for sock in held:
                sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
@pytest.mark.parametrize("request_bytes", [LEAN, AIOHTTP], ids=["lean", "aiohttp"])
def test_a_denied_peer_that_stops_reading_cannot_keep_the_slots(
    short_tmp: Path, request_bytes: bytes
) -> None:
    with running_agent(agent_config(short_tmp, extra=LISTENER)) as agent:
        with stalled_as(DENIED, agent.socket_path, request_bytes):
            assert served_again(agent.socket_path) == 200
        assert agent.metric("secrets_agent_denied_peers_total") > 0


@pytest.mark.parametrize("via_aiohttp", [False, True], ids=["lean", "aiohttp"])
def test_a_head_ending_in_bare_lf_gets_400_at_once(short_tmp: Path, via_aiohttp: bool) -> None:
    # header_timeout far beyond the client's 5 s: an answer means it came at once.
    config = agent_config(short_tmp, extra="header_timeout = 120")
    with running_agent(config) as agent, socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(agent.socket_path)
        if via_aiohttp:  # the connection is aiohttp's from its first request on
            sock.sendall(AIOHTTP)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /v1/variables/greeting HTTP/1.1\nHost: x\n\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert status_of(answer) == 400 and b"bad_request" in answer
