"""Fleet benchmark: upstream fetches per key per TTL for 1, 3 and 10 agents, without the shared
cache, with one store server and with a three-primary cluster, and the latency of a node-cache
miss served by either store vs the upstream.

Real parts: an OpenBao dev server and Debian's redis-server on loopback (one server, and a
``redis-cli --cluster create`` cluster), and each agent's whole
lookup path (``Runtime``: vault backend, chain, node cache, shared tier), all agents in one
process and event loop. Nothing here asserts a time; compare the printed ratios.

    .venv/bin/python bench/fleet.py [--keys 50] [--agents 1,3,10] [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from secrets_agent.config.loader import parse_config
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from secrets_agent.runtime import BackendPool, Runtime
from support.bao import BaoServer
from support.redis_server import ClusterServers, RedisServer, Store

V = Kind.VARIABLE


@contextmanager
def servers(workdir: Path) -> Iterator[tuple[BaoServer, RedisServer, ClusterServers]]:
    bao, store = BaoServer(workdir / "bao"), RedisServer(workdir / "redis")
    cluster = ClusterServers(workdir / "cluster")
    try:
        bao.start()
        store.start()
        cluster.start()
        yield bao, store, cluster
    finally:
        cluster.stop()
        store.stop()
        bao.stop()


async def start_agents(
    count: int, bao: BaoServer, store: Store | None, key_file: Path, workdir: Path
) -> list[tuple[Runtime, Metrics]]:
    raw: dict[str, object] = {
        "encryption": {"key_file": str(key_file)},
        "backends": [
            {
                "name": "vault",
                "type": "vault",
                "url": bao.url,
                "auth_method": "token",
                "token": {"token": bao.root_token},
            }
        ],
    }
    if store is not None:
        # Generous timeouts: the whole fleet connects at once, on one machine.
        raw["shared_cache"] = {
            "url": store.url,
            "timeout": 2.0,
            "connect_timeout": 5.0,
            "lock_wait": 5.0,
        }
    agents = []
    for _ in range(count):
        metrics = Metrics()
        config = parse_config(raw, base_dir=workdir)
        pool = BackendPool(metrics, time.monotonic)
        agents.append((await Runtime.build(config, pool, metrics, time.monotonic), metrics))
    return agents


def upstream_fetches(metrics: Metrics) -> float:
    return sum(
        s.value
        for family in metrics.registry.collect()
        if family.name == "secrets_agent_upstream_requests"
        for s in family.samples
        if s.name.endswith("_total")
    )


async def one_ttl(agents: list[tuple[Runtime, Metrics]], keys: int) -> float:
    """Every agent reads every key once, all at once (one TTL of a fleet): fetches per key."""
    await asyncio.gather(
        *(rt.service.lookup(V, f"key{k}") for rt, _ in agents for k in range(keys))
    )
    return sum(upstream_fetches(m) for _, m in agents) / keys


async def node_miss_latency(agents: list[tuple[Runtime, Metrics]], samples: int) -> list[float]:
    """Time lookups that miss the node cache (dropped locally only) on the last agent."""
    service = agents[-1][0].service
    times = []
    for i in range(samples):
        service.cache.invalidate(V, f"key{i % 10}")  # the node's copy only: the store keeps it
        started = time.perf_counter()
        await service.lookup(V, f"key{i % 10}")
        times.append(time.perf_counter() - started)
    return times


async def stop(agents: list[tuple[Runtime, Metrics]]) -> None:
    for runtime, _ in agents:
        await runtime.retire(None)


async def run(
    args: argparse.Namespace,
    bao: BaoServer,
    store: RedisServer,
    cluster: ClusterServers,
    work: Path,
) -> None:
    key_file = work / "fernet.key"
    key_file.write_text(Fernet.generate_key().decode())
    for k in range(args.keys):
        bao.kv_put(f"variables/key{k}", {"value": f"value-{k}"})
    print(f"upstream fetches per key per TTL ({args.keys} keys, every agent reads every key)\n")
    print(f"{'agents':>8}{'node cache only':>18}{'with shared cache':>20}{'with a cluster':>17}")
    for count in args.agents:
        row = []
        for shared in (None, store, cluster):
            store.command("FLUSHALL")
            cluster.command("FLUSHALL")
            agents = await start_agents(count, bao, shared, key_file, work)
            try:
                row.append(await one_ttl(agents, args.keys))
            finally:
                await stop(agents)
        print(f"{count:>8}{row[0]:>18.2f}{row[1]:>20.2f}{row[2]:>17.2f}")
    latencies = {}
    for name, shared in (("from the shared cache", store), ("from a cluster", cluster)):
        shared.command("FLUSHALL")
        fleet = await start_agents(2, bao, shared, key_file, work)
        try:
            await one_ttl(fleet, 10)
            latencies[name] = await node_miss_latency(fleet, args.samples)
        finally:
            await stop(fleet)
    alone = await start_agents(1, bao, None, key_file, work)
    try:
        latencies["from the upstream"] = await node_miss_latency(alone, args.samples)
    finally:
        await stop(alone)
    print(f"\nnode-cache miss latency ({args.samples} lookups)\n")
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}")
    for name, times in latencies.items():
        print(f"{name:24}{percentile(times, 50):10.1f}{percentile(times, 99):10.1f}")
    upstream = percentile(latencies["from the upstream"], 50)
    ratio = upstream / percentile(latencies["from the shared cache"], 50)
    print(f"\nupstream / shared cache latency (p50): {ratio:.1f}x")
    ratio = upstream / percentile(latencies["from a cluster"], 50)
    print(f"upstream / cluster latency (p50): {ratio:.1f}x")


def percentile(times: list[float], pct: int) -> float:
    ordered = sorted(times)
    if len(ordered) < 2:
        return ordered[0] * 1e6
    return statistics.quantiles(ordered, n=100)[pct - 1] * 1e6 if pct < 100 else ordered[-1] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--agents", default="1,3,10", help="fleet sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    args.agents = [int(n) for n in args.agents.split(",")]
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp, servers(Path(tmp)) as started:
        asyncio.run(run(args, *started, Path(tmp)))


if __name__ == "__main__":
    main()
