"""IAM auth tokens for ElastiCache and MemoryDB: what AWS checks in one, checked here by a
SigV4 verifier of the test's own; then a TLS store whose ACL user accepts only the token the
tier presents, through a refresh and a reconnect."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError

from secrets_agent.config.loader import parse_config
from secrets_agent.config.schema import StoreIamConfig
from secrets_agent.errors import ConfigError, StartupError
from secrets_agent.lookup.shared.clients import store_client
from secrets_agent.lookup.shared.iam import EXPIRES, LAST_USE, REFRESH, IamTokens
from support.gcp_server import TokenEndpoint
from support.helpers import FakeClock
from support.redis_server import RedisServer

KEY_ID, SECRET = "AKIAIAMTOKENTEST0001", "iam-token-test-secret-never-logged-000000"
NEW_KEY_ID = "AKIAIAMTOKENTEST0002"
PROFILE = "store"


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def credentials(path: Path, key_id: str = KEY_ID, token: str = "") -> str:
    extra = f"aws_session_token = {token}\n" if token else ""
    path.write_text(
        f"[{PROFILE}]\naws_access_key_id = {key_id}\naws_secret_access_key = {SECRET}\n{extra}"
    )
    return str(path)


def iam(tmp_path: Path, **overrides: Any) -> StoreIamConfig:
    table: dict[str, Any] = {
        "service": "elasticache",
        "cache_name": "airflow-fleet",
        "profile": PROFILE,
        "credentials_file": credentials(tmp_path / "credentials"),
    }
    return StoreIamConfig(**(table | overrides))


async def pair(tokens: IamTokens) -> tuple[str, str]:
    """ElastiCache's and MemoryDB's credentials: the user, and the token."""
    credentials = await tokens.get_credentials_async()
    assert len(credentials) == 2
    return credentials[0], credentials[-1]


async def renewed(tokens: IamTokens, old: str) -> str:
    """The token a background renewal leaves, once it has (polled: it runs on a thread)."""
    for _ in range(1000):
        token = (await tokens.get_credentials_async())[-1]
        if token != old:
            return token
        await asyncio.sleep(0.01)  # waiting for the thread's result, not timing behaviour
    raise AssertionError("no renewed token")


def verified(token: str, secret: str = SECRET) -> dict[str, str]:
    """The token's query, after checking its SigV4 query signature from the spec (not
    botocore's code): canonical request, string to sign, derived key."""
    host, _, query = token.partition("/?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    empty = hashlib.sha256(b"").hexdigest()
    canonical = f"GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{empty}"
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    day, region, service, _ = scope.split("/")
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected), "the signature AWS would recompute differs"
    return params | {"host": host}


def test_an_elasticache_token_is_a_presigned_connect_request(tmp_path: Path) -> None:
    token = IamTokens("agent-user", iam(tmp_path)).token()[0]
    assert not token.startswith("https://")  # ElastiCache takes it without the scheme
    params = verified(token)
    assert params["host"] == "airflow-fleet"
    assert (params["Action"], params["User"]) == ("connect", "agent-user")
    assert params["X-Amz-Expires"] == "900" and params["X-Amz-SignedHeaders"] == "host"
    assert params["X-Amz-Credential"].startswith(f"{KEY_ID}/")
    assert params["X-Amz-Credential"].endswith("/us-east-1/elasticache/aws4_request")
    assert "ResourceType" not in params and "X-Amz-Security-Token" not in params


def test_serverless_memorydb_region_and_a_session_token(tmp_path: Path) -> None:
    serverless = IamTokens("u", iam(tmp_path, serverless=True, region="eu-west-1")).token()[0]
    params = verified(serverless)
    assert params["ResourceType"] == "ServerlessCache"
    assert "/eu-west-1/elasticache/" in params["X-Amz-Credential"]
    file = credentials(tmp_path / "temporary", token="a-session-token")
    memorydb = IamTokens("u", iam(tmp_path, service="memorydb", credentials_file=file)).token()[0]
    params = verified(memorydb)
    assert "/memorydb/aws4_request" in params["X-Amz-Credential"]
    assert params["X-Amz-Security-Token"] == "a-session-token"
    assert "ResourceType" not in params


async def test_a_token_is_reused_until_refresh_then_made_anew_from_the_chain(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    tokens = IamTokens("u", iam(tmp_path), clock)
    user, first = await pair(tokens)
    assert user == "u"
    credentials(tmp_path / "credentials", NEW_KEY_ID)  # rotated: read at the next token
    clock.advance(REFRESH - 1)
    assert await tokens.get_credentials_async() == ("u", first)
    clock.advance(1)  # due: the current one still serves while the next is made
    assert await tokens.get_credentials_async() == ("u", first)
    second = await renewed(tokens, first)
    assert verified(second)["X-Amz-Credential"].startswith(f"{NEW_KEY_ID}/")
    assert tokens.get_credentials() == ("u", second)


async def test_once_no_token_is_usable_connections_wait_for_one_renewal(tmp_path: Path) -> None:
    clock = FakeClock()
    tokens = IamTokens("u", iam(tmp_path), clock)
    _, first = await pair(tokens)
    clock.advance(EXPIRES - LAST_USE)  # a minute left: not presented any more
    credentials(tmp_path / "credentials", NEW_KEY_ID)
    waiting = [pair(tokens) for _ in range(5)]
    tokens_seen = {token for _, token in await asyncio.gather(*waiting)}
    assert len(tokens_seen) == 1 and first not in tokens_seen  # one renewal, shared
    (tmp_path / "credentials").unlink()  # the next renewal fails: the store's error, no secret
    clock.advance(EXPIRES)
    with pytest.raises(AuthenticationError, match="cannot read the credentials file"):
        await pair(tokens)


def test_no_credentials_is_a_store_authentication_error(tmp_path: Path) -> None:
    tokens = IamTokens("u", StoreIamConfig(service="memorydb", cache_name="c"))
    with pytest.raises(AuthenticationError, match=r"shared_cache.iam: no AWS credentials"):
        tokens.token()
    unknown = IamTokens("u", iam(tmp_path, profile="nobody"))
    with pytest.raises(AuthenticationError, match=r"no AWS credentials \(ProfileNotFound\)"):
        unknown.token()


@pytest.mark.parametrize(
    ("shared", "problem"),
    [
        ({"url": "redis://h:6379/0"}, "shared_cache.iam: needs a rediss://"),
        ({"url": "rediss://h:6379/0", "username": ""}, "shared_cache.username: iam needs"),
        ({"password": "x"}, "an IAM token replaces the password"),
        ({"iam": {"cache_name": "a/b"}}, "shared_cache.iam.cache_name: must be"),
        ({"iam": {"cache_name": "Airflow"}}, "1-40 lowercase letters"),
        ({"url": "rediss+sentinel://h:26379/m"}, "no Sentinel"),
        ({"iam": {"sts_endpoint_url": "sts.internal"}}, "must start with http:// or https://"),
        ({"iam": {"service": "memorydb", "serverless": True}}, "only ElastiCache"),
        ({"iam": {"service": "redis"}}, "shared_cache.iam.service"),
        ({"iam": {"service": "memorystore"}}, "shared_cache.iam.cache_name: is for ElastiCache"),
        (
            {"username": "", "iam": {"service": "memorystore", "cache_name": "", "region": "x"}},
            "shared_cache.iam.region: is for ElastiCache and MemoryDB, not Memorystore",
        ),
        (
            {"iam": {"service": "memorystore", "cache_name": ""}},
            "shared_cache.username: Memorystore's IAM token is sent without a username",
        ),
    ],
)
def test_config_problems(tmp_path: Path, shared: dict[str, Any], problem: str) -> None:
    table: dict[str, Any] = {
        "url": "rediss+cluster://cfg.example:6379",
        "username": "agent-user",
        "iam": {"service": "elasticache", "cache_name": "airflow-fleet"},
    }
    table = table | {k: v for k, v in shared.items() if k != "iam"}
    table["iam"] = table["iam"] | shared.get("iam", {})
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.").replace("/", "/")):
        parse_config({"shared_cache": table}, base_dir=tmp_path)


def test_an_unreadable_credentials_file_is_a_startup_error(tmp_path: Path) -> None:
    table = {
        "url": "rediss://127.0.0.1:1/0",
        "username": "agent-user",
        "iam": {"service": "elasticache", "cache_name": "c", "credentials_file": "missing"},
    }
    config = parse_config({"shared_cache": table}, base_dir=tmp_path)
    with pytest.raises(StartupError, match=r"shared_cache\.iam\.credentials_file .*cannot read"):
        store_client(config.shared_cache)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("iam"), tls=True, user=("agent-user", "unset"))
    server.start()
    yield server
    server.stop()


async def test_the_store_sees_the_token_as_the_users_password(
    store: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ACL user's password is set to the token the tier will present: only that one opens
    the store, before and after a refresh and a dropped connection."""
    caplog.set_level(logging.DEBUG)
    table = {
        "url": store.url,
        "ca_file": store.ca_file,
        "username": "agent-user",
        "timeout": 5.0,
        "connect_timeout": 10.0,
        "iam": {
            "service": "elasticache",
            "cache_name": "airflow-fleet",
            "profile": PROFILE,
            "credentials_file": credentials(tmp_path / "credentials"),
        },
    }
    shared = parse_config({"shared_cache": table}, base_dir=tmp_path).shared_cache
    client, _ = store_client(shared)
    assert isinstance(client, Redis)  # one server (rediss://)
    clock = FakeClock()
    tokens: IamTokens = client.connection_pool.connection_kwargs["credential_provider"]
    tokens._clock = clock  # the test's clock decides when a token is old
    try:
        _, token = await pair(tokens)
        store.command("ACL", "SETUSER", "agent-user", "resetpass", f">{token}")
        await client.set("airflow-secrets-agent:probe", "1")
        assert await client.get("airflow-secrets-agent:probe") == b"1"
        clients = str(store.command("CLIENT", "LIST"))
        assert "user=agent-user" in clients

        clock.advance(EXPIRES)  # none usable: the connection waits for a new one
        credentials(tmp_path / "credentials", NEW_KEY_ID)
        _, renewed = await pair(tokens)
        assert renewed != token
        store.command("ACL", "SETUSER", "agent-user", "resetpass", f">{renewed}")
        store.command("CLIENT", "KILL", "USER", "agent-user")  # the old token's connections
        assert await client.get("airflow-secrets-agent:probe") == b"1"  # reconnected: new token
    finally:
        await client.aclose()
    assert token not in caplog.text and renewed not in caplog.text and SECRET not in caplog.text


@pytest.fixture(scope="module")
def google() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.shutdown()
    endpoint.server_close()


@pytest.fixture
def no_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No application-default credentials: none in the environment, the home or a metadata
    server (the suite's NO_GCE_CHECK)."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")


async def test_a_memorystore_token_is_a_google_access_token_made_anew_before_it_ends(
    google: TokenEndpoint, tmp_path: Path, no_adc: None
) -> None:
    key = google.key_file(tmp_path)
    clock = FakeClock()
    google.access_token = "ya29.first-token"
    tokens = IamTokens("", StoreIamConfig(service="memorystore", credentials_file=str(key)), clock)
    grants = google.grants
    assert await tokens.get_credentials_async() == ("ya29.first-token",)  # AUTH <token>: no user
    google.access_token = "ya29.second-token"
    clock.advance(3600 - 300 - 5)  # the endpoint's tokens live an hour
    assert await tokens.get_credentials_async() == ("ya29.first-token",)
    assert google.grants == grants + 1
    clock.advance(10)  # due: renewed in the background
    assert await renewed(tokens, "ya29.first-token") == "ya29.second-token"


def test_memorystore_without_credentials_or_with_a_bad_key(
    tmp_path: Path, no_adc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google.auth

    searches = []
    real = google.auth.default

    def counted(*args: Any, **kwargs: Any) -> Any:
        searches.append(1)  # each search probes the metadata server: slow, and it warns
        return real(*args, **kwargs)

    monkeypatch.setattr(google.auth, "default", counted)
    clock = FakeClock()
    adc = IamTokens("", StoreIamConfig(service="memorystore"), clock)
    with pytest.raises(AuthenticationError, match="no Google credentials"):
        adc.token()
    with pytest.raises(AuthenticationError, match="no Google credentials"):
        adc.token()  # remembered: no second search within the minute
    assert len(searches) == 1
    clock.advance(60)
    with pytest.raises(AuthenticationError, match="no Google credentials"):
        adc.token()
    assert len(searches) == 2
    (tmp_path / "key.json").write_text('{"type": "service_account", "private_key": "s3cret"}')
    bad = IamTokens(
        "", StoreIamConfig(service="memorystore", credentials_file=str(tmp_path / "key.json"))
    )
    with pytest.raises(AuthenticationError, match="not a service-account key") as info:
        bad.token()
    assert "s3cret" not in str(info.value)


async def test_memorystore_store_takes_the_token_as_the_default_users_password(
    store: RedisServer, google: TokenEndpoint, tmp_path: Path, no_adc: None
) -> None:
    google.access_token = "ya29.store-token"
    table = {
        "url": store.url,
        "ca_file": store.ca_file,
        "timeout": 5.0,
        "connect_timeout": 10.0,
        "iam": {"service": "memorystore", "credentials_file": str(google.key_file(tmp_path))},
    }
    shared = parse_config({"shared_cache": table}, base_dir=tmp_path).shared_cache
    client, _ = store_client(shared)
    assert isinstance(client, Redis)
    store.command(
        "ACL", "SETUSER", "default", "on", "resetpass", ">ya29.store-token", "~*", "+@all"
    )
    try:
        await client.set("airflow-secrets-agent:probe", "m")
        assert await client.get("airflow-secrets-agent:probe") == b"m"
        assert "user=default" in str(store.command("CLIENT", "LIST"))
    finally:
        await client.aclose()
        store.command("ACL", "SETUSER", "default", "off")
