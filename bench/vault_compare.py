"""What users run today against the agent, on one OpenBao: Airflow's own ``VaultBackend``.

Airflow's backend runs in the real Airflow 3.3.2 venv the suite builds (``.airflow/3.3.2``,
with the hashicorp provider); it is reused across lookups with token auth, as a task process
reuses it. Also a burst of connections asking for one uncached Vault key at once.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import measure

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_PY = ROOT / ".airflow" / "3.3.2" / "bin" / "python"

AIRFLOW_SCRIPT = r"""
import json, statistics, sys, time
from airflow.providers.hashicorp.secrets.vault import VaultBackend
url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
backend = VaultBackend(url=url, token=token, mount_point="secret", kv_engine_version=2,
                       variables_path="variables", connections_path="connections")
assert backend.get_variable("bench_0") is not None
samples = []
for _ in range(count):
    started = time.perf_counter()
    backend.get_variable("bench_0")
    samples.append(time.perf_counter() - started)
print(json.dumps({"p50": statistics.median(samples)}))
"""


def rows(work: Path, lookups: int, connections: int, env: dict[str, str], row: Any) -> list[Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from support.bao import BAO, BaoServer
    except ImportError as exc:
        return [row("Airflow VaultBackend ÷ agent", f"skipped ({exc})", "≥ 10x", None)]
    if not Path(BAO).exists() and shutil.which(BAO) is None:
        return [row("Airflow VaultBackend ÷ agent", "skipped (no bao binary)", "≥ 10x", None)]
    bao = BaoServer(work / "bao")
    bao.start()
    try:
        bao.kv_put("variables/bench_0", {"value": "v"})
        bao.kv_put("variables/burst", {"value": "b"})
        return _measure(work, bao, lookups, connections, env, row)
    finally:
        bao.stop()


def _measure(
    work: Path, bao: Any, lookups: int, connections: int, env: dict[str, str], row: Any
) -> list[Any]:
    import bench

    sock = work / "vault-agent.sock"
    config = work / "vault-agent.toml"
    config.write_text(
        f'[listener]\nsocket_path = "{sock}"\n[log]\nlevel = "warning"\n'
        f'[[backends]]\nname = "vault"\ntype = "vault"\nurl = "{bao.url}"\n'
        f'auth_method = "token"\n[backends.token]\ntoken = "{bao.root_token}"\n'
    )
    out: list[Any] = []
    cmd = [sys.executable, "-m", "secrets_agent", "run", "--config", str(config)]
    with measure.server(cmd, sock, env) as agent:
        client = bench.agent_client(str(sock))
        measure.latencies(client, min(200, lookups))  # warm the connection and the cache
        # Half before and half after Airflow's run: a noisy spell meets both sides alike.
        samples = measure.latencies(client, lookups // 2)
        if AIRFLOW_PY.exists():
            result = subprocess.run(
                [str(AIRFLOW_PY), "-c", AIRFLOW_SCRIPT, bao.url, bao.root_token, str(lookups)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                env=env,
            )
            samples += measure.latencies(client, lookups - lookups // 2)
            ours = statistics.median(samples) * 1e6
            if result.returncode == 0:
                theirs = json.loads(result.stdout.strip().splitlines()[-1])["p50"] * 1e6
                out.append(
                    row(
                        "Airflow VaultBackend (reused, token) p50 ÷ agent's",
                        f"{theirs / ours:.1f}x ({theirs:.0f} µs vs {ours:.0f} µs)",
                        "≥ 10x",
                        theirs / ours >= 10,
                    )
                )
            else:
                out.append(
                    row(
                        "Airflow VaultBackend ÷ agent",
                        "skipped (no hashicorp provider in .airflow/3.3.2)",
                        "≥ 10x",
                        None,
                    )
                )
        else:
            out.append(
                row(
                    "Airflow VaultBackend ÷ agent",
                    "skipped (run the airflow tests once to build .airflow/3.3.2)",
                    "≥ 10x",
                    None,
                )
            )
        before = _upstream_reads(str(sock))
        request = b"GET /v1/variables/burst HTTP/1.1\r\nHost: x\r\n\r\n"
        result_burst = measure.burst(str(sock), connections, request)
        reads = _upstream_reads(str(sock)) - before
        out.append(
            row(
                f"{connections:,} connections, one uncached Vault key at once",
                f"{reads:.0f} upstream read, {result_burst.ok} x 200, "
                f"{result_burst.refused} refused, {result_burst.other} other",
                f"1 read, {connections:,} x 200",
                reads == 1 and result_burst.ok == connections,
            )
        )
        del agent
    return out


def _upstream_reads(sock: str) -> float:
    from secrets_agent_client.transport import UnixTransport

    text = UnixTransport(sock, 10).request("GET", "/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("secrets_agent_upstream_requests_total{") and 'backend="vault"' in line
    )
