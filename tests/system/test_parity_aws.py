"""The AWS backends against the amazon provider's (9.39.0) SecretsManagerBackend and
SystemsManagerParameterStoreBackend, on the same moto server.

Cases: the layouts of the provider's ``test_secrets_manager.py`` / ``test_systems_manager.py``
(default, custom, empty, ``None`` and trailing-separator prefixes, a custom ``sep`` (which
SSM's backend ignores), every alias word of a JSON connection and ``extra_conn_words``, lookup
patterns in mixed case), plus binary secrets and secrets pending deletion, and access keys in
the kwargs (moto checking them, with no credentials in the environment).
The agent runs on what ``secrets-agent migrate`` writes from the provider's kwargs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.config.loader import load_config
from support.helpers import running_agent
from support.moto_aws import REGION, MotoServer
from support.parity import (
    TEAMS,
    Group,
    Query,
    ask_both,
    migrated,
    mismatches,
    outcome,
    q,
    tq,
)

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

SM = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SSM = "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend"
TYPES = {SM: "aws_secrets_manager", SSM: "aws_ssm"}
C, V, CFG = "connection", "variable", "config"
PREFIXES = {C: "connections_prefix", V: "variables_prefix", CFG: "config_prefix"}
PATTERNS = {C: "connections_lookup_pattern", V: "variables_lookup_pattern"}


@dataclass
class Setup:
    name: str
    provider: str
    queries: list[Query]
    prefixes: dict[str, str | None] = field(default_factory=dict)  # None disables the kind
    patterns: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # same name on both sides
    agent_options: dict[str, Any] = field(default_factory=dict)  # the agent's own additions

    def provider_kwargs(self, aws: MotoServer) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"endpoint_url": aws.url, "region_name": REGION}
        kwargs.update({PREFIXES[k]: p for k, p in self.prefixes.items()})
        kwargs.update({PATTERNS[k]: p for k, p in self.patterns.items()})
        return kwargs | self.options


ALIASES = {
    "login": ["login", "user", "username", "user_name"],
    "password": ["password", "pass", "key"],
    "host": ["host", "remote_host", "server"],
    "schema": ["database", "schema"],
    "conn_type": ["conn_type", "conn_id", "connection_type", "engine"],
}
ALIAS_IDS = [f"alias_{field}_{word}" for field, words in ALIASES.items() for word in words]

SETUPS = [
    Setup(
        "secrets manager defaults",
        SM,
        q(
            C,
            "uri",
            "json",
            "json_extra_text",
            "custom_words",
            "binary",
            "doomed",
            "absent",
            *ALIAS_IDS,
        )
        + q(V, "hello", "json_text", "binary", "doomed", "absent")
        + q(CFG, "sql_alchemy_conn", "absent"),
    ),
    Setup(
        "secrets manager extra_conn_words and the ignored urlencoded flag",
        SM,
        q(C, "custom_words", "encoded"),
        options={
            "extra_conn_words": {"user": ["db_user"], "password": ["db_pass"]},
            "are_secret_values_urlencoded": True,
        },
    ),
    Setup(
        "secrets manager custom, trailing, empty and disabled prefixes",
        SM,
        q(C, "root_conn", "uri") + q(V, "v") + q(CFG, "sql_alchemy_conn"),
        prefixes={C: "", V: "custom/vars///", CFG: None},
    ),
    Setup(
        "secrets manager custom sep",
        SM,
        q(V, "greeting"),
        prefixes={V: "team-a_vars_"},
        options={"sep": "_"},
    ),
    Setup(
        "secrets manager lookup patterns in mixed case",
        SM,
        q(V, "test", "Test", "TEST", "other") + q(C, "uri", "json"),
        patterns={V: "T.*", C: "URI"},
        prefixes={V: "patterns"},
    ),
    Setup(
        "ssm defaults",
        SSM,
        q(C, "uri", "json") + q(V, "hello", "secure", "absent") + q(CFG, "sql_alchemy_conn"),
    ),
    Setup(
        "ssm prefixes without a leading slash, trailing, empty and disabled",
        SSM,
        q(V, "x", "hello") + q(C, "rooted") + q(CFG, "sql_alchemy_conn"),
        prefixes={V: "team/vars/", C: "", CFG: None},
    ),
    Setup(
        "ssm ignores sep (not one of its options)",
        SSM,
        q(V, "x"),
        prefixes={V: "/team/vars"},
        options={"sep": "_"},
    ),
    Setup(
        "ssm lookup patterns in mixed case",
        SSM,
        q(V, "test", "Test", "other"),
        patterns={V: "t.*"},
        prefixes={V: "/patterns"},
    ),
]


TEAM_QUERIES = (
    tq(V, "shared", *TEAMS)
    + tq(V, "only_b", *TEAMS)
    + tq(C, "db", *TEAMS)
    + tq(V, "x--y", *TEAMS)
    + tq(CFG, "sql_alchemy_conn", None)
)
# Airflow 3 multi-team ([core] multi_team on): the team's name first, then the global one.
TEAM_SETUPS = [
    Setup("secrets manager team layout", SM, TEAM_QUERIES, agent_options={"team_layout": True}),
    Setup("ssm team layout", SSM, TEAM_QUERIES, agent_options={"team_layout": True}),
]


def seed_teams(aws: MotoServer) -> None:
    for prefix, put in (
        ("airflow/", aws.put_secret),
        ("/airflow/", lambda name, value: aws.put_parameter(name, value)),
    ):
        put(f"{prefix}variables/team_a--shared", "team a's")
        put(f"{prefix}variables/shared", "global")
        put(f"{prefix}variables/team_b--only_b", "team b's")
        put(f"{prefix}connections/team_a--db", "mysql://team-a-host/db")
        put(f"{prefix}connections/db", "mysql://global-host/db")
        put(f"{prefix}variables/x--y", "ambiguous")


def seed(aws: MotoServer) -> None:
    put, param = aws.put_secret, aws.put_parameter
    put("airflow/connections/uri", "postgresql://u:p%40ss@db.local:5432/app?sslmode=require")
    put(
        "airflow/connections/json",
        {"conn_type": "http", "host": "h", "port": 443, "extra": {"a": 1}},
    )
    put("airflow/connections/json_extra_text", {"conn_type": "http", "extra": '{"b": 2}'})
    put(
        "airflow/connections/custom_words", {"conn_type": "mysql", "db_user": "me", "db_pass": "pw"}
    )
    put("airflow/connections/encoded", {"conn_type": "mysql", "login": "me", "password": "p%40ss"})
    for field_name, words in ALIASES.items():
        for word in words:
            base = {"host": "h"} if field_name == "conn_type" else {"conn_type": "mysql"}
            value = base | {word: "mysql" if field_name == "conn_type" else f"{field_name}-value"}
            put(f"airflow/connections/alias_{field_name}_{word}", value)
    put("airflow/variables/hello", "world")
    put("airflow/variables/json_text", '{"a": [1, 2]}')
    put("airflow/config/sql_alchemy_conn", "sqlite:////tmp/x.db")
    client = aws.client("secretsmanager")
    for kind in ("connections", "variables"):
        client.create_secret(Name=f"airflow/{kind}/binary", SecretBinary=b"\x00\x01")
        put(f"airflow/{kind}/doomed", "soon gone")
        client.delete_secret(SecretId=f"airflow/{kind}/doomed")  # pending deletion
    put("root_conn", "mysql://root")
    put("custom/vars/v", "custom")
    put("team-a_vars_greeting", "hi")
    for name in ("test", "Test", "TEST", "other"):
        put(f"patterns/{name}", f"value of {name}")
    param("/airflow/connections/uri", "mysql://ssm-host/db", secure=True)
    param("/airflow/connections/json", json.dumps({"conn_type": "http", "host": "h"}))
    param("/airflow/variables/hello", "world")
    param("/airflow/variables/secure", "hidden", secure=True)
    param("/airflow/config/sql_alchemy_conn", "sqlite:////tmp/ssm.db")
    param("/team/vars/x", "from team")
    param("/rooted", "mysql://rooted")
    for name in ("test", "Test", "other"):
        param(f"/patterns/{name}", f"value of {name}")


@pytest.fixture(scope="module")
def aws() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        seed(server)
        seed_teams(server)
        yield server
    finally:
        server.stop()


def asked(aws: MotoServer, tmp: Path, setups: list[Setup]) -> list[Group]:
    """Each setup migrated, served by an agent and asked beside the provider."""
    groups = []
    with contextlib.ExitStack() as stack:
        for index, setup in enumerate(setups):
            directory = tmp / str(index)
            directory.mkdir()
            multi_team = bool(setup.agent_options.get("team_layout"))
            config = migrated(directory, setup.provider, setup.provider_kwargs(aws), multi_team)
            agent = stack.enter_context(running_agent(config))
            groups.append(
                Group(
                    setup.provider,
                    setup.provider_kwargs(aws),
                    agent.socket_path,
                    setup.queries,
                    multi_team=multi_team,
                )
            )
        ask_both(groups)
    return groups


def problems_of(setups: list[Setup], groups: list[Group]) -> str:
    return "\n".join(
        f"{setup.name}: {problem}"
        for setup, group in zip(setups, groups, strict=True)
        for problem in mismatches(group)
    )


def test_aws_backends_answer_as_the_amazon_provider(aws: MotoServer, short_tmp: Path) -> None:
    setups = SETUPS + TEAM_SETUPS
    assert not (problems := problems_of(setups, asked(aws, short_tmp, setups))), problems


def test_access_keys_in_the_kwargs_need_nothing_in_the_environment(
    aws: MotoServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """migrate writes the keys to credentials/aws-credentials and names it in the config; with
    moto checking every signature and no keys in the environment, only those keys can work."""
    actions = ["secretsmanager:GetSecretValue", "ssm:GetParameter"]
    key_id, secret = aws.access_key("migrated", actions)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(short_tmp / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(short_tmp / "none"))
    keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    setups = [
        Setup(
            "secrets manager with access keys",
            SM,
            q(C, "uri", "json") + q(V, "hello", "absent"),
            options=keys,
        ),
        Setup("ssm with access keys", SSM, q(V, "hello", "secure", "absent"), options=keys),
    ]
    with aws.enforcing_auth():
        groups = asked(aws, short_tmp, setups)
    assert not (problems := problems_of(setups, groups)), problems
    found = [ours for group in groups for _, ours in group.answers if outcome(ours) == "found"]
    assert len(found) == 5  # the keys were accepted: not identical errors on both sides
    written = load_config(short_tmp / "0" / "migrated" / "agent.toml").backends[0].options
    credentials = short_tmp / "0" / "migrated" / "credentials" / "aws-credentials"
    assert (written.credentials_file, written.profile) == (
        str(credentials),
        "airflow-secrets-agent",
    )
