"""Hostile and broken input: always a JSON 4xx, never an upstream call, one log line at most."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.backends import registry
from secrets_agent.kinds import Kind
from support.helpers import (
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    body_of,
    raw_request,
    running_agent,
    status_of,
)

pytestmark = pytest.mark.integration

SECRET = "s3cret-scripted"


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    made = Script(values={(Kind.VARIABLE, "k"): SECRET})
    ScriptedBackend.scripts = {"up": made}
    return made


@pytest.fixture
def agent(short_tmp: Path, script: Script) -> Iterator[RunningAgent]:
    config = agent_config(short_tmp, backends='[[backends]]\nname = "up"\ntype = "scripted"\n')
    with running_agent(config) as running:
        yield running


def post_invalidate(
    agent: RunningAgent, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = (
        f"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return raw_request(agent.socket_path, head.encode() + body)


@pytest.mark.parametrize(
    "char", ["\u200b", "\u202e", "\ufeff", "\u2066", "\u00ad", "\ue000", "\U000e0001", "\u0378"]
)
def test_invisible_characters_in_ids_are_400_before_any_upstream_call(
    agent: RunningAgent, script: Script, char: str
) -> None:
    encoded = "".join(f"%{b:02X}" for b in f"k{char}".encode())
    answer = raw_request(
        agent.socket_path, f"GET /v1/variables/{encoded} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status_of(answer) == 400 and body_of(answer)["error"] == "invalid_id"
    assert script.calls == []


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "application/json"),
        (b'{"kind": "\xff\xfe"}', "application/json"),
        (b"{}", "application/json; charset=no-such-codec"),
        (b'{"kind": "variable", "id": "k\\u200b"}', "application/json"),
        (b'{"kind": ["variable"]}', "application/json"),
        (b'{"kind": {"a": 1}}', "application/json"),
    ],
    ids=["deeply-nested", "not-utf8", "unknown-charset", "invisible-id", "kind-list", "kind-map"],
)
def test_bad_invalidate_bodies_are_400(
    agent: RunningAgent, body: bytes, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = post_invalidate(agent, body, content_type)
    assert status_of(answer) == 400, answer[:200]
    assert body_of(answer)["error"] in {"invalid_body", "invalid_id"}
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


MALFORMED = [
    b"GET /v1/variables/k HTTP/1.1\r\n\r\n",  # no Host
    b"GARBAGE\r\n\r\n",
    b"GET /v1/variables/k HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n",
    b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /v1/variables/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
]


def test_malformed_requests_get_json_400_and_one_log_line_without_traceback(
    agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        for request in MALFORMED:
            answer = raw_request(agent.socket_path, request)
            assert 400 <= status_of(answer) < 500, (request, answer[:200])
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "bad_request"
    refused = [r for r in caplog.records if "malformed request refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2  # rate-limited: many bad requests, one line per interval
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a peer's mistake"
    assert "Traceback" not in caplog.text and SECRET not in caplog.text
    ok = raw_request(agent.socket_path, b"GET /v1/variables/k HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_of(ok)["value"] == SECRET  # and the agent still serves


def test_a_body_announced_and_never_sent_is_cut_at_the_header_timeout(
    short_tmp: Path, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    config = agent_config(
        short_tmp,
        extra="header_timeout = 0.5",
        backends='[[backends]]\nname = "up"\ntype = "scripted"\n',
    )
    with running_agent(config) as agent:
        started = time.monotonic()
        head = b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        answer = raw_request(agent.socket_path, head, timeout=30)  # read until it closes
        assert status_of(answer) == 408 and body_of(answer)["error"] == "body_timeout"
        assert time.monotonic() - started < 20  # cut, not held until the client gives up
        huge = b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999"
        answer = raw_request(agent.socket_path, huge + b"\r\n\r\n{", timeout=30)
        assert status_of(answer) == 413 and body_of(answer)["error"] == "body_too_large"
        assert time.monotonic() - started < 20  # refused before any of it came
    assert not errors_of_ours(caplog)


def test_a_compressed_body_is_not_inflated_for_anyone(
    agent: RunningAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    head = (
        b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello"
    )
    for _ in range(5):
        answer = raw_request(agent.socket_path, head)
        assert status_of(answer) == 400 and body_of(answer)["error"] == "invalid_body"
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 5"
    assert status_of(raw_request(agent.socket_path, healthz + b"\r\n\r\nhello")) == 200
    assert not errors_of_ours(caplog)


def errors_of_ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR lines and tracebacks from the agent and its HTTP server (asyncio's own notes about
    tasks another test left for the collector are not this test's)."""
    return [
        r
        for r in caplog.records
        if r.name.startswith(("secrets_agent", "aiohttp"))
        and (r.levelno >= logging.ERROR or r.exc_info)
    ]
