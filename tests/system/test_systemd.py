"""systemd: unit files checked by systemd-analyze, sd_notify, socket activation, core dumps."""

from __future__ import annotations

import configparser
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support import ROOT
from support.helpers import (
    AGENT_SCRIPT,
    agent_process,
    body_of,
    demo_files,
    need,
    raw_request,
    wait_for_socket,
    write_config,
)
from support.users import as_other_user

UNITS = ROOT / "systemd"


pytestmark = pytest.mark.integration


def config_file(directory: Path, extra: str = "") -> Path:
    demo_files(directory)
    return write_config(
        directory,
        f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        {extra}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
    """,
    )


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The shipped units, with ExecStart pointing at this test install (verify checks it)."""
    for unit in UNITS.iterdir():
        text = unit.read_text().replace(
            "/opt/airflow-secrets-agent/bin/secrets-agent", AGENT_SCRIPT
        )
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def test_units_verify_cleanly(units: Path) -> None:
    result = subprocess.run(
        [
            need("systemd-analyze", "systemd"),
            "verify",
            "airflow-secrets-agent.service",
            "airflow-secrets-agent.socket",
        ],
        capture_output=True,
        text=True,
        cwd=units,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_exposure_score_is_at_most_2(units: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run(
        [
            need("systemd-analyze", "systemd"),
            "security",
            "--offline=true",
            str(units / "airflow-secrets-agent.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    with capsys.disabled():
        print(f"\nsystemd-analyze security exposure score: {score}")
    assert score <= 2.0


def test_socket_unit_matches_the_documented_socket() -> None:
    unit = (UNITS / "airflow-secrets-agent.socket").read_text()
    assert "ListenStream=/run/airflow-secrets-agent/agent.sock" in unit
    assert "SocketMode=0660" in unit and "SocketGroup=airflow-secrets" in unit
    service = (UNITS / "airflow-secrets-agent.service").read_text()
    for setting in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "ExecReload=",
        "Restart=on-failure",
        "RuntimeDirectory=",
        "LoadCredential=",
        "CapabilityBoundingSet=\n",
        "LimitCORE=0",
        "LimitNOFILE=65536",
        "UMask=0077",
    ):
        assert setting in service


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to own the directory and drop to a worker"
)
def test_a_worker_reaches_the_socket_before_the_agent_first_starts(short_tmp: Path) -> None:
    """Before the service runs, the socket's directory is as systemd made it: root:root with
    DirectoryMode=. Only the service's RuntimeDirectory= hands it over, when the agent starts;
    until then a worker (neither root nor in root's group) must still reach the 0660 socket."""
    sock_unit = unit("airflow-secrets-agent.socket")["Socket"]
    service = unit("airflow-secrets-agent.service")["Service"]
    listen = Path(sock_unit["ListenStream"])
    assert service["RuntimeDirectory"] == listen.parent.name
    assert service["RuntimeDirectoryPreserve"] == "yes"  # a restart keeps systemd's socket
    agent_uid, group, worker_uid = 50101, 50102, 50103

    directory = short_tmp / "run" / listen.parent.name
    directory.parent.mkdir()
    directory.mkdir()
    directory.chmod(int(sock_unit["DirectoryMode"], 8))  # as systemd: root:root, not the umask
    listener = socket.socket(socket.AF_UNIX)
    path = directory / listen.name
    listener.bind(str(path))
    listener.listen()
    os.chown(path, agent_uid, group)  # SocketUser=, SocketGroup=
    path.chmod(int(sock_unit["SocketMode"], 8))

    def connect() -> str:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        return "connected"

    try:
        assert as_other_user(worker_uid, worker_uid, [group], connect) == "connected"
        # ... and the socket's own mode still keeps out anyone outside the group.
        assert "PermissionError" in as_other_user(worker_uid, worker_uid, [], connect)
    finally:
        listener.close()


class NotifyListener:
    """The NOTIFY_SOCKET end of sd_notify, as systemd holds it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, key: str) -> list[dict[str, str]]:
        """Messages up to and including the first that sets ``key``."""
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if key in message:
                return seen


def test_sd_notify_ready_watchdog_reload_and_stopping(short_tmp: Path) -> None:
    listener = NotifyListener(short_tmp / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "notify.sock"), "WATCHDOG_USEC": "200000"}
    config = config_file(short_tmp)
    with agent_process(config, env=env) as process:
        ready = listener.until("READY")[-1]
        assert ready["READY"] == "1" and "serving on" in ready["STATUS"]
        assert listener.until("WATCHDOG")[-1] == {"WATCHDOG": "1"}
        assert listener.until("WATCHDOG")[-1] == {"WATCHDOG": "1"}

        process.send_signal(signal.SIGHUP)
        reloading = listener.until("RELOADING")[-1]
        assert reloading["RELOADING"] == "1" and reloading["MONOTONIC_USEC"].isdigit()
        assert "reloaded" in listener.until("READY")[-1]["STATUS"]

        process.send_signal(signal.SIGTERM)
        assert listener.until("STOPPING")[-1]["STOPPING"] == "1"
        assert process.wait(timeout=30) == 0
    listener.sock.close()


def test_socket_activation_with_systemd_socket_activate(short_tmp: Path) -> None:
    config = config_file(short_tmp)
    sock = short_tmp / "agent.sock"
    keep = ("PATH", "HOME", "AWS_EC2_METADATA_DISABLED", "NO_GCE_CHECK")
    setenv = [f"-E{name}={os.environ[name]}" for name in keep if name in os.environ]
    process = subprocess.Popen(
        [
            need("systemd-socket-activate", "systemd"),
            "-l",
            str(sock),
            "--fdname=agent",
            *setenv,
            AGENT_SCRIPT,
            "run",
            "--config",
            str(config),
        ],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        client = AgentSecretsBackend(socket_path=str(sock), timeout=60, on_unavailable="raise")
        wait_for_socket(sock, process)  # systemd's socket exists before the agent runs
        assert client.get_variable("greeting") == "hello"  # this first connection starts it
        assert (
            body_of(raw_request(str(sock), b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))["ready"]
            is True
        )
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "using the socket systemd passed" in stderr
        assert sock.exists()  # the socket is systemd's: the agent leaves it in place
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_agent_process_cannot_dump_core(short_tmp: Path) -> None:
    with agent_process(config_file(short_tmp)) as process:
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4:6] == ["0", "0"]
