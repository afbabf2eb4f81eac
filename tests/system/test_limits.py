"""Connections under load and abuse: a burst of 1,000, slow clients, the cap, the fd limit."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support.helpers import (
    agent_process,
    body_of,
    demo_files,
    raw_request,
    status_of,
    stop_process,
    wait_for_socket,
    write_config,
)

pytestmark = pytest.mark.integration

GET = b"GET /v1/variables/greeting HTTP/1.1\r\nHost: x\r\n\r\n"


def config(directory: Path, listener: str = "") -> Path:
    demo_files(directory)
    return write_config(
        directory,
        f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        {listener}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
        """,
    )


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with agent_process(config(short_tmp)) as process:
        yield str(short_tmp / "agent.sock"), process


def read_all(socks: list[socket.socket], seconds: float = 60) -> list[bytes]:
    """Read each socket's whole answer (Content-Length), all at once with a selector."""
    selector = selectors.DefaultSelector()
    data = {s.fileno(): b"" for s in socks}
    for s in socks:
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    pending = len(socks)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            chunk = sock.recv(65536)
            data[sock.fileno()] += chunk
            head, _, body = data[sock.fileno()].partition(b"\r\n\r\n")
            length = next(
                (
                    int(h.split(b":")[1])
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length")
                ),
                None,
            )
            if not chunk or (length is not None and len(body) >= length):
                selector.unregister(sock)
                pending -= 1
    selector.close()
    return [data[s.fileno()] for s in socks]


def read_one(sock: socket.socket) -> bytes:
    """One whole response (by Content-Length) from a kept-alive connection."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            if len(body) >= length:
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_burst_of_1000_connections_while_the_agent_is_paused_all_get_answers(
    agent: tuple[str, subprocess.Popen[str]],
) -> None:
    path, process = agent
    socks: list[socket.socket] = []
    os.kill(process.pid, signal.SIGSTOP)  # nobody accepts: only the backlog holds them
    try:
        for _ in range(1000):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            sock.connect(path)  # BlockingIOError here would be a full backlog
            sock.send(GET)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    try:
        answers = read_all(socks)
    finally:
        for sock in socks:
            sock.close()
    statuses = [status_of(a) if a else 0 for a in answers]
    assert statuses.count(200) == 1000, {s: statuses.count(s) for s in set(statuses)}


def test_1000_concurrent_clients_for_one_uncached_key_have_no_errors(
    agent: tuple[str, subprocess.Popen[str]],
) -> None:
    path, _ = agent
    start = threading.Barrier(1000)
    results: list[str] = []

    def client() -> None:
        backend = AgentSecretsBackend(socket_path=path, timeout=30)
        start.wait()
        try:
            results.append(backend.get_variable("greeting") or "none")
        except Exception as exc:  # counted, not raised: the count is the assertion
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results.count("hello") == 1000, {r: results.count(r) for r in set(results)}


def test_slow_and_silent_clients_are_cut_while_others_are_served(short_tmp: Path) -> None:
    listener = "header_timeout = 1.0\nidle_timeout = 2.0"
    slow: list[socket.socket] = []
    with agent_process(config(short_tmp, listener)) as process, contextlib.ExitStack() as owned:
        path = str(short_tmp / "agent.sock")
        for i in range(200):
            sock = owned.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.connect(path)
            if i % 2:
                sock.send(b"G")  # one byte of a head that never completes
            slow.append(sock)
        trickler = owned.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        trickler.connect(path)
        trickler.settimeout(0.2)
        cut_at = None
        started = time.monotonic()
        for byte in GET[:-2]:  # never finishes: one byte per 0.2 s, ~10 s
            try:
                trickler.send(bytes([byte]))
                if trickler.recv(1) == b"":
                    cut_at = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                cut_at = time.monotonic() - started
                break
            # A legitimate client is served meanwhile.
            assert status_of(raw_request(path, GET)) == 200
        assert cut_at is not None, "a client trickling a head was never cut"
        for sock in slow:
            sock.settimeout(60)
            assert sock.recv(1) == b""  # closed by the agent, without an answer
            sock.close()
        trickler.close()
        log = stop_process(process)
    assert "Traceback" not in log
    assert log.count("no complete request head") <= 2  # one line per minute, not per client


def test_connections_past_the_cap_get_a_json_503_and_the_client_waits_its_turn(
    short_tmp: Path,
) -> None:
    listener = "max_connections = 20\nheader_timeout = 60"
    with agent_process(config(short_tmp, listener)) as process, contextlib.ExitStack() as owned:
        path = str(short_tmp / "agent.sock")
        held: list[socket.socket] = []
        while len(held) < 20:  # each answered, so each surely holds a slot (kept alive)
            sock = owned.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            sock.settimeout(30)
            sock.connect(path)
            sock.sendall(GET)
            if status_of(read_one(sock)) == 200:
                held.append(sock)
        refused = raw_request(path, GET)  # accepted after the 20: the backlog is FIFO
        assert status_of(refused) == 503
        assert body_of(refused)["error"] == "agent_busy"
        answer: list[str] = []
        waiter = threading.Thread(
            target=lambda: answer.append(
                AgentSecretsBackend(socket_path=path, timeout=30).get_variable("greeting") or ""
            )
        )
        waiter.start()
        held.pop().close()  # one slot frees: the waiting client gets in
        waiter.join(timeout=60)
        assert answer == ["hello"]
        for sock in held:
            sock.close()
        log = stop_process(process)
    assert log.count("connection limit (20) reached") == 1 and "Traceback" not in log


# uvloop's own server would reset connections it has no descriptor for; the agent's accept
# leaves them in the backlog on either loop, so the worker below is answered, not dropped.
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_at_a_low_fd_limit_idle_connections_cannot_starve_the_agent(
    short_tmp: Path, event_loop: str
) -> None:
    path = short_tmp / "agent.sock"
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from secrets_agent.cli import main\n"
        "sys.exit(main(['run', '--config', sys.argv[1]]))\n"
    )
    cfg = config(short_tmp, f'header_timeout = 1.0\nevent_loop = "{event_loop}"')
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    idle = []
    try:
        wait_for_socket(path, process)
        for _ in range(400):  # more than the agent has descriptors for
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            idle.append(sock)
        client = AgentSecretsBackend(socket_path=str(path), timeout=30)
        assert client.get_variable("greeting") == "hello"
        health = raw_request(str(path), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30)
        assert status_of(health) in (200, 503)
        assert json.loads(health.partition(b"\r\n\r\n")[2])
        log = stop_process(process)
    finally:
        for sock in idle:
            sock.close()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
    assert "Traceback" not in log
    assert log.count("accept() failed") <= 1
