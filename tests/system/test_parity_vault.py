"""The vault backend against the hashicorp provider's VaultBackend (4.8.4), on the same OpenBao.

Cases: the layouts of the provider's ``test_vault.py`` (KV v1 and v2, custom and ``None``
mounts, ``None``/empty/custom/trailing-separator paths, ``conn_uri`` and field connections,
a secret without ``value``), plus soft-deleted and destroyed versions, fields Airflow's
``Connection`` rejects, and logging in with ``auth_type="userpass"`` (default and custom
``auth_mount_point``; a path the user's policy denies) and ``auth_type="aws_iam"`` (keys in the
kwargs; the aws plugin OpenBao lacks stood in for, with moto's STS checking the signature).
The agent runs on what ``secrets-agent migrate`` writes from the provider's kwargs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from support.bao import BaoServer
from support.helpers import running_agent
from support.moto_aws import MotoServer
from support.parity import TEAMS, Group, Query, ask_both, migrated, mismatches, q, tq
from support.vault_aws_auth import AwsAuthVault, Role

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

PROVIDER = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
C, V, CFG = "connection", "variable", "config"
PATHS = {C: "connections_path", V: "variables_path", CFG: "config_path"}

# A Vault user as the provider logs in with auth_type="userpass" (the agent: [backends.userpass]
# with the password in a 0600 file that migrate writes).
USERPASS: dict[str, object] = {"auth_type": "userpass", "username": "airflow", "password": "pw-1"}
READER = """
path "+/data/*" { capabilities = ["read"] }
path "kv1/*" { capabilities = ["read"] }
path "secret/data/variables/forbidden" { capabilities = ["deny"] }
"""

# The deliberate differences for Vault (docs/migrating.md).
MAPPED_FIELDS = "connection fields Airflow's constructor rejects are mapped or dropped"


@dataclass
class Setup:
    name: str
    queries: list[Query]
    mount_point: str | None = "secret"
    kv_engine_version: int = 2
    paths: dict[str, str | None] = field(default_factory=dict)  # kind → path; None disables
    differs: dict[str, str] = field(default_factory=dict)  # id → listed difference
    team_layout: bool = False
    differs_for: dict[tuple[str, str | None], str] = field(default_factory=dict)  # (id, team)
    auth: dict[str, object] | None = None  # the login kwargs; None: the root token
    extra: dict[str, object] = field(default_factory=dict)  # more kwargs, as they are

    def provider_kwargs(self, bao: BaoServer) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "url": bao.url,
            "mount_point": self.mount_point,
            "kv_engine_version": self.kv_engine_version,
        }
        kwargs |= {"token": bao.root_token} if self.auth is None else self.auth
        kwargs.update({PATHS[kind]: path for kind, path in self.paths.items()})
        return kwargs | self.extra

    def allowed(self) -> dict[int, str]:
        listed = {i: self.differs[q[1]] for i, q in enumerate(self.queries) if q[1] in self.differs}
        for i, (_, secret_id, team) in enumerate(self.queries):
            if (secret_id, team) in self.differs_for:
                listed[i] = self.differs_for[(secret_id, team)]
        return listed


# Ids whose path hvac percent-encodes (a space, #, ?, %, +, unicode) or that nest.
ODD_IDS = ("with space", "hash#tag", "q?mark", "per%cent", "plus+sign", "dots.in.id", "ünï", "a/b")

ODD_SETUP = "ids Vault paths must escape, and values as stored"

SETUPS = [
    Setup(
        "kv2 defaults",
        q(C, "uri_conn", "field_conn", "extra_conn", "bad_fields", "absent")
        + q(C, "empty_conn_uri", "number_conn_uri")
        + q(V, "hello", "structured", "no_value", "soft_deleted", "destroyed", "absent")
        + q(CFG, "sql_alchemy_conn", "absent"),
    ),
    Setup(
        ODD_SETUP,
        q(V, *ODD_IDS, "odd absent", "empty", "spaced", "unicode_value")
        + q(C, "odd conn#1", "odd_uri"),
    ),
    Setup(
        "fields Airflow's Connection rejects",
        q(C, "dejson_conn", "id_conn", "null_conn_uri"),
        differs={k: MAPPED_FIELDS for k in ("dejson_conn", "id_conn", "null_conn_uri")},
    ),
    Setup(
        "kv1 mount",
        q(C, "v1conn") + q(V, "v1var", "absent"),
        mount_point="kv1",
        kv_engine_version=1,
    ),
    Setup(
        "custom mount and paths, trailing separators",
        q(C, "c1") + q(V, "v1", "absent"),
        mount_point="airflow",
        paths={C: "conns/", V: "vars"},
    ),
    Setup(
        "mount_point None: the mount from the secret id (#29734)",
        q(V, "airflow/hello", "airflow/absent", "hello", "kv1/v1var") + q(C, "airflow/c1"),
        mount_point=None,
        paths={C: "conns"},
    ),
    Setup(
        "mount_point None, kv1",
        q(V, "kv1/v1var", "v1var"),
        mount_point=None,
        kv_engine_version=1,
    ),
    Setup(
        "userpass login",
        q(C, "uri_conn") + q(V, "hello", "absent", "forbidden") + q(CFG, "sql_alchemy_conn"),
        auth=USERPASS,
    ),
    Setup(
        "userpass login at an auth_mount_point, mount_point None",
        q(V, "airflow/hello", "kv1/v1var", "hello"),
        mount_point=None,
        auth=USERPASS | {"password": "pw-2", "auth_mount_point": "airflow-users"},
    ),
    Setup(
        "empty and disabled paths",
        q(V, "root_var", "hello") + q(C, "uri_conn") + q(CFG, "sql_alchemy_conn"),
        paths={V: "", C: None, CFG: None},
    ),
]


# VaultBackend 4.8.4 reads only {path}/{team}/{key} for a team's lookup; the agent falls back
# to the global path, as the other providers do (docs/backends/vault.md, "Team layout").
GLOBAL_FALLBACK = "a team lookup falls back to the global path"
TEAM_SETUPS = [
    Setup(
        "two teams",
        tq(V, "shared", *TEAMS)
        + tq(V, "only_b", *TEAMS)
        + tq(C, "db", *TEAMS)
        + tq(V, "team_a/shared", None)
        + tq(CFG, "sql_alchemy_conn", None),
        team_layout=True,
        differs_for={("shared", "team_b"): GLOBAL_FALLBACK},
    ),
    Setup(
        "two teams, mount_point None",
        tq(V, "airflow/shared", *TEAMS),
        mount_point=None,
        team_layout=True,
        differs_for={("airflow/shared", "team_b"): GLOBAL_FALLBACK},
    ),
    Setup(
        "two teams, use_team_secrets_path false: global paths only, team_a/shared readable",
        tq(V, "shared", *TEAMS) + tq(C, "db", *TEAMS) + tq(V, "team_a/shared", None),
        team_layout=True,  # [core] multi_team on for both sides; the kwarg turns team paths off
        extra={"use_team_secrets_path": False},
    ),
]


def seed_teams(bao: BaoServer) -> None:
    for mount in ("secret", "airflow"):
        bao.kv_put("variables/team_a/shared", {"value": "team a's"}, mount=mount)
        bao.kv_put("variables/shared", {"value": "global"}, mount=mount)
    bao.kv_put("variables/team_b/only_b", {"value": "team b's"})
    bao.kv_put("connections/team_a/db", {"conn_uri": "mysql://team-a-host/db"})
    bao.kv_put("connections/team_b/db", {"conn_uri": "mysql://team-b-host/db"})
    bao.kv_put("connections/db", {"conn_uri": "mysql://global-host/db"})


def seed(bao: BaoServer) -> None:
    bao.api("POST", "/v1/sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
    bao.api("POST", "/v1/sys/mounts/airflow", {"type": "kv", "options": {"version": "2"}})
    kv = bao.kv_put
    kv("connections/uri_conn", {"conn_uri": "postgresql://u:p%40ss@db.local:5432/app?a=1"})
    kv(
        "connections/field_conn",
        {"conn_type": "http", "host": "api", "login": "svc", "password": "pw", "port": 443},
    )
    kv("connections/extra_conn", {"conn_type": "http", "host": "h", "extra": {"timeout": 5}})
    kv("connections/bad_fields", {"conn_type": "http", "colour": "blue"})
    kv("connections/dejson_conn", {"conn_type": "http", "host": "h", "extra_dejson": {"a": 1}})
    kv("connections/id_conn", {"conn_id": "id_conn", "conn_type": "http", "host": "h"})
    # The provider's ``if uri``: an empty conn_uri is none, and then Connection(**secret) fails.
    kv("connections/empty_conn_uri", {"conn_uri": "", "conn_type": "http", "host": "h"})
    kv("connections/number_conn_uri", {"conn_uri": 5})
    kv("connections/null_conn_uri", {"conn_uri": None, "conn_type": "http", "host": "h"})
    kv("variables/hello", {"value": "world"})
    for odd in ODD_IDS:
        kv(quote(f"variables/{odd}"), {"value": f"value of {odd}"})  # stored as it reads
    kv("variables/empty", {"value": ""})
    kv("variables/spaced", {"value": "  two lines\n\tand trailing space \n\n"})
    kv("variables/unicode_value", {"value": 'ünï \u2028 😀 "q" \\ {"a": 1}'})
    kv(quote("connections/odd conn#1"), {"conn_uri": "mysql://u:p%40ss@h/db"})
    kv(
        "connections/odd_uri",
        {"conn_uri": "mysql://us%3Aer:p%3A%2F%3F%23%25%2B%20x@[2001:db8::1]:3306/d%2Fb?a=1&b=x"},
    )
    kv("variables/structured", {"value": {"retries": 3, "tags": ["a"]}})
    kv("variables/no_value", {"other": "x"})
    kv("config/sql_alchemy_conn", {"value": "sqlite:////tmp/x.db"})
    kv("root_var", {"value": "at the mount root"})
    for name in ("soft_deleted", "destroyed"):
        kv(f"variables/{name}", {"value": "v1"})
        kv(f"variables/{name}", {"value": "v2"})
    kv("variables/forbidden", {"value": "denied to the user"})
    bao.api("PUT", "/v1/sys/policies/acl/reader", {"policy": READER})
    for mount, password in (("userpass", USERPASS["password"]), ("airflow-users", "pw-2")):
        bao.api("POST", f"/v1/sys/auth/{mount}", {"type": "userpass"})
        user = {"password": password, "token_policies": ["reader"]}
        bao.api("POST", f"/v1/auth/{mount}/users/airflow", user)
    bao.api("DELETE", "/v1/secret/data/variables/soft_deleted")
    bao.api("POST", "/v1/secret/destroy/variables/destroyed", {"versions": [2]})
    kv("variables/v1var", {"value": "from kv1"}, mount="kv1", version=1)
    kv("connections/v1conn", {"conn_uri": "mysql://kv1"}, mount="kv1", version=1)
    kv("conns/c1", {"conn_uri": "mysql://custom"}, mount="airflow")
    kv("vars/v1", {"value": "custom"}, mount="airflow")
    kv("variables/hello", {"value": "from the airflow mount"}, mount="airflow")


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path_factory.mktemp("bao-parity"))
    server.start()
    try:
        seed(server)
        seed_teams(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_iam(bao: BaoServer) -> Iterator[tuple[MotoServer, AwsAuthVault, Setup]]:
    """Logging in with ``auth_type="aws_iam"`` and the keys in the kwargs, through the stand-in
    for Vault's aws plugin; the setup's ``url`` is the stand-in's."""
    moto = MotoServer()
    moto.start()
    front = AwsAuthVault(bao, moto.url)
    front.start()
    try:
        key_id, secret = moto.access_key("airflow-worker", ["sts:GetCallerIdentity"])
        front.roles["airflow"] = Role("arn:aws:iam::123456789012:user/airflow-worker", ("reader",))
        auth: dict[str, object] = {"url": front.url, "auth_type": "aws_iam", "role_id": "airflow"}
        setup = Setup(
            "aws_iam login, keys in the kwargs",
            q(C, "uri_conn") + q(V, "hello", "absent", "forbidden") + q(CFG, "sql_alchemy_conn"),
            auth=auth | {"key_id": key_id, "secret_id": secret},
        )
        yield moto, front, setup
    finally:
        front.stop()
        moto.stop()


def test_vault_backend_answers_as_the_hashicorp_provider(
    bao: BaoServer, aws_iam: tuple[MotoServer, AwsAuthVault, Setup], short_tmp: Path
) -> None:
    moto, front, aws_setup = aws_iam
    groups = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(moto.enforcing_auth())  # both sides' logins: signatures checked
        for index, setup in enumerate(setups := [*SETUPS, *TEAM_SETUPS, aws_setup]):
            directory = short_tmp / str(index)
            directory.mkdir()
            config = migrated(directory, PROVIDER, setup.provider_kwargs(bao), setup.team_layout)
            agent = stack.enter_context(running_agent(config))
            groups.append(
                Group(
                    PROVIDER,
                    setup.provider_kwargs(bao),
                    agent.socket_path,
                    setup.queries,
                    multi_team=setup.team_layout,  # the provider's side of the same switch
                )
            )
        ask_both(groups)
    problems = [
        f"{setup.name}: {problem}"
        for setup, group in zip(setups, groups, strict=True)
        for problem in mismatches(group, setup.allowed())
    ]
    assert not problems, "\n".join(problems)
    odd = groups[[s.name for s in setups].index(ODD_SETUP)]
    found = [
        q[1]
        for q, (_, ours) in zip(odd.queries, odd.answers, strict=True)
        if "fields" in ours or "value" in ours
    ]
    assert len(found) == len(odd.queries) - 1, found  # not alike misses: all but "odd absent"
    assert front.logins >= 2  # the provider and the agent each logged in through aws_iam
