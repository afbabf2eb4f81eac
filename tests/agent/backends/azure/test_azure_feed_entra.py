"""The Azure change feed as most users run it: no account key, the backend's Entra ID credential.

Azurite serves its queue over HTTPS with ``--oauth basic`` and the loopback token endpoint issues
JWT-shaped tokens (audience, issuer, lifetime) for the storage scope, so the queue accepts only
a token the backend's own credential obtained for ``https://storage.azure.com/.default``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

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
        for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "msal"):
            caplog.set_level(logging.DEBUG, logger=name)
        assert value(agent, V, "my_var") == "old"
        eventually(lambda: feed_health(agent, "az") == "ok")
        version = azure.store.put(NAME, "new")
        queue.send_message(json.dumps(key_vault_event(NAME, version)))
        eventually(lambda: fresh(agent, V, "my_var") == "new")
        eventually(lambda: queue.get_queue_properties().approximate_message_count == 0)
        polled = receives(agent)
        eventually(lambda: receives(agent) >= polled + 20)  # many polls after the first
        assert azure.store.scopes[STORAGE_SCOPE] == 1  # one token, cached across the polls
        assert azure.store.grants == 2  # and one for the vault, from the same credential
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 1
    assert "REDACTED" in caplog.text  # the HTTP logging policy did log the requests
    assert azure.store.issued and "Authorization" in caplog.text
    for token in azure.store.issued:
        assert token not in caplog.text
        assert token.split(".")[1] not in caplog.text  # not even the claims


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every WARNING or worse the agent and its SDKs logged, one line each, or fail."""
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("\n" in line for line in lines), lines
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
    return lines


def test_a_token_the_queue_refuses_is_one_clear_line(
    azure: Azure, queue: QueueClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    azure.store.audiences[STORAGE_SCOPE] = "https://vault.azure.net"  # another resource's
    azure.store.put(NAME, "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, queue))
    with running_agent(config) as agent:
        assert value(agent, V, "my_var") == "old"
        eventually(lambda: "failing" in feed_health(agent, "az"))
        assert feed_health(agent, "az") == (
            "failing, serving on TTLs: backend 'az': the Storage queue rejected the Entra ID "
            "token for ReceiveMessages (AuthenticationFailed; it must be for "
            "https://storage.azure.com/.default)"
        )
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 0
        eventually(lambda: receives(agent, "error") >= 3)  # retried with backoff, still up
        assert agent.agent.runtime.readiness()["az"].ready  # the vault's token is not at fault
        assert value(agent, V, "my_var") == "old"
        assert azure.store.scopes[STORAGE_SCOPE] == 1  # no token request per retry
    feed_lines = [line for line in warnings(caplog) if "'az'" in line]
    assert len(feed_lines) == 1 and "AuthenticationFailed" in feed_lines[0]  # once per interval
    for token in azure.store.issued:
        assert token not in caplog.text


def test_a_credential_that_fails_for_storage_is_a_detail_then_recovers(
    azure: Azure, queue: QueueClient, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    azure.store.refused.add(STORAGE_SCOPE)  # Entra refuses the storage resource
    azure.store.put(NAME, "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, queue))
    with running_agent(config) as agent:
        assert value(agent, V, "my_var") == "old"
        eventually(lambda: "failing" in feed_health(agent, "az"))
        assert feed_health(agent, "az") == (
            "failing, serving on TTLs: backend 'az': cannot get an Azure token for "
            "https://storage.azure.com/.default (ClientAuthenticationError, AADSTS500011)"
        )
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 0
        # The feed's token failures are the feed's: the backend (its vault token) stays ready.
        assert agent.agent.runtime.readiness()["az"].ready
        assert metric(agent, "secrets_agent_authenticated", backend="az") == 1
        azure.store.refused.clear()
        eventually(lambda: feed_health(agent, "az") == "ok")
        assert metric(agent, "secrets_agent_feed_up", feed="az") == 1
        version = azure.store.put(NAME, "new")
        queue.send_message(json.dumps(key_vault_event(NAME, version)))
        eventually(lambda: fresh(agent, V, "my_var") == "new")
    lines = warnings(caplog)
    assert [line for line in lines if "AADSTS500011" in line] == [
        "feed 'az' failing, serving on TTLs: backend 'az': cannot get an Azure token for "
        "https://storage.azure.com/.default (ClientAuthenticationError, AADSTS500011)"
    ]  # no second copy from azure-identity's own logger
    assert "feed 'az' is receiving again" in caplog.text
    for token in azure.store.issued:
        assert token not in caplog.text
