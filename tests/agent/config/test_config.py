"""Config: every problem is reported with its full key path, and nothing invalid starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from secrets_agent.config.loader import load_config
from secrets_agent.errors import ConfigError
from secrets_agent.kinds import Kind
from support import ROOT
from support.helpers import write_config


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    return info.value.problems


def test_example_config_is_valid_and_documents_defaults() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.listener.mode == 0o660
    assert config.cache.ttl(Kind.VARIABLE) == 300.0
    assert [b.common.name for b in config.backends] == ["local", "env"]
    assert config.backends[0].options.connections_file == str(ROOT / "demo/connections.yaml")
    assert config.metrics.port == 0


def test_empty_file_gives_defaults_and_the_env_backend(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""))
    assert config.listener.socket_path == "/run/airflow-secrets-agent/agent.sock"
    assert config.listener.allowed_uids is None
    assert [(b.common.name, b.common.type) for b in config.backends] == [("env", "env")]


def test_unknown_keys_and_sections_are_rejected(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [cache]
        max_entrys = 5
        [listner]
        socket_path = "/tmp/x.sock"
    """,
    )
    assert "cache.max_entrys: unknown key" in found
    assert "listner: unknown section" in found


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[cache]\nmax_entries = "10"', "cache.max_entries: must be an integer, not a string"),
        ("[cache]\nmax_entries = true", "cache.max_entries: must be an integer, not a boolean"),
        ("[cache]\nmax_entries = 0", "cache.max_entries: must be >= 1, got 0"),
        ("[cache]\nnegative_ttl = -1", "cache.negative_ttl: must be >= 0.0, got -1.0"),
        ('[listener]\nsocket_mode = "999"', "listener.socket_mode: must be an octal file mode"),
        ("[listener]\nallowed_uids = [-1]", "listener.allowed_uids: must be >= 0, got -1"),
        # No uid_t holds it ((uid_t)-1 means "no uid"): a typo that could never match a peer.
        (
            "[listener]\nstatus_uids = [4294967295]",
            "listener.status_uids: must be <= 4294967294, got 4294967295",
        ),
        (
            "[listener]\nallowed_gids = [99999999999999999999]",
            "listener.allowed_gids: must be <= 4294967294",
        ),
        ("[listener]\nallowed_uids = 5", "listener.allowed_uids: must be an array, not an integer"),
        (
            '[log]\nlevel = "loud"',
            "log.level: must be one of debug, info, warning, error",
        ),
        ('[metrics]\naddress = "0.0.0.0"', "metrics.address: must be a loopback address"),
        ("[metrics]\nport = 70000", "metrics.port: must be <= 65535, got 70000"),
        ("listener = 3", "listener: must be a table"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(tmp_path: Path, body: str, expected: str) -> None:
    found = problems(tmp_path, body)
    assert any(p.startswith(expected) for p in found), found


def test_backend_problems_are_reported_per_entry(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "a"
        type = "vaultt"
        [[backends]]
        name = "b"
        type = "file"
        variables_file = "vars.txt"
        colour = "blue"
        [[backends]]
        type = "env"
        [[backends]]
        name = "Bad Name"
        type = "env"
        variables_lookup_pattern = "("
        [[backends]]
        name = "c"
        type = "file"
    """,
    )
    choices = "aws_secrets_manager, aws_ssm, azure_key_vault, env, file, gcp_secret_manager, vault"
    assert f"backends[0].type: unknown backend type (choose one of: {choices})" in found
    assert "backends[1].colour: unknown key" in found
    assert "backends[2].name: is required" in found
    assert any(p.startswith("backends[3].name: must match") for p in found)
    assert any(
        p.startswith("backends[3].variables_lookup_pattern: is not a valid regular") for p in found
    )
    assert any(p.startswith("backends[4]: set at least one of") for p in found)


def test_bad_extension_and_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "vars.txt").touch()
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "x"
        type = "file"
        variables_file = "vars.txt"
        [[backends]]
        name = "x"
        type = "env"
    """,
    )
    assert "backends[0].variables_file: must end in .env, .json, .yaml, .yml" in found
    assert "backends[1].name: duplicate backend name 'x'" in found


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/fernet.key").touch()  # a file read must be there (config.paths)
    config = load_config(
        write_config(
            tmp_path,
            """
        [listener]
        socket_path = "run/agent.sock"
        [encryption]
        key_file = "keys/fernet.key"
    """,
        )
    )
    assert config.listener.socket_path == str(tmp_path / "run/agent.sock")
    assert config.encryption.key_file == str(tmp_path / "keys/fernet.key")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_config(tmp_path, "[cache\n"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secrets_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_exits_78_with_one_line_per_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[cache]\nmax_entries = 0\nttl = 5\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 78
    assert "cache.max_entries: must be >= 1, got 0" in result.stderr
    assert "cache.ttl: unknown key" in result.stderr


def test_check_config_accepts_the_example() -> None:
    result = run_cli("check-config", str(ROOT / "config.example.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_vault_backend_section_is_validated(tmp_path: Path) -> None:
    for name in ("cert.pem", "b"):
        (tmp_path / name).touch()
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "vault"
        type = "vault"
        url = "vault.local:8200"
        auth_method = "approle"
        kv_engine_version = 3
        client_cert = "cert.pem"
        [backends.token]
        token = "a"
        token_file = "b"
        [backends.kubernetes]
        token_path = "/x"
    """,
    )
    assert "backends[0].kv_engine_version: must be <= 2, got 3" in found
    assert "backends[0].kubernetes.role: is required" in found
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "vault"
        type = "vault"
        url = "vault.local:8200"
        auth_method = "approle"
        client_cert = "cert.pem"
        [backends.token]
        token = "a"
        token_file = "b"
    """,
    )
    assert "backends[0].url: must start with http:// or https://" in found
    assert 'backends[0].approle: auth_method = "approle" needs a [backends.approle] table' in found
    assert "backends[0].token: set token or token_file, not both" in found
    assert "backends[0].client_cert: client_cert and client_key go together" in found


def test_vault_backend_minimal(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            """
        [[backends]]
        name = "vault"
        type = "vault"
        url = "https://vault.local:8200"
        auth_method = "kubernetes"
        [backends.kubernetes]
        role = "airflow"
    """,
        )
    )
    options = config.backends[0].options
    assert options.kubernetes.token_path == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert (options.mount_point, options.kv_engine_version) == ("secret", 2)


@pytest.mark.parametrize("method", ["userpass", "ldap"])
def test_vault_password_methods(tmp_path: Path, method: str) -> None:
    secret = "pa55-not-in-errors"
    (tmp_path / "p").touch()
    base = f"""
        [[backends]]
        name = "vault"
        type = "vault"
        url = "https://vault.local:8200"
        auth_method = "{method}"
    """
    assert problems(tmp_path, base) == [
        f'backends[0].{method}: auth_method = "{method}" needs a [backends.{method}] table'
    ]
    no_user = problems(tmp_path, base + f'[backends.{method}]\npassword_file = "p"\n')
    assert no_user == [f"backends[0].{method}.username: is required"]
    both = f'[backends.{method}]\nusername = "a"\npassword = "{secret}"\npassword_file = "p"\n'
    found = problems(tmp_path, base + both)
    assert found == [f"backends[0].{method}: set exactly one of password and password_file"]
    neither = problems(tmp_path, base + f'[backends.{method}]\nusername = "airflow"\n')
    assert neither == [f"backends[0].{method}: set exactly one of password and password_file"]
    config = load_config(
        write_config(tmp_path, base + f'[backends.{method}]\nusername = "a"\npassword_file = "p"\n')
    )
    table = getattr(config.backends[0].options, method)
    assert (table.mount_point, table.password_file) == (method, str(tmp_path / "p"))
    inline = load_config(
        write_config(
            tmp_path, base + f'[backends.{method}]\nusername = "a"\npassword = "{secret}"\n'
        )
    )
    assert secret not in repr(inline)


def test_vault_aws_iam_table_is_optional_and_its_values_are_checked(tmp_path: Path) -> None:
    base = """
        [[backends]]
        name = "vault"
        type = "vault"
        url = "https://vault.local:8200"
        auth_method = "aws_iam"
    """
    assert load_config(write_config(tmp_path, base)).backends[0].options.aws_iam is None
    found = problems(
        tmp_path,
        base + '[backends.aws_iam]\nheader_value = "a\\r\\nX-Other: 1"\nrole_session_name = "x"\n',
    )
    assert found == [
        "backends[0].aws_iam.header_value: must be at most 256 visible ASCII characters or spaces",
        "backends[0].aws_iam.role_session_name: must be 2-64 letters, digits or + = , . @ _ -",
    ]
    aws = problems(
        tmp_path,
        '[[backends]]\nname = "sm"\ntype = "aws_secrets_manager"\nrole_session_name = "a b"\n',
    )
    assert aws == ["backends[0].role_session_name: must be 2-64 letters, digits or + = , . @ _ -"]


def test_vault_cert_login_needs_a_client_certificate_over_https(tmp_path: Path) -> None:
    base = '[[backends]]\nname = "vault"\ntype = "vault"\nauth_method = "cert"\n'
    for name in ("c.pem", "c.key"):
        (tmp_path / name).touch()
    message = "backends[0].auth_method: cert logs in with client_cert and client_key over https://"
    assert problems(tmp_path, base + 'url = "https://v:8200"\n') == [message]
    plain = 'url = "http://v:8200"\nclient_cert = "c.pem"\nclient_key = "c.key"\n'
    assert problems(tmp_path, base + plain) == [message]
    good = 'url = "https://v:8200"\nclient_cert = "c.pem"\nclient_key = "c.key"\n'
    options = load_config(write_config(tmp_path, base + good)).backends[0].options
    assert options.cert is None and options.client_cert == str(tmp_path / "c.pem")


def test_aws_backend_options_are_validated(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "aws"
        type = "aws_secrets_manager"
        endpoint_url = "localhost:4566"
        max_attempts = 0
        extra_conn_words = { username = ["u"], login = "not-a-list" }
    """,
    )
    assert "backends[0].max_attempts: must be >= 1, got 0" in found
    assert "backends[0].extra_conn_words.login: must be an array, not a string" in found
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "aws"
        type = "aws_secrets_manager"
        endpoint_url = "localhost:4566"
        extra_conn_words = { username = ["u"] }
    """,
    )
    assert "backends[0].endpoint_url: must start with http:// or https://" in found
    assert "backends[0].extra_conn_words: unknown connection fields: username" in found


def test_ssm_defaults_follow_the_provider(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            """
        [[backends]]
        name = "ssm"
        type = "aws_ssm"
    """,
        )
    )
    options = config.backends[0].options
    assert options.name_for(Kind.CONNECTION, "pg") == "/airflow/connections/pg"
    assert options.name_for(Kind.VARIABLE, "v") == "/airflow/variables/v"


def test_gcp_backend_options_are_validated(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[backends]]
        name = "gcp"
        type = "gcp_secret_manager"
        variables_prefix = "airflow.variables"
        version = "newest"
    """,
    )
    assert "backends[0].variables_prefix: may only use letters, digits, - and _" in found
    assert 'backends[0].version: must be "latest" or a version number' in found


def test_check_config_warns_about_the_old_meaning_of_empty_prefixes(tmp_path: Path) -> None:
    """gcp / azure prefixes "" used to disable a kind; without ``kinds`` that config is warned."""
    old = """
[[backends]]
name = "gcp"
type = "gcp_secret_manager"
project_id = "p"
variables_prefix = ""

[[backends]]
name = "az"
type = "azure_key_vault"
vault_url = "https://v.vault.azure.net"
config_prefix = ""
"""
    result = run_cli("check-config", str(write_config(tmp_path, old)))
    assert result.returncode == 0, result.stderr
    # (Azure's config names are then the id alone, which holds the other kinds' names too:
    # tests/agent/backends/test_namespaces.py says more about that.)
    warnings = [line for line in result.stderr.splitlines() if "now reads" in line]
    assert len(warnings) == 2
    assert "backends[0].variables_prefix" in warnings[0] and "kinds" in warnings[0]
    assert "backends[1].config_prefix" in warnings[1]
    # With ``kinds`` the config was written for the new meaning: nothing to say.
    new = old.replace('variables_prefix = ""', 'variables_prefix = ""\nkinds = ["variables"]')
    config = load_config(write_config(tmp_path, new))
    assert [w.split(":")[0] for w in config.warnings if "now reads" in w] == [
        "backends[1].config_prefix"
    ]
    assert not config.backends[0].options.serves(Kind.CONNECTION)
