"""The ``secrets-agent`` command as a real process: run, get, SIGTERM, gen-key, no deps."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from support.helpers import AGENT_SCRIPT, agent_process, demo_files, write_config

pytestmark = pytest.mark.integration

SCRIPT = AGENT_SCRIPT


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def config_path(short_tmp: Path) -> Path:
    demo_files(short_tmp)
    return write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [log]
        format = "json"
        level = "debug"
        [[backends]]
        name = "local"
        type = "file"
        connections_file = "connections.json"
        variables_file = "variables.json"
    """,
    )


@pytest.fixture
def running(config_path: Path) -> Iterator[subprocess.Popen[str]]:
    with agent_process(config_path) as process:
        yield process


def test_run_get_and_graceful_sigterm(config_path: Path, running: subprocess.Popen[str]) -> None:
    sock = str(config_path.parent / "agent.sock")
    got = cli("get", "connection", "pg", "--socket", sock)
    assert (got.returncode, got.stdout.strip()) == (
        0,
        "postgresql://user:s3cret-pg@db.local:5432/app",
    )
    env = {**os.environ, "SECRETS_AGENT_SOCKET": sock}
    assert cli("get", "variable", "greeting", env=env).stdout.strip() == "hello"
    missing = cli("get", "variable", "absent", "--socket", sock)
    assert missing.returncode == 1 and 'variable "absent" not found' in missing.stderr
    invalid = cli("get", "variable", "a/../b", "--socket", sock)
    assert invalid.returncode == 65
    assert invalid.stderr.startswith("secrets-agent: the agent answered 400: invalid_id: ")

    (config_path.parent / "variables.json").write_text('{"greeting": "rotated"}')
    assert cli("get", "variable", "greeting", "--socket", sock).stdout.strip() == "hello"
    refreshed = cli("get", "variable", "greeting", "--socket", sock, "--refresh")
    assert refreshed.stdout.strip() == "rotated"

    second = cli("run", "--config", str(config_path))
    assert second.returncode == 78
    assert "already listening" in second.stderr

    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=30)
    assert running.returncode == 0
    assert not Path(sock).exists()
    assert '"level": "info"' in stderr and "shutting down" in stderr
    assert "event loop: uvloop" in stderr  # the default where uvloop is installed
    assert "s3cret" not in stderr


def test_get_when_no_agent_runs(short_tmp: Path) -> None:
    result = cli("get", "variable", "x", "--socket", str(short_tmp / "none.sock"))
    assert result.returncode == 69
    assert "no agent socket at" in result.stderr


def test_broken_config_exits_78_before_listening(short_tmp: Path) -> None:
    path = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        shutdown_timeout = 0
    """,
    )
    result = cli("run", "--config", str(path))
    assert result.returncode == 78
    assert "listener.shutdown_timeout: must be >= 0.1, got 0.0" in result.stderr
    assert not (short_tmp / "agent.sock").exists()


def test_backend_that_cannot_start_exits_78(short_tmp: Path) -> None:
    path = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "{short_tmp}/absent.json"
    """,
    )
    result = cli("run", "--config", str(path))
    assert result.returncode == 78
    assert f"{short_tmp}/absent.json does not exist" in result.stderr
    assert not (short_tmp / "agent.sock").exists()


def test_gen_key_prints_a_fernet_key() -> None:
    result = cli("gen-key")
    assert result.returncode == 0
    Fernet(result.stdout.strip().encode())


def test_without_the_agent_dependencies_it_says_how_to_install(short_tmp: Path) -> None:
    # A stand-in package that fails to import, as aiohttp does after an install with --no-deps.
    (short_tmp / "aiohttp").mkdir()
    (short_tmp / "aiohttp" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(short_tmp)}
    result = cli("run", "--config", "/nonexistent.toml", env=env)
    assert result.returncode != 0
    assert "pip install airflow-secrets-agent\n" in result.stderr
    assert "missing: aiohttp" in result.stderr


LOCAL_SOURCE_PROBLEMS = {
    "unparsable file": (
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "bad.json"\n',
        "bad.json: invalid JSON at line 1",
    ),
    "empty file": (
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "empty.yaml"\n',
        "empty.yaml: the file is empty",
    ),
    "env line without a value": (
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "bad.env"\n',
        "bad.env: line 2: no value after '='",
    ),
    "missing file": (
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "{dir}/absent.json"\n',
        "/absent.json does not exist",
    ),
    "missing encryption key file": (
        '[encryption]\nkey_file = "{dir}/absent.key"\n'
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "variables.json"\n',
        "absent.key",
    ),
    "shared cache without the fleet's keys": (
        '[shared_cache]\nurl = "redis://127.0.0.1:9"\n'
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "variables.json"\n',
        "shared_cache needs the fleet's Fernet keys",
    ),
    "missing vault token file": (
        '[[backends]]\nname = "vault"\ntype = "vault"\nurl = "http://127.0.0.1:9"\n'
        '[backends.token]\ntoken_file = "{dir}/absent.token"\n',
        "cannot read the token file",
    ),
    "missing vault aws_iam credentials file": (
        '[[backends]]\nname = "vault"\ntype = "vault"\nurl = "http://127.0.0.1:9"\n'
        'auth_method = "aws_iam"\n[backends.aws_iam]\ncredentials_file = "{dir}/absent.ini"\n',
        "cannot read the credentials file",
    ),
    "missing store password file": (
        '[encryption]\nkey_file = "fleet.key"\n'
        '[shared_cache]\nurl = "redis://127.0.0.1:9"\npassword_file = "{dir}/absent.pw"\n'
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "variables.json"\n',
        "shared_cache.password_file",
    ),
    "missing store IAM credentials file": (
        '[encryption]\nkey_file = "fleet.key"\n'
        '[shared_cache]\nurl = "rediss://127.0.0.1:9"\nusername = "agent"\n'
        '[shared_cache.iam]\nservice = "memorydb"\ncache_name = "c"\n'
        'credentials_file = "{dir}/absent.ini"\n'
        '[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "variables.json"\n',
        "shared_cache.iam.credentials_file",
    ),
}


@pytest.mark.parametrize("case", sorted(LOCAL_SOURCE_PROBLEMS))
def test_check_config_reads_local_sources_as_run_does(short_tmp: Path, case: str) -> None:
    body, message = LOCAL_SOURCE_PROBLEMS[case]
    demo_files(short_tmp)
    (short_tmp / "bad.json").write_text('{"k": "s3cret"')
    (short_tmp / "empty.yaml").write_text("\n")
    (short_tmp / "bad.env").write_text("ok=1\ns3cret=\n")
    (short_tmp / "fleet.key").write_bytes(Fernet.generate_key())
    (short_tmp / "fleet.key").chmod(0o600)
    # Absolute paths, named in the messages (a relative one naming no file is refused unnamed).
    body = body.format(dir=short_tmp)
    path = write_config(short_tmp, f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n' + body)
    checked = cli("check-config", str(path))
    ran = cli("run", "--config", str(path))
    assert (checked.returncode, ran.returncode) == (78, 78)
    assert message in checked.stderr and message in ran.stderr
    assert "s3cret" not in checked.stderr + ran.stderr


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ('{"type": "service_account", "private_key": "s3cret"}', "not a service-account key"),
        ("s3cret", "not a service-account key"),
    ],
)
def test_check_config_loads_a_gcp_credentials_file(
    short_tmp: Path, contents: str, message: str
) -> None:
    key = short_tmp / "key.json"
    key.write_text(contents)
    body = (
        f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n'
        '[[backends]]\nname = "gcp"\ntype = "gcp_secret_manager"\nproject_id = "p"\n'
        f'credentials_file = "{key}"\n'
    )
    checked = cli("check-config", str(write_config(short_tmp, body)))
    assert checked.returncode == 78
    assert f"gcp: {message}" in checked.stderr or message in checked.stderr
    assert "s3cret" not in checked.stderr and "Traceback" not in checked.stderr


def test_check_config_and_run_accept_yaml_dates(short_tmp: Path) -> None:
    (short_tmp / "variables.yaml").write_text("day: 2024-01-01\nstamp: 2024-01-01 10:00:00\n")
    path = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.yaml"
    """,
    )
    checked = cli("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    with agent_process(path):
        got = cli("get", "variable", "stamp", "--socket", str(short_tmp / "agent.sock"))
    assert got.stdout.strip() == "2024-01-01T10:00:00"
