"""Socket spoofing: the agent refuses a directory others can write; the client checks who serves."""

from __future__ import annotations

import os
import socket
import subprocess
import warnings
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support.helpers import AGENT_SCRIPT, agent_config, running_agent, write_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve a socket as another uid"),
]

ATTACKER = 4666
BODY = b'{"kind": "variable", "id": "k", "value": "attacker"}'
FAKE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def run_agent_in(directory: Path) -> subprocess.CompletedProcess[str]:
    config = write_config(
        directory.parent,
        f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        [[backends]]
        name = "env"
        type = "env"
        """,
    )
    return subprocess.run(
        [AGENT_SCRIPT, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o2775])
def test_refuses_a_socket_directory_others_can_write(short_tmp: Path, mode: int) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    shared.chmod(mode)  # group- or world-writable, not sticky: others could swap the socket
    result = run_agent_in(shared)
    assert result.returncode == 78
    assert f"{shared} can be written by other users (mode {mode:04o})" in result.stderr
    assert not (shared / "agent.sock").exists()


def test_refuses_a_parent_directory_owned_by_another_user(short_tmp: Path) -> None:
    parent = short_tmp / "theirs"
    (parent / "run").mkdir(parents=True)
    os.chown(parent, ATTACKER, ATTACKER)
    result = run_agent_in(parent / "run")
    assert result.returncode == 78 and f"owner uid {ATTACKER}" in result.stderr


def test_a_sticky_root_owned_directory_is_fine(short_tmp: Path) -> None:
    sticky = short_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    config = agent_config(sticky)
    with running_agent(config) as agent:
        assert AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting")


def serve_once_as(uid: int, path: str) -> int:
    """Fork a child that listens on ``path`` as ``uid`` and answers one request with FAKE."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # noqa: S103 - the impostor wants every client
    listening, ready = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgid(uid)
            os.setuid(uid)
            sock.listen(8)  # SO_PEERCRED reports who called listen()
            os.write(ready, b"1")
            sock.settimeout(30)
            conn, _ = sock.accept()
            conn.settimeout(10)
            try:
                conn.recv(65536)
                conn.sendall(FAKE)
            except OSError:
                pass
            conn.close()
        finally:
            os._exit(0)
    sock.close()
    os.close(ready)
    with os.fdopen(listening, "rb") as pipe:
        assert pipe.read(1) == b"1"  # the impostor listens: a readiness signal, not a sleep
    return pid


def test_the_client_refuses_a_socket_served_by_another_uid(short_tmp: Path) -> None:
    path = str(short_tmp / "spoofed.sock")
    pid = serve_once_as(ATTACKER, path)
    try:
        with pytest.raises(
            PermissionError, match=f"served by uid {ATTACKER}, not the agent's uid 0"
        ):
            AgentSecretsBackend(socket_path=path, expected_agent_uid="0").get_variable("k")
    finally:
        os.waitpid(pid, 0)
    os.unlink(path)
    pid = serve_once_as(ATTACKER, path)  # without the option, the impostor is believed
    try:
        assert AgentSecretsBackend(socket_path=path).get_variable("k") == "attacker"
    finally:
        os.waitpid(pid, 0)


def test_the_client_accepts_the_real_agent_by_uid(short_tmp: Path) -> None:
    with running_agent(agent_config(short_tmp)) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path, expected_agent_uid=os.geteuid())
        assert client.get_variable("greeting") == "hello"
