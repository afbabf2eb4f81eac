"""The read audit through the real agent: one line per lookup, denied peers too, no values."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from secrets_agent.backends import registry
from secrets_agent.errors import DeniedError
from secrets_agent_client.transport import UnixTransport
from support.helpers import (
    FakeClock,
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    raw_request,
    running_agent,
    status_of,
)
from support.users import as_other_user

pytestmark = pytest.mark.integration

BACKENDS = """
    [[backends]]
    name = "local"
    type = "file"
    connections_file = "connections.json"
    variables_file = "variables.json"
    [[backends]]
    name = "strict"
    type = "scripted"
    variables_lookup_pattern = "^locked_"
"""


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def audited(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_lookup_is_audited_with_its_result_and_never_its_value(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    ScriptedBackend.scripts = {"strict": Script(error=DeniedError("strict", "permission denied"))}
    log = short_tmp / "audit.log"
    extra = f'[audit]\noutput = "file"\nfile = "{log}"\n'
    with running_agent(
        agent_config(short_tmp, extra=extra, backends=BACKENDS), FakeClock()
    ) as agent:
        get(agent, "/v1/connections/pg")
        get(agent, "/v1/connections/pg")
        get(agent, "/v1/variables/absent?team=team_a")
        assert status_of(get(agent, "/v1/variables/locked_x")) == 403
        get(agent, "/v1/variables/..")  # not a valid id: not a lookup, not audited
        assert agent.metric("secrets_agent_audit_events_total", result="hit") == 1
    events = audited(log)
    me = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    assert [{k: e[k] for k in ("uid", "gid", "pid")} for e in events] == [me] * 4
    assert [(e["kind"], e["id"], e["team"], e["result"], e["backend"]) for e in events] == [
        ("connection", "pg", None, "miss", "local"),
        ("connection", "pg", None, "hit", "local"),
        ("variable", "absent", "team_a", "negative", None),
        ("variable", "locked_x", None, "denied", "strict"),
    ]
    assert "s3cret" not in log.read_text()


def test_a_peer_refused_at_the_socket_is_audited_as_denied(short_tmp: Path) -> None:
    log = short_tmp / "audit.log"
    extra = f"""
        allowed_uids = []
        allowed_gids = []
        admin_uids = []
        [audit]
        output = "file"
        file = "{log}"
    """
    with running_agent(agent_config(short_tmp, extra=extra), FakeClock()) as agent:
        assert status_of(get(agent, "/v1/variables/greeting")) == 403
        assert status_of(get(agent, "/healthz")) == 403  # not a read: not audited
    (event,) = audited(log)
    assert (event["uid"], event["kind"], event["id"], event["result"]) == (
        os.getuid(),
        "variable",
        "greeting",
        "denied",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_invalidations_are_audited_and_logged_with_who_asked(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalidation sends reads back to the upstream: an admin's is on record, and so is a
    refused one; the log line names the kind, never the id."""
    caplog.set_level(logging.INFO)
    log = short_tmp / "audit.log"
    extra = f"""
        socket_mode = "0666"
        allowed_uids = [0, 4000]
        admin_uids = [0]
        [audit]
        output = "file"
        file = "{log}"
    """
    with running_agent(agent_config(short_tmp, extra=extra), FakeClock()) as agent:

        def invalidate(body: bytes) -> str:
            transport = UnixTransport(agent.socket_path, 5)
            return str(transport.request("POST", "/v1/cache/invalidate", body).status)

        get(agent, "/v1/variables/greeting")
        assert invalidate(b'{"kind": "variable", "id": "greeting"}') == "200"
        assert invalidate(b'{"kind": "connection"}') == "200"
        assert invalidate(b"{}") == "200"
        assert as_other_user(4000, 4000, [], lambda: invalidate(b"{}")) == "403"
    events = [e for e in audited(log) if e["event"] == "invalidate"]
    assert [(e["uid"], e["kind"], e["id"], e["result"], e["count"]) for e in events] == [
        (0, "variable", "greeting", "invalidated", 1),
        (0, "connection", None, "invalidated", 0),
        (0, None, None, "invalidated", 0),
        (4000, None, None, "denied", None),
    ]
    assert all(e["pid"] and e["gid"] in (0, 4000) for e in events)
    lines = [r.getMessage() for r in caplog.records if "cache invalidated" in r.getMessage()]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "one variable, 1 entries",
        "every connection, 0 entries",
        "everything, 0 entries",
    ]
    assert not any("greeting" in line for line in lines)
