"""How the bench measures: latency, CPU from /proc, throughput, bursts, memory, start-up, import.

CPU figures read a process's CPU time around N requests: they barely move with machine noise
(unlike wall-clock latency), so they are the ones to optimise against. They come from the
scheduler's nanosecond count of each thread (``/proc/<pid>/task/*/schedstat``), not utime+stime:
those advance in 10 ms ticks, which a round of a floor's server (~50 ms) crosses only a few
times, so a ratio against it moved by tens of per cent from quantisation alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

Once = Callable[[], None]
AOnce = Callable[[], Awaitable[None]]  # one awaited lookup
TICK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(
    args: Sequence[str], ready: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process in its own process group, killed with its group on the way out."""
    process = subprocess.Popen(list(args), env=env, start_new_session=True)
    try:
        wait_for_socket(ready, process)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], limit: float = 120) -> float:
    """Seconds until ``path`` accepts a connection (a readiness signal, not a fixed sleep)."""
    started = time.perf_counter()
    while True:
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                    return time.perf_counter() - started
                except OSError:
                    pass
        if process.poll() is not None:
            raise SystemExit(f"server for {path} exited with {process.returncode}")
        if time.perf_counter() - started > limit:
            raise SystemExit(f"server for {path} did not start within {limit} s")
        time.sleep(0.005)


@dataclass(frozen=True)
class Placement:
    """Where one client and its servers run: ``client`` and ``servers`` are CPU numbers."""

    name: str
    client: int
    servers: int


def placements() -> list[Placement]:
    """The two placements a client and a server can land in, each made explicit.

    Left to the scheduler, a client and the server it waits on share a CPU in some runs and
    not in others, and the figures differ by more than the agent's own costs (on this VM, a
    wake-up across CPUs adds ~30-40 µs of CPU to each side: the inter-processor interrupt and
    the idle CPU's exit are charged to the tasks). So each single-client figure is taken in
    both, pinned: on one CPU (the costs themselves, plus two context switches) and across two
    (what a worker on another core sees). With one CPU there is only the first.
    """
    cpus = sorted(os.sched_getaffinity(0))
    same = Placement("same CPU", cpus[0], cpus[0])
    return [same] if len(cpus) < 2 else [same, Placement("across CPUs", cpus[1], cpus[0])]


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (its later threads inherit from them)."""
    try:
        tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        tasks = [pid]
    for tid in tasks:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pinned(place: Placement, server_pids: Sequence[int]) -> Iterator[None]:
    """This process on ``place.client``, the servers on ``place.servers``; all back after."""
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {place.client})
        for pid in server_pids:
            _set_affinity(pid, {place.servers})
        yield
    finally:
        os.sched_setaffinity(0, mine)
        for pid in server_pids:
            _set_affinity(pid, mine)


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``'s live threads (their scheduler run time, in nanoseconds)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        tasks = []
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    if total:
        return total / 1e9
    # No schedstat (a kernel without it): utime+stime, in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def latencies(once: Once, count: int) -> list[float]:
    """``count`` lookups' wall-clock seconds, one by one."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        once()
        samples.append(time.perf_counter() - started)
    return samples


def loop_latencies(loop: asyncio.AbstractEventLoop, aonce: AOnce, count: int) -> list[float]:
    """``latencies`` for awaited lookups, all inside one run of ``loop`` (as a triggerer)."""

    async def batch() -> list[float]:
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await aonce()
            samples.append(time.perf_counter() - started)
        return samples

    return loop.run_until_complete(batch())


def loop_cpu_per_request(
    loop: asyncio.AbstractEventLoop, aonce: AOnce, server_pid: int, count: int
) -> Cpu:
    """``cpu_per_request`` for awaited lookups, all inside one run of ``loop``."""

    async def batch() -> None:
        for _ in range(count):
            await aonce()

    loop.run_until_complete(aonce())
    client0, server0 = time.process_time(), cpu_seconds(server_pid)
    loop.run_until_complete(batch())
    client1, server1 = time.process_time(), cpu_seconds(server_pid)
    return Cpu((client1 - client0) / count * 1e6, (server1 - server0) / count * 1e6)


def interleaved_p50_us(subjects: Sequence[Once], count: int, rounds: int) -> list[float]:
    """Each client's median latency over ``count`` lookups taken in ``rounds`` turns, so a
    noisy spell on the host lands on all of them alike (as ``interleaved_cpu`` does)."""
    for once in subjects:
        latencies(once, min(200, count))  # warm the connection and the cache
    seen: list[list[float]] = [[] for _ in subjects]
    for _ in range(rounds):
        for once, samples in zip(subjects, seen, strict=True):
            samples += latencies(once, max(1, count // rounds))
    return [statistics.median(samples) * 1e6 for samples in seen]


@dataclass(frozen=True)
class Cpu:
    client_us: float  # this process's CPU per request
    server_us: float  # the server's CPU per request


def cpu_per_request(once: Once, server_pid: int, count: int) -> Cpu:
    once()
    client0, server0 = time.process_time(), cpu_seconds(server_pid)
    for _ in range(count):
        once()
    client1, server1 = time.process_time(), cpu_seconds(server_pid)
    return Cpu((client1 - client0) / count * 1e6, (server1 - server0) / count * 1e6)


def interleaved_cpu(subjects: Sequence[tuple[Once, int]], count: int, rounds: int) -> list[Cpu]:
    """``cpu_per_request`` for each (client, server pid), in turns; the median of each."""
    seen: list[list[Cpu]] = [[] for _ in subjects]
    for _ in range(rounds):
        for (once, pid), samples in zip(subjects, seen, strict=True):
            samples.append(cpu_per_request(once, pid, count))
    return [
        Cpu(
            statistics.median(c.client_us for c in samples),
            statistics.median(c.server_us for c in samples),
        )
        for samples in seen
    ]


def rate(once: Once, count: int, rounds: int = 5) -> float:
    """Lookups per second back to back: the median of ``rounds`` runs (a noisy spell hits one)."""
    once()
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(max(1, count // rounds)):
            once()
        rates.append(max(1, count // rounds) / (time.perf_counter() - started))
    return statistics.median(rates)


def _thread_worker(factory: Callable[[], Once], count: int, errors: list[int]) -> None:
    try:
        once = factory()
    except Exception:
        errors.append(count)
        return
    for _ in range(count):
        try:
            once()
        except Exception:
            errors.append(1)


def _process_worker(args: tuple[str, str, int, int]) -> tuple[int, int]:
    import bench  # the spawned process imports the bench module to find the client factory

    kind, path, threads, count = args
    errors: list[int] = []
    workers = [
        threading.Thread(
            target=_thread_worker, args=(lambda: bench.CLIENTS[kind](path), count, errors)
        )
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * count, sum(errors)


def concurrent_rate(
    kind: str, path: str, processes: int, threads: int, count: int
) -> tuple[float, int]:
    """Lookups/s and errors with ``processes`` x ``threads`` clients, each ``count`` lookups."""
    sys.path.insert(0, str(Path(__file__).parent))
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_process_worker, [(kind, path, 1, 1)] * processes))  # spawn and import
        started = time.perf_counter()
        results = list(pool.map(_process_worker, [(kind, path, threads, count)] * processes))
        elapsed = time.perf_counter() - started
    return sum(done for done, _ in results) / elapsed, sum(err for _, err in results)


@dataclass(frozen=True)
class Burst:
    ok: int
    refused: int
    other: int


def burst(path: str, connections: int, request: bytes, timeout: float = 60) -> Burst:
    """Open ``connections`` at once, send ``request`` on each, count 200s and failures."""
    selector = selectors.DefaultSelector()
    refused = 0
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except (BlockingIOError, ConnectionRefusedError):
            refused += 1
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE, bytearray())
    ok = other = 0
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1):
            conn, data = key.fileobj, key.data
            if not isinstance(conn, socket.socket):
                continue
            if events & selectors.EVENT_WRITE:
                conn.sendall(request)
                selector.modify(conn, selectors.EVENT_READ, data)
                continue
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            data += chunk
            head, sep, body = bytes(data).partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if chunk and not (sep and length is not None and len(body) >= length):
                continue
            if head.startswith(b"HTTP/1.1 200"):
                ok += 1
            else:
                other += 1
            selector.unregister(conn)
            conn.close()
    for key in list(selector.get_map().values()):
        other += 1
        key.fileobj.close()  # type: ignore[union-attr]
    return Burst(ok, refused, other)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def import_ms(python: str, module: str, runs: int = 7) -> float:
    """Median cumulative import time of ``module`` in a fresh interpreter (``-X importtime``).

    Counted from the interpreter's own report, so start-up and machine noise stay out of it.
    """
    totals = []
    for _ in range(runs):
        result = subprocess.run(
            [python, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        )
        top = module.split(".")[0]
        total = 0
        for line in result.stderr.splitlines():
            # "import time: self | cumulative | name": top-level entries have no indent.
            parts = line.split("|")
            if len(parts) != 3 or not parts[1].strip().isdigit():
                continue
            name = parts[2].rstrip()
            top_level = len(name) - len(name.lstrip()) == 1
            if top_level and (name.strip() == top or name.strip().startswith(top + ".")):
                total += int(parts[1])
        totals.append(total / 1000)
    return statistics.median(totals)
