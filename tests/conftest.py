"""Shared fixtures. Every test process stays on loopback: no cloud metadata probes, ever.

Every process the tests start inherits a run marker in its environment; at the end of the
session any such process still alive fails the run (and is killed), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support import loopback

if TYPE_CHECKING:  # the client's own runs (Python 3.9+) have no agent to import
    from support.moto_aws import MotoServer
    from support.redis_server import ClusterServers, RedisServer, Store

# Set before any SDK is imported by any test, and inherited by every subprocess a test starts.
loopback.apply()

RUN_MARKER = "SECRETS_AGENT_TEST_RUN"
os.environ[RUN_MARKER] = uuid.uuid4().hex


# A test that hangs fails the run instead of holding it to CI's hour: past this, every thread's
# stack is written out and the run interrupted (no test comes near it on a busy machine).
HANG_SECONDS = float(os.environ.get("SECRETS_AGENT_TEST_HANG", "900"))
_HANG_REPORT = Path(tempfile.gettempdir()) / f"secrets-agent-hang-{os.getpid()}.txt"


def _hung(test: str) -> None:
    with _HANG_REPORT.open("w") as report:
        report.write(f"{test} ran past {HANG_SECONDS:.0f} s; every thread's stack:\n")
        report.flush()
        faulthandler.dump_traceback(file=report, all_threads=True)
    os.kill(os.getpid(), signal.SIGINT)  # pytest stops, tears down and reports
    time.sleep(60)
    os._exit(70)  # the interrupt found nothing to wake: the stacks are in the report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    watch = threading.Timer(HANG_SECONDS, _hung, (item.nodeid,))
    watch.daemon = True
    watch.start()
    try:
        yield
    finally:
        watch.cancel()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _HANG_REPORT.exists():
        terminalreporter.section("hung test")
        terminalreporter.write(_HANG_REPORT.read_text())
        _HANG_REPORT.unlink()


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """In-process agents apply ``[log] level`` to the root logger (start, reload): give it back."""
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processes_left_behind() -> dict[int, str]:
    """Live processes (not zombies) carrying this run's marker, other than pytest itself."""
    marker = f"{RUN_MARKER}={os.environ[RUN_MARKER]}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or a zombie
        if marker in environ.split(b"\0"):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + 15  # a child that is exiting right now gets a moment
    left = processes_left_behind()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)  # polling for exits, not timing behaviour
        left = processes_left_behind()
    if not left:
        return
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    report = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left.items())
    print(f"\nprocesses started by the tests were still running (now killed):\n{report}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server per test module (the AWS tests; each resets it as it needs)."""
    from support.moto_aws import MotoServer

    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test module (the shared-cache tests)."""
    from support.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(module_store: RedisServer) -> RedisServer:
    """The module's redis-server, emptied for this test (restarted if a test killed it)."""
    if module_store.process is None:
        module_store.start()
    module_store.command("FLUSHALL")
    return module_store


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    from support.redis_server import ClusterServers

    cluster = ClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def fleet_store(request: pytest.FixtureRequest, module_store: RedisServer) -> Store:
    """An empty store of each kind (a node a test killed is started again first)."""
    chosen: Store = module_store
    if request.param == "cluster":
        chosen = request.getfixturevalue("session_cluster")
        chosen.start()  # the nodes a test killed, if any
    elif module_store.process is None:
        module_store.start()
    chosen.command("FLUSHALL")
    return chosen
