"""The ``secrets-agent`` command's own behaviour against a scripted agent on a Unix socket:
argument checks, what each answer of the agent becomes (message and exit status), help,
version, and a reader that goes away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent import __version__
from secrets_agent.cli import main
from support.helpers import AGENT_SCRIPT
from support.unix_server import ThreadedUnixServer

Answer = tuple[int, dict[str, object]]


class ScriptedAgent:
    """Answers each request path with a scripted status and JSON body (404 when unscripted)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: dict[str, Answer] = {}
        self.server = ThreadedUnixServer(path, self._handle)

    def _handle(self, conn: socket.socket, index: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        target = data.split(b" ", 2)[1].decode()
        status, body = self.answers.get(target, (404, {"error": "not_found", "detail": "no"}))
        payload = json.dumps(body).encode()
        conn.sendall(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + payload
        )


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[ScriptedAgent]:
    scripted = ScriptedAgent(str(short_tmp / "agent.sock"))
    yield scripted
    scripted.server.close()


@pytest.mark.parametrize("command", [["get", "variable", "k"], ["probe", "alive"], ["status"]])
@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf", "soon"])
def test_a_bad_timeout_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: list[str], timeout: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--timeout", timeout, "--socket", "/nonexistent.sock"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --timeout: timeout must be a number of seconds > 0" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, "invalid_id", 65),
        (403, "peer_denied", 77),
        (502, "upstream_error", 75),
        (503, "upstream_unavailable", 75),
        (302, "moved", 76),
    ],
)
def test_get_reports_the_agents_own_error(
    agent: ScriptedAgent,
    capsys: pytest.CaptureFixture[str],
    status: int,
    error: str,
    code: int,
) -> None:
    agent.answers["/v1/variables/a%2F..%2Fb"] = (status, {"error": error, "detail": "why"})
    assert main(["get", "variable", "a/../b", "--socket", agent.path]) == code
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"secrets-agent: the agent answered {status}: {error}: why\n"


def test_get_prints_a_value_and_says_not_found(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.answers["/v1/connections/pg?refresh=true"] = (200, {"value": "postgresql://h/db"})
    assert main(["get", "connection", "pg", "--refresh", "--socket", agent.path]) == 0
    assert capsys.readouterr().out == "postgresql://h/db\n"
    assert main(["get", "config", "absent", "--socket", agent.path]) == 1
    assert capsys.readouterr().err == 'secrets-agent: config "absent" not found\n'
    agent.answers["/v1/config/odd"] = (200, {"no": "value"})
    assert main(["get", "config", "odd", "--socket", agent.path]) == 76


def test_get_refuses_an_id_utf8_cannot_carry(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", "variable", "a\udcff", "--socket", agent.path]) == 65
    assert "id is not valid UTF-8 text" in capsys.readouterr().err
    assert agent.server.connections == 0


def test_get_without_an_agent_is_unavailable(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", "variable", "k", "--socket", str(short_tmp / "none.sock")]) == 69
    assert "no agent socket at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["get", "variable", "k"],
        ["probe", "ready", "--timeout", "2"],
        ["status"],
        ["migrate", "-o", "x"],
    ],
)
def test_without_the_client_installed_it_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    short_tmp: Path,
    command: list[str],
) -> None:
    """An install with --no-deps lacks the client too: the same advice and status, no traceback."""
    for name in [n for n in sys.modules if n.split(".")[0] == "secrets_agent_client"]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "secrets_agent_client", None)
    monkeypatch.setitem(sys.modules, "yaml", None)  # migrate's, reported as the others are
    monkeypatch.setenv("SECRETS_AGENT_SOCKET", str(short_tmp / "none.sock"))
    assert main(command) == 69
    err = capsys.readouterr().err
    assert "Install them with:  pip install airflow-secrets-agent\n" in err
    assert ("missing: secrets_agent_client" in err) != (command[0] == "migrate")
    assert "Traceback" not in err


@pytest.mark.parametrize(("status", "code"), [(403, 1), (500, 75)])  # refused: 1, as documented
def test_status_errors_use_the_same_exit_statuses(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str], status: int, code: int
) -> None:
    agent.answers["/v1/status"] = (status, {"error": "e", "detail": "why"})
    assert main(["status", "--socket", agent.path]) == code
    assert f"status refused ({status}): why" in capsys.readouterr().err


def test_status_says_when_the_answer_is_not_the_agents(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something else on the socket: exit 76 with one line, as get does, not a traceback."""
    agent.answers["/v1/status"] = (200, {"ready": True})  # JSON, but not a status to show
    assert main(["status", "--socket", agent.path]) == 76
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"secrets-agent: the answer from {agent.path} is not an agent's /v1/status\n"
    assert main(["status", "--json", "--socket", agent.path]) == 0  # the agent's JSON, as is
    assert json.loads(capsys.readouterr().out) == {"ready": True}


def test_probe_ready_says_when_the_answer_is_not_the_agents(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something else on the socket (or another version): exit 76 with one line, as get does."""
    agent.answers["/readyz"] = (200, {"ready": True})
    assert main(["probe", "ready", "--socket", agent.path]) == 76
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"secrets-agent: the answer from {agent.path} is not an agent's /readyz\n"
    agent.answers["/readyz"] = (200, {"ready": True, "backends": {"env": {"ready": True}}})
    assert main(["probe", "ready", "--socket", agent.path]) == 0
    assert capsys.readouterr().out == '{"env": {"ready": true}}\n'


@pytest.mark.parametrize("what", ["alive", "ready"])
def test_a_probe_the_agent_refuses_says_so_not_that_the_agent_is_down(
    agent: ScriptedAgent, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    """A caller the agent does not admit learns that, with get's exit status (77)."""
    denied: Answer = (403, {"error": "peer_denied", "detail": "uid 65534 may not use this agent"})
    agent.answers["/healthz"] = agent.answers["/readyz"] = denied
    assert main(["probe", what, "--socket", agent.path]) == 77
    assert capsys.readouterr().err == (
        "secrets-agent: the agent answered 403: peer_denied: uid 65534 may not use this agent\n"
    )


def test_help_is_for_users_and_version_is_the_agents(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert "caches them encrypted" in shown and "--version" in shown
    assert "standard library" not in shown
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"airflow-secrets-agent {__version__}\n"


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """The command with stdout a pipe nobody reads any more (``| head`` after its lines)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [AGENT_SCRIPT, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)


def test_a_closed_stdout_ends_the_command_quietly(agent: ScriptedAgent) -> None:
    agent.answers["/v1/status"] = (200, {"ready": True, "backends": ["x"] * 5000})
    result = run_into_closed_pipe("status", "--json", "--socket", agent.path)
    assert (result.returncode, result.stderr) == (141, "")
    generated = run_into_closed_pipe("gen-key")
    assert (generated.returncode, generated.stderr) == (141, "")
    assert run_into_closed_pipe("--help").stderr == ""  # argparse drops what it cannot write
