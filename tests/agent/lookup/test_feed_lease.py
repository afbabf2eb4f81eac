"""A fleet's change feed: three agents sharing a real store and one SQS queue (moto).

One node holds the feed's lease and consumes the queue; a rotation's event reaches every node
(the consumer drops the fleet's copies and refills them, the others hear of it over the tier's
channel); when the holder stops renewing, another node takes the feed over within the lease.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from secrets_agent.backends.feeds import Hint
from secrets_agent.config.loader import parse_config
from secrets_agent.kinds import Kind
from secrets_agent.lookup.feed_lease import from_data, to_data
from secrets_agent.ops.metrics import Metrics
from secrets_agent.runtime import BackendPool, Runtime
from secrets_agent.server.status import status_report
from support.moto_aws import REGION, MotoServer
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

V = Kind.VARIABLE
NAME = "airflow/variables/token"


class Fleet:
    def __init__(self, aws: MotoServer, store: RedisServer, work: Path) -> None:
        self.aws = aws
        self.sqs, self.events = aws.client("sqs"), aws.client("events")
        self.sm = aws.client("secretsmanager")
        self.url = self.sqs.create_queue(QueueName="fleet")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        self.events.put_rule(Name="r", EventPattern=json.dumps({"source": ["aws.secretsmanager"]}))
        self.events.put_targets(
            Rule="r", Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}]
        )
        key_file = work / "fernet.key"
        key_file.write_text(Fernet.generate_key().decode())
        feed = {"queue_url": self.url, "endpoint_url": aws.url, "wait_time": 1}
        feed |= {"lease_ttl": 2.0, "backoff_initial": 0.05, "key_interval": 0}
        backend = {"name": "aws", "type": "aws_secrets_manager", "endpoint_url": aws.url}
        self.raw: dict[str, Any] = {
            "cache": {"variable_ttl": 3600},
            "encryption": {"key_file": str(key_file)},
            "shared_cache": {"url": store.url, "timeout": 2.0, "connect_timeout": 5.0},
            "backends": [backend | {"region": REGION, "feed": feed}],
        }
        self.work = work
        self.nodes: list[tuple[Runtime, Metrics]] = []

    async def start(self, count: int) -> None:
        for _ in range(count):
            metrics = Metrics()
            config = parse_config(self.raw, base_dir=self.work)
            pool = BackendPool(metrics, time.monotonic)
            self.nodes.append((await Runtime.build(config, pool, metrics, time.monotonic), metrics))

    def holders(self) -> list[int]:
        labels = {"feed": "aws"}
        return [
            i
            for i, (_, m) in enumerate(self.nodes)
            if m.registry.get_sample_value("secrets_agent_feed_lease_held", labels) == 1
        ]

    def rotate(self, value: str) -> None:
        version = self.sm.put_secret_value(SecretId=NAME, SecretString=value)["VersionId"]
        detail = {"name": NAME, "labelUpdated": "AWSCURRENT", "versionId": version}
        entry = {
            "Source": "aws.secretsmanager",
            "DetailType": "Secret Label Updated",
            "Detail": json.dumps(detail),
        }
        assert self.events.put_events(Entries=[entry])["FailedEntryCount"] == 0

    async def values(self, nodes: list[int]) -> list[str | None]:
        return [(await self.nodes[i][0].service.lookup(V, "token")).value for i in nodes]


async def until(condition: Callable[[], Any], seconds: float = 60.0) -> None:
    """Poll (a readiness wait; the bound is a hang guard, not a timing claim)."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


@pytest.fixture
async def fleet(moto: MotoServer, store: RedisServer, tmp_path: Path) -> AsyncIterator[Fleet]:
    moto.reset()
    made = Fleet(moto, store, tmp_path)
    made.sm.create_secret(Name=NAME, SecretString="old")
    yield made
    for runtime, _ in made.nodes:
        await runtime.retire(None)


async def test_one_consumer_every_node_fresh_and_a_takeover(fleet: Fleet) -> None:
    await fleet.start(3)
    everyone = [0, 1, 2]
    assert await fleet.values(everyone) == ["old"] * 3

    async def one_holder() -> bool:
        return len(fleet.holders()) == 1

    await until(one_holder)
    [holder] = fleet.holders()
    others = [i for i in everyone if i != holder]
    detail = fleet.nodes[others[0]][0].readiness()["[feed:aws]"].detail
    assert detail.startswith("standby")
    [standby] = status_report(*fleet.nodes[others[0]])["feeds"]
    assert (standby["consumer"], standby["up"]) == (False, True)  # not failing: standing by

    async def received() -> bool:
        return bool(fleet.nodes[holder][0].readiness()["[feed:aws]"].detail == "ok")

    await until(received)  # "ok" only once a long poll went through, then it is up
    [consumer] = status_report(*fleet.nodes[holder])["feeds"]
    assert (consumer["consumer"], consumer["up"], consumer["detail"]) == (True, True, "ok")

    await asyncio.to_thread(fleet.rotate, "new")

    async def all_new() -> bool:
        return await fleet.values(everyone) == ["new"] * 3

    await until(all_new)
    applied = [
        m.registry.get_sample_value("secrets_agent_feed_events_total", {"feed": "aws", "result": r})
        or 0.0
        for _, m in fleet.nodes
        for r in ("applied",)
    ]
    assert applied[holder] == 1  # the holder consumed it; the others heard it relayed
    # The holder stops renewing (as if it died): another node takes over within the lease.
    holder_runtime = fleet.nodes[holder][0]
    for task in holder_runtime.feeds._tasks:
        task.cancel()

    async def taken_over() -> bool:
        return any(i in fleet.holders() for i in others)

    await until(taken_over)
    await asyncio.to_thread(fleet.rotate, "newer")

    async def others_newer() -> bool:
        return await fleet.values(others) == ["newer"] * 2

    await until(others_newer)


def test_relayed_hints_round_trip() -> None:
    hint = Hint(V, "a/b", "v1", 1234.5, gone=True)
    assert from_data(to_data(hint)) == hint
    assert from_data({"kind": "nonsense", "id": "x"}) is None
    assert from_data({"kind": "variable"}) is None


async def test_a_store_outage_is_a_failing_feed_on_every_node_not_a_standby(
    fleet: Fleet, store: RedisServer
) -> None:
    # With the store down no node can tell who holds the lease, so none consumes the queue
    # (its events wait there): every node must say so, not "another node consumes this feed".
    await fleet.start(2)

    async def one_holder() -> bool:
        return len(fleet.holders()) == 1

    await until(one_holder)
    store.stop()

    def details() -> list[str]:
        return [runtime.readiness()["[feed:aws]"].detail for runtime, _ in fleet.nodes]

    async def all_failing() -> bool:
        return all(d.startswith("failing") for d in details())

    await until(all_failing)
    assert all("shared cache" in d for d in details())
    up = [
        m.registry.get_sample_value("secrets_agent_feed_up", {"feed": "aws"})
        for _, m in fleet.nodes
    ]
    assert up == [0, 0] and fleet.holders() == []
    store.start()
    await until(one_holder)

    async def healthy() -> bool:
        return sorted(d.split(":")[0] for d in details()) == ["ok", "standby"]

    await until(healthy)


async def test_a_feed_lease_planted_without_an_expiry_is_taken_back(
    fleet: Fleet, store: RedisServer
) -> None:
    # A store writer (or a crashed, buggy peer) sets the feed's lease without an expiry: the
    # holder loses it at its next renewal, and a node takes it back, rather than no node ever
    # following the feed again (rotations unseen).
    await fleet.start(2)
    assert await fleet.values([0, 1]) == ["old"] * 2  # cached: only the feed brings "new"

    async def one_holder() -> bool:
        return len(fleet.holders()) == 1

    await until(one_holder)
    keys = store.command("KEYS", "*:lease")
    assert isinstance(keys, list)
    [name] = keys
    store.command("SET", name, "someone")

    def planted() -> float:
        labels = {"operation": "lease_planted"}
        return sum(
            m.registry.get_sample_value("secrets_agent_shared_cache_errors_total", labels) or 0.0
            for _, m in fleet.nodes
        )

    async def taken_back() -> bool:
        return planted() == 1 and len(fleet.holders()) == 1

    await until(taken_back)
    assert 0 < int(str(store.command("PTTL", name))) <= 2000
    await asyncio.to_thread(fleet.rotate, "new")

    async def all_new() -> bool:
        return await fleet.values([0, 1]) == ["new"] * 2

    await until(all_new)
    assert planted() == 1  # replaced once: from then on an agent's lease, renewed
