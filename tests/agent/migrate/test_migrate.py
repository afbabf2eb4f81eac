"""``secrets-agent migrate``: Airflow's settings read as Airflow does, files written safely."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from secrets_agent.backends.migration import MigrationError
from secrets_agent.config.loader import load_config
from secrets_agent.kinds import Kind
from secrets_agent.migrate.files import write_all
from support.migrate import migrate_here

VAULT = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
SM = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SSM = "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend"
GCP = "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"
AZURE = "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend"
FILES = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
SECRET = "s3cr3t-value-never-printed"


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    base |= {"HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    return subprocess.run(
        [sys.executable, "-m", "secrets_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=base | env,
    )


def migrate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return cli(tmp_path, "migrate", "-o", str(tmp_path / "out"), "--socket", "/tmp/x.sock", **env)


def airflow_cfg(tmp_path: Path, body: str) -> Path:
    home = tmp_path / "airflow"
    home.mkdir(exist_ok=True)
    path = home / "airflow.cfg"
    path.write_text(body)
    return path


def backend_env(provider: str, kwargs: dict[str, Any]) -> dict[str, str]:
    return {
        "AIRFLOW__SECRETS__BACKEND": provider,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
    }


def service_account_key() -> dict[str, str]:
    """A key google-auth loads (check-config loads it); SECRET is in it, for the leak checks."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": SECRET,
        "private_key": pem.decode(),
        "client_email": "agent@p.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:9/token",
    }


def written(tmp_path: Path) -> str:
    """Everything the command wrote outside credentials/, where no secret may be."""
    out = tmp_path / "out"
    return (out / "agent.toml").read_text() + (out / "airflow.env").read_text()


def assert_private(path: Path, content: str) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == content


def test_vault_token_from_airflow_cfg(tmp_path: Path) -> None:
    kwargs = {
        "url": "http://127.0.0.1:8200",
        "token": SECRET,
        "mount_point": None,
        "connections_path": None,
        "variables_path": "vars/",
        "timeout": 30,
        "proxies": {"https": "http://proxy:3128"},
    }
    airflow_cfg(tmp_path, f"[secrets]\nbackend = {VAULT}\nbackend_kwargs = {json.dumps(kwargs)}\n")
    result = migrate(tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert SECRET not in result.stdout + result.stderr + written(tmp_path)
    assert_private(out / "credentials" / "vault-token", SECRET)
    # What has no equivalent is listed with what to do; the value itself is not shown.
    assert "proxies: no equivalent" in result.stdout and "proxy:3128" not in result.stdout
    options = load_config(out / "agent.toml").backends[0].options
    assert options.token.token_file == str(out / "credentials" / "vault-token")
    assert (options.mount_point, options.variables_path, options.timeout) == ("", "vars/", 30.0)
    assert not options.serves(Kind.CONNECTION) and options.serves(Kind.CONFIG)
    assert (
        "AIRFLOW__WORKERS__SECRETS_BACKEND=secrets_agent_client.AgentSecretsBackend"
        in (out / "airflow.env").read_text()
    )
    checked = cli(tmp_path, "check-config", str(out / "agent.toml"))
    assert checked.returncode == 0, checked.stderr
    assert SECRET not in checked.stdout + checked.stderr


def test_environment_wins_as_in_airflow(tmp_path: Path) -> None:
    """AIRFLOW__* over the file, ``_CMD`` for the kwargs, per-key variables over the JSON."""
    other = tmp_path / "elsewhere.cfg"
    other.write_text(f"[secrets]\nbackend = {VAULT}\nbackend_kwargs = {{}}\n")
    printed = tmp_path / "kwargs.json"
    printed.write_text(json.dumps({"variables_prefix": "/from/cmd", "config_prefix": None}))
    result = migrate(
        tmp_path,
        AIRFLOW_CONFIG=str(other),
        AIRFLOW__SECRETS__BACKEND=SSM,
        AIRFLOW__SECRETS__BACKEND_KWARGS_CMD=f"cat {printed}",
        AIRFLOW__SECRETS__BACKEND_KWARG__CONNECTIONS_PREFIX="/per/key",
        AIRFLOW__SECRETS__BACKEND_KWARG__REGION_NAME="eu-west-1",
    )
    assert result.returncode == 0, result.stderr
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert type(options).__name__ == "SsmOptions"
    assert (options.connections_prefix, options.variables_prefix) == ("/per/key", "/from/cmd")
    assert options.kinds == ("connections", "variables") and options.region == "eu-west-1"


@pytest.mark.parametrize(
    ("provider", "kwargs", "credential", "check"),
    [
        (
            GCP,
            {
                "project_id": "p",
                "gcp_keyfile_dict": service_account_key(),
                "variables_prefix": "",
            },
            "gcp-key.json",
            lambda o: o.variables_prefix == "" and o.project_id == "p",
        ),
        (
            AZURE,
            {
                "vault_url": "https://v.vault.azure.net",
                "tenant_id": "t",
                "client_id": "c",
                "client_secret": SECRET,
                "connections_prefix": "airflow-connections-",
                "config_prefix": None,
            },
            "azure-client-secret",
            lambda o: o.kinds == ("connections", "variables") and o.tenant_id == "t",
        ),
        (
            VAULT,
            {
                "url": "http://v",
                "auth_type": "userpass",
                "username": "airflow",
                "password": SECRET,
                "auth_mount_point": "people",
            },
            "vault-userpass-password",
            lambda o: (
                o.auth_method == "userpass"
                and (o.userpass.username, o.userpass.mount_point) == ("airflow", "people")
                and o.userpass.password == ""
            ),
        ),
        (
            VAULT,
            {"url": "http://v", "auth_type": "ldap", "username": "airflow", "password": SECRET},
            "vault-ldap-password",
            lambda o: o.auth_method == "ldap" and o.ldap.mount_point == "ldap",
        ),
        (
            VAULT,
            {
                "url": "http://v",
                "auth_type": "jwt",
                "jwt_role": "airflow",
                "jwt_token": SECRET,
                "auth_mount_point": "oidc",
            },
            "vault-jwt",
            lambda o: (
                o.auth_method == "jwt" and (o.jwt.role, o.jwt.mount_point) == ("airflow", "oidc")
            ),
        ),
        (
            VAULT,
            {
                "url": "http://v",
                "auth_type": "aws_iam",
                "role_id": "airflow-worker",
                "key_id": "AKIA0000",
                "secret_id": SECRET,
                "region": "eu-west-1",
                "auth_mount_point": "aws-prod",
            },
            "vault-aws-credentials",
            lambda o: (
                o.auth_method == "aws_iam"
                and (o.aws_iam.role, o.aws_iam.region) == ("airflow-worker", "eu-west-1")
                and (o.aws_iam.mount_point, o.aws_iam.profile)
                == ("aws-prod", "airflow-secrets-agent")
            ),
        ),
        (
            SM,
            {
                "aws_access_key_id": "AKIA0000",
                "aws_secret_access_key": SECRET,
                "extra_conn_words": {"user": ["db_user"]},
                "full_url_mode": False,
            },
            "aws-credentials",
            lambda o: (
                o.profile == "airflow-secrets-agent"
                and o.extra_conn_words == {"user": ("db_user",)}
            ),
        ),
    ],
)
def test_credentials_go_to_private_files(
    tmp_path: Path, provider: str, kwargs: dict[str, Any], credential: str, check: Any
) -> None:
    result = migrate(tmp_path, **backend_env(provider, kwargs))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr + written(tmp_path)
    path = tmp_path / "out" / "credentials" / credential
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and SECRET in path.read_text()
    assert check(load_config(tmp_path / "out" / "agent.toml").backends[0].options)
    assert f'"{path}"' in (tmp_path / "out" / "agent.toml").read_text()  # referenced by path
    checked = cli(tmp_path, "check-config", str(tmp_path / "out" / "agent.toml"))
    assert checked.returncode == 0, checked.stderr
    assert "warning" not in checked.stderr  # kinds is written: the new meaning of "" is meant


def test_aws_keys_need_no_environment_and_check_config_reads_their_file(
    tmp_path: Path,
) -> None:
    keys = {"aws_access_key_id": "AKIA0000", "aws_secret_access_key": SECRET}
    result = migrate(tmp_path, **backend_env(SSM, keys))
    assert result.returncode == 0, result.stderr
    assert (
        "AWS_SHARED_CREDENTIALS_FILE" not in result.stdout
        and "kwargs to review" not in result.stdout
    )
    path = tmp_path / "out" / "credentials" / "aws-credentials"
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert (options.credentials_file, options.profile) == (str(path), "airflow-secrets-agent")
    path.unlink()
    checked = cli(tmp_path, "check-config", str(tmp_path / "out" / "agent.toml"))
    assert checked.returncode == 78
    assert f"cannot read the credentials file {path}: No such file or directory" in checked.stderr


def test_vault_aws_iam_keys_sign_for_us_east_1_as_the_provider_does(tmp_path: Path) -> None:
    kwargs = {"url": "http://v", "auth_type": "aws_iam", "key_id": "AKIA0000", "secret_id": SECRET}
    result = migrate(tmp_path, **backend_env(VAULT, kwargs), AWS_DEFAULT_REGION="eu-west-1")
    assert result.returncode == 0, result.stderr
    table = load_config(tmp_path / "out" / "agent.toml").backends[0].options.aws_iam
    assert table.region == "us-east-1"  # not the node's: hvac's default, which the keys used


def test_vault_aws_iam_on_the_default_chain_with_a_role_to_assume(tmp_path: Path) -> None:
    assume = {"RoleArn": "arn:aws:iam::123456789012:role/vault", "RoleSessionName": "worker"}
    kwargs = {"url": "http://v", "auth_type": "aws_iam", "assume_role_kwargs": assume}
    result = migrate(tmp_path, **backend_env(VAULT, kwargs))
    assert result.returncode == 0, result.stderr
    assert "kwargs to review" not in result.stdout
    table = load_config(tmp_path / "out" / "agent.toml").backends[0].options.aws_iam
    assert (table.role_arn, table.role_session_name) == (assume["RoleArn"], "worker")
    assert (table.role, table.profile, table.credentials_file) == ("", "", "")
    assert not (tmp_path / "out" / "credentials").exists() or not any(
        (tmp_path / "out" / "credentials").iterdir()
    )


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        ("/etc/vault/client.pem", ("client.pem", "client.pem")),
        (["/etc/c.pem", "/etc/c.key"], ("c.pem", "c.key")),
    ],
)
def test_vault_client_certificate(tmp_path: Path, cert: Any, expected: tuple[str, str]) -> None:
    kwargs = {"url": "https://v:8200", "token_path": "/run/t", "cert": cert}
    result = migrate(tmp_path, **backend_env(VAULT, kwargs))
    assert result.returncode == 0, result.stderr
    assert "kwargs to review" not in result.stdout
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert (Path(options.client_cert).name, Path(options.client_key).name) == expected


def test_local_filesystem_backend(tmp_path: Path) -> None:
    variables = tmp_path / "variables.json"
    variables.write_text('{"a": "b"}')
    result = migrate(tmp_path, **backend_env(FILES, {"variables_file_path": str(variables)}))
    assert result.returncode == 0, result.stderr
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert options.variables_file == str(variables)
    assert cli(tmp_path, "check-config", str(tmp_path / "out" / "agent.toml")).returncode == 0
    relative = migrate(tmp_path, **backend_env(FILES, {"variables_file_path": "v.json"}))
    assert relative.returncode == 78 and "absolute" in relative.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no [secrets] backend"),
        (backend_env("my.own.Backend", {}), "no translation for the backend class"),
        (
            {"AIRFLOW__SECRETS__BACKEND": VAULT, "AIRFLOW__SECRETS__BACKEND_KWARGS": "{url"},
            "not valid JSON",
        ),
        (
            {"AIRFLOW__SECRETS__BACKEND": VAULT, "AIRFLOW__SECRETS__BACKEND_KWARGS_SECRET": "k"},
            "kept in the secrets backend itself",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "auth_type": "radius", "radius_secret": SECRET}),
            "auth_type 'radius'",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "auth_type": "ldap", "password": SECRET}),
            "auth_type ldap: username and password are both needed",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "auth_type": "aws_iam", "secret_id": SECRET}),
            "auth_type aws_iam: key_id and secret_id go together",
        ),
        (
            backend_env(
                VAULT,
                {
                    "url": "http://v",
                    "auth_type": "aws_iam",
                    "assume_role_kwargs": {"RoleArn": "arn:aws:iam::1:role/r", "ExternalId": "x"},
                },
            ),
            "not ['ExternalId']",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "auth_type": "jwt", "jwt_role": "r"}),
            "auth_type jwt: jwt_role and one of jwt_token / jwt_token_path",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "token": SECRET})
            | {"AIRFLOW__WORKERS__SECRETS_BACKEND": SSM},
            "differ",
        ),
        (
            backend_env(VAULT, {"url": "http://v", "variables_path": ["a", "b"]}),
            "one [[backends]] table per value",
        ),
        (
            {"AIRFLOW__SECRETS__BACKEND": VAULT, "AIRFLOW__SECRETS__BACKEND_KWARGS_CMD": "false"},
            "exited 1",
        ),
        (backend_env(GCP, {"impersonation_chain": ["sa", None]}), "impersonation_chain: expected"),
        (  # was read as the map's keys: ["sa"]
            backend_env(GCP, {"impersonation_chain": {"sa": SECRET}}),
            "impersonation_chain: expected an account or a list of accounts",
        ),
        (
            backend_env(GCP, {"project_id": "p", "gcp_credential_config_file": f"ext-{SECRET}"}),
            "gcp_credential_config_file: neither an absolute file path nor JSON",
        ),
        (
            # Was written to agent.toml as the map's Python text, "{'path': '...'}".
            backend_env(VAULT, {"url": "http://v", "mount_point": {"path": SECRET}}),
            "mount_point: expected a string, got dict",
        ),
    ],
)
def test_unsafe_or_ambiguous_stops(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = migrate(tmp_path, **env)
    assert result.returncode == 78 and message in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "agent.toml").exists()


@pytest.mark.parametrize(
    ("provider", "kwargs", "setting"),
    [
        (VAULT, {"url": f"https://airflow:{SECRET}@vault.example:8200", "token": "t"}, "url"),
        (SM, {"endpoint_url": f"http://key:{SECRET}@127.0.0.1:4566"}, "endpoint_url"),
        (AZURE, {"vault_url": f"https://{SECRET}@v.vault.azure.net"}, "vault_url"),
    ],
)
def test_a_url_holding_a_password_stops_rather_than_land_in_agent_toml(
    tmp_path: Path, provider: str, kwargs: dict[str, Any], setting: str
) -> None:
    """agent.toml is 0640 and not a credential file: a user:password@ in a URL kwarg is refused
    (naming the setting, never echoing it), not copied there."""
    code, out, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78 and setting in err and "must not hold credentials" in err, err
    assert SECRET not in out + err
    assert not (tmp_path / "out").exists()


def test_nothing_is_overwritten_or_written_through_a_symlink(tmp_path: Path) -> None:
    env = backend_env(VAULT, {"url": "http://v", "token": SECRET})
    assert migrate(tmp_path, **env).returncode == 0
    before = (tmp_path / "out" / "agent.toml").read_text()
    again = migrate(tmp_path, **env)
    assert again.returncode == 78 and "already exists" in again.stderr
    assert (tmp_path / "out" / "agent.toml").read_text() == before
    # A planted symlink where a credential goes is refused, and its target left alone.
    target = tmp_path / "target"
    target.write_text("untouched")
    (tmp_path / "out2" / "credentials").mkdir(parents=True)
    (tmp_path / "out2" / "credentials" / "vault-token").symlink_to(target)
    planted = cli(tmp_path, "migrate", "-o", str(tmp_path / "out2"), **env)
    assert planted.returncode == 78 and target.read_text() == "untouched"


def test_a_second_run_into_the_same_directory_adds_nothing(tmp_path: Path) -> None:
    """Refused before the first file: a run with other kwargs used to leave its credential
    file beside the first run's, then stop at agent.toml."""
    assert migrate_here(tmp_path, VAULT, {"url": "http://v", "token": "t"})[0] == 0
    before = sorted((tmp_path / "out").rglob("*"))
    approle = {"url": "http://v", "auth_type": "approle", "role_id": "r", "secret_id": SECRET}
    code, out, err = migrate_here(tmp_path, VAULT, approle)
    assert code == 78 and "agent.toml: already exists" in err and "nothing written" in err, err
    assert sorted((tmp_path / "out").rglob("*")) == before and SECRET not in out + err


@pytest.mark.parametrize("option", ["token", "namespace"])
def test_text_that_cannot_be_written_leaves_no_file(tmp_path: Path, option: str) -> None:
    """A lone surrogate (JSON's \\ud800) cannot be UTF-8: refused before anything is created,
    not after an empty credential file or agent.toml."""
    kwargs = {"url": "http://v", "token": "t"} | {option: "bad\ud800"}
    code, out, err = migrate_here(tmp_path, VAULT, kwargs)
    assert code == 78 and "nothing written" in err and "bad" not in out + err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("switch", "multi_team", "team_layout"),
    [
        ({}, "True", True),  # the provider's default: team paths, with multi_team
        ({"use_team_secrets_path": True}, "True", True),
        ({"use_team_secrets_path": False}, "True", False),
        ({"use_team_secrets_path": True}, "False", False),  # the provider reads none then
        ({}, "False", False),
    ],
)
def test_vault_team_paths_as_the_provider_reads_them(
    tmp_path: Path, switch: dict[str, bool], multi_team: str, team_layout: bool
) -> None:
    """hashicorp 4.8.4 reads ``{path}/{team}/{key}`` when multi_team and the kwarg are on."""
    kwargs = {"url": "http://v", "token_path": "/run/t"} | switch
    env = {"AIRFLOW__CORE__MULTI_TEAM": multi_team}
    code, out, err = migrate_here(tmp_path, VAULT, kwargs, env=env)
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.team_layout is (
        team_layout
    )
    assert "passes it to hvac" not in out  # translated, not left to review
    ignored = "use_team_secrets_path: ignored by the provider while [core] multi_team is off"
    assert (ignored in out) is (switch == {"use_team_secrets_path": True} and not team_layout)


def test_vault_team_paths_switched_by_a_string(tmp_path: Path) -> None:
    """A per-key variable gives a string, which the provider tests for truth: "false" is on."""
    env = {"AIRFLOW__SECRETS__BACKEND_KWARG__USE_TEAM_SECRETS_PATH": "false"}
    multi_team = {"AIRFLOW__CORE__MULTI_TEAM": "true"}
    code, _, err = migrate_here(tmp_path, VAULT, {"url": "http://v"}, env=env | multi_team)
    assert code == 78 and "use_team_secrets_path: the provider reads any non-empty string" in err
    # Without multi_team the provider never reads the switch: nothing to refuse, no team layout.
    code, _, err = migrate_here(tmp_path, VAULT, {"url": "http://v"}, env=env)
    assert code == 0, err
    assert not load_config(tmp_path / "out" / "agent.toml").backends[0].options.team_layout
    shutil.rmtree(tmp_path / "out")
    env["AIRFLOW__SECRETS__BACKEND_KWARG__USE_TEAM_SECRETS_PATH"] = "true"
    code, _, err = migrate_here(tmp_path, VAULT, {"url": "http://v"}, env=env | multi_team)
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.team_layout


def test_relative_socket_is_refused(tmp_path: Path) -> None:
    """The agent would resolve it against its config's directory, Airflow against its own."""
    code, _, err = migrate_here(tmp_path, SM, {}, socket_path="rel.sock")
    assert code == 78, err
    assert "--socket: 'rel.sock' is relative" in err and "give the absolute path" in err
    assert not (tmp_path / "out").exists()


def test_an_airflow_config_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cfg"
    code, _, err = migrate_here(tmp_path, airflow_config=missing)
    assert code == 78 and f"--airflow-config: {missing} does not exist" in err, err
    code, _, err = migrate_here(tmp_path, airflow_config=tmp_path)
    assert code == 78 and f"{tmp_path}: cannot read (Is a directory)" in err, err
    # $AIRFLOW_HOME/airflow.cfg may be missing (Airflow runs on variables): said, not refused.
    code, _, err = migrate_here(tmp_path)
    assert code == 78 and f"{tmp_path / 'airflow' / 'airflow.cfg'} (no such file)" in err, err


@pytest.mark.parametrize(
    ("provider", "kwargs", "message"),
    [
        (SM, {"connections_prefix": 5}, "connections_prefix: expected a string, or null"),
        (AZURE, {"vault_url": "https://v", "variables_prefix": True}, "got a boolean"),
        (GCP, {"config_prefix": ["a", "b"]}, "config_prefix: expected a string, or null"),
        (VAULT, {"url": "http://v", "variables_path": {"a": 1}}, "got an object"),
        (VAULT, {"url": "http://v", "global_secrets_path": "common"}, "one [[backends]] table"),
    ],
)
def test_a_prefix_of_another_type_is_named_as_such(
    tmp_path: Path, provider: str, kwargs: dict[str, Any], message: str
) -> None:
    """Only Vault's paths take lists (fallbacks, one table each); the rest want a string."""
    code, _, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78 and message in err, err
    assert "a int" not in err and ("[[backends]]" in err) is (
        provider == VAULT and "global" in str(kwargs)
    )


def test_airflow_cfg_values_read_with_airflow_interpolation_and_variables(tmp_path: Path) -> None:
    """Airflow's parser reads ``%%`` as ``%`` and expands ``$VAR`` in the file's values (not
    in its ``_cmd`` commands); a continuation line belongs to the value."""
    airflow_cfg(
        tmp_path,
        f"[secrets]\nbackend = {SM}\n"
        'backend_kwargs = {"connections_prefix": "a%%b/$PREFIX_PART",\n'
        '    "variables_prefix": "${PREFIX_PART}/vars", "config_prefix": "$UNSET_PART"}\n',
    )
    code, _, err = migrate_here(tmp_path, env={"PREFIX_PART": "team"})
    assert code == 0, err
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert (options.connections_prefix, options.variables_prefix, options.config_prefix) == (
        "a%b/team",
        "team/vars",
        "$UNSET_PART",  # as os.path.expandvars leaves an unknown variable
    )


def test_multi_team_read_as_airflow_getboolean_reads_it(tmp_path: Path) -> None:
    """airflow.cfg keeps an inline comment in the value; Airflow's getboolean drops it."""
    airflow_cfg(
        tmp_path,
        f"[core]\nmulti_team = True  # teams on\n[secrets]\nbackend = {SM}\n",
    )
    code, _, err = migrate_here(tmp_path)
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.team_layout


def test_a_lone_percent_in_airflow_cfg_is_refused_as_airflow_refuses_it(tmp_path: Path) -> None:
    airflow_cfg(tmp_path, f'[secrets]\nbackend = {SM}\nbackend_kwargs = {{"sep": "50%"}}\n')
    code, _, err = migrate_here(tmp_path)
    assert code == 78, err
    assert "[secrets] backend_kwargs" in err and "%%" in err and "50%" not in err, err


@pytest.mark.parametrize("raw", ["null", "", "  ", "{}", "[]", "false", "0", '""'])
def test_empty_kwargs_json_is_no_kwargs_as_in_airflow(tmp_path: Path, raw: str) -> None:
    """Airflow builds the backend with no kwargs for any empty JSON value (``if not kwargs``)."""
    env = {"AIRFLOW__SECRETS__BACKEND": SM, "AIRFLOW__SECRETS__BACKEND_KWARGS": raw}
    code, _, err = migrate_here(tmp_path, env=env)
    assert code == 0, err
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert options.connections_prefix == "airflow/connections"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"role_arn": "arn:aws:iam::1:role/r", "assume_role_kwargs": {"ExternalId": "x"}},
            "takes RoleSessionName, not ['ExternalId']",
        ),
        (
            {"role_arn": "arn:aws:iam::1:role/r", "assume_role_kwargs": '{"ExternalId": "x"}'},
            "assume_role_kwargs: expected a map",
        ),
        (
            {"role_arn": "arn:aws:iam::1:role/r", "assume_role_method": "assume_role_with_saml"},
            "assume_role_method 'assume_role_with_saml'",
        ),
        (
            {"session_kwargs": {"aws_access_key_id": "AKIA", "aws_secret_access_key": SECRET}},
            "session_kwargs",
        ),
    ],
)
@pytest.mark.parametrize("provider", [SM, SSM])
def test_aws_role_settings_the_agent_cannot_follow_stop(
    tmp_path: Path, provider: str, kwargs: dict[str, Any], message: str
) -> None:
    """The provider would assume the role another way, or log in as another identity."""
    code, out, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78 and message in err, err
    assert SECRET not in out + err


def test_aws_role_session_name_from_assume_role_kwargs(tmp_path: Path) -> None:
    kwargs = {
        "role_arn": "arn:aws:iam::1:role/r",
        "assume_role_method": "assume_role",
        "assume_role_kwargs": {"RoleSessionName": "from-airflow", "RoleArn": "ignored"},
    }
    code, out, err = migrate_here(tmp_path, SM, kwargs)
    assert code == 0, err
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert options.role_arn == "arn:aws:iam::1:role/r"
    assert options.role_session_name == "from-airflow"
    assert "assume_role" not in out  # all taken, nothing left to review
    # Without role_arn the provider never reads them: dropped, and said so.
    shutil.rmtree(tmp_path / "out")
    code, out, err = migrate_here(tmp_path, SSM, {"assume_role_kwargs": {"ExternalId": "x"}})
    assert code == 0 and "assume_role_kwargs: ignored by the provider without role_arn" in out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aws_access_key_id": None, "aws_secret_access_key": None, "aws_session_token": None},
        {"aws_access_key_id": "", "aws_secret_access_key": ""},
        {"profile_name": "p", "aws_session_token": None},
    ],
)
def test_aws_null_or_empty_keys_are_no_keys_as_the_provider_reads_them(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    """The provider uses keys only where they are set (else the profile or the default chain);
    a templated config's nulls stopped with "go together" or "both set"."""
    code, _out, err = migrate_here(tmp_path, SM, kwargs)
    assert code == 0, err
    assert not (tmp_path / "out" / "credentials").exists()
    options = load_config(tmp_path / "out" / "agent.toml").backends[0].options
    assert (options.credentials_file, options.profile) == ("", kwargs.get("profile_name", ""))


@pytest.mark.parametrize(
    ("provider", "kwargs"),
    [
        (
            SM,
            {"role_arn": "arn:aws:iam::1:role/r", "assume_role_kwargs": {"RoleSessionName": None}},
        ),
        (
            VAULT,
            {
                "url": "http://v",
                "auth_type": "aws_iam",
                "assume_role_kwargs": {"RoleArn": "arn:aws:iam::1:role/r", "RoleSessionName": 5},
            },
        ),
    ],
)
def test_a_role_session_name_that_is_not_a_string_stops(
    tmp_path: Path, provider: str, kwargs: dict[str, Any]
) -> None:
    """It was written as str(): null became the session name "None"."""
    code, _out, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78 and "RoleSessionName must be a string" in err, err


@pytest.mark.parametrize(
    ("provider", "kwargs"),
    [
        (SM, {}),
        (GCP, {"project_id": "p"}),
        (AZURE, {"vault_url": "https://v.vault.azure.net"}),
    ],
)
def test_a_null_sep_stops(tmp_path: Path, provider: str, kwargs: dict[str, Any]) -> None:
    """The providers fail on it or build names such as airflow/connectionsNoneid; it was
    written as sep = "" (on Azure: underscores dropped from every name)."""
    code, _out, err = migrate_here(tmp_path, provider, kwargs | {"sep": None})
    assert code == 78 and "sep: null is no separator" in err, err


def test_azure_connection_verify_true_is_the_default_and_false_stops(tmp_path: Path) -> None:
    base = {"vault_url": "https://v.vault.azure.net", "connection_verify": True}
    code, out, err = migrate_here(tmp_path, AZURE, base)
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.ca_file == ""
    assert "kwargs to review" not in out
    code, _, err = migrate_here(tmp_path, AZURE, base | {"connection_verify": False})
    assert code == 78 and "connection_verify: only a CA bundle path" in err, err


def test_sep_is_a_secrets_manager_option_only(tmp_path: Path) -> None:
    """SystemsManagerParameterStoreBackend has no ``sep``: the provider ignores it."""
    code, out, err = migrate_here(tmp_path, SSM, {"sep": "_", "variables_prefix": "/vars"})
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.sep == "/"
    assert "sep: ignored by the provider" in out
    shutil.rmtree(tmp_path / "out")
    code, out, err = migrate_here(tmp_path, SM, {"sep": "_"})
    assert code == 0, err
    assert load_config(tmp_path / "out" / "agent.toml").backends[0].options.sep == "_"


@pytest.mark.parametrize(
    ("provider", "kwargs", "kwarg"),
    [
        (GCP, {"gcp_key_path": "keys/sa.json", "project_id": "p"}, "gcp_key_path"),
        (VAULT, {"url": "https://v", "token_path": "tok"}, "token_path"),
        (VAULT, {"url": "https://v", "token": SECRET, "verify": "ca.pem"}, "verify"),
        (VAULT, {"url": "https://v", "token": SECRET, "cert": ["c.pem", "/k.pem"]}, "cert"),
        (VAULT, {"url": "https://v", "token": SECRET, "cert": "both.pem"}, "cert"),
        (AZURE, {"vault_url": "https://v.vault.azure.net", "connection_verify": "ca.pem"}, ""),
        (FILES, {"variables_file_path": "v.json"}, "variables_file_path"),
    ],
)
def test_a_relative_file_path_is_refused_for_every_backend(
    tmp_path: Path, provider: str, kwargs: dict[str, Any], kwarg: str
) -> None:
    """Airflow opens it from each process's working directory, the agent would from its
    config's: two different files, so the command asks for the absolute path."""
    code, out, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78, out
    # Once, though two options come from one kwarg (cert: client_cert and client_key).
    assert err.count(f"[secrets] backend_kwargs '{kwarg or 'connection_verify'}'") == 1, err
    assert "is relative" in err and "give the absolute path" in err and SECRET not in err
    assert not (tmp_path / "out").exists()


PEM = f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("provider", "kwargs"),
    [
        (VAULT, {"url": "https://v", "token_path": f"hvs.{SECRET}"}),
        (VAULT, {"url": "https://v", "token": "t", "verify": PEM}),
        (
            VAULT,
            {
                "url": "https://v",
                "auth_type": "kubernetes",
                "kubernetes_role": "r",
                "kubernetes_jwt_path": f"eyJ.{SECRET}.sig",
            },
        ),
        (GCP, {"gcp_key_path": json.dumps({"private_key": SECRET}), "project_id": "p"}),
    ],
)
def test_a_secret_pasted_as_a_file_path_is_not_echoed(
    tmp_path: Path, provider: str, kwargs: dict[str, Any]
) -> None:
    """The provider's path kwarg holding the secret itself: refused by its name, not its value."""
    code, out, err = migrate_here(tmp_path, provider, kwargs)
    assert code == 78, out
    assert "[secrets] backend_kwargs" in err and SECRET not in out + err
    assert not (tmp_path / "out").exists()


def test_per_key_variables_left_in_the_environment_are_named_for_removal(tmp_path: Path) -> None:
    """Airflow adds them to the client's kwargs too, and the client refuses kwargs it does not
    know: every lookup would fail once Airflow points at the agent."""
    env = {
        "AIRFLOW__SECRETS__BACKEND_KWARG__REGION_NAME": "eu-west-1",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__ROLE_ARN": SECRET,
    }
    code, out, err = migrate_here(tmp_path, SM, {}, env=env)
    assert code == 0, err
    assert "remove AIRFLOW__SECRETS__BACKEND_KWARG__REGION_NAME" in out
    assert "remove AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__ROLE_ARN" in out
    assert SECRET not in out + err


def test_airflow_already_on_the_agent_is_said_so(tmp_path: Path) -> None:
    client = "secrets_agent_client.AgentSecretsBackend"
    code, _, err = migrate_here(tmp_path, client, {"socket_path": "/run/a.sock"})
    assert code == 78 and f"[secrets] already names {client}" in err, err


def test_a_failed_write_undoes_the_files_and_directories_it_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = [(out / "a", b"x", 0o600), (out / "missing" / "b", b"y", 0o600)]
    with pytest.raises(MigrationError, match="cannot create"):
        write_all([out], files)
    assert not out.exists()


@pytest.mark.parametrize("as_text", [False, True])
def test_gcp_credential_configuration_goes_to_a_private_file_named_absolutely(
    tmp_path: Path, as_text: bool
) -> None:
    """The provider takes the configuration as a map or as its JSON text: both are written to
    a 0600 file (the text used to be printed in the to-do list), and the to-do names that file
    by its absolute path (GOOGLE_APPLICATION_CREDENTIALS is read from the working directory)."""
    config = {"type": "external_account", "credential_source": {"headers": {"x": SECRET}}}
    given = json.dumps(config) if as_text else config
    kwargs = {"project_id": "p", "gcp_credential_config_file": given}
    code, out, err = migrate_here(tmp_path, GCP, kwargs)
    path = tmp_path / "out" / "credentials" / "gcp-credential-config.json"
    assert code == 0 and f"GOOGLE_APPLICATION_CREDENTIALS={path} " in out, out + err
    assert SECRET not in out + err + written(tmp_path)
    assert_private(path, json.dumps(config))


@pytest.mark.parametrize(
    ("alias", "kwargs", "backend_type"),
    [
        ("hashicorp_vault.VaultBackend", {"url": "http://v", "token": "t"}, "vault"),
        ("aws_secrets_manager.SecretsManagerBackend", {}, "aws_secrets_manager"),
        ("aws_systems_manager.SystemsManagerParameterStoreBackend", {}, "aws_ssm"),
        ("gcp_secrets_manager.CloudSecretManagerBackend", {}, "gcp_secret_manager"),
        ("gcp_secrets_manager.CloudSecretsManagerBackend", {}, "gcp_secret_manager"),
        (
            "azure_key_vault.AzureKeyVaultBackend",
            {"vault_url": "https://v.vault.azure.net"},
            "azure_key_vault",
        ),
    ],
)
def test_airflow_2_contrib_paths_are_the_providers_classes(
    tmp_path: Path, alias: str, kwargs: dict[str, Any], backend_type: str
) -> None:
    """Airflow 2.10 still imports these deprecated paths as the providers' classes
    (airflow/contrib/secrets/__init__.py); they used to stop with "no translation"."""
    code, out, err = migrate_here(tmp_path, f"airflow.contrib.secrets.{alias}", kwargs)
    assert code == 0 and f"type = {backend_type!r}" in out, err
