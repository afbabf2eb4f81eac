"""``check-config`` refuses what ``run`` would refuse at start: the machine checks (groups,
files, keys, the socket path) are the ones the start makes, each reported on its own line."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from secrets_agent import cli
from secrets_agent.lookup.cipher import generate_key
from support.helpers import write_config

SECRET = "s3cret-client-secret"
AZURE = """
[[backends]]
name = "az"
type = "azure_key_vault"
vault_url = "https://v.vault.azure.net"
tenant_id = "t"
client_id = "c"
"""


def check(tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["check-config", str(write_config(tmp_path, body))])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def test_what_run_refuses_at_start_is_refused_each_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret").write_text(SECRET)  # exists, but not where the config points
    code, err = check(
        tmp_path,
        f"""
        [listener]
        socket_path = "{tmp_path / "agent.sock"}"
        socket_group = "no-such-group-here"
        [cache]
        snapshot_file = "snapshot.bin"
        """
        + AZURE
        + f'client_secret_file = "{tmp_path}/absent-secret"\n',
        capsys,
    )
    assert code == 78
    lines = err.splitlines()
    assert any("listener.socket_group: no such group" in line for line in lines), lines
    assert any("cache.snapshot_file needs a configured encryption key" in line for line in lines)
    assert any(
        "backend 'az'" in line and "client_secret_file" in line and "absent-secret" in line
        for line in lines
    ), lines


def test_an_unknown_socket_group_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = check(
        tmp_path,
        f'[listener]\nsocket_path = "{tmp_path}/a.sock"\nsocket_group = "no-such-group-here"\n',
        capsys,
    )
    assert code == 78 and "listener.socket_group: no such group" in err
    for digits in ("\u00b2", "\u0663"):  # digits to str.isdigit, no gid ("٣" is 3 to int)
        code, err = check(
            tmp_path,
            f'[listener]\nsocket_path = "{tmp_path}/a.sock"\nsocket_group = "{digits}"\n',
            capsys,
        )
        assert code == 78 and "listener.socket_group: no such group" in err, err


def test_the_same_config_made_right_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fernet.key").write_text(generate_key())
    (tmp_path / "secret").write_text(SECRET)
    group = grp.getgrgid(os.getgid()).gr_name
    code, err = check(
        tmp_path,
        f"""
        [listener]
        socket_path = "{tmp_path}/agent.sock"
        socket_group = "{group}"
        [encryption]
        key_file = "fernet.key"
        [cache]
        snapshot_file = "snapshot.bin"
        """
        + AZURE
        + 'client_secret_file = "secret"\n',
        capsys,
    )
    assert code == 0, err
    assert SECRET not in err


def file_backend(tmp_path: Path, connections: str) -> str:
    (tmp_path / "conns.yaml").write_text(connections)
    return f"""
        [listener]
        socket_path = "{tmp_path}/agent.sock"
        [[backends]]
        name = "f"
        type = "file"
        connections_file = "conns.yaml"
        """


def check_in_a_process(tmp_path: Path, body: str) -> tuple[int, str]:
    """As a shell runs it: no test harness's log handlers, so logging's own fallback would show."""
    done = subprocess.run(
        [sys.executable, "-m", "secrets_agent", "check-config", str(write_config(tmp_path, body))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done.returncode, done.stderr


def test_a_file_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    """Not the backend's log line and then the same error again."""
    code, err = check_in_a_process(tmp_path, file_backend(tmp_path, "c1: [broken\n"))
    assert code == 78
    assert err.splitlines() == [
        f"secrets-agent: cannot start: backend 'f': cannot load {tmp_path}/conns.yaml: "
        "invalid YAML at line 2 column 1"
    ]


def test_a_files_bad_entries_are_warnings_on_its_lines(tmp_path: Path) -> None:
    """``run`` serves the good entries and refuses the bad ones: the config passes, and says so."""
    body = file_backend(tmp_path, "good: postgres://u:p@h/db\nbad: [1, 2]\n")
    code, err = check_in_a_process(tmp_path, body)
    assert code == 0, err
    assert err.splitlines() == [
        f"secrets-agent: warning: backend 'f': {tmp_path}/conns.yaml: connection 'bad' is "
        "defined more than once (a list of several values)"
    ]


def test_an_empty_client_secret_file_is_refused_without_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secret").write_bytes(b"\xff" + SECRET.encode())
    code, err = check(
        tmp_path,
        AZURE + 'client_secret_file = "secret"\n',
        capsys,
    )
    assert code == 78 and "client_secret_file" in err and "not UTF-8" in err
    assert SECRET not in err


def test_a_socket_path_no_kernel_can_bind_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Measured once resolved (a relative path grows by the config's directory): what binds.
    relative = "s" * (108 - len(str(tmp_path)))
    code, err = check(tmp_path, f'[listener]\nsocket_path = "{relative}"\n', capsys)
    assert code == 78
    assert "listener.socket_path: is longer than the 107 bytes a socket path allows" in err


def test_a_socket_path_held_by_a_file_that_is_not_a_socket_is_refused_as_run_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    refusals = {
        "file": "exists and is not a socket; refusing to replace it",
        "file/agent.sock": "Not a directory",
        "file/run/agent.sock": "Not a directory",
    }
    for written, reason in refusals.items():
        code, err = check(tmp_path, f'[listener]\nsocket_path = "{written}"\n', capsys)
        assert code == 78, written
        assert "cannot start: " in err and f"{tmp_path / 'file'}" in err and reason in err, err
    code, err = check(tmp_path, '[listener]\nsocket_path = "run/agent.sock"\n', capsys)
    assert code == 0, err  # a directory still to make: run makes it


SYSTEMD_CONFIG = """
[listener]
socket_path = "{tmp}/agent.sock"
[encryption]
credential = "fernet"
[cache]
snapshot_file = "snapshot.bin"
[[backends]]
name = "vault"
type = "vault"
url = "https://vault.example:8200"
auth_method = "approle"
[backends.approle]
role_id = "r"
secret_id_file = "/run/credentials/airflow-secrets-agent.service/approle-secret-id"
"""


def test_systemd_credentials_are_named_not_refused_outside_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md's set-up runs check-config from a shell: LoadCredential= files exist
    only while the service runs, so check-config says it could not read them, and passes."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code, err = check(tmp_path, SYSTEMD_CONFIG.format(tmp=tmp_path), capsys)
    assert code == 0, err
    assert 'not checked here: encryption.credential "fernet"' in err
    assert (
        "not checked here: /run/credentials/airflow-secrets-agent.service/approle-secret-id" in err
    )
    # What is readable from here is still read.
    local = f'[[backends]]\nname = "local"\ntype = "file"\nvariables_file = "{tmp_path}/a.json"\n'
    code, err = check(tmp_path, SYSTEMD_CONFIG.format(tmp=tmp_path) + local, capsys)
    assert code == 78 and f"{tmp_path}/a.json" in err


def test_inside_the_service_the_credential_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "fernet").write_text("not a key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    body = f'[listener]\nsocket_path = "{tmp_path}/a.sock"\n[encryption]\ncredential = "fernet"\n'
    code, err = check(tmp_path, body, capsys)
    assert code == 78 and "encryption.credential (fernet): key #1 is not a valid Fernet key" in err
    (credentials / "fernet").write_text(generate_key())
    code, err = check(tmp_path, body, capsys)
    assert (code, "not checked" in err) == (0, False)


def test_the_path_is_taken_as_run_takes_it_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(write_config(tmp_path, f'[listener]\nsocket_path = "{tmp_path}/agent.sock"\n'))
    for args in ([path], ["--config", path], ["-c", path]):
        assert cli.main(["check-config", *args]) == 0
        assert capsys.readouterr().out.startswith(f"{path}: OK")
    for args in ([], [path, "-c", path]):  # neither, or both: argparse's usage error
        with pytest.raises(SystemExit) as info:
            cli.main(["check-config", *args])
        assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
