"""The stdlib client against a scripted HTTP server on a Unix socket (the agent, faked)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from secrets_agent_client import AgentSecretsBackend, AgentUnavailableError


class StubAgent(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.answers: dict[str, tuple[int, dict[str, str]]] = {}
        self.paths: list[str] = []
        self.connections = 0
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real agent
    server: StubAgent

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status, body = self.server.answers.get(
            self.path, (404, {"error": "not_found", "detail": "no"})
        )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


@pytest.fixture
def stub(short_tmp: Path) -> Iterator[StubAgent]:
    server = StubAgent(str(short_tmp / "agent.sock"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def value(v: str) -> tuple[int, dict[str, str]]:
    return 200, {"value": v}


def test_found_missing_and_quoted_ids(stub: StubAgent) -> None:
    stub.answers["/v1/variables/a%2Fb%20c"] = value("x")
    stub.answers["/v1/connections/db"] = value("postgres://h")
    stub.answers["/v1/config/k"] = value("c")
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    assert client.get_variable("a/b c") == "x"
    assert client.get_conn_value("db") == "postgres://h"
    assert client.get_config("k") == "c"
    assert client.get_variable("absent") is None
    client.close()


def test_one_kept_alive_connection_is_reused(stub: StubAgent) -> None:
    stub.answers["/v1/variables/k"] = value("x")
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    for _ in range(5):
        assert client.get_variable("k") == "x"
    assert (stub.connections, len(stub.paths)) == (1, 5)
    client.close()


def test_bad_id_answer_falls_through(stub: StubAgent) -> None:
    stub.answers["/v1/variables/x"] = (400, {"error": "invalid_id", "detail": "bad"})
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    assert client.get_variable("x") is None


def test_an_id_or_team_no_text_encoding_carries_is_a_miss_as_a_400_is(stub: StubAgent) -> None:
    client = AgentSecretsBackend(socket_path=stub.server_address, on_unavailable="raise")  # type: ignore[arg-type]
    assert client.get_variable("a\ud800") is None  # a lone surrogate: not text UTF-8 can carry
    assert client.get_conn_value("pg", team_name="\udc80") is None
    assert asyncio.run(client.aget_variable("a\ud800")) is None
    assert stub.paths == []  # nothing to ask: no agent could hold it


def test_denied_raises_permission_error(stub: StubAgent) -> None:
    stub.answers["/v1/variables/x"] = (403, {"error": "upstream_denied", "detail": "policy"})
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match="upstream_denied: policy"):
        client.get_variable("x")


def test_upstream_failure_follows_the_policy(stub: StubAgent) -> None:
    stub.answers["/v1/variables/x"] = (503, {"error": "upstream_unavailable", "detail": "down"})
    path: str = stub.server_address  # type: ignore[assignment]
    assert AgentSecretsBackend(socket_path=path).get_variable("x") is None
    strict = AgentSecretsBackend(socket_path=path, on_unavailable="raise")
    with pytest.raises(AgentUnavailableError, match="503"):
        strict.get_variable("x")


BAD_TIMEOUTS = [-1, 0, "-1", float("nan"), "nan", float("inf"), "inf", 1e10, "soon", None]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_a_bad_timeout_is_refused_when_the_backend_is_built(short_tmp: Path, timeout: Any) -> None:
    # Not at the first lookup, where Airflow would meet it mid-task.
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"), timeout=timeout)


@pytest.mark.parametrize("path", ["/run/agent\0.sock", "\0abstract"])
def test_a_socket_path_with_a_nul_is_refused_when_the_backend_is_built(path: str) -> None:
    # Not at the first lookup, as "no agent socket" under the on_unavailable policy.
    with pytest.raises(ValueError, match="socket_path must be a file's path, without NUL"):
        AgentSecretsBackend(socket_path=path)


@pytest.mark.parametrize("spin_us", [-1, "nan", "soon", 1e9, None])
def test_a_bad_spin_us_is_refused_when_the_backend_is_built(short_tmp: Path, spin_us: Any) -> None:
    with pytest.raises(ValueError, match="spin_us must be a number of microseconds"):
        AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"), spin_us=spin_us)


@pytest.mark.parametrize("spin_us", ["0", "100", 5000])
def test_lookups_answer_alike_however_long_they_poll(stub: StubAgent, spin_us: str | int) -> None:
    """``spin_us`` as Airflow passes it (text from the environment's kwargs form) or a number;
    0 sleeps at once. Both the blocking and the awaited lookups read the same answers."""
    stub.answers["/v1/variables/k"] = value("x")
    path: str = stub.server_address  # type: ignore[assignment]
    client = AgentSecretsBackend(socket_path=path, spin_us=spin_us)
    assert [client.get_variable("k") for _ in range(3)] == ["x", "x", "x"]
    assert client.get_variable("absent") is None
    assert asyncio.run(client.aget_variable("k")) == "x"


def test_agent_down_falls_through_and_logs_once(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"), timeout="0.5")
    with caplog.at_level(logging.WARNING):
        assert client.get_variable("a") is None
        assert client.get_conn_value("b") is None
    assert caplog.text.count("secrets agent unavailable") == 1
    strict = AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"), on_unavailable="raise")
    with pytest.raises(AgentUnavailableError, match="no agent socket"):
        strict.get_variable("a")


def test_the_reasons_logged_once_stay_bounded(
    short_tmp: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that meets thousands of distinct failures (their reasons can name ids) keeps a
    bounded memory of what it logged, however long it lives."""
    monkeypatch.setattr(AgentSecretsBackend, "_warned", set())
    client = AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"))
    with caplog.at_level(logging.WARNING):
        for n in range(1000):
            client._unavailable("variables", f"agent answered 502: upstream failed for id_{n}")
        client._unavailable("variables", "agent answered 502: upstream failed for id_999")
    assert len(AgentSecretsBackend._warned) <= 256
    assert caplog.text.count("id_999") == 1  # still logged once while remembered


def test_a_forked_child_logs_the_reasons_its_parent_logged(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's task runs in a forked child with a log of its own: why its lookup fell
    through belongs there, even when the parent (the worker) said so once already."""
    monkeypatch.setattr(AgentSecretsBackend, "_warned", set())
    client = AgentSecretsBackend(socket_path=str(short_tmp / "gone.sock"), timeout="0.5")
    assert client.get_variable("a") is None  # the parent logs the reason once
    assert AgentSecretsBackend._warned
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            logged: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("secrets_agent_client").addHandler(handler)
            client.get_variable("a")
            os.write(write_end, str(len(logged)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"1"
    os.waitpid(pid, 0)


def test_a_config_option_never_falls_through_to_its_default(stub: StubAgent) -> None:
    """Airflow reads ``*_secret`` options through ``get_config`` and has no other source left
    but the option's default (for ``sql_alchemy_conn``: a new SQLite file): as with the
    providers' own errors, the lookup fails ("Cannot retrieve config from alternative secrets
    backend"), whatever ``on_unavailable`` says. A missing option is still None."""
    stub.answers["/v1/config/down"] = (503, {"error": "upstream_unavailable", "detail": "down"})
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    with pytest.raises(AgentUnavailableError, match=r"config option .* 503"):
        client.get_config("down")
    assert client.get_config("absent") is None
    with pytest.raises(AgentUnavailableError, match=r"config option .* 503"):
        asyncio.run(client.aget_config("down"))
    gone = AgentSecretsBackend(socket_path=stub.server_address + ".gone")  # type: ignore[operator]
    with pytest.raises(AgentUnavailableError, match="no agent socket"):
        gone.get_config("sql_alchemy_conn")
    assert gone.get_variable("v") is None  # variables and connections still fall through


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="on_unavailable"):
        AgentSecretsBackend(on_unavailable="ignore")
    with pytest.raises(TypeError, match="unknown options colour"):
        AgentSecretsBackend(colour="blue")


def test_socket_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRETS_AGENT_SOCKET", "/run/custom.sock")
    assert AgentSecretsBackend().socket_path == "/run/custom.sock"
    monkeypatch.delenv("SECRETS_AGENT_SOCKET")
    assert AgentSecretsBackend().socket_path == "/run/airflow-secrets-agent/agent.sock"


def test_forked_child_opens_its_own_connection(stub: StubAgent) -> None:
    stub.answers["/v1/variables/k"] = value("x")
    client = AgentSecretsBackend(socket_path=stub.server_address)  # type: ignore[arg-type]
    assert client.get_variable("k") == "x"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write_end, (client.get_variable("k") or "none").encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"x"
    os.waitpid(pid, 0)
    assert client.get_variable("k") == "x"  # the parent's connection is still good


def test_import_is_light() -> None:
    code = (
        "import sys; before = set(sys.modules); "
        "from secrets_agent_client import AgentSecretsBackend; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    loaded = set(result.stdout.split())
    ours = {m for m in loaded if m.startswith("secrets_agent_client")}
    assert ours == {
        "secrets_agent_client",
        "secrets_agent_client.backend",
        "secrets_agent_client.spin",
        "secrets_agent_client.transport",
        "secrets_agent_client.wire",
    }, result.stderr
    # Only C modules and the tiny errno/time beside ours: no typing, socket.py, threading.py,
    # http.client, json, logging, urllib or asyncio (nor Airflow, which is not installed here):
    # the async transport loads on the first awaited lookup.
    allowed = {"__future__", "_socket", "_thread", "errno", "time", "airflow"}
    assert loaded - ours <= allowed, loaded - ours
