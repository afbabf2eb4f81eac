"""Config errors name the file, line, column and key, never what the file says there."""

from __future__ import annotations

from pathlib import Path

import pytest

from secrets_agent.config.loader import load_config
from secrets_agent.errors import ConfigError

SECRET = "s3cret-token-value"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f'[backends.token]\ntoken = "{SECRET}\n', "at line 2, column"),
        (f"[log]\nlevel = {SECRET}\n", "at line 2, column"),
        (f'x = {{ a = "{SECRET}", b = {SECRET} }}\n', "at line 1, column"),
        (f'x = """{SECRET}', "at the end of the file"),
    ],
)
def test_toml_errors_give_the_place_not_the_text(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}: not valid TOML {where}" in message
    assert SECRET not in message and "s3cret" not in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[log]\nlevel "info"\n', "(expected '=' after a key in a key/value pair)"),
        ("[log]\nlevel = \n", "(invalid value)"),
        ("x = [1, 2\ny = 3\n", "(unclosed array)"),
        ("[log\n", "(expected ']' at the end of a table declaration)"),
        (f'[log]\nlevel = "{SECRET}\n', ""),  # tomllib quotes the character: left out
    ],
)
def test_toml_errors_say_why_when_that_quotes_nothing(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.endswith(reason) and "s3cret" not in problem
    if not reason:
        assert problem.endswith(tuple("0123456789"))  # the place alone


def test_invalid_utf8_and_bad_choices_do_not_echo_content(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[log]\nlevel = "' + SECRET.encode() + b'\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not UTF-8 text" in str(info.value) and SECRET not in str(info.value)
    path.write_text(f'[log]\nlevel = "{SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["log.level: must be one of debug, info, warning, error"]


def test_a_fernet_key_pasted_as_key_env_is_refused_unechoed(tmp_path: Path) -> None:
    """key_env names a variable; a key written there instead (an easy slip) must not reach
    the journal in the "variable ... is unset" error."""
    key = "gR1pK8cXw0Yq5Xz4aV3bN7mT2sL9dF6hJ0kP3qR8uE4="  # a Fernet key's shape
    path = tmp_path / "agent.toml"
    for name in (key, "AIRFLOW-KEY", "9KEY"):
        path.write_text(f'[encryption]\nkey_env = "{name}"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "encryption.key_env: must be an environment variable's name" in str(info.value)
        assert name not in str(info.value)
    path.write_text('[encryption]\nkey_env = "AIRFLOW_SECRETS_AGENT_KEY_2"\n')
    assert load_config(path).encryption.key_env == "AIRFLOW_SECRETS_AGENT_KEY_2"
