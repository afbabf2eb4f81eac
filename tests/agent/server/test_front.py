"""Connections on the real agent: lean reads answered like aiohttp's, in order, within limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from secrets_agent.backends import registry
from secrets_agent.kinds import Kind
from secrets_agent.server.reads import Prepared, ReadQuery, Reads
from support.helpers import (
    DEMO_BACKEND,
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    running_agent,
)

pytestmark = pytest.mark.integration

BACKENDS = DEMO_BACKEND + '[[backends]]\nname = "slow"\ntype = "scripted"\n'


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    made = Script(values={(Kind.VARIABLE, "held"): "held-value"})
    ScriptedBackend.scripts = {"slow": made}
    return made


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
LOOP = ["asyncio"]  # the loop ``start`` runs the agent on: set for each test by ``each_loop``


@pytest.fixture(autouse=True, params=sorted(LOOPS))
def each_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here twice: on asyncio's loop and on uvloop's (the daemon's default)."""
    LOOP[0] = request.param
    yield
    LOOP[0] = "asyncio"


@pytest.fixture(autouse=True, params=["compiled", "reference"])
def each_read(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """And with either read path: the compiled one (``server/_hit.c``) and its reference."""
    if request.param == "reference":
        monkeypatch.setenv("SECRETS_AGENT_NO_EXTENSIONS", "1")


def start(directory: Path, listener: str = "") -> contextlib.AbstractContextManager[RunningAgent]:
    """The agent on ``directory``, with extra ``[listener]`` settings."""
    config = agent_config(directory, extra=listener, backends=BACKENDS)
    return running_agent(config, new_loop=LOOPS[LOOP[0]])


@pytest.fixture
def agent(short_tmp: Path, script: Script) -> Iterator[RunningAgent]:
    with start(short_tmp) as running:
        yield running


class Conn:
    """One raw connection: send bytes, read whole responses (by Content-Length) in order."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split(" ")[1]), headers, body

    def closed(self) -> bool:
        """Whether the agent closes the connection (waits for it: EOF is the signal)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the agent")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


HEALTHZ = get("/healthz")
READS = [
    get("/v1/variables/greeting"),
    get("/v1/variables/greeting"),  # now a hit
    get("/v1/connections/pg"),
    get("/v1/config/sql_alchemy_conn"),
    get("/v1/variables/absent"),
    get("/v1/variables/absent"),  # a negative hit
    get("/v1/variables/a%2Fb"),
    get("/v1/variables/caf%C3%A9"),
    get("/v1/variables/100%25"),
    get("/v1/variables/.."),
    get("/v1/variables/a%2F..%2Fb"),
    get("/v1/variables/%E2%80%8Bk"),
    get("/v1/variables/%01"),
    get("/v1/variables/" + "x" * 251),
    get("/v1/variables/greeting?team=team_a"),
    get("/v1/variables/greeting?team=team_b"),
    get("/v1/variables/greeting?team=no%20such"),
    get("/v1/variables/greeting?team="),
    get("/v1/variables/greeting?refresh=maybe"),
    get("/v1/variables/greeting?refresh=true"),
    get("/v1/variables/greeting?other=1"),
    get("/v1/variables/greeting", "Cache-Control: no-cache\r\n"),
    get("/v1/variables/greeting", "Content-Length: 0\r\n"),
    get("/v1/variables/greeting", "Connection: keep-alive\r\nUser-Agent: t\r\n"),
    get("/v1/variables/greeting", "Connection: close\r\n"),  # the last: it ends the connection
]


Seen = tuple[int, dict[str, str], object]


def answers(agent: RunningAgent, requests: list[bytes], *, via_aiohttp: bool) -> list[Seen]:
    conn = Conn(agent.socket_path)
    try:
        if via_aiohttp:  # a first request the lean path does not take hands the connection over
            conn.send(HEALTHZ)
            assert conn.response()[0] == 200
        seen = []
        for request in requests:
            conn.send(request)
            status, headers, body = conn.response()
            kept = {k: v for k, v in headers.items() if k not in ("date", "server")}
            seen.append((status, kept, json.loads(body)))
        return seen
    finally:
        conn.close()


def test_lean_reads_answer_exactly_as_aiohttp_does(short_tmp: Path, script: Script) -> None:
    # Two agents with fresh caches, so both see the same misses and hits in the same order;
    # this uid is bound to team_a, so another team is refused.
    binding = f'team_uids = {{ "{os.getuid()}" = ["team_a"] }}'
    seen: list[list[Seen]] = []
    counted: list[float] = []
    for name, via_aiohttp in (("lean", False), ("aiohttp", True)):
        (short_tmp / name).mkdir()
        with start(short_tmp / name, binding) as running:
            seen.append(answers(running, READS, via_aiohttp=via_aiohttp))
            counted.append(
                running.metric("secrets_agent_requests_total", kind="variable", status="200")
            )
    lean, aio = seen
    for request, ours, theirs in zip(READS, lean, aio, strict=True):
        assert ours == theirs, request
    assert {status for status, _, _ in lean} >= {200, 400, 403, 404}
    assert counted[0] == counted[1] > 0  # counted the same way by both layers


def test_pipelined_requests_are_answered_in_order_across_a_wait_and_a_hand_off(
    agent: RunningAgent, script: Script
) -> None:
    script.gate = asyncio.Event()  # the "held" variable waits on the upstream until released
    conn = Conn(agent.socket_path)
    conn.send(
        get("/v1/variables/greeting")
        + get("/v1/variables/held")
        + get("/v1/connections/pg")
        + HEALTHZ
        + get("/v1/variables/greeting")
    )
    agent.call(script.called.wait())
    agent.loop.call_soon_threadsafe(script.gate.set)
    bodies = [json.loads(conn.response()[2]) for _ in range(5)]
    assert [b.get("id", b.get("status")) for b in bodies] == [
        "greeting",
        "held",
        "pg",
        "ok",
        "greeting",
    ]
    assert bodies[1]["value"] == "held-value"
    conn.close()


def test_a_request_sent_a_byte_at_a_time_is_answered(agent: RunningAgent) -> None:
    conn = Conn(agent.socket_path)
    for byte in get("/v1/variables/greeting"):
        conn.send(bytes([byte]))
    status, headers, body = conn.response()
    assert status == 200 and json.loads(body)["value"] == "hello"
    assert headers["x-cache"] == "MISS" and headers["cache-control"] == "no-store"
    conn.close()


def test_connection_close_is_honoured(agent: RunningAgent) -> None:
    conn = Conn(agent.socket_path)
    conn.send(get("/v1/variables/greeting", "Connection: close\r\n") + get("/v1/variables/x"))
    status, headers, _ = conn.response()
    assert status == 200 and headers["connection"] == "close"
    assert conn.closed() and conn.buffer == b""  # the second request is not answered
    conn.close()


def test_many_pipelined_requests_from_a_client_that_reads_late(agent: RunningAgent) -> None:
    # Enough answers to fill the socket buffers: the agent stops reading, then catches up.
    conn = Conn(agent.socket_path)
    count = 3000
    conn.send(get("/v1/variables/greeting") * count)
    values = [json.loads(conn.response()[2])["value"] for _ in range(count)]
    assert values == ["hello"] * count
    conn.close()


def test_idle_and_slow_connections_are_closed(
    short_tmp: Path, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with start(short_tmp, "header_timeout = 0.3\nidle_timeout = 0.3") as agent:
        idle = Conn(agent.socket_path)
        idle.send(get("/v1/variables/greeting"))
        assert idle.response()[0] == 200
        slow = Conn(agent.socket_path)
        slow.send(b"GET /v1/variables/gree")  # a head that never completes
        silent = Conn(agent.socket_path)  # connects and says nothing
        assert idle.closed() and slow.closed() and silent.closed()
        for conn in (idle, slow, silent):
            conn.close()
        fresh = Conn(agent.socket_path)  # and the agent still serves
        fresh.send(get("/v1/variables/greeting"))
        assert fresh.response()[0] == 200
        fresh.close()
    slow_lines = [r for r in caplog.records if "no complete request head" in r.getMessage()]
    assert 1 <= len(slow_lines) <= 2  # rate-limited, and the idle close is not logged


def test_a_head_handed_to_aiohttp_midway_keeps_its_deadline(
    short_tmp: Path, script: Script
) -> None:
    """The time a head has runs from its start, whichever layer reads its end: a hand-off to
    aiohttp does not give a slow client a second ``header_timeout``."""
    with start(short_tmp, "header_timeout = 2.0") as agent:
        slow = Conn(agent.socket_path)
        slow.send(b"GET /")  # could still be a lean read: the lean path's deadline runs
        time.sleep(1.5)  # the slow client under test (its deadline is 0.5 s away)
        slow.send(b"status HTTP/1.1\r\n")  # not a read: aiohttp's from here, head unfinished
        sent = time.monotonic()
        assert slow.closed()
        # Due 0.5 s after that send; a restarted clock would have given it 2 s more.
        assert time.monotonic() - sent < 1.5
        slow.close()


def test_shutdown_answers_a_waiting_read_then_closes(short_tmp: Path, script: Script) -> None:
    script.gate = asyncio.Event()
    with start(short_tmp) as agent:
        waiting, idle = Conn(agent.socket_path), Conn(agent.socket_path)
        idle.send(get("/v1/variables/greeting"))
        assert idle.response()[0] == 200
        waiting.send(get("/v1/variables/held"))
        agent.call(script.called.wait())
        stopping = asyncio.run_coroutine_threadsafe(agent.agent.shutdown(), agent.loop)
        assert idle.closed()  # idle keep-alive connections go at once
        agent.loop.call_soon_threadsafe(script.gate.set)
        status, _, body = waiting.response()
        assert status == 200 and json.loads(body)["value"] == "held-value"
        assert waiting.closed()
        stopping.result(timeout=60)
        waiting.close()
        idle.close()


def test_metrics_count_lean_reads(agent: RunningAgent) -> None:
    conn = Conn(agent.socket_path)
    for _ in range(3):
        conn.send(get("/v1/variables/greeting"))
        conn.response()
    conn.close()
    assert agent.metric("secrets_agent_requests_total", kind="variable", status="200") == 3
    assert agent.metric("secrets_agent_request_duration_seconds_count", kind="variable") == 3
    assert agent.metric("secrets_agent_cache_results_total", kind="variable", result="hit") == 2
    assert agent.metric("secrets_agent_cache_results_total", kind="variable", result="miss") == 1


def test_a_mix_as_large_as_the_cache_is_parsed_once_per_distinct_request(
    short_tmp: Path, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[str] = []
    prepare = Reads.prepare

    def counted(reads: Reads, query: ReadQuery) -> Prepared:
        prepared.append(query.raw_id)
        return prepare(reads, query)

    monkeypatch.setattr(Reads, "prepare", counted)
    keys = 5_000  # more distinct requests than the smallest head memo keeps at hand (4,096)
    with start(short_tmp, "[cache]\nmax_entries = 6000\nnegative_ttl = 3600") as agent:
        conn = Conn(agent.socket_path)
        for _ in range(2):
            for i in range(keys):
                conn.send(get(f"/v1/variables/absent_{i}"))
                assert conn.response()[0] == 404
        conn.close()
    assert len(prepared) == keys  # the second round: every request recognised by its bytes


ACCESS = """
[[access]]
uid = 0
variables = ["greeting", "a/*"]
connections = ["pg"]
"""
GUARDED = [
    get("/v1/variables/greeting"),
    get("/v1/variables/absent"),  # refused: not in the rules, whether or not it exists
    get("/v1/connections/pg"),
    get("/v1/connections/http_api"),  # exists, refused
    get("/v1/config/sql_alchemy_conn"),  # no config rule: refused
    get("/v1/variables/a%2Fb"),
    get("/v1/variables/%01"),  # invalid: 400 for anyone, before the rules
    get("/v1/variables/greeting?refresh=true"),
    get("/v1/variables/absent", "Cache-Control: no-cache\r\n"),
    get("/v1/variables/greeting", "Connection: close\r\n"),
]


def test_refusals_by_access_rules_answer_exactly_as_aiohttp_does(
    short_tmp: Path, script: Script
) -> None:
    seen: list[list[Seen]] = []
    for name, via_aiohttp in (("lean", False), ("aiohttp", True)):
        (short_tmp / name).mkdir()
        config = agent_config(short_tmp / name, backends=BACKENDS + ACCESS)
        with running_agent(config, new_loop=LOOPS[LOOP[0]]) as running:
            seen.append(answers(running, GUARDED, via_aiohttp=via_aiohttp))
            refused = running.metric("secrets_agent_access_denied_total", kind="variable")
            assert refused == 2
    lean, aio = seen
    for request, ours, theirs in zip(GUARDED, lean, aio, strict=True):
        assert ours == theirs, request
    assert [status for status, _, _ in lean] == [200, 403, 200, 403, 403, 404, 400, 200, 403, 200]
