"""The embedded file backend (JSON, YAML, .env), including edits without restart."""

from __future__ import annotations

import asyncio
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
    (tmp_path / "vars.env").write_text("# comment\n\ngreeting = hello = world\n")
    (tmp_path / "cfg.yml").write_text("fernet_key: abc\n")
    backend = file_backend(
        connections_file=tmp_path / "conns.yaml",
        variables_file=tmp_path / "vars.env",
        config_file=tmp_path / "cfg.yml",
    )
    await backend.start()
    assert json.loads(await backend.fetch(C, "pg") or "") == {"conn_type": "postgres", "login": "u"}
    assert await backend.fetch(V, "greeting") == "hello = world"
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


def alias_bomb(levels: int, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases to the one before: width**levels
    values written out, from a file of a few hundred bytes."""
    lines = ["a0: &a0 [" + ", ".join(['"s3cret"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("k: [unclosed s3cret-value\n", "invalid YAML at line"),
        (alias_bomb(9), "aliases repeat more than 1,000,000 values"),
    ],
)
async def test_a_broken_edit_keeps_the_last_good_contents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, message: str
) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text("k: good\n")
    backend = file_backend(variables_file=path)
    await backend.start()
    path.write_text(content)
    with caplog.at_level(logging.ERROR):
        assert await backend.fetch(V, "k") == "good"
        assert await backend.fetch(V, "a8") is None
    assert caplog.text.count(message) == 1  # read once, not once per lookup
    assert "keeping previous contents" in caplog.text
    assert "s3cret" not in caplog.text
    assert backend.health().ready
    assert message in backend.health().detail


async def test_a_deleted_file_serves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"k": "v"}))
    backend = file_backend(variables_file=path)
    await backend.start()
    path.unlink()
    assert await backend.fetch(V, "k") is None
    # Written again, broken: nothing was kept, and the log line does not claim otherwise.
    path.write_text('{"k": ')
    with caplog.at_level(logging.ERROR):
        assert await backend.fetch(V, "k") is None
    assert "serving nothing from it" in caplog.text  # nothing was kept: none to claim
    assert "keeping previous contents" not in caplog.text


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("vars.json", "[1, 2]", "top level must be a mapping"),
        ("vars.json", '{"a": ', "invalid JSON at line 1"),
        ("vars.env", "no-equals-sign\n", "line 1: expected KEY=VALUE"),
        ("vars.env", "s3cret=1\ns3cret=2\n", r"a key is defined more than once \(lines 1, 2\)"),
        ("vars.env", "a=1\n  \n", "line 2: expected KEY=VALUE"),
        ("vars.env", "s3cret=\n", "line 1: no value after '='"),
        ("vars.json", "", "the file is empty"),
        ("vars.json", " \n\t", "the file is empty"),
        ("vars.yaml", "", "the file is empty"),
        ("vars.yaml", "  \n", "the file is empty"),
        ("vars.yaml", "# only a comment\n", "top level must be a mapping"),
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


async def test_an_empty_env_file_holds_nothing(tmp_path: Path) -> None:
    (tmp_path / "vars.env").write_text("")
    backend = file_backend(variables_file=tmp_path / "vars.env")
    await backend.start()
    assert await backend.fetch(V, "k") is None


YAML_TYPED = """\
day: 2024-01-01
stamp: 2024-01-01 10:20:30
zoned: 2024-01-01T10:20:30+02:00
nested: {when: 2024-01-01, n: 1}
flag: true
ratio: 1.5
items: [1, two]
plain: text
"""


async def test_yaml_dates_and_typed_scalars_are_served_as_text(tmp_path: Path) -> None:
    (tmp_path / "vars.yaml").write_text(YAML_TYPED)
    backend = file_backend(variables_file=tmp_path / "vars.yaml")
    await backend.start()
    assert await backend.fetch(V, "day") == "2024-01-01"
    assert await backend.fetch(V, "stamp") == "2024-01-01T10:20:30"
    assert await backend.fetch(V, "zoned") == "2024-01-01T10:20:30+02:00"
    assert json.loads(await backend.fetch(V, "nested") or "") == {"when": "2024-01-01", "n": 1}
    assert await backend.fetch(V, "flag") == "true"
    assert await backend.fetch(V, "ratio") == "1.5"
    assert json.loads(await backend.fetch(V, "items") or "") == [1, "two"]
    assert await backend.fetch(V, "plain") == "text"


async def test_a_date_in_a_connection_extra_is_iso_text(tmp_path: Path) -> None:
    (tmp_path / "conns.yaml").write_text(
        "c:\n  conn_type: http\n  extra_dejson:\n    since: 2024-01-01\n"
    )
    backend = file_backend(connections_file=tmp_path / "conns.yaml")
    await backend.start()
    served = json.loads(await backend.fetch(C, "c") or "")
    assert served == {"conn_type": "http", "extra": {"since": "2024-01-01"}}


def touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # no sleeping for mtime


async def test_a_date_arriving_by_reload_is_served_and_other_keys_keep_working(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text("k: one\n")
    backend = file_backend(variables_file=path)
    await backend.start()
    path.write_text("k: two\nd: 2024-01-01\n")
    touch_later(path)
    assert await backend.fetch(V, "k") == "two"
    assert await backend.fetch(V, "d") == "2024-01-01"
    assert await backend.fetch(V, "absent") is None


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("vars.json", '{"gone": null, "kept": "v"}'),
        ("vars.yaml", "gone: ~\nkept: v\n"),
        ("vars.yaml", "gone:\nkept: v\n"),
        ("cfg.yaml", "gone: null\nkept: v\n"),
    ],
)
async def test_null_is_absent(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    key = "config_file" if name.startswith("cfg") else "variables_file"
    kind = CFG if name.startswith("cfg") else V
    backend = file_backend(**{key: tmp_path / name})
    await backend.start()
    assert await backend.fetch(kind, "gone") is None
    assert await backend.fetch(kind, "kept") == "v"


async def test_connection_forms_airflow_accepts(tmp_path: Path) -> None:
    path = tmp_path / "conns.json"
    path.write_text(
        json.dumps(
            {
                "listed": [{"conn_type": "mysql", "host": "h"}],
                "listed_uri": ["redis://h:6379/0"],
                "none_listed": [],
                "described": {"uri": "mysql://u:p%40ss@Host:3306/db?a=1", "description": "d"},
                "teamed": {"conn_type": "http", "host": "h", "team_name": "team_a"},
                "same_id": {"conn_id": "same_id", "host": "h"},
            }
        )
    )
    backend = file_backend(connections_file=path)
    await backend.start()
    assert json.loads(await backend.fetch(C, "listed") or "") == {"conn_type": "mysql", "host": "h"}
    assert await backend.fetch(C, "listed_uri") == "redis://h:6379/0"
    assert await backend.fetch(C, "none_listed") is None
    assert json.loads(await backend.fetch(C, "described") or "") == {
        "conn_type": "mysql",
        "host": "host",
        "schema": "db",
        "login": "u",
        "password": "p@ss",
        "port": 3306,
        "extra": '{"a": 1}',
        "description": "d",
    }
    assert json.loads(await backend.fetch(C, "teamed") or "") == {"conn_type": "http", "host": "h"}
    assert json.loads(await backend.fetch(C, "same_id") or "") == {"host": "h"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"conn_id": "other", "password": "s3cret"}, "has a conn_id that differs from its key"),
        ({"host": "h", "colour": "s3cret"}, "has unknown fields: colour"),
        (5, "must be a URI string or a table of fields"),
        (None, "must be a URI string or a table of fields"),
        (["mysql://s3cret@h", "mysql://s3cret@g"], "is defined more than once"),
        ({"uri": "mysql://h", "password": "s3cret"}, "has a URI and separate fields"),
    ],
)
async def test_a_bad_connection_entry_fails_only_its_own_lookup(
    tmp_path: Path, entry: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "conns.json"
    path.write_text(json.dumps({"bad": entry, "good": "mysql://h"}))
    backend = file_backend(connections_file=path)
    with caplog.at_level(logging.ERROR):
        await backend.start()
    assert await backend.fetch(C, "good") == "mysql://h"
    assert await backend.fetch(C, "absent") is None
    with pytest.raises(BackendError, match=message) as info:
        await backend.fetch(C, "bad")
    assert "'bad'" in str(info.value)
    assert "s3cret" not in str(info.value) + caplog.text
    assert "1 bad entries" in backend.health().detail


async def test_a_value_json_cannot_hold_fails_only_its_own_lookup(tmp_path: Path) -> None:
    (tmp_path / "vars.yaml").write_text("odd: {2024-01-01: s3cret}\nfine: v\n")
    backend = file_backend(variables_file=tmp_path / "vars.yaml")
    await backend.start()
    assert await backend.fetch(V, "fine") == "v"
    with pytest.raises(BackendError, match="cannot be written as JSON") as info:
        await backend.fetch(V, "odd")
    assert "s3cret" not in str(info.value)


async def test_a_file_nested_too_deeply_is_refused_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "vars.json").write_text('{"k": ' + "[" * 100_000 + "]" * 100_000 + "}")
    backend = file_backend(variables_file=tmp_path / "vars.json")
    with pytest.raises(BackendError, match="nested too deeply"):
        await backend.start()


async def test_a_yaml_alias_bomb_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text(alias_bomb(9))  # 9**9 values written out: minutes and gigabytes
    backend = file_backend(variables_file=path)
    with pytest.raises(BackendError, match="aliases repeat more than 1,000,000 values") as info:
        await backend.start()
    assert str(path) in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_an_alias_to_its_own_container_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vars.yaml").write_text("loop: &loop [s3cret, *loop]\n")
    backend = file_backend(variables_file=tmp_path / "vars.yaml")
    with pytest.raises(BackendError, match="refers to a value that contains it") as info:
        await backend.start()
    assert "s3cret" not in str(info.value)


SHARED_DEFAULTS = """\
defaults: &defaults {retries: 3, hosts: &hosts [a, b]}
job: {<<: *defaults, name: job}
mirror: *hosts
"""


async def test_anchors_and_aliases_in_ordinary_use_still_load(tmp_path: Path) -> None:
    # Repeats well under the bound load as before: a shared block referenced by many entries,
    # and a 5-level bomb's ~670,000 repeated values.
    many = "".join(f"v{i}: *defaults\n" for i in range(1000))
    (tmp_path / "vars.yaml").write_text(SHARED_DEFAULTS + many + alias_bomb(5).replace("a", "b"))
    backend = file_backend(variables_file=tmp_path / "vars.yaml")
    await backend.start()
    defaults = {"retries": 3, "hosts": ["a", "b"]}
    assert json.loads(await backend.fetch(V, "job") or "") == {**defaults, "name": "job"}
    assert json.loads(await backend.fetch(V, "mirror") or "") == ["a", "b"]
    assert json.loads(await backend.fetch(V, "v999") or "") == defaults
    assert len(json.loads(await backend.fetch(V, "b4") or "")) == 9


async def test_lookups_during_a_reread_wait_for_it_instead_of_reading_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "conns.yaml"
    path.write_text("good: mysql://h\n")
    backend = file_backend(connections_file=path)
    await backend.start()
    # Long enough to parse (~0.1 s) that every lookup below arrives while it is being read.
    path.write_text(
        "good: mysql://h2\nbad: 5\n" + "".join(f"c{i}: mysql://h\n" for i in range(3000))
    )
    touch_later(path)
    with caplog.at_level(logging.ERROR):
        answers = await asyncio.gather(*(backend.fetch(C, "good") for _ in range(20)))
    assert answers == ["mysql://h2"] * 20
    assert caplog.text.count("'bad'") == 1  # the bad entry is logged by the one re-read


async def test_a_uri_with_query_values_goes_out_as_typed_fields(tmp_path: Path) -> None:
    """As Airflow 3's Connection(uri=...) reads the file, not as the task SDK's from_uri."""
    path = tmp_path / "conns.yaml"
    path.write_text(
        "typed: postgresql://u:p@h:5432/db?verify=false&timeout=10\n"
        "plain: mysql://u:p@h/db\n"
        "broken: 'mysql://[::1/db?a=1'\n"
    )
    backend = file_backend(connections_file=path)
    await backend.start()
    assert json.loads(await backend.fetch(C, "typed") or "") == {
        "conn_type": "postgres",
        "host": "h",
        "login": "u",
        "password": "p",
        "schema": "db",
        "port": 5432,
        "extra": '{"verify": false, "timeout": 10}',
    }
    assert await backend.fetch(C, "plain") == "mysql://u:p@h/db"
    assert await backend.fetch(C, "broken") == "mysql://[::1/db?a=1"  # Airflow refuses it
