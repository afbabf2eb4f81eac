"""Benchmark: cached lookups through the real client vs. a raw Unix-socket echo (the floor).

Both servers run as separate processes and are measured in the same run, so the printed ratios
compare like with like on whatever machine runs this. Nothing here asserts a time.

    .venv/bin/python bench/bench.py [--lookups 5000] [--clients 4] [--keys 5000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ECHO_SERVER = """
import asyncio, sys
async def handle(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_unix_server(handle, path=sys.argv[1])
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def echo_round_trip(path: str) -> Callable[[], None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    message = b"GET /v1/variables/bench_0 HTTP/1.1\r\nHost: localhost\r\n\r\n"

    def once() -> None:
        sock.sendall(message)
        received = 0
        while received < len(message):
            received += len(sock.recv(65536))

    return once


def agent_lookup(path: str) -> Callable[[], None]:
    from secrets_agent_client import AgentSecretsBackend

    backend = AgentSecretsBackend(socket_path=path, on_unavailable="raise")

    def once() -> None:
        if backend.get_variable("bench_0") is None:
            raise RuntimeError("benchmark key missing")

    return once


FACTORIES = {"echo": echo_round_trip, "agent": agent_lookup}


def latencies(kind: str, path: str, count: int) -> list[float]:
    once = FACTORIES[kind](path)
    for _ in range(min(200, count)):  # warm up the connection and the cache
        once()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        once()
        samples.append(time.perf_counter() - started)
    return samples


def _worker(args: tuple[str, str, int]) -> float:
    kind, path, count = args
    once = FACTORIES[kind](path)
    once()
    started = time.perf_counter()
    for _ in range(count):
        once()
    return time.perf_counter() - started


def throughput(kind: str, path: str, clients: int, count: int) -> float:
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        started = time.perf_counter()
        pool.map(_worker, [(kind, path, count)] * clients)
        elapsed = time.perf_counter() - started
    return clients * count / elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server for {path} did not start")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=5000, help="distinct cached keys for memory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sa-bench-", dir="/tmp"))
    variables = {f"bench_{i}": f"value-{i:06d}-" + "x" * 64 for i in range(args.keys)}
    (work / "vars.json").write_text(json.dumps(variables))
    (work / "agent.toml").write_text(
        f'[listener]\nsocket_path = "{work}/agent.sock"\n[log]\nlevel = "warning"\n'
        f"[cache]\nmax_entries = {args.keys + 10}\n"
        '[[backends]]\nname = "bench"\ntype = "file"\nvariables_file = "vars.json"\n'
    )
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "True"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "secrets_agent", "run", "--config", str(work / "agent.toml")],
        env=env,
    )
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(work / "echo.sock")], env=env)
    try:
        wait_for(work / "agent.sock", agent)
        wait_for(work / "echo.sock", echo)
        report(args, str(work / "agent.sock"), str(work / "echo.sock"), agent.pid)
    finally:
        for process in (agent, echo):
            process.terminate()
            process.wait(timeout=30)


def report(args: argparse.Namespace, agent_path: str, echo_path: str, agent_pid: int) -> None:
    print(f"cached lookups: {args.lookups} sequential, {args.clients} concurrent clients\n")
    floor = latencies("echo", echo_path, args.lookups)
    ours = latencies("agent", agent_path, args.lookups)
    print(f"{'':24}{'p50 µs':>10}{'p99 µs':>10}")
    for name, samples in (("echo round trip (floor)", floor), ("client lookup (HIT)", ours)):
        p50, p99 = (statistics.quantiles(samples, n=100)[i] * 1e6 for i in (49, 98))
        print(f"{name:24}{p50:10.1f}{p99:10.1f}")
    ratio50 = statistics.median(ours) / statistics.median(floor)
    print(f"\nlatency ratio to floor (p50): {ratio50:.1f}x")

    floor_rate = throughput("echo", echo_path, args.clients, args.lookups)
    our_rate = throughput("agent", agent_path, args.clients, args.lookups)
    print(
        f"throughput with {args.clients} clients: floor {floor_rate:,.0f}/s, "
        f"agent {our_rate:,.0f}/s, ratio {floor_rate / our_rate:.1f}x"
    )

    idle = rss_kib(agent_pid)
    from secrets_agent_client import AgentSecretsBackend

    backend = AgentSecretsBackend(socket_path=agent_path, on_unavailable="raise")
    for i in range(args.keys):
        backend.get_variable(f"bench_{i}")
    loaded = rss_kib(agent_pid)
    per_entry = (loaded - idle) * 1024 / max(1, args.keys)
    print(
        f"agent memory: idle {idle / 1024:.1f} MiB, with {args.keys} cached entries "
        f"{loaded / 1024:.1f} MiB ({loaded / max(1, idle):.2f}x idle, ~{per_entry:.0f} B/entry)"
    )


if __name__ == "__main__":
    main()
