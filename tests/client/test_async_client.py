"""The awaited lookups (what Airflow's task SDK and triggerer call) against the real agent, and
against servers that are down, slow or silent: the same answers and errors as the blocking ones,
and the event loop never waits on the agent (a loop with nothing else to run waits for a quick
answer in place, and no longer than ``wait_here``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent_client import AgentSecretsBackend, AgentUnavailableError
from secrets_agent_client.aio import MAX_IDLE, AsyncUnixTransport
from secrets_agent_client.wire import Response, lookup_path
from support.agent_proc import CONNECTIONS, VARIABLES, real_agent
from support.unix_server import ThreadedUnixServer

UID = os.getuid()


def on_a_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the test coroutine on a loop of its own: as Airflow does, and without pytest-asyncio,
    whose loop handling on Python 3.9 leaves an unclosed loop behind."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def agent() -> Iterator[str]:
    """One real agent for the module; our uid may name team_a only (team_b is its 403)."""
    directory = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # socket paths stay short
    try:
        with real_agent(directory, f'team_uids = {{ "{UID}" = ["team_a"] }}') as path:
            yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


IDS = [("variables", k) for k in [*VARIABLES, "absent", "with space/and/slashes", "ü"]] + [
    ("connections", k) for k in [*CONNECTIONS, "absent", "a/b"]
]


@on_a_loop
async def test_awaited_answers_equal_the_blocking_ones(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent)
    for segment, key in IDS:
        if segment == "variables":
            expected, got = backend.get_variable(key), await backend.aget_variable(key)
        else:
            expected, got = backend.get_conn_value(key), await backend.aget_conn_value(key)
        assert got == expected, (segment, key)
    assert await backend.aget_variable("a/b c") == "slashed"  # ids with "/" (Airflow 3.4)
    assert await backend.aget_conn_value("aws/prod/db") == CONNECTIONS["aws/prod/db"]
    assert await backend.aget_config("absent") is None
    backend.close()


@on_a_loop
async def test_concurrent_lookups_on_one_loop_each_get_their_answer(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent)
    keys = [*VARIABLES, "absent"] * 25
    answers = await asyncio.gather(*(backend.aget_variable(k) for k in keys))
    assert answers == [VARIABLES.get(k) for k in keys]
    assert backend._async is not None
    assert (
        1 <= len(backend._async._idle_list(asyncio.get_running_loop())) <= MAX_IDLE
    )  # kept for the next lookups, but only a few
    again = await backend.aget_variable("greeting")
    assert again == "hello"
    await backend.aclose()


def test_each_event_loop_keeps_its_own_connections(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent)
    # Loops one after another (asyncio.run each time, as a process running async tasks)...
    assert asyncio.run(backend.aget_variable("greeting")) == "hello"
    assert asyncio.run(backend.aget_variable("greeting")) == "hello"
    # ... and loops in threads at once, on one backend: every lookup gets its own answer.
    keys = sorted(VARIABLES)
    answers: dict[int, list[str | None]] = {}

    async def many(index: int) -> None:
        key = keys[index % len(keys)]
        answers[index] = [await backend.aget_variable(key) for _ in range(100)]

    threads = [threading.Thread(target=asyncio.run, args=(many(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert answers == {i: [VARIABLES[keys[i % len(keys)]]] * 100 for i in range(4)}
    backend.close()


@on_a_loop
async def test_team_names_are_sent_and_a_refused_team_is_access_denied(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent)
    assert await backend.aget_variable("team/ok", team_name="team_a") == "team-value"
    with pytest.raises(PermissionError, match="denied variables lookup"):
        await backend.aget_variable("team/ok", team_name="team_b")
    with pytest.raises(PermissionError, match="denied connections lookup"):
        await backend.aget_conn_value("pg", "team_b")
    with pytest.raises(PermissionError):
        backend.get_variable("team/ok", team_name="team_b")  # the same answer both ways
    backend.close()


@on_a_loop
async def test_expected_agent_uid_is_checked_on_each_new_connection(agent: str) -> None:
    right = AgentSecretsBackend(socket_path=agent, expected_agent_uid=str(UID))
    assert await right.aget_variable("greeting") == "hello"
    wrong = AgentSecretsBackend(socket_path=agent, expected_agent_uid=UID + 1)
    with pytest.raises(PermissionError, match=f"served by uid {UID}"):
        await wrong.aget_variable("greeting")
    # Never a fall-through, even with the lenient policy.
    lenient = AgentSecretsBackend(socket_path=agent, expected_agent_uid=UID + 1)
    with pytest.raises(PermissionError):
        await lenient.aget_conn_value("pg")
    right.close()


class Deserializing(AgentSecretsBackend):
    """What Airflow's base class adds: a Connection built from the value."""

    def deserialize_connection(self, conn_id: str, value: str) -> Any:
        return ("connection", conn_id, value)


@on_a_loop
async def test_aget_connection_builds_airflows_connection(agent: str) -> None:
    backend = Deserializing(socket_path=agent)
    assert await backend.aget_connection("pg") == ("connection", "pg", CONNECTIONS["pg"])
    assert await backend.aget_connection("absent") is None
    backend.close()


@on_a_loop
async def test_agent_down_follows_the_policy(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = str(short_tmp / "gone.sock")
    lenient = AgentSecretsBackend(socket_path=gone, timeout=0.5)
    with caplog.at_level(logging.WARNING):
        assert await lenient.aget_variable("unique-down-a") is None
        assert await lenient.aget_conn_value("unique-down-b") is None
    assert caplog.text.count("no agent socket") == 1  # logged once per process, not per lookup
    strict = AgentSecretsBackend(socket_path=gone, on_unavailable="raise")
    with pytest.raises(AgentUnavailableError, match="no agent socket"):
        await strict.aget_variable("a")


class LateServer:
    """Answers each request only when the test says so (from any thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.release = threading.Event()
        self.received = threading.Event()
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):  # the client may have gone first
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            self.requests.append(data)
            self.received.set()
            if self.release.wait(timeout=30):
                body = b'{"value": "late"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            conn.recv(1)  # hold the connection until the client goes

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def late(short_tmp: Path) -> Iterator[LateServer]:
    server = LateServer(str(short_tmp / "late.sock"))
    yield server
    server.close()


@on_a_loop
async def test_the_loop_keeps_running_while_the_agent_is_slow(late: LateServer) -> None:
    # The server answers only after the loop has ticked five times while the lookup waits: a
    # lookup that blocked the loop would never see its answer and would time out instead.
    ticks: list[int] = []

    async def ticker() -> None:
        while len(ticks) < 5:
            await asyncio.sleep(0.01)
            ticks.append(1)
        late.release.set()

    backend = AgentSecretsBackend(socket_path=late.path, timeout=10, on_unavailable="raise")
    tick_task = asyncio.ensure_future(ticker())
    assert await backend.aget_variable("slow") == "late"
    await tick_task
    assert len(ticks) == 5 and len(late.requests) == 1
    await backend.aclose()


@on_a_loop
async def test_a_silent_agent_times_out_within_the_timeout(late: LateServer) -> None:
    lenient = AgentSecretsBackend(socket_path=late.path, timeout=0.2)
    assert await lenient.aget_variable("silent") is None
    strict = AgentSecretsBackend(socket_path=late.path, timeout=0.2, on_unavailable="raise")
    with pytest.raises(AgentUnavailableError, match="did not answer in time"):
        await strict.aget_variable("silent")


@on_a_loop
async def test_a_cancelled_lookup_leaves_no_half_read_connection(late: LateServer) -> None:
    backend = AgentSecretsBackend(socket_path=late.path, timeout=20)
    task = asyncio.ensure_future(backend.aget_variable("cancelled"))
    await asyncio.get_running_loop().run_in_executor(None, late.received.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (
        backend._async is not None and backend._async._idle_list(asyncio.get_running_loop()) == []
    )


def test_importing_the_client_does_not_import_asyncio() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import secrets_agent_client; "
        "b = secrets_agent_client.AgentSecretsBackend(socket_path='/nonexistent'); "
        "print('asyncio' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionResetError
        data += chunk
    return data


def answer(value: str) -> bytes:
    body = json.dumps({"value": value}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def answer_once_and_hang_up(conn: socket.socket, index: int) -> None:
    """Each connection: one answer naming it, then closed."""
    read_head(conn)
    conn.sendall(answer(f"conn{index}"))


@contextlib.contextmanager
def scripted(directory: Path, handle: Callable[[socket.socket, int], None]) -> Iterator[str]:
    server = ThreadedUnixServer(str(directory / "scripted.sock"), handle)
    try:
        yield server.path
    finally:
        server.close()


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (bounded: a test fails, never hangs)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


@on_a_loop
async def test_an_idle_connection_the_agent_closes_is_dropped_before_the_next_lookup(
    short_tmp: Path,
) -> None:
    with scripted(short_tmp, answer_once_and_hang_up) as path:
        backend = AgentSecretsBackend(socket_path=path, on_unavailable="raise")
        assert await backend.aget_variable("a") == "conn1"
        assert backend._async is not None
        idle = backend._async._idle_list(asyncio.get_running_loop())
        await until(lambda: not idle)  # the loop saw the agent close it while idle
        assert await backend.aget_variable("b") == "conn2"
        await backend.aclose()


@on_a_loop
async def test_concurrent_lookups_answered_in_reverse_order_each_get_their_own(
    short_tmp: Path,
) -> None:
    count = 6
    heads: dict[int, bytes] = {}
    conns: dict[int, socket.socket] = {}
    everyone = threading.Barrier(count)

    def answer_after_all_in_reverse(conn: socket.socket, index: int) -> None:
        heads[index], conns[index] = read_head(conn), conn
        everyone.wait(timeout=30)
        if index == count:  # the last to arrive answers every connection, newest first
            for other in sorted(conns, reverse=True):
                key = heads[other].split(b" ")[1].rsplit(b"/", 1)[1].decode()
                conns[other].sendall(answer(f"for {key}"))
        conn.recv(1)  # until the client goes

    with scripted(short_tmp, answer_after_all_in_reverse) as path:
        backend = AgentSecretsBackend(socket_path=path, on_unavailable="raise")
        keys = [f"k{i}" for i in range(count)]
        got = await asyncio.gather(*(backend.aget_variable(k) for k in keys))
        assert got == [f"for {k}" for k in keys]
        await backend.aclose()


@on_a_loop
async def test_a_silent_answer_after_quick_ones_waits_its_whole_timeout(short_tmp: Path) -> None:
    # One timer serves every exchange on a connection: the one armed for the first exchange
    # must not cut a later one short.
    def quick_then_silent(conn: socket.socket, index: int) -> None:
        for i in range(3):
            read_head(conn)
            conn.sendall(answer(f"quick{i}"))
        read_head(conn)
        conn.recv(1)  # silent until the client gives up

    with scripted(short_tmp, quick_then_silent) as path:
        backend = AgentSecretsBackend(socket_path=path, timeout=0.6, on_unavailable="raise")
        loop = asyncio.get_running_loop()
        assert [await backend.aget_variable("q") for _ in range(3)] == [
            "quick0",
            "quick1",
            "quick2",
        ]
        await asyncio.sleep(0.3)  # the first exchange's deadline falls inside the next one
        started = loop.time()
        with pytest.raises(AgentUnavailableError, match="did not answer in time"):
            await backend.aget_variable("silent")
        assert loop.time() - started >= 0.55  # its own deadline, not the first exchange's
        assert backend._async is not None and backend._async._idle_list(loop) == []


def test_a_forked_child_never_touches_the_parents_connections(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent, timeout=5, on_unavailable="raise")
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(backend.aget_variable("greeting")) == "hello"
        assert backend._async is not None
        kept = idle_connections(backend, loop)
        assert len(kept) == 1
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                backend.close()  # closes its copies of the descriptors, nothing of the parent's
                value = asyncio.run(backend.aget_variable("greeting"))
                os.write(write_end, (value or "none").encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == b"hello"
        assert os.waitpid(pid, 0)[1] == 0
        # The parent's kept connection is still registered with its loop and answers.
        assert loop.run_until_complete(backend.aget_variable("greeting")) == "hello"
        assert idle_connections(backend, loop) == kept
        loop.run_until_complete(backend.aclose())
    finally:
        loop.close()


def idle_connections(backend: AgentSecretsBackend, loop: asyncio.AbstractEventLoop) -> list[Any]:
    async def idle() -> list[Any]:
        assert backend._async is not None
        return list(backend._async._idle_list(asyncio.get_running_loop()))

    return loop.run_until_complete(idle())


def test_close_from_another_thread_while_the_loop_runs(agent: str) -> None:
    backend = AgentSecretsBackend(socket_path=agent, timeout=5, on_unavailable="raise")
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    def on_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    async def idle() -> list[Any]:
        assert backend._async is not None
        return list(backend._async._idle_list(asyncio.get_running_loop()))

    try:
        assert on_loop(backend.aget_variable("greeting")) == "hello"
        [conn] = on_loop(idle())
        backend.close()  # from this thread: the loop closes its connection at its next turn
        on_loop(until(lambda: conn.closed))
        assert on_loop(idle()) == []
        assert on_loop(backend.aget_variable("greeting")) == "hello"  # on a new connection
        on_loop(backend.aclose())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=30)
        loop.close()


def test_lookups_on_uvloop_too(agent: str) -> None:
    uvloop = pytest.importorskip("uvloop")  # not needed by the client; a triggerer may use it
    backend = AgentSecretsBackend(socket_path=agent, timeout=5, on_unavailable="raise")

    async def lookups() -> list[str | None]:
        keys = sorted(VARIABLES) * 5
        answers = await asyncio.gather(*(backend.aget_variable(k) for k in keys))
        assert answers == [VARIABLES[k] for k in keys]
        again = [await backend.aget_variable("greeting") for _ in range(20)]
        await backend.aclose()
        return again

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(lookups()) == ["hello"] * 20
    finally:
        loop.close()


# -- waiting in place: where the loop has nothing else to run, a quick answer is read at once ---


def greeting_lookup(transport: AsyncUnixTransport) -> Coroutine[Any, Any, Response]:
    path = lookup_path("variables", "greeting", None, False)
    assert path is not None
    return transport.request("GET", path)


def is_greeting(response: Response) -> bool:
    return response.status == 200 and json.loads(response.body)["value"] == "hello"


@on_a_loop
async def test_on_an_idle_loop_a_quick_answer_is_read_without_suspending(agent: str) -> None:
    # A wait in place long enough for any machine: the lookup must finish in its first step.
    transport = AsyncUnixTransport(agent, 10, wait_here=30)
    for _ in range(3):  # a new connection, then kept-alive ones
        lookup = greeting_lookup(transport)
        with pytest.raises(StopIteration) as done:
            lookup.send(None)
        assert is_greeting(done.value.value)
    await transport.aclose()


def suspends(lookup: Coroutine[Any, Any, Response]) -> bool:
    """Whether ``lookup``'s first step ends waiting on its loop (then it is closed), rather than
    with the answer read in place."""
    try:
        lookup.send(None)
    except StopIteration:
        return False
    lookup.close()
    return True


@on_a_loop
async def test_with_a_callback_ready_the_loop_waits_for_the_answer(agent: str) -> None:
    transport = AsyncUnixTransport(agent, 10, wait_here=30)
    assert is_greeting(await greeting_lookup(transport))  # a kept-alive connection from here
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    assert is_greeting(await greeting_lookup(transport))
    assert ran == [True]  # ran while the lookup waited, not after a wait in place
    asyncio.get_running_loop().call_soon(ran.append, True)
    assert suspends(greeting_lookup(transport))
    await transport.aclose()


@on_a_loop
async def test_with_a_timer_due_within_the_wait_the_loop_waits_for_the_answer(agent: str) -> None:
    transport = AsyncUnixTransport(agent, 10, wait_here=30)
    assert not suspends(greeting_lookup(transport))
    timer = asyncio.get_running_loop().call_later(20, lambda: None)  # due before 30 s have passed
    try:
        assert suspends(greeting_lookup(transport))
        assert is_greeting(await greeting_lookup(transport))
    finally:
        timer.cancel()
    await transport.aclose()


@on_a_loop
async def test_a_timer_due_while_the_lookup_would_poll_in_place_runs_on_time(
    short_tmp: Path,
) -> None:
    # The wait in place polls for the answer before its receive waits ``wait_here``: a timer due
    # beyond ``wait_here`` but within the poll would be held up by it, so the loop waits.
    go_on = threading.Event()

    def after_the_timer(conn: socket.socket, index: int) -> None:
        read_head(conn)
        if go_on.wait(timeout=30):
            conn.sendall(answer("after the timer"))
        conn.recv(1)

    with scripted(short_tmp, after_the_timer) as path:
        transport = AsyncUnixTransport(path, 30, wait_here=0.05, spin=5.0)
        loop = asyncio.get_running_loop()
        due = loop.time() + 0.2
        late: list[float] = []

        def fire() -> None:
            late.append(loop.time() - due)
            go_on.set()

        loop.call_at(due, fire)
        response = await transport.request("GET", "/v1/variables/x")
        assert json.loads(response.body)["value"] == "after the timer"
        assert late[0] < 2.0  # on time, not after the 5 s the lookup may poll
        await transport.aclose()
    go_on.set()


@on_a_loop
async def test_an_answer_slower_than_the_wait_in_place_is_the_loops(short_tmp: Path) -> None:
    # Half the answer at once, the rest only once a timer of the loop has fired (200 ms on,
    # beyond the wait, so the wait in place is tried): a wait that did not end after
    # ``wait_here`` would never see the rest.
    go_on = threading.Event()

    def in_two_parts(conn: socket.socket, index: int) -> None:
        read_head(conn)
        whole = answer("in two parts")
        conn.sendall(whole[:20])
        if go_on.wait(timeout=30):
            conn.sendall(whole[20:])
        conn.recv(1)

    with scripted(short_tmp, in_two_parts) as path:
        transport = AsyncUnixTransport(path, 10, wait_here=0.05)
        asyncio.get_running_loop().call_later(0.2, go_on.set)
        response = await transport.request("GET", "/v1/variables/x")
        assert json.loads(response.body)["value"] == "in two parts" and go_on.is_set()
        await transport.aclose()
    go_on.set()


@on_a_loop
async def test_a_kept_connection_closed_under_a_wait_in_place_is_retried_once(
    short_tmp: Path,
) -> None:
    with scripted(short_tmp, answer_once_and_hang_up) as path:
        transport = AsyncUnixTransport(path, 10, wait_here=30)
        first = await transport.request("GET", "/v1/variables/a")
        # At once, before the loop has had a turn to see the agent close the kept connection.
        second = await transport.request("GET", "/v1/variables/b")
        assert [json.loads(r.body)["value"] for r in (first, second)] == ["conn1", "conn2"]
        await transport.aclose()


@on_a_loop
async def test_an_answer_dribbled_in_is_waited_for_in_place_no_longer_than_the_wait(
    short_tmp: Path,
) -> None:
    # A byte every 5 ms, each within the wait: read in place, the answer would not end for 5 s;
    # the loop must get it back after ``wait_here`` in all, and its timer then lets the rest come.
    go_on = threading.Event()
    cut_short: list[bool] = []

    def dribbled(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(1000):  # 5 s of it at most
            if go_on.wait(timeout=0.005):
                break
            conn.sendall(b"a")
        cut_short.append(go_on.is_set())
        body = b'{"value": "dribbled"}'
        conn.sendall(b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.recv(1)

    with scripted(short_tmp, dribbled) as path:
        transport = AsyncUnixTransport(path, 30, wait_here=0.05)
        asyncio.get_running_loop().call_later(0.2, go_on.set)  # beyond the wait: tried in place
        response = await transport.request("GET", "/v1/variables/x")
        assert json.loads(response.body)["value"] == "dribbled"
        assert cut_short == [True]  # the loop ran while the answer was still coming
        await transport.aclose()
    go_on.set()


@pytest.mark.parametrize("wait", [1e-9, 0.0, -1.0, float("nan"), float("inf")])
def test_a_wait_in_place_of_any_size_never_blocks_for_good(short_tmp: Path, wait: float) -> None:
    # A receive timeout that rounds to zero would block until the answer: never set; a wait
    # that cannot be set at all leaves the loop to wait, as on any other loop.
    go_on = threading.Event()

    def late(conn: socket.socket, index: int) -> None:
        read_head(conn)
        go_on.wait(timeout=10)  # then answered anyway: a client blocked for good fails, not hangs
        conn.sendall(answer("late"))
        conn.recv(1)

    async def lookup() -> None:
        transport = AsyncUnixTransport(path, 10, wait_here=wait)
        asyncio.get_running_loop().call_later(0.2, go_on.set)
        response = await transport.request("GET", "/v1/variables/x")
        assert json.loads(response.body)["value"] == "late" and go_on.is_set()
        await transport.aclose()

    with scripted(short_tmp, late) as path:
        asyncio.run(lookup())
    go_on.set()
