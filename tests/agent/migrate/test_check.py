"""``migrate`` writes only what the agent's own config loader takes, or names what it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from secrets_agent.config.loader import load_config
from support.migrate import migrate_here

VAULT = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
SM = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
AZURE = "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend"
FILES = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
SECRET = "s3cr3t-value-never-printed"
AZURE_PRINCIPAL = {
    "vault_url": "https://v.vault.azure.net",
    "tenant_id": "t",
    "client_id": "c",
    "client_secret": SECRET,
}


@pytest.mark.parametrize(
    ("provider", "kwargs", "request_options", "setting", "section"),
    [
        (AZURE, AZURE_PRINCIPAL | {"sep": "_"}, {}, "[secrets] backend_kwargs 'sep'", "secrets"),
        (
            SM,
            {"variables_lookup_pattern": "(["},
            {},
            "[secrets] backend_kwargs 'variables_lookup_pattern'",
            "secrets",
        ),
        (SM, {}, {"name": "Bad Name"}, "--name", "secrets"),
        (SM, {}, {"socket_path": "/run/" + "a" * 120 + ".sock"}, "--socket", "secrets"),
        (
            FILES,  # the option is named variables_file: the message names the kwarg
            {"variables_file_path": "/etc/airflow/variables.txt"},
            {},
            "[workers] secrets_backend_kwargs 'variables_file_path'",
            "workers",
        ),
        (
            VAULT,
            {"url": "http://v", "token_path": "/t", "kv_engine_version": 3},
            {},
            "[secrets] backend_kwargs 'kv_engine_version'",
            "secrets",
        ),
        (
            VAULT,  # inside the method's table, from a key of a kwarg of another name
            {
                "url": "http://v",
                "auth_type": "aws_iam",
                "assume_role_kwargs": {
                    "RoleArn": "arn:aws:iam::1:role/r",
                    "RoleSessionName": "a b",
                },
            },
            {},
            "[secrets] backend_kwargs 'assume_role_kwargs'",
            "secrets",
        ),
    ],
)
def test_a_config_the_agent_refuses_is_not_written(
    tmp_path: Path,
    provider: str,
    kwargs: dict[str, Any],
    request_options: dict[str, Any],
    setting: str,
    section: str,
) -> None:
    code, out, err = migrate_here(tmp_path, provider, kwargs, section, **request_options)
    assert code == 78, err
    assert "the agent would refuse" in err and f"  {setting}: cannot be translated" in err, err
    assert SECRET not in out + err
    # Nothing at all: not the directory, not a credential file with the client secret in it.
    assert not (tmp_path / "out").exists()


def test_what_the_loader_takes_is_written_and_checks(tmp_path: Path) -> None:
    """The check parses the very text written: credential paths in place, a valid name kept."""
    kwargs = AZURE_PRINCIPAL | {"sep": "-", "connections_prefix": "team-conn"}
    code, _, err = migrate_here(tmp_path, AZURE, kwargs, name="kv-prod")
    assert code == 0, err
    config = load_config(tmp_path / "out" / "agent.toml")
    options = config.backends[0].options
    assert config.backends[0].common.name == "kv-prod"
    assert options.client_secret_file == str(
        tmp_path / "out" / "credentials" / "azure-client-secret"
    )
    assert (tmp_path / "out" / "credentials" / "azure-client-secret").read_text() == SECRET
