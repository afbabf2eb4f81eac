"""A secret pasted into a key that takes a file's path (``password_file = "hunter2"``) is refused
by its key and never echoed: not in the error, not in check-config's or run's output."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from secrets_agent.backends.registry import BACKEND_TYPES
from secrets_agent.config.loader import load_config
from secrets_agent.config.schema import AgentConfig
from secrets_agent.errors import ConfigError
from support.helpers import AGENT_SCRIPT, write_config

MARK = "XyzzyPlugh42"  # in every pasted secret: found in no message, no key, no path
SECRETS = {
    "a token": f"hvs.CAESI{MARK}aGVsbG8",
    "a base64 key starting with /": f"/K7MDENG/bPxRfiCY{MARK}+Zm9v",
    "a password with spaces": f"correct horse {MARK} staple",
    "a PEM key": f"-----BEGIN PRIVATE KEY-----\nMII{MARK}\n-----END PRIVATE KEY-----\n",
    "a JSON key": json.dumps({"type": "service_account", "private_key": MARK}),
    "a Fernet key": f"{MARK}{'x' * 31}=",
}
Key = tuple[str, ...]  # ("encryption", "key_file"); ("backends", "vault", "token", "token_file")


def _file_keys(cls: Any, where: Key) -> Iterator[Key]:
    """Every key of ``cls`` (and of its nested tables) naming a file the agent reads."""
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        hint = hints[fld.name]
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if dataclasses.is_dataclass(hint):
            yield from _file_keys(hint, (*where, fld.name))
        elif fld.metadata.get("path") and not fld.metadata.get("optional"):
            yield (*where, fld.name)


def file_keys() -> list[Key]:
    """Found, not listed: a key added later is covered without touching this test."""
    keys: list[Key] = []
    for section in dataclasses.fields(AgentConfig):
        hint = typing.get_type_hints(AgentConfig)[section.name]
        if dataclasses.is_dataclass(hint):
            keys += _file_keys(hint, (section.name,))
    for type_name, backend in sorted(BACKEND_TYPES.items()):
        keys += _file_keys(backend.Options, ("backends", type_name))
    return keys


def test_every_kind_of_file_key_is_found() -> None:
    found = {key[-1] for key in file_keys()}
    assert {
        "key_file",
        "ca_file",
        "password_file",
        "credentials_file",
        "token_file",
        "secret_id_file",
        "jwt_file",
        "token_path",
        "client_cert",
        "client_key",
        "client_secret_file",
        "account_key_file",
        "variables_file",
    } <= found
    assert not found & {"socket_path", "snapshot_file", "file"}  # the agent makes those


def config_text(values: dict[Key, str]) -> str:
    """TOML setting each key to its value, one ``[[backends]]`` per backend type."""
    sections: dict[str, Any] = {}
    backends: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        table, rest = sections, key
        if key[0] == "backends":
            table, rest = backends.setdefault(key[1], {"name": key[1], "type": key[1]}), key[2:]
        for part in rest[:-1]:
            table = table.setdefault(part, {})
        table[rest[-1]] = value
    lines = _table(sections, "")
    for table in backends.values():
        lines += ["[[backends]]", *_table(table, "backends.")]
    return "\n".join(lines) + "\n"


def _table(table: dict[str, Any], prefix: str) -> list[str]:
    # A JSON string is a TOML basic string (\n, \", \uXXXX escapes alike).
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += [f"[{prefix}{k}]", *_table(v, f"{prefix}{k}.")]
    return lines


def named(key: Key, values: dict[Key, str]) -> str:
    """How the loader names ``key``: ``backends[2].token.token_file``."""
    if key[0] != "backends":
        return ".".join(key)
    index = list(dict.fromkeys(k[1] for k in values if k[0] == "backends")).index(key[1])
    return ".".join((f"backends[{index}]", *key[2:]))


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    return info.value.problems


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_a_secret_in_any_file_key_is_refused_by_key_and_never_shown(
    tmp_path: Path, secret: str
) -> None:
    values = dict.fromkeys(file_keys(), SECRETS[secret])
    found = problems(tmp_path, config_text(values))
    assert MARK not in repr(found)
    for key in values:
        ours = [p for p in found if p.startswith(f"{named(key, values)}: ")]
        assert len(ours) == 1 and "not shown: it may be a secret" in ours[0], (key, found)


def test_what_is_evidently_a_path_is_kept(tmp_path: Path) -> None:
    """A file that is there (relative or absolute), an absolute path under a directory this
    machine has (read, and named, later: ``/run/secrets`` mounted at start), a directory."""
    (tmp_path / "there").write_text("x")
    for path in ("there", str(tmp_path / "absent"), "/run/not-yet-mounted/token", str(tmp_path)):
        values = dict.fromkeys(file_keys(), path)
        # Other problems remain (required keys missing, say): none about these paths.
        found = problems(tmp_path, config_text(values))
        assert not [p for p in found if "not shown" in p], (path, found)


def test_an_unreadable_directory_on_the_way_is_a_path(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root searches every directory")
    (tmp_path / "locked").mkdir(mode=0)
    values: dict[Key, str] = {("encryption", "key_file"): "locked/fernet.key"}
    try:
        config = load_config(write_config(tmp_path, config_text(values)))
    finally:
        (tmp_path / "locked").chmod(0o700)
    assert config.encryption.key_file == str(tmp_path / "locked/fernet.key")


def test_a_key_pasted_as_the_credential_name_is_not_echoed(tmp_path: Path) -> None:
    for secret in (SECRETS["a Fernet key"], f"k1{MARK},k2"):
        [problem] = problems(tmp_path, config_text({("encryption", "credential"): secret}))
        assert problem.startswith("encryption.credential: must be a systemd credential's name")
        assert MARK not in problem
    assert load_config(write_config(tmp_path, '[encryption]\ncredential = "fleet.key"\n'))


DIRECT = f"inline-{MARK}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            f'[shared_cache]\npassword = "{DIRECT}"\npassword_file = "pw"\n',
            "shared_cache.password: set password or password_file, not both",
        ),
        (
            f'[shared_cache]\nurl = "rediss://h:6379"\nusername = "u"\npassword = "{DIRECT}"\n'
            '[shared_cache.iam]\nservice = "memorydb"\ncache_name = "c"\n',
            "shared_cache.iam: an IAM token replaces the password",
        ),
        (
            '[[backends]]\nname = "v"\ntype = "vault"\nurl = "https://v:8200"\n'
            f'[backends.token]\ntoken = "{DIRECT}"\ntoken_file = "pw"\n',
            "backends[0].token: set token or token_file, not both",
        ),
        (
            '[[backends]]\nname = "v"\ntype = "vault"\nurl = "https://v:8200"\n'
            'auth_method = "approle"\n'
            f'[backends.approle]\nrole_id = "r"\nsecret_id = "{DIRECT}"\nsecret_id_file = "pw"\n',
            "backends[0].approle: set exactly one of secret_id and secret_id_file",
        ),
        (
            '[[backends]]\nname = "v"\ntype = "vault"\nurl = "https://v:8200"\n'
            'auth_method = "ldap"\n'
            f'[backends.ldap]\nusername = "u"\npassword = "{DIRECT}"\npassword_file = "pw"\n',
            "backends[0].ldap: set exactly one of password and password_file",
        ),
        (f"[shared_cache]\npassword = {len(DIRECT)}\n", "shared_cache.password: must be a string"),
    ],
)
def test_keys_holding_a_secret_are_never_echoed(tmp_path: Path, body: str, expected: str) -> None:
    (tmp_path / "pw").write_text("x")
    found = problems(tmp_path, body)
    assert any(p.startswith(expected) for p in found), found
    assert MARK not in repr(found)
    checked = cli("check-config", str(tmp_path / "agent.toml"))
    assert checked.returncode == 78 and expected in checked.stderr
    assert MARK not in checked.stdout + checked.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT_SCRIPT, *args], capture_output=True, text=True, timeout=60)


def test_check_config_and_run_name_the_keys_and_show_no_secret(short_tmp: Path) -> None:
    """The real command, as an operator (and journald, and CI) sees it: every kind of secret,
    in every file key at once."""
    kinds = sorted(SECRETS)
    values = {key: SECRETS[kinds[i % len(kinds)]] for i, key in enumerate(file_keys())}
    body = f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n' + config_text(values)
    path = write_config(short_tmp, body)
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = cli(*command)
        assert result.returncode == 78, result.stderr
        assert MARK not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        for key in values:
            assert f"{named(key, values)}: " in result.stderr, (command, key)
    assert not (short_tmp / "agent.sock").exists()


def test_real_path_errors_still_name_the_key_and_the_path(short_tmp: Path) -> None:
    """Missing, a directory: what went wrong with a real path is said with the path."""
    missing = short_tmp / "missing.pw"
    body = (
        f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\n'
        '[encryption]\nkey_file = "fleet.key"\n'
        f'[shared_cache]\nurl = "redis://127.0.0.1:9"\npassword_file = "{missing}"\n'
        '[[backends]]\nname = "v"\ntype = "vault"\nurl = "http://127.0.0.1:9"\n'
        f'[backends.token]\ntoken_file = "{short_tmp}"\n'
    )
    (short_tmp / "fleet.key").write_text("x" * 43 + "=")
    result = cli("check-config", str(write_config(short_tmp, body)))
    assert result.returncode == 78
    assert f"shared_cache.password_file ({missing}): cannot read (No such file" in result.stderr
    assert f"{short_tmp}: Is a directory" in result.stderr and "token file" in result.stderr


ONE_KEY = {
    "encryption.key_file": "[encryption]\nkey_file = {secret}\n",
    "shared_cache.password_file": (
        '[encryption]\nkey_file = "fleet.key"\n'
        '[shared_cache]\nurl = "redis://127.0.0.1:9"\npassword_file = {secret}\n'
    ),
    "backends[0].token.token_file": (
        '[[backends]]\nname = "v"\ntype = "vault"\nurl = "http://127.0.0.1:9"\n'
        "[backends.token]\ntoken_file = {secret}\n"
    ),
    "backends[0].client_secret_file": (
        '[[backends]]\nname = "az"\ntype = "azure_key_vault"\n'
        'vault_url = "https://v.vault.azure.net"\ntenant_id = "t"\nclient_id = "c"\n'
        "client_secret_file = {secret}\n"
    ),
    "backends[0].credentials_file": (
        '[[backends]]\nname = "gcp"\ntype = "gcp_secret_manager"\nproject_id = "p"\n'
        "credentials_file = {secret}\n"
    ),
}


@pytest.mark.parametrize("key", sorted(ONE_KEY))
def test_a_config_otherwise_fine_shows_no_secret_either(short_tmp: Path, key: str) -> None:
    """Nothing else wrong: without the loader's refusal the readers would name the value."""
    (short_tmp / "fleet.key").write_text(Fernet.generate_key().decode())
    body = ONE_KEY[key].format(secret=json.dumps(SECRETS["a token"]))
    path = write_config(short_tmp, f'[listener]\nsocket_path = "{short_tmp}/a.sock"\n{body}')
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        result = cli(*command)
        assert result.returncode == 78 and f"{key}: names no file in " in result.stderr
        assert MARK not in result.stdout + result.stderr
