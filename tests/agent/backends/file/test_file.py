"""The embedded file backend (JSON, YAML, .env), including edits without restart."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from secrets_agent.backends.file.backend import FileBackend, FileOptions
from secrets_agent.errors import BackendError
from secrets_agent.kinds import Kind

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG


def file_backend(**paths: Path) -> FileBackend:
    return FileBackend("files", FileOptions(**{k: str(v) for k, v in paths.items()}))


async def test_json_connections_uri_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "conns.json"
    path.write_text(
        json.dumps(
            {
                "uri_conn": "mysql://u:p@host:3306/db",
                "field_conn": {
                    "conn_type": "http",
                    "host": "h",
                    "port": 8080,
                    "extra_dejson": {"a": 1},
                    "conn_id": "field_conn",
                },
                "wrapped_uri": {"uri": "redis://h:6379/0"},
            }
        )
    )
    backend = file_backend(connections_file=path)
    await backend.start()
    assert await backend.fetch(C, "uri_conn") == "mysql://u:p@host:3306/db"
    assert json.loads(await backend.fetch(C, "field_conn") or "") == {
        "conn_type": "http",
        "host": "h",
        "port": 8080,
        "extra": {"a": 1},
    }
    assert await backend.fetch(C, "wrapped_uri") == "redis://h:6379/0"
    assert await backend.fetch(V, "uri_conn") is None  # no variables file configured
    assert not backend.supports(V)


async def test_yaml_and_env_formats(tmp_path: Path) -> None:
    (tmp_path / "conns.yaml").write_text("pg:\n  conn_type: postgres\n  login: u\n")
    (tmp_path / "vars.env").write_text("# comment\n\ngreeting = hello = world\nempty=\n")
    (tmp_path / "cfg.yml").write_text("fernet_key: abc\n")
    backend = file_backend(
        connections_file=tmp_path / "conns.yaml",
        variables_file=tmp_path / "vars.env",
        config_file=tmp_path / "cfg.yml",
    )
    await backend.start()
    assert json.loads(await backend.fetch(C, "pg") or "") == {"conn_type": "postgres", "login": "u"}
    assert await backend.fetch(V, "greeting") == "hello = world"
    assert await backend.fetch(V, "empty") == ""
    assert await backend.fetch(CFG, "fernet_key") == "abc"


async def test_structured_variables_become_json_text(tmp_path: Path) -> None:
    (tmp_path / "vars.yaml").write_text("settings:\n  retries: 3\ncount: 7\n")
    backend = file_backend(variables_file=tmp_path / "vars.yaml")
    await backend.start()
    assert json.loads(await backend.fetch(V, "settings") or "") == {"retries": 3}
    assert await backend.fetch(V, "count") == "7"


async def test_edits_are_picked_up_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"k": "one"}))
    backend = file_backend(variables_file=path)
    await backend.start()
    assert await backend.fetch(V, "k") == "one"
    path.write_text(json.dumps({"k": "two", "new": "x"}))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # no sleeping for mtime
    assert await backend.fetch(V, "k") == "two"
    assert await backend.fetch(V, "new") == "x"


async def test_a_broken_edit_keeps_the_last_good_contents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text("k: good\n")
    backend = file_backend(variables_file=path)
    await backend.start()
    path.write_text("k: [unclosed s3cret-value\n")
    with caplog.at_level(logging.ERROR):
        assert await backend.fetch(V, "k") == "good"
    assert "invalid YAML at line" in caplog.text
    assert "s3cret" not in caplog.text
    assert backend.health().ready
    assert "invalid YAML" in backend.health().detail


async def test_a_deleted_file_serves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"k": "v"}))
    backend = file_backend(variables_file=path)
    await backend.start()
    path.unlink()
    assert await backend.fetch(V, "k") is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vars.json", "[1, 2]", "top level must be a mapping"),
        ("vars.json", '{"a": ', "invalid JSON at line 1"),
        ("vars.env", "no-equals-sign\n", "line 1: expected KEY=VALUE"),
        ("vars.env", "a=1\na=2\n", "keys defined more than once: a"),
        ("conns.json", '{"c": {"host": "h", "colour": "s3cret"}}', "has unknown fields: colour"),
        ("conns.json", '{"c": 5}', "must be a URI string or a table of fields"),
    ],
)
async def test_bad_files_fail_start_with_a_clear_message(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    key = "connections_file" if name.startswith("conns") else "variables_file"
    backend = file_backend(**{key: path})
    with pytest.raises(BackendError, match=message) as info:
        await backend.start()
    assert "s3cret" not in str(info.value)


async def test_missing_file_fails_start(tmp_path: Path) -> None:
    backend = file_backend(variables_file=tmp_path / "absent.json")
    with pytest.raises(BackendError, match="does not exist"):
        await backend.start()
