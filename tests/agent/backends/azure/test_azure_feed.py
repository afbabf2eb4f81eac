"""The Azure change feed end to end: Event Grid events in Azurite's queue, read by the agent."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from secrets_agent.backends.azure.backend import AzureKeyVaultBackend
from secrets_agent.backends.azure.feed import (
    StorageQueueFeed,
    StorageQueueFeedOptions,
    decode,
    secret_change,
)
from secrets_agent.backends.azure.options import AzureOptions
from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.feeds import Message
from secrets_agent.config.schema import AgentConfig
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.azure_server import Azure
from support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, azurite_path
from support.azurite import key_vault_event as event
from support.feeds import eventually, feed_health, fresh, value
from support.helpers import agent_config, running_agent

pytestmark = pytest.mark.integration

V = Kind.VARIABLE
FAST = {"retries": 1, "backoff_initial": 0.0, "backoff_max": 0.05, "timeout": 5.0}


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    azurite_path()  # skip (or, in CI, fail) before starting anything
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Azure]:
    made = Azure(tmp_path)
    yield made
    made.close()


def toml(azure: Azure, queue_url: str, key_file: Path) -> str:
    lines = ["[[backends]]", 'name = "az"', 'type = "azure_key_vault"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (azure.options() | FAST).items()]
    lines += [
        "[backends.feed]",
        f'queue_url = "{queue_url}"',
        f'account_key_file = "{key_file}"',
        "poll_interval = 0.1",
        "key_interval = 0",
        "backoff_initial = 0.05",
        "backoff_max = 0.2",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def event_queue(azurite: Azurite, name: str) -> Iterator[QueueClient]:
    """A Storage queue an Event Grid subscription fills, deleted after the test."""
    queue = QueueClient.from_connection_string(azurite.connection_string, name)
    queue.create_queue()
    try:
        yield queue
    finally:
        queue.delete_queue()
        queue.close()


def feed_config(azurite: Azurite, azure: Azure, short_tmp: Path, queue: str) -> AgentConfig:
    """The agent reading ``queue`` with the account's key."""
    key_file = short_tmp / "account-key"
    key_file.write_text(ACCOUNT_KEY)
    url = f"{azurite.account_url}/{queue}"
    return agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, url, key_file))


def test_event_grid_messages_rotate_and_are_removed(
    azurite: Azurite, azure: Azure, short_tmp: Path
) -> None:
    azure.store.put("airflow-variables-my-var", "old")
    azure.store.put("airflow-variables-db-password", "old")
    config = feed_config(azurite, azure, short_tmp, "kv-events")
    with event_queue(azurite, "kv-events") as queue, running_agent(config) as agent:
        assert value(agent, V, "my_var") == "old"  # "_" reads the "-" name
        version = azure.store.put("airflow-variables-my-var", "new")
        body = json.dumps(event("airflow-variables-my-var", version))
        queue.send_message(base64.b64encode(body.encode()).decode())  # Event Grid's way
        eventually(lambda: fresh(agent, V, "my_var") == "new")
        # Key Vault's names ignore case: Airflow's "DB_PASSWORD" reads the secret an operator
        # created as "airflow-variables-db-password", and its events name it so.
        assert value(agent, V, "DB_PASSWORD") == "old"
        other = azure.store.put("airflow-variables-db-password", "new")
        queue.send_message(json.dumps(event("airflow-variables-db-password", other)))
        eventually(lambda: fresh(agent, V, "DB_PASSWORD") == "new")
        queue.send_message(json.dumps(event("airflow-variables-my-var", version)))  # again
        queue.send_message(json.dumps(event("x", "1", "SecretNearExpiry")))
        queue.send_message("%%% not an event")
        metric = "secrets_agent_feed_events_total"
        eventually(lambda: agent.metric(metric, feed="az", result="malformed") == 1)
        eventually(lambda: agent.metric(metric, feed="az", result="duplicate") == 1)
        assert agent.metric(metric, feed="az", result="ignored") == 1
        eventually(lambda: queue.get_queue_properties().approximate_message_count == 0)
        assert azure.store.calls["airflow-variables-my-var"] == 2  # the duplicate read nothing
        assert feed_health(agent, "az") == "ok"


def test_a_queue_that_does_not_exist_is_a_detail_then_a_gap_to_revalidate(
    azurite: Azurite, azure: Azure, short_tmp: Path
) -> None:
    key_file = short_tmp / "account-key"
    key_file.write_text(ACCOUNT_KEY)
    azure.store.put("airflow-variables-v", "1")
    url = f"http://127.0.0.1:{azurite.port}/{ACCOUNT}/late"
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", toml(azure, url, key_file))
    queue = QueueClient.from_connection_string(azurite.connection_string, "late")
    try:
        with running_agent(config) as agent:
            assert value(agent, V, "v") == "1"
            eventually(lambda: "failing" in feed_health(agent, "az"))
            assert agent.agent.runtime.readiness()["az"].ready
            assert value(agent, V, "v") == "1"  # served on its TTL
            azure.store.put("airflow-variables-v", "2")  # no event will say so
            queue.create_queue()
            eventually(lambda: fresh(agent, V, "v") == "2")  # revalidated after the gap
            assert feed_health(agent, "az") == "ok"
    finally:
        queue.delete_queue()
        queue.close()


async def test_another_vaults_events_on_a_shared_queue_are_foreign(
    azurite: Azurite, azure: Azure, short_tmp: Path
) -> None:
    """One Event Grid topic for several vaults: the same names, another vault's secrets."""
    key_file = short_tmp / "account-key"
    key_file.write_text(ACCOUNT_KEY)
    # The feed knows its vault by name only from a vault URL with one (not the loopback one
    # the end-to-end tests read), and reads nothing from the vault itself.
    named = azure.options() | FAST | {"vault_url": "https://KV-Ours.vault.azure.net/"}
    backend = AzureKeyVaultBackend("az", AzureOptions(**named), BackendContext(Metrics()))
    options = StorageQueueFeedOptions(
        queue_url=f"{azurite.account_url}/shared-kv-events", account_key_file=str(key_file)
    )
    feed = StorageQueueFeed(backend, options)
    topic = "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/{}"

    def shaped(vault: str, topic_vault: str, id_vault: str) -> dict[str, Any]:
        made = event("airflow-variables-token", "2")
        made["topic"] = topic.format(topic_vault)
        made["data"] |= {
            "VaultName": vault,
            "Id": f"https://{id_vault}.vault.azure.net/secrets/airflow-variables-token/2",
        }
        return made

    cloud = {
        "type": "Microsoft.KeyVault.SecretNewVersionCreated",
        "source": topic.format("kv-theirs"),
        "data": {"ObjectName": "airflow-variables-token", "VaultName": "kv-theirs"},
    }
    cases = [
        (shaped("kv-ours", "KV-OURS", "kv-ours"), ""),  # names compared without case
        (shaped("kv-theirs", "kv-theirs", "kv-theirs"), "vault (kv-theirs; this backend's: "),
        (shaped("kv-ours", "kv-theirs", "kv-ours"), "vault (kv-theirs;"),  # disagreeing: not
        (shaped("kv-ours", "kv-ours", "kv-theirs"), "vault (kv-theirs;"),  # taken as ours
        (cloud, "vault (kv-theirs; this backend's: kv-ours)"),
    ]
    with event_queue(azurite, "shared-kv-events") as queue:
        await feed.start()
        try:
            for body, expected in cases:
                queue.send_message(json.dumps(body))
                messages: list[Message] = []
                while not messages:  # the queue's own poll; each round waits poll_interval
                    messages = await feed.receive(lambda: [])
                [message] = messages
                assert message.foreign.startswith(expected) if expected else not message.foreign
                assert bool(message.hints) == (not expected)  # ours maps to the variable
                await feed.ack(messages)
            assert queue.get_queue_properties().approximate_message_count == 0
        finally:
            await feed.close()
            await backend.close()


def test_decode_reads_json_base64_and_cloudevents() -> None:
    grid = event("n", "1")
    assert decode(json.dumps(grid)) == grid
    assert decode(base64.b64encode(json.dumps([grid]).encode()).decode()) == grid
    cloud = {"type": "Microsoft.KeyVault.SecretNewVersionCreated", "time": "2026-12-04T00:00:00Z"}
    cloud["data"] = {"ObjectName": "n", "VaultName": "V"}  # type: ignore[assignment]
    change = secret_change(cloud)
    assert change is not None and (change.name, change.vault) == ("n", "v")
    with pytest.raises(ValueError, match="neither JSON nor base64"):
        decode("%%%")
