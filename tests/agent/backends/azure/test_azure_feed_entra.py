"""The Azure change feed as most users run it: no account key, the backend's Entra ID credential.

Azurite serves its queue over HTTPS with ``--oauth basic`` and the loopback token endpoint issues
JWT-shaped tokens (audience, issuer, lifetime) for the storage scope, so the queue accepts only
a token the backend's own credential obtained for ``https://storage.azure.com/.default``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from secrets_agent.backends.azure.backend import AzureKeyVaultBackend
from secrets_agent.backends.azure.feed import StorageQueueFeed, StorageQueueFeedOptions
from secrets_agent.backends.azure.options import AzureOptions
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from support.azure_server import STORAGE_SCOPE, Azure
from support.azurite import Azurite, azurite_path, key_vault_event
from support.feeds import eventually, feed_health, fresh, value
from support.helpers import RunningAgent, agent_config, running_agent
from support.tls import self_signed

pytestmark = pytest.mark.integration

V = Kind.VARIABLE
FAST = {"retries": 1, "backoff_initial": 0.0, "backoff_max": 0.05, "timeout": 5.0}
NAME = "airflow-variables-my-var"


@pytest.fixture(scope="module")
def tls() -> tuple[bytes, bytes]:
    """One loopback CA for the vault, the token endpoint and Azurite: the backend's ca_file."""
    return self_signed()


@pytest.fixture(scope="module")
def azurite(
    tmp_path_factory: pytest.TempPathFactory, tls: tuple[bytes, bytes]
) -> Iterator[Azurite]:
    azurite_path()  # skip (or, in CI, fail) before starting anything
    server = Azurite(tmp_path_factory.mktemp("azurite-entra"), tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def azure(tmp_path: Path, tls: tuple[bytes, bytes]) -> Iterator[Azure]:
    made = Azure(tmp_path, tls)
    yield made
    made.close()


@pytest.fixture
def queue(azurite: Azurite, azure: Azure, request: pytest.FixtureRequest) -> Iterator[QueueClient]:
    """A fresh queue, filled by the test with the account key (as Event Grid would fill it)."""
    name = "kv-" + request.node.name.replace("_", "-")[5:40].strip("-")
    client = QueueClient.from_connection_string(
        azurite.connection_string, name, connection_verify=str(azure.ca_file)
    )
    client.create_queue()
    yield client
    client.delete_queue()
    client.close()


def toml(azure: Azure, queue: QueueClient) -> str:
    """The backend and its feed as a user writes them: no account_key_file."""
    lines = ["[[backends]]", 'name = "az"', 'type = "azure_key_vault"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (azure.options() | FAST).items()]
    lines += [
        "[backends.feed]",
        f'queue_url = "{queue.url}"',
        "poll_interval = 0.1",
        "key_interval = 0",
        "backoff_initial = 0.05",
        "backoff_max = 0.2",
    ]
    return "\n".join(lines) + "\n"


def metric(agent: RunningAgent, name: str, **labels: str) -> float:
    return agent.metric(name, **labels)


def receives(agent: RunningAgent, result: str = "ok") -> float:
    return metric(
        agent,
        "secrets_agent_upstream_api_calls_total",
        backend="az",
        operation="ReceiveMessages",
        result=result,
    )


def test_entra_token_reads_the_queue_and_is_cached(
    azure: Azure, queue: QueueClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    azure.store.put(NAME, "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, queue))
    with running_agent(config) as agent:
        # Every SDK logger at DEBUG, records caught before any filter of ours: the pipeline's
        # HTTP logging still cannot print a token (azure-core redacts Authorization; the
        # network trace with headers and bodies stays off).
        caplog.set_level(logging.DEBUG)
        http = "azure.core.pipeline.policies.http_logging_policy"
        for name in ("azure", "azure.identity", "azure.storage.queue", http, "msal"):
            caplog.set_level(logging.DEBUG, logger=name)
        assert value(agent, V, "my_var") == "old"
        eventually(lambda: feed_health(agent, "az") == "ok")
        version = azure.store.put(NAME, "new")
        queue.send_message(json.dumps(key_vault_event(NAME, version)))
        eventually(lambda: fresh(agent, V, "my_var") == "new")
        eventually(lambda: queue.get_queue_properties().approximate_message_count == 0)
        logins = {"backend": "az", "result": "success"}
        asked = metric(agent, "secrets_agent_auth_attempts_total", **logins)
        polled = receives(agent)
        eventually(lambda: receives(agent) >= polled + 20)  # many polls after the first
        assert azure.store.scopes[STORAGE_SCOPE] == 1  # one token, cached across the polls
        assert azure.store.grants == 2  # and one for the vault, from the same credential
        # Not even asked of the credential per poll: the queue client's bearer policy holds it.
        assert metric(agent, "secrets_agent_auth_attempts_total", **logins) == asked
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 1
    assert "REDACTED" in caplog.text  # the HTTP logging policy did log the requests
    assert "Authorization" in caplog.text and f"{queue.queue_name}/messages" in caplog.text
    assert_no_token(azure, caplog.text)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every WARNING or worse the agent and its SDKs logged, one line each, or fail."""
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("\n" in line for line in lines), lines
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
    return lines


def assert_no_token(azure: Azure, text: str) -> None:
    assert azure.store.issued
    for token in azure.store.issued:
        assert token not in text
        assert token.split(".")[1] not in text  # not even its claims


@contextlib.contextmanager
def failing_feed(
    azure: Azure, queue: QueueClient, short_tmp: Path
) -> Iterator[tuple[RunningAgent, str]]:
    """The agent up with its feed failing, and the feed's reason; lookups go on meanwhile."""
    azure.store.put(NAME, "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, queue))
    with running_agent(config) as agent:
        assert value(agent, V, "my_var") == "old"
        eventually(lambda: "failing" in feed_health(agent, "az"))
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 0
        # The feed's failures are the feed's: the backend (its vault token) stays ready.
        assert agent.agent.runtime.readiness()["az"].ready
        assert metric(agent, "secrets_agent_authenticated", backend="az") == 1
        assert value(agent, V, "my_var") == "old"
        prefix = "failing, serving on TTLs: backend 'az': "
        yield agent, feed_health(agent, "az").removeprefix(prefix)


def test_a_token_the_queue_refuses_is_one_clear_line(
    azure: Azure, queue: QueueClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    azure.store.audiences[STORAGE_SCOPE] = "https://vault.azure.net"  # another resource's
    with failing_feed(azure, queue, short_tmp) as (agent, reason):
        assert reason == (
            "the Storage queue rejected the Entra ID token for ReceiveMessages "
            "(AuthenticationFailed; it must be for https://storage.azure.com/.default)"
        )
        eventually(lambda: receives(agent, "error") >= 3)  # retried with backoff, still up
        assert azure.store.scopes[STORAGE_SCOPE] == 1  # no token request per retry
    feed_lines = [line for line in warnings(caplog) if "'az'" in line]
    assert len(feed_lines) == 1 and "AuthenticationFailed" in feed_lines[0]  # once per interval
    assert_no_token(azure, caplog.text)


def test_a_credential_that_fails_for_storage_is_a_detail_then_recovers(
    azure: Azure, queue: QueueClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    azure.store.refused.add(STORAGE_SCOPE)  # Entra refuses the storage resource
    with failing_feed(azure, queue, short_tmp) as (agent, reason):
        assert reason == (
            "cannot get an Azure token for https://storage.azure.com/.default "
            "(ClientAuthenticationError, AADSTS500011)"
        )
        # Asked through the backend's own (watched) credential, so counted as its logins.
        failed = {"backend": "az", "result": "failure"}
        assert metric(agent, "secrets_agent_auth_attempts_total", **failed) >= 1
        azure.store.refused.clear()
        eventually(lambda: feed_health(agent, "az") == "ok")
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 1
        version = azure.store.put(NAME, "new")
        queue.send_message(json.dumps(key_vault_event(NAME, version)))
        eventually(lambda: fresh(agent, V, "my_var") == "new")
    assert [line for line in warnings(caplog) if "AADSTS" in line] == [
        "feed 'az' failing, serving on TTLs: backend 'az': cannot get an Azure token for "
        "https://storage.azure.com/.default (ClientAuthenticationError, AADSTS500011)"
    ]  # once, and no copy of Entra's own text from azure-identity's logger
    assert "feed 'az' is receiving again" in caplog.text
    assert_no_token(azure, caplog.text)


@pytest.mark.parametrize(
    ("status", "code", "kind", "reason"),
    [
        (403, "AuthenticationFailed", BackendError, "rejected the Entra ID token for Receive"),
        (401, "InvalidAuthenticationInfo", BackendError, "it must be for https://storage.azure"),
        (403, "AuthorizationPermissionMismatch", DeniedError, "Storage Queue Data Message Proc"),
        (403, "AuthorizationFailure", DeniedError, "denied ReceiveMessages (AuthorizationFail"),
        (404, "QueueNotFound", BackendError, "failed (HTTP 404, QueueNotFound)"),
        (503, "ServerBusy", TransientError, "transiently (HTTP 503, ServerBusy)"),
        (400, "s3cret: not a code", BackendError, "ReceiveMessages failed (HTTP 400)"),
    ],
)
async def test_storage_errors_name_the_code_and_the_fix(
    status: int, code: str, kind: type[BackendError], reason: str
) -> None:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    feed_options = StorageQueueFeedOptions(queue_url="https://a.queue.core.windows.net/q")
    options = AzureOptions(vault_url="https://v.vault.azure.net", feed=feed_options)
    feed = StorageQueueFeed(AzureKeyVaultBackend("az", options), feed_options)
    cls = ClientAuthenticationError if "Authentic" in code else HttpResponseError
    exc = cls(message=f"{code}: echoes s3cret input")
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]  # as azure-storage-queue sets it

    async def fail() -> None:
        raise exc

    with pytest.raises(kind) as raised:
        await feed.calls("ReceiveMessages", fail)
    assert type(raised.value) is kind and reason in str(raised.value)
    assert "s3cret" not in str(raised.value)


async def test_a_backend_without_a_credential_names_its_own_problem(tmp_path: Path) -> None:
    """The feed has no credential of its own to fail with: it reports the backend's."""
    feed_options = StorageQueueFeedOptions(queue_url="https://a.queue.core.windows.net/q")
    options = AzureOptions(
        vault_url="https://v.vault.azure.net",
        tenant_id="t",
        client_id="c",
        client_secret_file=str(tmp_path / "absent"),
        feed=feed_options,
    )
    backend = AzureKeyVaultBackend("az", options)
    with pytest.raises(BackendError, match="cannot read the client_secret_file"):
        await backend.start()  # builds nothing: the secret file cannot be read
    feed = StorageQueueFeed(backend, feed_options)
    with pytest.raises(BackendError, match="cannot read the client_secret_file"):
        await feed.start()
    await feed.close()
    await backend.close()
