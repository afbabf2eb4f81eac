"""The gcp_secret_manager backend against the google provider's (22.8.0)
CloudSecretManagerBackend, on the same loopback gRPC Secret Manager.

The provider builds its ``SecretManagerServiceClient`` without client options; the probe gives
that client the suite's endpoint, CA and the provider's own credentials (a service-account key
whose token endpoint is on loopback), in the probe process only. Cases: default, custom,
``None`` and ``""`` prefixes, a custom ``sep``, names Secret Manager cannot hold, a disabled
version, a denied secret, and two teams. The agent runs on what ``secrets-agent migrate``
writes from the provider's kwargs, plus its loopback endpoint and CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.gcp_server import PROJECT, Gcp
from support.parity import TEAMS, migrated_mismatches, q, tq
from support.parity import KwargsSetup as Setup

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

PROVIDER = "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"
C, V, CFG = "connection", "variable", "config"

# The deliberate differences for GCP (docs/migrating.md).
DISABLED = "a disabled latest version is a miss"
DENIED = "a denied secret is a denial"
LONG = "x" * 240  # "airflow-variables-" + 240 characters: over Secret Manager's 255


SETUPS = [
    Setup(
        "defaults",
        q(C, "uri", "json", "absent")
        + q(V, "hello", "under_score", "absent", "has.dot", LONG, "old", "forbidden")
        + q(CFG, "sql_alchemy_conn", "absent"),
        differs={"old": DISABLED, "forbidden": DENIED},
    ),
    Setup(
        "custom prefix and sep, a kind off",
        q(V, "greeting", "hello") + q(C, "uri") + q(CFG, "sql_alchemy_conn"),
        kwargs={"variables_prefix": "team_vars", "sep": "__", "connections_prefix": None},
    ),
    Setup(
        '"" prefix: the name is sep + id',
        q(V, "bare", "hello") + q(C, "uri"),
        kwargs={"variables_prefix": "", "config_prefix": None},
    ),
    Setup(
        "two teams",
        tq(V, "shared", *TEAMS)
        + tq(V, "only_b", *TEAMS)
        + tq(C, "db", *TEAMS)
        + tq(V, "x--y", *TEAMS)
        + tq(CFG, "sql_alchemy_conn", None),
        multi_team=True,
    ),
]


def seed(gcp: Gcp) -> None:
    gcp.put("airflow-connections-uri", "postgresql://u:p%40ss@db.local:5432/app?sslmode=require")
    gcp.put("airflow-connections-json", '{"conn_type": "http", "host": "h", "port": 443}')
    gcp.put("airflow-variables-hello", "world")
    gcp.put("airflow-variables-under_score", "kept as is")
    gcp.put("airflow-config-sql_alchemy_conn", "sqlite:////tmp/x.db")
    gcp.put("airflow-variables-old", "v1")
    gcp.disable_latest("airflow-variables-old")
    gcp.put("airflow-variables-forbidden", "not for us")
    gcp.store.denied.add("airflow-variables-forbidden")
    gcp.put("team_vars__greeting", "hi")
    gcp.put("-bare", "empty prefix")
    gcp.put("airflow-variables-team_a--shared", "team a's")
    gcp.put("airflow-variables-shared", "global")
    gcp.put("airflow-variables-team_b--only_b", "team b's")
    gcp.put("airflow-connections-team_a--db", "mysql://team-a-host/db")
    gcp.put("airflow-connections-db", "mysql://global-host/db")
    gcp.put("airflow-variables-x--y", "ambiguous")


@pytest.fixture(scope="module")
def gcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gcp]:
    made = Gcp(tmp_path_factory.mktemp("gcp-parity"))
    try:
        seed(made)
        yield made
    finally:
        made.close()


def test_gcp_backend_answers_as_the_google_provider(gcp: Gcp, short_tmp: Path) -> None:
    loopback = {"secret_manager": {"endpoint": gcp.server.endpoint, "ca_file": str(gcp.ca_file)}}
    base = {"gcp_key_path": str(gcp.key_file), "project_id": PROJECT}
    additions = {"api_endpoint": gcp.server.endpoint, "ca_file": str(gcp.ca_file)}
    problems = migrated_mismatches(short_tmp, PROVIDER, SETUPS, base, additions, loopback)
    assert not problems, "\n".join(problems)
