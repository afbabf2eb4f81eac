"""The azure_key_vault backend against the microsoft-azure provider's (15.2.1)
AzureKeyVaultBackend, on the same loopback HTTPS Key Vault and token endpoint.

The provider passes its extra kwargs to ``SecretClient`` (the vault's CA, the challenge check);
its ``ClientSecretCredential`` gets the suite's token endpoint and CA in the probe process only.
Cases: default, trailing-separator, ``""`` and ``None`` prefixes, ``sep = ""``, names Key Vault
cannot hold, a disabled secret, a denied one, and two teams (``--`` in connection, variable and
config ids). The agent runs on what ``secrets-agent migrate`` writes from the provider's kwargs,
plus its loopback authority.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.azure_server import CLIENT_ID, CLIENT_SECRET, TENANT, Azure
from support.parity import TEAMS, migrated_mismatches, q, tq
from support.parity import KwargsSetup as Setup

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

PROVIDER = "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend"
C, V, CFG = "connection", "variable", "config"

# The deliberate differences for Azure (docs/backends/azure.md, "Errors").
DISABLED = "a disabled secret is a miss"
LONG = "x" * 120  # "airflow-variables-" + 120 characters: over Key Vault's 127


SETUPS = [
    Setup(
        "defaults",
        q(C, "pg_main", "absent")
        + q(V, "greeting", "under_score", "absent", "has.dot", LONG, "old", "forbidden")
        + q(CFG, "sql_alchemy_conn"),
        differs={"old": DISABLED},
    ),
    Setup(
        'trailing separator, "" and None prefixes',
        q(C, "c_uri") + q(V, "hello_there", "greeting") + q(CFG, "sql_alchemy_conn"),
        kwargs={
            "connections_prefix": "airflow-connections-",
            "variables_prefix": "",
            "config_prefix": None,
        },
    ),
    Setup('sep "" drops underscores', q(V, "greeting_word"), kwargs={"sep": ""}),
    Setup(
        "two teams",
        tq(V, "shared", *TEAMS)
        + tq(C, "db", *TEAMS)
        + tq(V, "x--y", *TEAMS)
        + tq(V, "a__b", "team_a", None)
        + tq(CFG, "a--b", None)
        + tq(CFG, "sql_alchemy_conn", None),
        multi_team=True,
    ),
]


def seed(azure: Azure) -> None:
    put = azure.store.put
    put("airflow-connections-pg-main", "postgresql://u:p%40ss@db.local:5432/app")
    put("airflow-variables-greeting", "hello")
    put("airflow-variables-under-score", "dashed")
    put("airflow-config-sql-alchemy-conn", "sqlite:////tmp/x.db")
    put("airflow-variables-old", "v1")
    azure.store.disable_latest("airflow-variables-old")
    put("airflow-variables-forbidden", "not for us")
    azure.store.denied.add("airflow-variables-forbidden")
    put("airflow-connections-c-uri", "mysql://trailing")
    put("hello-there", "bare id")
    put("airflow-variablesgreetingword", "no sep")
    put("airflow-variables-team-a--shared", "team a's")
    put("airflow-variables-shared", "global")
    put("airflow-connections-team-a--db", "mysql://team-a-host/db")
    put("airflow-connections-db", "mysql://global-host/db")
    put("airflow-variables-x--y", "ambiguous")
    put("airflow-variables-a--b", "ambiguous too")
    put("airflow-config-a--b", "ambiguous config")


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azure]:
    made = Azure(tmp_path_factory.mktemp("azure-parity"))
    try:
        seed(made)
        yield made
    finally:
        made.close()


def test_azure_backend_answers_as_the_microsoft_azure_provider(
    azure: Azure, short_tmp: Path
) -> None:
    loopback = {"key_vault": {"authority": azure.tokens.url, "ca_file": str(azure.ca_file)}}
    base = {
        "vault_url": azure.vault.url,
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "connection_verify": str(azure.ca_file),  # SecretClient's kwargs, as in production
        "verify_challenge_resource": False,
    }
    additions = {"authority_host": azure.tokens.url, "disable_instance_discovery": True}
    problems = migrated_mismatches(short_tmp, PROVIDER, SETUPS, base, additions, loopback)
    assert not problems, "\n".join(problems)
