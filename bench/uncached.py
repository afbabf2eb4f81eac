"""Uncached Vault reads: the agent's cost of a miss against hvac reading the same OpenBao itself.

Every read is of a key written for it and never read before, so each is a real miss: the agent
fetches it from OpenBao, and hvac (the client the agent uses, in this process, reused as a
task process would reuse it) reads one of its own fresh keys. Taken in interleaved rounds, the
median of each, so a noisy spell on the host lands on both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import measure

MOUNT, PATH = "secret", "variables"  # the agent's Vault defaults, the provider's too


def miss_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def write_keys(bao: Any, keys: list[str]) -> None:
    for key in keys:
        bao.kv_put(f"{PATH}/{key}", {"value": f"{key}-" + "x" * 64}, mount=MOUNT)


@dataclass
class Side:
    """One subject's samples: wall-clock seconds per read, CPU seconds per round and reads."""

    latencies: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # per read, one entry per round

    def p50_us(self) -> float:
        return statistics.median(self.latencies) * 1e6 if self.latencies else float("nan")

    def cpu_us(self) -> float:
        return statistics.median(self.cpu) * 1e6 if self.cpu else float("nan")


def hvac_reader(url: str, token: str, *, environment_once: bool = False) -> Callable[[str], None]:
    """hvac in this process, as Airflow's ``VaultBackend`` builds it (KV v2, one session);
    ``environment_once``: with the agent's session settings (its environment read once at
    start, not per request: ``backends/vault/environment.py``)."""
    import hvac

    client = hvac.Client(url=url, token=token, timeout=30)
    if environment_once:
        from secrets_agent.backends.vault.environment import inert

        client.adapter.session.trust_env = not inert()

    def read(key: str) -> None:
        client.secrets.kv.v2.read_secret_version(
            path=f"{PATH}/{key}", mount_point=MOUNT, raise_on_deleted_version=True
        )

    return read


def hvac_threaded_reader(url: str, token: str) -> Callable[[list[str]], list[float]]:
    """hvac (the agent's session settings) called through the agent's worker threads from a
    uvloop loop in this process, one read at a time: what a miss cost the agent while its Vault
    reads went through hvac, less everything else the agent does (``backends/vault/kv.py``)."""
    import uvloop

    from secrets_agent.backends.threads import Workers

    read = hvac_reader(url, token, environment_once=True)
    loop = uvloop.new_event_loop()
    workers = Workers(1, "bench-hvac")

    async def batch(keys: list[str]) -> list[float]:
        took = []
        for key in keys:
            started = time.perf_counter()
            await workers.run(lambda: read(key))  # noqa: B023 (awaited before the next key)
            took.append(time.perf_counter() - started)
        return took

    return lambda keys: loop.run_until_complete(batch(keys))


def agent_reader(sock: str) -> Callable[[str], None]:
    from secrets_agent_client import AgentSecretsBackend

    backend = AgentSecretsBackend(socket_path=sock, on_unavailable="raise")

    def read(key: str) -> None:
        if backend.get_variable(key) is None:
            raise RuntimeError("uncached benchmark key missing")

    return read


class Misses:
    """Reads of fresh keys through the agent and through hvac (as Airflow builds it, with the
    agent's session settings, and the latter through worker threads), taken round by round."""

    def __init__(self, agent_sock: str, agent_pid: int, url: str, token: str) -> None:
        self._agent, self._agent_pid = agent_reader(agent_sock), agent_pid
        self._hvac = hvac_reader(url, token)
        self._hvac_once = hvac_reader(url, token, environment_once=True)
        self._threaded = hvac_threaded_reader(url, token)
        self.agent, self.hvac, self.hvac_once, self.threaded = Side(), Side(), Side(), Side()

    def warm(self, agent_key: str, hvac_key: str, once_key: str, threaded_key: str) -> None:
        """One read each first: connections, the token and the code paths are warm."""
        self._agent(agent_key)
        self._hvac(hvac_key)
        self._hvac_once(once_key)
        self._threaded([threaded_key])

    def round(
        self,
        agent_keys: list[str],
        hvac_keys: list[str],
        once_keys: list[str],
        threaded_keys: list[str],
    ) -> None:
        if not agent_keys or not hvac_keys or not once_keys or not threaded_keys:
            return
        before = measure.cpu_seconds(self._agent_pid)
        self.agent.latencies += _timed(self._agent, agent_keys)
        self.agent.cpu.append((measure.cpu_seconds(self._agent_pid) - before) / len(agent_keys))
        for read, side, keys in (
            (self._hvac, self.hvac, hvac_keys),
            (self._hvac_once, self.hvac_once, once_keys),
        ):
            before = time.process_time()
            side.latencies += _timed(read, keys)
            side.cpu.append((time.process_time() - before) / len(keys))
        before = time.process_time()
        self.threaded.latencies += self._threaded(threaded_keys)
        self.threaded.cpu.append((time.process_time() - before) / len(threaded_keys))


def _timed(read: Callable[[str], None], keys: list[str]) -> Iterator[float]:
    for key in keys:
        started = time.perf_counter()
        read(key)
        yield time.perf_counter() - started


def chunks(keys: list[str], rounds: int) -> list[list[str]]:
    size = max(1, len(keys) // rounds)
    return [keys[i * size : (i + 1) * size] for i in range(rounds)]
