"""Change-feed benchmark: rotation to fresh per feed, and upstream reads per key per hour.

Rotation to fresh: one agent's whole lookup path (``Runtime``) on loopback upstreams (moto's
Secrets Manager with an EventBridge rule into SQS at the default 20 s long poll; OpenBao polled
every second; Secret Manager with a loopback Pub/Sub subscription). Each sample rotates a held
secret, publishes its event as the manager would, and times until the node serves the new
value. Reads per key per hour: a simulated hour (injected clock, the second one: steady
state) of a hot key set read every 10 s, a tenth of the keys rotated in that hour, with
TTL 3,600 s and events versus TTL 300 s without. Nothing here asserts a time; compare the
printed figures with their targets.

    .venv/bin/python bench/feeds.py [--samples 20] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import loopback

loopback.apply()

from cryptography.fernet import Fernet  # noqa: E402

from secrets_agent.backends.feeds import Feed, FeedOptions, Held, Hint, Message  # noqa: E402
from secrets_agent.config.loader import parse_config  # noqa: E402
from secrets_agent.kinds import Kind  # noqa: E402
from secrets_agent.lookup.cache import SecretCache  # noqa: E402
from secrets_agent.lookup.chain import BackendChain, Link  # noqa: E402
from secrets_agent.lookup.cipher import Cipher  # noqa: E402
from secrets_agent.lookup.feeds import Clocks, FeedRunner  # noqa: E402
from secrets_agent.lookup.service import SecretService  # noqa: E402
from secrets_agent.ops.metrics import Metrics  # noqa: E402
from secrets_agent.runtime import BackendPool, Runtime  # noqa: E402
from support.bao import BaoServer  # noqa: E402
from support.gcp_server import PROJECT, GrpcSecretManager, Store, TokenEndpoint, tls_material  # noqa: E402
from support.helpers import FakeClock, Script, ScriptedBackend  # noqa: E402
from support.moto_aws import REGION, MotoServer  # noqa: E402
from support.pubsub_server import PubSubServer  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

V = Kind.VARIABLE
KEY_INTERVAL = FeedOptions().key_interval
Rotate = Callable[[str], Awaitable[None]]


async def build(raw: dict[str, Any], work: Path) -> Runtime:
    metrics = Metrics()
    config = parse_config({"cache": {"variable_ttl": 3600}, **raw}, base_dir=work)
    return await Runtime.build(
        config, BackendPool(metrics, time.monotonic), metrics, time.monotonic
    )


async def rotation_to_fresh(runtimes: list[Runtime], rotate: Rotate, samples: int) -> list[float]:
    """Seconds from each rotation to every node serving the new value: holding it fresh (one
    node), or answering a lookup with it (a fleet: the others read the tier's new copy)."""
    key = (V, "token", None)
    for runtime in runtimes:
        assert (await runtime.service.lookup(V, "token")).value is not None
    while any(  # noqa: ASYNC110 - the feeds' clients are up (a poll's baseline follows at once)
        h.detail == "starting" for rt in runtimes for h in rt.readiness().values()
    ):
        await asyncio.sleep(0.05)

    async def served(value: str) -> bool:
        if len(runtimes) == 1:
            fresh = runtimes[0].service.cache.fresh(key)
            return fresh is not None and fresh.value == value
        answers = [(await rt.service.lookup(V, "token")).value for rt in runtimes]
        return answers == [value] * len(runtimes)

    lags = []
    for i in range(samples):
        await asyncio.sleep(KEY_INTERVAL)  # one rotation at a time: no per-key bound in play
        value = f"v{i}-{time.time()}"
        started = time.monotonic()
        await rotate(value)
        while not await served(value):  # noqa: ASYNC110 - polling the nodes, as readers would
            await asyncio.sleep(0.005)
        lags.append(time.monotonic() - started)
    return lags


async def aws(work: Path, samples: int, agents: int = 1) -> list[float]:
    moto = MotoServer()
    moto.start()
    moto.reset()  # moto's state lives in this process: a second server would see the first's
    store = RedisServer(work / f"redis-{agents}") if agents > 1 else None
    try:
        sqs, events, sm = moto.client("sqs"), moto.client("events"), moto.client("secretsmanager")
        url = sqs.create_queue(QueueName="agent")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        events.put_rule(Name="r", EventPattern=json.dumps({"source": ["aws.secretsmanager"]}))
        events.put_targets(Rule="r", Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}])
        sm.create_secret(Name="airflow/variables/token", SecretString="v")
        backend: dict[str, Any] = {"name": "aws", "type": "aws_secrets_manager"}
        backend["endpoint_url"] = moto.url
        backend |= {"region": REGION, "feed": {"queue_url": url, "endpoint_url": moto.url}}
        raw: dict[str, Any] = {"backends": [backend]}
        if store is not None:  # one queue for the fleet: the lease picks its consumer
            store.start()
            key_file = work / "fernet.key"
            key_file.write_text(Fernet.generate_key().decode())
            raw["encryption"] = {"key_file": str(key_file)}
            raw["shared_cache"] = {"url": store.url, "timeout": 2.0, "connect_timeout": 5.0}
        runtimes = [await build(raw, work) for _ in range(agents)]

        def put(value: str) -> None:
            answer = sm.put_secret_value(SecretId="airflow/variables/token", SecretString=value)
            detail = {"name": "airflow/variables/token", "versionId": answer["VersionId"]}
            events.put_events(
                Entries=[
                    {
                        "Source": "aws.secretsmanager",
                        "DetailType": "Secret Label Updated",
                        "Detail": json.dumps(detail | {"labelUpdated": "AWSCURRENT"}),
                    }
                ]
            )

        try:
            return await rotation_to_fresh(runtimes, lambda v: asyncio.to_thread(put, v), samples)
        finally:
            for runtime in runtimes:
                await runtime.retire(None)
    finally:
        if store is not None:
            store.stop()
        moto.stop()


async def vault(work: Path, samples: int, interval: float) -> list[float]:
    bao = BaoServer(work / "bao")
    bao.start()
    try:
        bao.kv_put("variables/token", {"value": "v"})
        backend: dict[str, Any] = {"name": "vault", "type": "vault", "url": bao.url}
        backend |= {"token": {"token": bao.root_token}, "feed": {"poll_interval": interval}}
        runtime = await build({"backends": [backend]}, work)

        def put(value: str) -> None:
            bao.kv_put("variables/token", {"value": value})

        try:
            return await rotation_to_fresh([runtime], lambda v: asyncio.to_thread(put, v), samples)
        finally:
            await runtime.retire(None)
    finally:
        bao.stop()


async def gcp(work: Path, samples: int) -> list[float]:
    key_pem, cert_pem, ca_file = tls_material(work)
    secrets = GrpcSecretManager(Store(), key_pem, cert_pem)
    secrets.start()
    pubsub = PubSubServer(key_pem, cert_pem)
    pubsub.start()
    tokens = TokenEndpoint()
    try:
        secrets.put("airflow-variables-token", "v")
        backend: dict[str, Any] = {"name": "gcp", "type": "gcp_secret_manager"}
        backend["api_endpoint"] = secrets.endpoint
        backend |= {"credentials_file": str(tokens.key_file(work)), "ca_file": str(ca_file)}
        backend["feed"] = {"subscription": "node", "api_endpoint": pubsub.endpoint}
        runtime = await build({"backends": [backend]}, work)

        async def rotate(value: str) -> None:
            secrets.put("airflow-variables-token", value)
            secret = f"projects/{PROJECT}/secrets/airflow-variables-token"
            pubsub.publish({"eventType": "SECRET_VERSION_ADD", "secretId": secret})

        try:
            return await rotation_to_fresh([runtime], rotate, samples)
        finally:
            await runtime.retire(None)
    finally:
        pubsub.close()
        secrets.close()
        tokens.shutdown()
        tokens.server_close()


class Memory(Feed):
    """Hints handed over directly: the simulated hour has no queue to wait on."""

    async def receive(self, held: Held) -> list[Message]:
        return []


async def reads_per_key_per_hour(keys: int, *, ttl: float, events: bool) -> float:
    """Upstream reads per key in a simulated hour, after a first one: each key read every
    10 s, a tenth of the keys rotated once; refresh-ahead on (the default 0.8)."""
    from secrets_agent.lookup.cache import RefreshAhead

    clock, metrics = FakeClock(), Metrics()
    script = Script(values={(V, f"k{i}"): "v0" for i in range(keys)})
    ScriptedBackend.scripts = {"up": script}
    link = Link(ScriptedBackend("up", None), {})
    cache = SecretCache(
        max_entries=keys * 2,
        ttl=lambda kind: ttl,
        negative_ttl=30,
        max_stale=3600,
        cipher=Cipher([]),
        clock=clock,
        refresh=RefreshAhead(0.8, 0.1),
    )
    service = SecretService(BackendChain([link], metrics), cache, metrics)
    runner = FeedRunner(
        Memory("up", FeedOptions(refetch_rate=10000.0, key_interval=0.0)),
        link,
        service,
        metrics,
        Clocks(pace=clock, rng=lambda: 0.0),
    )
    # The second hour is counted: the first one's cold fetches are not the steady state.
    rotations = {
        3600 + second: f"k{i}" for i, second in enumerate(range(17, 3600, 3600 * 10 // keys))
    }
    counted = 0
    for second in range(7200):
        if second == 3600:
            counted = len(script.calls)
        if second in rotations:
            script.values[(V, rotations[second])] = f"v{second}"
            if events:
                runner.apply([Message((Hint(V, rotations[second]),))])
                await runner.idle()
        if second % 10 == 0:
            for i in range(keys):
                await service.lookup(V, f"k{i}")
        service.refresh_due()
        await service.idle()
        clock.advance(1.0)
    return (len(script.calls) - counted) / keys


def percentiles(lags: list[float]) -> tuple[float, float]:
    ordered = sorted(lags)
    if len(ordered) < 2:
        return ordered[0], ordered[0]
    cuts = statistics.quantiles(ordered, n=100)
    return cuts[49], cuts[98]


async def run(args: argparse.Namespace, work: Path) -> None:
    interval = 1.0
    print(f"rotation to fresh ({args.samples} rotations per feed; one agent unless said)\n")
    print(f"{'feed':34}{'p50 s':>8}{'p99 s':>8}{'target p99':>12}  met")
    feeds: list[tuple[str, Callable[[], Awaitable[list[float]]], float]] = [
        ("aws (EventBridge -> SQS, 20 s poll)", lambda: aws(work, args.samples), 5.0),
        ("aws, 3 agents + store (a read each)", lambda: aws(work, args.samples, 3), 5.0),
        ("gcp (Pub/Sub pull)", lambda: gcp(work, args.samples), 5.0),
        (f"vault (scan every {interval:.0f} s)", lambda: vault(work, args.samples, interval), 2.0),
    ]
    for name, measure, target in feeds:
        p50, p99 = percentiles(await measure())
        print(f"{name:34}{p50:8.2f}{p99:8.2f}{target:>11.1f}s  {'yes' if p99 <= target else 'NO'}")
    keys = 20 if args.small else 100
    with_events = await reads_per_key_per_hour(keys, ttl=3600, events=True)
    without = await reads_per_key_per_hour(keys, ttl=300, events=False)
    print(f"\nupstream reads per key per hour ({keys} hot keys, a tenth rotated in the hour)\n")
    print(f"  TTL 3600 s with events: {with_events:6.2f}")
    print(f"  TTL  300 s, no events:  {without:6.2f}")
    ratio = without / with_events
    print(
        f"  fewer reads with events: {ratio:.1f}x (target >= 10x: {'yes' if ratio >= 10 else 'NO'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="smoke sizes")
    args = parser.parse_args()
    if args.small:
        args.samples = 3
    with tempfile.TemporaryDirectory(prefix="feeds-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
