"""Vault's aws (iam) login: AWS credentials from the default chain, the request STS checks.

OpenBao's build has no aws plugin: ``support.vault_aws_auth`` stands in for it, in front of a
real OpenBao, and hands the signed request to moto's STS, which checks the signature and the key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault.backend import VaultBackend
from secrets_agent.backends.vault.options import AwsIamAuth, VaultOptions
from secrets_agent.config.schema import BackendCommon, BackendConfig
from secrets_agent.errors import StartupError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from secrets_agent.runtime import BackendPool
from support.bao import BaoServer
from support.helpers import FakeClock
from support.moto_aws import MotoServer
from support.vault_aws_auth import AwsAuthVault, Role

V = Kind.VARIABLE
ACCOUNT = "123456789012"  # moto's
POLICY = 'path "secret/data/variables/*" { capabilities = ["read"] }'
PROFILE = "vault-login"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vault(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsAuthVault]:
    bao = BaoServer(tmp_path_factory.mktemp("bao-aws"))
    bao.start()
    front = AwsAuthVault(bao, moto.url)
    front.start()
    try:
        bao.api("PUT", "/v1/sys/policies/acl/airflow", {"policy": POLICY})
        bao.kv_put("variables/greeting", {"value": "hello"})
        yield front
    finally:
        front.stop()
        bao.stop()


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test gives: no keys from the suite's environment or home."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class Started:
    def __init__(self, vault: AwsAuthVault, moto: MotoServer) -> None:
        self.vault, self.moto = vault, moto
        self.backends: list[VaultBackend] = []

    async def __call__(self, checked: bool = True, **table: Any) -> VaultBackend:
        options = VaultOptions(
            url=self.vault.url,
            auth_method="aws_iam",
            aws_iam=AwsIamAuth(**table),
            backoff_initial=0.05,
        )
        backend = VaultBackend("vault", options, BackendContext(Metrics(), FakeClock()))
        self.backends.append(backend)
        if not checked:
            await backend.start()
            return backend
        with self.moto.enforcing_auth():  # the login's signature and key are checked
            await backend.start()
        return backend


@pytest.fixture
async def started(vault: AwsAuthVault, moto: MotoServer) -> AsyncIterator[Started]:
    factory = Started(vault, moto)
    yield factory
    for backend in factory.backends:
        await backend.close()


def credentials_file(path: Path, key: tuple[str, str], profile: str = PROFILE) -> str:
    path.write_text(
        f"[{profile}]\naws_access_key_id = {key[0]}\naws_secret_access_key = {key[1]}\n"
    )
    path.chmod(0o600)
    return str(path)


def user(moto: MotoServer, vault: AwsAuthVault, name: str) -> tuple[str, str]:
    """An IAM user with a key, bound to a Vault role of its own name."""
    key = moto.access_key(name, ["sts:GetCallerIdentity"])
    vault.roles[name] = Role(f"arn:aws:iam::{ACCOUNT}:user/{name}", ("airflow",))
    return key


async def test_a_login_with_keys_from_a_credentials_file(
    moto: MotoServer, vault: AwsAuthVault, started: Started, tmp_path: Path
) -> None:
    key = user(moto, vault, "worker-a")
    before = vault.logins
    backend = await started(
        role="worker-a",
        profile=PROFILE,
        credentials_file=credentials_file(tmp_path / "credentials", key),
    )
    assert backend.health().ready, backend.health().detail
    assert await backend.fetch(V, "greeting") == "hello"
    assert vault.logins == before + 1
    assert vault.seen_regions[-1] == "us-east-1"  # hvac's default: no region anywhere


async def test_the_default_chain_and_its_region(
    moto: MotoServer,
    vault: AwsAuthVault,
    started: Started,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = user(moto, vault, "worker-env")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    # A Vault whose STS is us-east-1's (the default) refuses a request signed for eu-west-1.
    refused = await started()
    assert not refused.health().ready
    assert vault.seen_regions[-1] == "eu-west-1"
    monkeypatch.setattr(vault, "sts_region", "eu-west-1")  # a mount with a regional STS
    backend = await started()  # no role: Vault's default, the principal's name
    assert await backend.fetch(V, "greeting") == "hello"
    monkeypatch.setattr(vault, "sts_region", "ap-south-1")
    backend = await started(role="worker-env", region="ap-south-1")  # the table's wins
    assert backend.health().ready


async def test_a_mount_that_requires_the_server_id_header(
    moto: MotoServer,
    vault: AwsAuthVault,
    started: Started,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = user(moto, vault, "worker-h")
    file = credentials_file(tmp_path / "credentials", key)
    monkeypatch.setattr(vault, "header_value", "vault.example.internal")
    without = await started(role="worker-h", profile=PROFILE, credentials_file=file)
    assert not without.health().ready
    assert without.health().detail == "backend 'vault': Vault error (InvalidRequest, login)"
    backend = await started(
        role="worker-h",
        profile=PROFILE,
        credentials_file=file,
        header_value="vault.example.internal",
    )
    assert await backend.fetch(V, "greeting") == "hello"


async def test_a_wrong_secret_key_is_a_clean_login_failure(
    moto: MotoServer,
    vault: AwsAuthVault,
    started: Started,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_id, _ = user(moto, vault, "worker-w")
    wrong = "wr0ngSecretKeyNeverLogged0000000000000000"
    caplog.set_level(logging.DEBUG)  # every logger, botocore's and hvac's included
    backend = await started(
        role="worker-w",
        profile=PROFILE,
        credentials_file=credentials_file(tmp_path / "credentials", (key_id, wrong)),
    )
    assert not backend.health().ready
    assert backend.health().detail == "backend 'vault': Vault error (InvalidRequest, login)"
    assert "login failed" in caplog.text
    assert wrong not in caplog.text


async def test_keys_rotated_in_the_file_are_read_at_the_next_login(
    moto: MotoServer, vault: AwsAuthVault, started: Started, tmp_path: Path
) -> None:
    old = user(moto, vault, "worker-r")
    path = tmp_path / "credentials"
    backend = await started(
        role="worker-r", profile=PROFILE, credentials_file=credentials_file(path, old)
    )
    assert await backend.fetch(V, "greeting") == "hello"
    iam = moto.client("iam")
    new = iam.create_access_key(UserName="worker-r")["AccessKey"]
    iam.delete_access_key(UserName="worker-r", AccessKeyId=old[0])
    credentials_file(path, (new["AccessKeyId"], new["SecretAccessKey"]))
    vault.bao.api("POST", "/v1/auth/token/revoke-self", {}, token=backend._client.token)
    with moto.enforcing_auth():
        assert await backend.fetch(V, "greeting") == "hello"  # logged in again: the new key


async def test_a_role_assumed_first(
    moto: MotoServer, vault: AwsAuthVault, started: Started, tmp_path: Path
) -> None:
    source = moto.access_key("assumer", ["sts:AssumeRole"])
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam = moto.client("iam")
    role = iam.create_role(RoleName="airflow-vault", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName="airflow-vault",
        PolicyName="p",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:*", "Resource": "*"}],
            }
        ),
    )
    arn = role["Role"]["Arn"]
    vault.roles["airflow-vault"] = Role(arn, ("airflow",))
    # moto refuses every AssumeRole while it checks keys: this login goes unchecked; the ARN
    # STS gives is still the assumed role's, which the Vault role is bound to.
    backend = await started(
        False,
        role="airflow-vault",
        profile=PROFILE,
        credentials_file=credentials_file(tmp_path / "credentials", source),
        role_arn=arn,
        sts_endpoint_url=moto.url,
    )
    assert backend.health().ready, backend.health().detail
    assert await backend.fetch(V, "greeting") == "hello"


async def test_no_credentials_anywhere_fails_the_start(vault: AwsAuthVault) -> None:
    pool = BackendPool(Metrics(), FakeClock())
    options = VaultOptions(url=vault.url, auth_method="aws_iam")  # no table: every default
    config = BackendConfig(BackendCommon(name="vault", type="vault"), options)
    with pytest.raises(StartupError, match=r"aws_iam login: no AWS credentials \(.*\)"):
        await pool.start([config], ())


async def test_an_unreadable_credentials_file_or_unknown_profile_fails_the_start(
    vault: AwsAuthVault, tmp_path: Path
) -> None:
    pool = BackendPool(Metrics(), FakeClock())
    for table, message in (
        (AwsIamAuth(credentials_file=str(tmp_path / "missing")), "cannot read the credentials"),
        (AwsIamAuth(profile="nobody"), "AWS credentials: ProfileNotFound"),
    ):
        options = VaultOptions(url=vault.url, auth_method="aws_iam", aws_iam=table)
        config = BackendConfig(BackendCommon(name="vault", type="vault"), options)
        with pytest.raises(StartupError, match=message):
            await pool.start([config], ())
