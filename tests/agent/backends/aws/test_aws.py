"""The AWS backends against moto's server on loopback (fake credentials, no metadata probes)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from secrets_agent.backends.aws.errors import NOT_FOUND, error_code, translate
from secrets_agent.backends.aws.feed import SqsFeed, SqsFeedOptions
from secrets_agent.backends.aws.options import SecretsManagerOptions, SsmOptions
from secrets_agent.backends.aws.secrets_manager import SecretsManagerBackend
from secrets_agent.backends.aws.ssm import SsmBackend
from secrets_agent.backends.base import BackendContext, Versioned
from secrets_agent.backends.feeds import Message
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.helpers import FakeClock
from support.moto_aws import REGION, MotoServer

pytestmark = pytest.mark.integration

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG


@pytest.fixture
def aws(moto: MotoServer) -> MotoServer:
    moto.reset()
    return moto


class Backends:
    def __init__(self, aws: MotoServer) -> None:
        self.aws = aws
        self.metrics = Metrics()
        self.started: list[SecretsManagerBackend | SsmBackend] = []

    async def secrets_manager(self, **options: Any) -> SecretsManagerBackend:
        opts = SecretsManagerOptions(endpoint_url=self.aws.url, region=REGION, **options)
        backend = SecretsManagerBackend("sm", opts, BackendContext(self.metrics, FakeClock()))
        await backend.start()
        self.started.append(backend)
        return backend

    async def ssm(self, **options: Any) -> SsmBackend:
        opts = SsmOptions(endpoint_url=self.aws.url, region=REGION, **options)
        backend = SsmBackend("ssm", opts, BackendContext(self.metrics, FakeClock()))
        await backend.start()
        self.started.append(backend)
        return backend

    def calls(self, backend: str, operation: str, result: str = "ok") -> float:
        labels = {"backend": backend, "operation": operation, "result": result}
        return (
            self.metrics.registry.get_sample_value("secrets_agent_upstream_api_calls_total", labels)
            or 0.0
        )


@pytest.fixture
async def backends(aws: MotoServer) -> AsyncIterator[Backends]:
    made = Backends(aws)
    yield made
    for backend in made.started:
        await backend.close()


async def test_secrets_manager_uri_variables_config_and_missing(
    aws: MotoServer, backends: Backends
) -> None:
    aws.put_secret("airflow/connections/pg", "postgresql://u:s3cret@db:5432/app")
    aws.put_secret("airflow/variables/greeting", "hello")
    aws.put_secret("airflow/config/sql_alchemy_conn", "sqlite:////tmp/x.db")
    sm = await backends.secrets_manager()
    assert await sm.fetch(C, "pg") == "postgresql://u:s3cret@db:5432/app"
    assert await sm.fetch(V, "greeting") == "hello"
    assert await sm.fetch(CFG, "sql_alchemy_conn") == "sqlite:////tmp/x.db"
    assert await sm.fetch(V, "absent") is None
    assert backends.calls("sm", "GetSecretValue", "not_found") == 1
    assert sm.health().ready


async def test_json_connection_aliases_extra_words_and_no_url_decoding(
    aws: MotoServer, backends: Backends
) -> None:
    aws.put_secret(
        "airflow/connections/aliases",
        {
            "engine": "postgres",
            "user": "svc",
            "pass": "s3cret",
            "server": "db.local",
            "port": 5432,
            "database": "app",
            "extra": {"sslmode": "require"},
            "ignored": "x",
        },
    )
    aws.put_secret(
        "airflow/connections/custom", {"conn_type": "mysql", "db_user": "me", "password": "p%40ss"}
    )
    sm = await backends.secrets_manager(
        extra_conn_words={"user": ("db_user",)}, are_secret_values_urlencoded=True
    )
    assert json.loads(await sm.fetch(C, "aliases") or "") == {
        "conn_type": "postgres",
        "login": "svc",
        "password": "s3cret",
        "host": "db.local",
        "port": 5432,
        "schema": "app",
        "extra": {"sslmode": "require"},
    }
    assert json.loads(await sm.fetch(C, "custom") or "") == {
        "conn_type": "mysql",
        "login": "me",
        "password": "p%40ss",  # amazon 9.0.0+ ignores are_secret_values_urlencoded
    }


async def test_prefixes_separator_and_disabled_kinds(aws: MotoServer, backends: Backends) -> None:
    aws.put_secret("team-a_vars_greeting", "hi from a")
    aws.put_secret("root-conn", "mysql://h")
    aws.put_secret("airflow/config/key", "cfg")
    sm = await backends.secrets_manager(
        variables_prefix="team-a_vars__",
        sep="_",
        connections_prefix="",
        kinds=("connections", "variables"),
    )
    assert await sm.fetch(V, "greeting") == "hi from a"  # trailing separators dropped
    assert await sm.fetch(C, "root-conn") == "mysql://h"  # "" means the id alone
    assert not sm.supports(CFG)
    assert await sm.fetch(CFG, "key") is None
    trailing = await backends.secrets_manager(config_prefix="airflow/config//")
    assert await trailing.fetch(CFG, "key") == "cfg"


async def test_ssm_prefix_gets_a_leading_slash_and_loses_trailing_ones(
    aws: MotoServer, backends: Backends
) -> None:
    aws.put_parameter("/team/vars/x", "from team")
    aws.put_parameter("/rooted", "at the root")
    ssm = await backends.ssm(variables_prefix="team/vars/", connections_prefix="")
    assert await ssm.fetch(V, "x") == "from team"
    assert await ssm.fetch(C, "rooted") == "at the root"


async def test_a_secret_pending_deletion_is_a_miss(aws: MotoServer, backends: Backends) -> None:
    version = aws.put_secret("airflow/variables/doomed", "v")
    sm = await backends.secrets_manager()
    assert await sm.fetch(V, "doomed") == "v"
    aws.client("secretsmanager").delete_secret(SecretId="airflow/variables/doomed")
    assert not await sm.revalidate(V, "doomed", version)  # a cached copy is not re-stamped
    assert await sm.fetch(V, "doomed") is None
    assert backends.calls("sm", "GetSecretValue", "not_found") == 1


async def test_ssm_string_securestring_missing_and_prefixes(
    aws: MotoServer, backends: Backends
) -> None:
    aws.put_parameter("/airflow/connections/pg", "postgresql://u:s3cret@db/app", secure=True)
    aws.put_parameter("/airflow/variables/greeting", "hello")
    aws.put_parameter("/custom/config/key", "cfg", secure=True)
    ssm = await backends.ssm(config_prefix="/custom/config")
    assert await ssm.fetch(C, "pg") == "postgresql://u:s3cret@db/app"
    assert await ssm.fetch(V, "greeting") == "hello"
    assert await ssm.fetch(CFG, "key") == "cfg"
    assert await ssm.fetch(V, "absent") is None
    assert backends.calls("ssm", "GetParameter", "not_found") == 1


async def test_revalidate_uses_describe_secret(aws: MotoServer, backends: Backends) -> None:
    version = aws.put_secret("airflow/variables/rotating", "v1")
    sm = await backends.secrets_manager()
    found = await sm.fetch_versioned(V, "rotating")
    assert found is not None and found.version == version
    assert await sm.revalidate(V, "rotating", version)
    aws.client("secretsmanager").put_secret_value(
        SecretId="airflow/variables/rotating", SecretString="v2"
    )
    assert not await sm.revalidate(V, "rotating", version)
    assert backends.calls("sm", "DescribeSecret") == 2
    assert backends.calls("sm", "GetSecretValue") == 1


async def test_a_policy_without_describe_secret_still_serves_after_the_ttl(
    aws: MotoServer, backends: Backends, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # GetSecretValue is all the provider needs, so it is all many policies grant: the agent's
    # revalidation must not turn every expired value into a 403.
    version = aws.put_secret("airflow/variables/greeting", "hello")
    key = aws.access_key("getter", ["secretsmanager:GetSecretValue"])
    path = credentials_file(tmp_path / "credentials", "getter", key)
    with aws.enforcing_auth():
        sm = await backends.secrets_manager(credentials_file=path, profile="getter")
        assert await sm.fetch(V, "greeting") == "hello"
        assert not await sm.revalidate(V, "greeting", version)  # refetched, not denied
        assert not await sm.revalidate(V, "greeting", version)
    # Asked once, not again (moto words its AccessDenied so that botocore reads code "403").
    asked = sum(backends.calls("sm", "DescribeSecret", r) for r in ("ok", "denied", "error"))
    assert asked == 1
    ours = [r for r in caplog.records if r.name.startswith("secrets_agent")]
    assert [r.levelname for r in ours] == ["WARNING"] and "DescribeSecret" in ours[0].message
    assert key[1] not in caplog.text


async def test_prefetch_in_batches_of_ten(aws: MotoServer, backends: Backends) -> None:
    ids = [f"v{i:02d}" for i in range(12)]
    for secret_id in ids:
        aws.put_secret(f"airflow/variables/{secret_id}", f"value-{secret_id}")
        aws.put_parameter(f"/airflow/variables/{secret_id}", f"param-{secret_id}")
    sm = await backends.secrets_manager(prefetch_variables=(*ids, "missing"))
    loaded = {(p.kind, p.secret_id): p.found.value for p in await sm.prefetch()}
    assert loaded == {(V, i): f"value-{i}" for i in ids}
    assert backends.calls("sm", "BatchGetSecretValue") == 2
    ssm = await backends.ssm(prefetch_variables=tuple(ids))
    assert len(await ssm.prefetch()) == 12
    assert backends.calls("ssm", "GetParameters") == 2


async def test_assume_role(aws: MotoServer, backends: Backends) -> None:
    aws.put_secret("airflow/variables/greeting", "hello via role")
    sm = await backends.secrets_manager(
        role_arn="arn:aws:iam::123456789012:role/airflow-secrets",
        sts_endpoint_url=aws.url,
    )
    assert await sm.fetch(V, "greeting") == "hello via role"
    assert await sm.fetch(V, "greeting") == "hello via role"
    assert backends.calls("sm", "AssumeRole") == 1  # refreshed only before expiry
    assert (
        backends.metrics.registry.get_sample_value(
            "secrets_agent_auth_attempts_total", {"backend": "sm", "result": "success"}
        )
        == 1
    )


async def test_no_credentials_means_not_ready(
    aws: MotoServer, backends: Backends, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    sm = await backends.secrets_manager()
    assert not sm.health().ready
    assert "no AWS credentials" in sm.health().detail


def credentials_file(path: Any, profile: str, key: tuple[str, str]) -> str:
    path.write_text(
        f"[{profile}]\naws_access_key_id = {key[0]}\naws_secret_access_key = {key[1]}\n"
    )
    return str(path)


async def test_a_credentials_file_that_does_not_parse_is_named(
    backends: Backends, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "credentials"
    path.write_text("[migrated\naws_secret_access_key = s3cret-canary-key\n")
    caplog.set_level(logging.DEBUG)

    async def read() -> None:  # at start or at the first read: either way, named
        sm = await backends.secrets_manager(credentials_file=str(path), profile="migrated")
        await sm.fetch(V, "greeting")

    with pytest.raises(BackendError) as info:
        await read()
    assert f"cannot parse {path}" in str(info.value) and "unexpected" not in str(info.value)
    assert "s3cret-canary" not in caplog.text + str(info.value)


async def test_credentials_file_holds_the_keys_used(
    aws: MotoServer, backends: Backends, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    aws.put_secret("airflow/variables/greeting", "hello")
    aws.put_parameter("/airflow/variables/greeting", "hello from ssm")
    actions = ["secretsmanager:GetSecretValue", "ssm:GetParameter", "sqs:ReceiveMessage"]
    key = aws.access_key("agent", actions)
    path = credentials_file(tmp_path / "credentials", "migrated", key)
    queue = aws.client("sqs").create_queue(QueueName="changes")["QueueUrl"]
    caplog.set_level(logging.DEBUG)
    with aws.enforcing_auth():
        # The environment's keys (support/loopback.py) are refused now: only the file's work.
        # (moto answers InvalidClientTokenId as XML, which botocore reads as code "403".)
        from_env = await backends.secrets_manager()
        with pytest.raises(BackendError, match="403"):
            await from_env.fetch(V, "greeting")
        sm = await backends.secrets_manager(credentials_file=path, profile="migrated")
        assert await sm.fetch(V, "greeting") == "hello"
        assert sm.health().ready
        ssm = await backends.ssm(credentials_file=path, profile="migrated")
        assert await ssm.fetch(V, "greeting") == "hello from ssm"
        # The change feed's SQS client is made the same way, from the same file.
        feed = SqsFeed(sm, SqsFeedOptions(queue_url=queue, endpoint_url=aws.url, wait_time=0))
        await feed.start()
        try:
            assert await feed.receive(list) == []
        finally:
            await feed.close()
    assert key[1] not in caplog.text


async def test_keys_rotated_in_the_credentials_file_are_read_again_after_a_failure(
    aws: MotoServer, backends: Backends, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """botocore reads the file once: without reading it again, a key rotated by whoever
    manages it would fail every call until a restart (a reload keeps the unchanged backend)."""
    aws.put_secret("airflow/variables/greeting", "hello")
    key = aws.access_key("agent", ["secretsmanager:GetSecretValue"])
    path = tmp_path / "credentials"
    credentials_file(path, "p", key)
    with aws.enforcing_auth():
        sm = await backends.secrets_manager(credentials_file=str(path), profile="p")
        assert await sm.fetch(V, "greeting") == "hello"
    iam = aws.client("iam")
    iam.delete_access_key(UserName="agent", AccessKeyId=key[0])
    with aws.enforcing_auth(), pytest.raises(BackendError):  # the file unchanged: no retry
        await sm.fetch(V, "greeting")
    assert backends.calls("sm", "GetSecretValue", "error") == 1
    fresh = iam.create_access_key(UserName="agent")["AccessKey"]
    credentials_file(path, "p", (fresh["AccessKeyId"], fresh["SecretAccessKey"]))
    caplog.set_level(logging.INFO)
    with aws.enforcing_auth():
        assert await sm.fetch(V, "greeting") == "hello"  # failed once, then read the file
        assert await sm.fetch(V, "greeting") == "hello"
    assert backends.calls("sm", "GetSecretValue", "error") == 2
    assert backends.calls("sm", "GetSecretValue") == 3
    assert caplog.text.count("the AWS credentials file changed: read it again") == 1
    assert fresh["SecretAccessKey"] not in caplog.text and key[1] not in caplog.text


async def test_credentials_file_missing_or_without_the_profile(
    aws: MotoServer, backends: Backends, tmp_path: Any
) -> None:
    missing = SecretsManagerBackend(
        "sm", SecretsManagerOptions(credentials_file=str(tmp_path / "none"), profile="migrated")
    )
    message = f"cannot read the credentials file {tmp_path / 'none'}: No such file or directory"
    with pytest.raises(BackendError) as info:
        await missing.check_local()  # check-config
    assert str(info.value) == f"backend 'sm': {message}"
    with pytest.raises(BackendError, match="cannot read the credentials file"):
        await missing.start()
    path = credentials_file(tmp_path / "credentials", "migrated", ("AKIAX", "s3cret-key"))
    with pytest.raises(BackendError) as info:
        await backends.secrets_manager(credentials_file=path, profile="other")
    assert "AWS profile 'other' is in no credentials or config file" in str(info.value)
    assert "s3cret-key" not in str(info.value)


async def test_unreachable_endpoint_is_transient(backends: Backends) -> None:
    from support.bao import free_port

    opts = SecretsManagerOptions(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region=REGION,
        max_attempts=1,
        connect_timeout=1,
    )
    sm = SecretsManagerBackend("sm", opts, BackendContext(backends.metrics, FakeClock()))
    await sm.start()
    backends.started.append(sm)
    with pytest.raises(TransientError, match="cannot reach AWS"):
        await sm.fetch(V, "x")


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "echoes s3cret input"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetSecretValue",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("AccessDeniedException"), DeniedError),
        (client_error("ThrottlingException"), TransientError),
        (client_error("InternalServiceError", 500), TransientError),
        (client_error("SomethingNew", 503), TransientError),
        (client_error("DecryptionFailure"), DeniedError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
    ],
)
def test_error_translation(exc: Exception, kind: type[BackendError]) -> None:
    error = translate("sm", exc, "GetSecretValue")
    assert type(error) is kind
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    ("code", "missing"),
    [
        ("ResourceNotFoundException", True),
        ("InvalidRequestException", True),  # pending deletion
        ("InvalidParameterException", True),
        ("DecryptionFailure", False),  # a denial
        ("InternalServiceError", False),  # transient: served stale
    ],
)
def test_which_provider_misses_are_misses(code: str, missing: bool) -> None:
    assert (error_code(client_error(code)) in NOT_FOUND) is missing


def test_lookup_patterns_match_case_insensitively_as_the_provider() -> None:
    import re

    from secrets_agent.lookup.chain import Link

    sm = SecretsManagerBackend("sm", SecretsManagerOptions(region=REGION))
    link = Link(sm, {V: re.compile("T.*"), C: None, CFG: None})
    assert link.accepts(V, "test")  # the provider's own test: T.* matches "test"
    assert not link.accepts(V, "other")


@pytest.mark.parametrize("service", ["sm", "ssm"])
async def test_team_layout_reads_the_team_name_first_then_the_global_one(
    aws: MotoServer, backends: Backends, service: str
) -> None:
    root = "airflow/" if service == "sm" else "/airflow/"
    put = aws.put_secret if service == "sm" else aws.put_parameter
    put(f"{root}variables/team_a--shared", "team a's")
    put(f"{root}variables/shared", "global")
    put(f"{root}variables/x--y", "ambiguous")
    backend = await (backends.secrets_manager if service == "sm" else backends.ssm)(
        team_layout=True
    )
    assert (await backend.fetch_for_team(V, "shared", "team_a") or Versioned("")).value == (
        "team a's"
    )
    assert (await backend.fetch_for_team(V, "shared", "team_b") or Versioned("")).value == "global"
    assert await backend.fetch(V, "shared") == "global"
    assert await backend.fetch_for_team(V, "x--y", "team_a") is None  # ambiguous: never read
    assert await backend.fetch(V, "x--y") is None
    plain = await (backends.secrets_manager if service == "sm" else backends.ssm)()
    assert (await plain.fetch_for_team(V, "shared", "team_a") or Versioned("")).value == "global"


def test_kinds_accepts_only_the_three_kinds(tmp_path: Any) -> None:
    from secrets_agent.config.loader import load_config
    from secrets_agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text(
        '[[backends]]\nname = "aws"\ntype = "aws_ssm"\nkinds = ["variables", "secrets"]\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"backends\[0\]\.kinds: must be one of connections, variables, config$",
    ):
        load_config(str(path))


async def test_a_chain_without_credentials_at_start_is_looked_at_again(
    aws: MotoServer, backends: Backends, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a node's boot the instance role or web identity may not be there yet: botocore's
    client never looks again, so the backend failed every call until a restart."""
    aws.put_secret("airflow/variables/greeting", "hello")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-either"))
    sm = await backends.secrets_manager()
    assert not sm.health().ready
    with pytest.raises(BackendError, match="no usable AWS credentials"):
        await sm.fetch(V, "greeting")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # the chain has credentials now
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(BackendError):  # looked at once: the next look is 10 s later
        await sm.fetch(V, "greeting")
    clock = sm.context.clock
    assert isinstance(clock, FakeClock)
    clock.advance(10)
    assert await sm.fetch(V, "greeting") == "hello"
    assert sm.health().ready


class Throttling(ThreadingHTTPServer):
    """In front of moto: answers the next ``throttle`` GetSecretValue requests with AWS's
    ThrottlingException, forwards every other request; counts the GetSecretValue requests."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ThrottlingHandler)
        self.upstream, self.throttle, self.seen = upstream, 0, 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ThrottlingHandler(BaseHTTPRequestHandler):
    server: Throttling

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("X-Amz-Target", "").endswith(".GetSecretValue"):
            self.server.seen += 1
            if self.server.throttle > 0:
                self.server.throttle -= 1
                error = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
                self._reply(400, error, "application/x-amz-json-1.1")
                return
        forward = urllib.request.Request(
            self.server.upstream + self.path, data=body, method="POST", headers=dict(self.headers)
        )
        try:
            with urllib.request.urlopen(forward, timeout=10) as answer:
                status, data, kind = answer.status, answer.read(), answer.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, data, kind = exc.code, exc.read(), exc.headers["Content-Type"]
        self._reply(status, data, kind)

    def _reply(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


async def test_botocore_retries_count_as_calls_the_manager_saw(
    aws: MotoServer, backends: Backends
) -> None:
    aws.put_secret("airflow/variables/greeting", "hello")
    proxy = Throttling(aws.url)
    try:
        backends.aws = proxy  # type: ignore[assignment]  # the backends' endpoint_url
        sm = await backends.secrets_manager(max_attempts=2)
        proxy.throttle = 1  # throttled once, then answered: two requests, two calls
        assert await sm.fetch(V, "greeting") == "hello"
        assert backends.calls("sm", "GetSecretValue") == 1
        assert backends.calls("sm", "GetSecretValue", "retried") == 1
        proxy.throttle = 5  # throttled at both attempts: the call fails transiently
        with pytest.raises(TransientError):
            await sm.fetch(V, "greeting")
        assert backends.calls("sm", "GetSecretValue", "transient") == 1
        assert backends.calls("sm", "GetSecretValue", "retried") == 2
        assert backends.metrics.calls_made("sm") == proxy.seen == 4
    finally:
        proxy.close()


async def test_messages_the_queue_would_not_delete_are_logged_and_come_back(
    aws: MotoServer, backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    """DeleteMessageBatch answers 200 with a list of entries it did not delete: those come
    back as duplicates (harmless), and the log says so, once per log_interval, without the
    receipts; the rest of the batch is deleted."""
    sqs = aws.client("sqs")
    queue = sqs.create_queue(QueueName="partial", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    sm = await backends.secrets_manager()
    feed = SqsFeed(sm, SqsFeedOptions(queue_url=queue, endpoint_url=aws.url, wait_time=0))
    await feed.start()
    try:
        [message] = await feed.receive(list)
        caplog.set_level(logging.WARNING)
        for _ in range(2):
            await feed.ack([message, Message(receipt="not-a-receipt")])
        line = "1 of 2 messages could not be removed from its queue (ReceiptHandleIsInvalid)"
        assert caplog.text.count(line) == 1
        assert "not-a-receipt" not in caplog.text
        assert await feed.receive(list) == []  # the real one was deleted
    finally:
        await feed.close()
