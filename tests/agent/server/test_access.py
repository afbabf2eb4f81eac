"""Access rules on the real agent: peers under other uids read what their rules allow, are
refused the rest before the cache and the upstream, and a reload applies to open connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.backends import registry
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent_client import AgentSecretsBackend
from secrets_agent_client.transport import UnixTransport
from support.helpers import (
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    running_agent,
    write_config,
)
from support.users import as_other_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid"),
]

ALICE, BOB, TEAM_B_GID = 4011, 4012, 4110
V = Kind.VARIABLE
VALUES = {
    (V, "team_a_token"): "s3cret-a",
    (V, "team_a_cold"): "s3cret-a-cold",
    (V, "team_b_token"): "s3cret-b",
}
BACKEND = '[[backends]]\nname = "up"\ntype = "scripted"\n'


def rules(root_variables: str = '"*"') -> str:
    return f"""
[[access]]
uid = {ALICE}
variables = ["team_a_*"]
[[access]]
gid = {TEAM_B_GID}
variables = ["team_b_*"]
[[access]]
uid = 0
variables = [{root_variables}]
"""


LISTENER = f'socket_mode = "0666"\nallowed_uids = [0, {ALICE}, {BOB}]\nadmin_uids = [0, {BOB}]\n'


def sections(audit: Path, root_variables: str = '"*"') -> str:
    """Everything after ``[listener]``: the audit, the backend, the rules."""
    return f'[audit]\noutput = "file"\nfile = "{audit}"\n' + BACKEND + rules(root_variables)


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Script:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    made = Script(values=dict(VALUES))
    ScriptedBackend.scripts = {"up": made}
    return made


@pytest.fixture
def agent(short_tmp: Path, script: Script) -> Iterator[RunningAgent]:
    config = agent_config(short_tmp, extra=LISTENER, backends=sections(short_tmp / "audit.log"))
    with running_agent(config) as running:
        yield running


def read_as(agent: RunningAgent, uid: int, secret_id: str, groups: list[int] | None = None) -> str:
    def call() -> str:
        try:
            return "VALUE " + str(
                AgentSecretsBackend(socket_path=agent.socket_path).get_variable(secret_id)
            )
        except Exception as exc:  # what the task would see
            return f"{type(exc).__name__} {exc}"

    return as_other_user(uid, uid, groups or [], call)


def test_each_peer_reads_what_its_rules_allow_and_is_refused_the_rest(
    agent: RunningAgent, script: Script, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert read_as(agent, ALICE, "team_a_token") == "VALUE s3cret-a"
    assert read_as(agent, BOB, "team_b_token", groups=[TEAM_B_GID]) == "VALUE s3cret-b"
    for _ in range(3):
        refused = read_as(agent, ALICE, "team_b_token")
        assert refused.startswith("PermissionError secrets agent denied"), refused
        assert "access rules do not let this peer read this variable" in refused
    assert read_as(agent, BOB, "team_b_token").startswith("PermissionError")  # not in the group
    assert script.calls == [(V, "team_a_token"), (V, "team_b_token")]  # never a refused one
    assert agent.metric("secrets_agent_access_denied_total", kind="variable") == 4
    refusals = [r for r in caplog.records if "access rules refused" in r.getMessage()]
    assert len(refusals) == 2  # once per peer per interval: alice once, bob once
    denied = [e for e in audited(short_tmp / "audit.log") if e["result"] == "denied"]
    assert {(e["uid"], e["gid"], e["id"]) for e in denied} == {
        (ALICE, ALICE, "team_b_token"),
        (BOB, BOB, "team_b_token"),
    }
    assert all(isinstance(e["pid"], int) and e["pid"] > 0 for e in denied)


def audited(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def raw_answers(path: str, requests: list[bytes]) -> list[bytes]:
    """Each request on one kept-alive connection, its answer without the Date header."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        return [re.sub(rb"Date: [^\r]*\r\n", b"", exchange(sock, r)) for r in requests]


def get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


HEALTHZ = get("/healthz")


@pytest.mark.parametrize("via_aiohttp", [False, True], ids=["lean", "aiohttp"])
def test_a_refusal_says_nothing_about_the_id_and_touches_neither_cache_nor_upstream(
    agent: RunningAgent, script: Script, via_aiohttp: bool
) -> None:
    assert raw_answers(agent.socket_path, [get("/v1/variables/team_a_token")])[0].startswith(
        b"HTTP/1.1 200"
    )  # root's read: now cached
    calls, hits = (
        list(script.calls),
        agent.metric("secrets_agent_cache_results_total", kind="variable", result="hit"),
    )
    first = [HEALTHZ] if via_aiohttp else []
    requests = [
        get("/v1/variables/team_a_token"),  # exists, cached
        get("/v1/variables/team_a_cold"),  # exists, not cached
        get("/v1/variables/team_a_missing"),  # does not exist
        get("/v1/variables/team_a_token?refresh=true"),  # refresh-now obeys the rules too
        get("/v1/variables/team_a_cold", "Cache-Control: no-cache\r\n"),
    ]

    def call() -> str:
        return json.dumps([a.decode() for a in raw_answers(agent.socket_path, first + requests)])

    answers = [a.encode() for a in json.loads(as_other_user(BOB, BOB, [], call))][len(first) :]
    assert answers[0].startswith(b"HTTP/1.1 403 Forbidden")
    assert b'"error": "access_denied"' in answers[0]
    assert len(set(answers)) == 1  # byte for byte the same, whatever the id
    assert script.calls == calls  # no upstream call
    assert agent.metric("secrets_agent_cache_results_total", kind="variable", result="hit") == hits
    assert agent.agent.service.cache.get(V, "team_a_cold") is None  # nothing fetched or cached


def test_invalidation_is_limited_to_what_the_admin_may_read(agent: RunningAgent) -> None:
    def invalidate(body: dict[str, str]) -> str:
        def call() -> str:
            response = UnixTransport(agent.socket_path, 5).request(
                "POST", "/v1/cache/invalidate", json.dumps(body).encode()
            )
            return f"{response.status} {json.loads(response.body).get('error', '')}"

        return as_other_user(BOB, BOB, [TEAM_B_GID], call)

    assert invalidate({}) == "403 access_denied"
    assert invalidate({"kind": "variable"}) == "403 access_denied"
    assert invalidate({"kind": "variable", "id": "team_a_token"}) == "403 access_denied"
    assert invalidate({"kind": "variable", "id": "team_b_token"}) == "200 "


@contextlib.contextmanager
def open_connection_to_reloadable_agent(
    short_tmp: Path, via_aiohttp: bool
) -> Iterator[tuple[RunningAgent, socket.socket, Path]]:
    """An agent whose config file root's rules allow team_a_*, and one connection to it (first
    handed to aiohttp when ``via_aiohttp``)."""
    from secrets_agent.config.loader import load_config

    head = f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n{LISTENER}'
    config_path = write_config(short_tmp, head + sections(short_tmp / "audit.log", '"team_a_*"'))
    with (
        running_agent(load_config(config_path), config_path=config_path) as agent,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn,
    ):
        conn.settimeout(10)
        conn.connect(agent.socket_path)
        if via_aiohttp:
            assert exchange(conn, HEALTHZ).startswith(b"HTTP/1.1 200")
        yield agent, conn, config_path


def swap_rules(agent: RunningAgent, config_path: Path, old: str, new: str) -> bool:
    config_path.write_text(config_path.read_text().replace(old, new))
    return agent.call(agent.agent.reload())


@pytest.mark.parametrize("via_aiohttp", [False, True], ids=["lean", "aiohttp"])
def test_a_reload_swaps_the_rules_for_connections_already_open(
    short_tmp: Path, script: Script, via_aiohttp: bool
) -> None:
    with open_connection_to_reloadable_agent(short_tmp, via_aiohttp) as (agent, conn, path):
        assert exchange(conn, get("/v1/variables/team_a_token")).startswith(b"HTTP/1.1 200")
        assert exchange(conn, get("/v1/variables/team_b_token")).startswith(b"HTTP/1.1 403")
        assert swap_rules(agent, path, '"team_a_*"', '"team_b_*"')
        assert exchange(conn, get("/v1/variables/team_a_token")).startswith(b"HTTP/1.1 403")
        assert exchange(conn, get("/v1/variables/team_b_token")).startswith(b"HTTP/1.1 200")
        # A rule check-config would refuse: the reload fails, the running rules stay.
        assert not swap_rules(agent, path, '"team_b_*"', '"team_[a"')
        assert exchange(conn, get("/v1/variables/team_a_token")).startswith(b"HTTP/1.1 403")
        assert exchange(conn, get("/v1/variables/team_b_token")).startswith(b"HTTP/1.1 200")


def exchange(conn: socket.socket, request: bytes) -> bytes:
    """One request on a kept-alive connection, its whole answer."""
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += conn.recv(65536)
    return data


def test_status_shows_the_rules_and_what_they_kept_out(agent: RunningAgent) -> None:
    from secrets_agent.report import render

    for _ in range(2):
        assert read_as(agent, ALICE, "team_b_token").startswith("PermissionError")
    assert read_as(agent, 4999, "team_a_token").startswith("PermissionError")  # not admitted
    (answer,) = raw_answers(agent.socket_path, [get("/v1/status")])
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["access"] == {"rules": 3, "reads_refused": 2, "peers_refused": 1}
    assert "access: 3 rules; 2 reads refused by them, 1 requests from peers not allowed" in (
        render(body)
    )
    body["access"]["rules"] = 0
    assert "access: no rules (every admitted peer reads every id);" in render(body)


@pytest.mark.parametrize(
    "failure",
    [None, TransientError("up", "timed out"), DeniedError("up", "permission denied")],
    ids=["value", "upstream-down", "upstream-refused"],
)
@pytest.mark.parametrize("via_aiohttp", [False, True], ids=["lean", "aiohttp"])
def test_a_read_in_flight_at_a_reload_is_answered_under_the_new_rules(
    short_tmp: Path, script: Script, via_aiohttp: bool, failure: BackendError | None
) -> None:
    """The upstream call began under rules that allowed it; a reload that revokes the id before
    it returns must not hand the value over, nor what the upstream made of the read (its
    failure is an answer too): the peer gets the refusal, and the audit says denied."""
    gate = script.gate = asyncio.Event()
    with open_connection_to_reloadable_agent(short_tmp, via_aiohttp) as (agent, conn, path):
        conn.sendall(get("/v1/variables/team_a_cold"))  # root's read, held upstream
        deadline = time.monotonic() + 10
        while not script.calls and time.monotonic() < deadline:
            time.sleep(0.01)  # the agent's thread records the call: poll for it
        assert script.calls == [(V, "team_a_cold")]
        assert swap_rules(agent, path, '"team_a_*"', '"team_b_*"')
        script.error = failure

        async def release() -> None:
            gate.set()

        agent.call(release())
        answer = exchange(conn, b"")
        assert answer.startswith(b"HTTP/1.1 403"), answer
        assert b'"error": "access_denied"' in answer
        assert b"s3cret" not in answer
    lines = [e for e in audited(short_tmp / "audit.log") if e["id"] == "team_a_cold"]
    assert [e["result"] for e in lines] == ["denied"]


def connected_as(uid: int, path: str) -> socket.socket:
    """A connection made by a child running as ``uid`` (the kernel keeps that peer for it),
    handed back to this process to talk on."""
    parent, child = socket.socketpair()
    with parent, child:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(path)
                    socket.send_fds(child, [b"c"], [conn.fileno()])
            finally:
                os._exit(0)
        _, fds, _, _ = socket.recv_fds(parent, 1, 1)
        os.waitpid(pid, 0)
    conn = socket.socket(fileno=fds[0])
    conn.settimeout(10)
    return conn


def test_a_reload_refuses_reads_the_compiled_path_remembered_on_an_open_connection(
    short_tmp: Path, script: Script
) -> None:
    """No audit, so alice's repeated reads are answered by the compiled path from the decision
    it remembered; a reload that takes them away (rules, then the socket's allow-list) refuses
    her next request on the same connection."""
    from secrets_agent.config.loader import load_config

    head = f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n{LISTENER}'
    path = write_config(short_tmp, head + BACKEND + rules())
    with running_agent(load_config(path), config_path=path) as agent:
        assert agent.agent.metrics.read_path == "compiled"
        with connected_as(ALICE, agent.socket_path) as conn:
            for _ in range(3):
                assert exchange(conn, get("/v1/variables/team_a_token")).startswith(b"HTTP/1.1 200")
            assert swap_rules(agent, path, '["team_a_*"]', '["team_b_*"]')
            refused = exchange(conn, get("/v1/variables/team_a_token"))
            assert refused.startswith(b"HTTP/1.1 403") and b"access_denied" in refused
            for _ in range(3):
                assert exchange(conn, get("/v1/variables/team_b_token")).startswith(b"HTTP/1.1 200")
            assert swap_rules(agent, path, f"allowed_uids = [0, {ALICE}, ", "allowed_uids = [0, ")
            refused = exchange(conn, get("/v1/variables/team_b_token"))
            assert refused.startswith(b"HTTP/1.1 403") and b"peer_denied" in refused
