"""Both transports (blocking and asyncio) against a server that answers with scripted raw bytes:
one contract, so the async client behaves exactly as the blocking one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from secrets_agent_client.aio import AsyncUnixTransport
from secrets_agent_client.spin import MAX_SPIN_US
from secrets_agent_client.transport import AgentUnreachable, Response, UnixTransport
from support.unix_server import ThreadedUnixServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cache: HIT\r\n\r\nok"
HANG_UP = b""  # as an answer's last piece: close the connection once it is sent
POLL = MAX_SPIN_US / 1e6  # the longest a read may poll for its answer


class RawServer:
    """Accepts connections and plays, per request, the next answer: bytes sent in pieces."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: list[list[bytes] | None] = []  # None: close without answering
        self.requests: list[bytes] = []
        self.server = ThreadedUnixServer(path, self._handle)

    @property
    def connections(self) -> int:
        return self.server.connections

    def _handle(self, conn: socket.socket, index: int) -> None:
        heads = request_heads(conn)
        while self.answers:
            head = next(heads, None)
            if head is None:
                return
            self.requests.append(head)
            answer = self.answers.pop(0)
            if answer is None:
                return
            for piece in answer:
                conn.sendall(piece)
            if b"Connection: close" in b"".join(answer) or answer[-1:] == [HANG_UP]:
                return

    def close(self) -> None:
        self.server.close()


class Transport(Protocol):
    def request(self, method: str, path: str, body: bytes | None = None) -> Response: ...


class LoopTransport:
    """The asyncio transport, driven from the test's code on one long-lived event loop."""

    def __init__(
        self,
        path: str,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
        spin: float = 0.0,
    ) -> None:
        async def pause(seconds: float) -> None:
            sleep(seconds)

        self.loop = asyncio.new_event_loop()
        self.inner = AsyncUnixTransport(path, timeout, clock=clock, sleep=pause, spin=spin)

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        return self.loop.run_until_complete(self.inner.request(method, path, body))

    def close(self) -> None:
        self.loop.run_until_complete(self.inner.aclose())
        self.loop.close()


MakeTransport = Callable[..., Transport]


# Each transport as it reads an answer: sleeping on the socket at once, or polling it first for
# as long as the client allows (so most answers here arrive while it polls).
@pytest.fixture(
    params=[("blocking", 0.0), ("blocking", POLL), ("asyncio", 0.0), ("asyncio", POLL)],
    ids=["blocking-sleeps", "blocking-polls", "asyncio-sleeps", "asyncio-polls"],
)
def make_transport(request: pytest.FixtureRequest) -> Iterator[MakeTransport]:
    made: list[LoopTransport] = []
    kind, spin = request.param

    def make(path: str, timeout: float, **kwargs: Any) -> Transport:
        kwargs.setdefault("spin", spin)
        if kind == "blocking":
            return UnixTransport(path, timeout, **kwargs)
        made.append(LoopTransport(path, timeout, **kwargs))
        return made[-1]

    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def server(short_tmp: Path) -> Iterator[RawServer]:
    raw = RawServer(str(short_tmp / "raw.sock"))
    yield raw
    raw.close()


def test_a_response_split_into_single_bytes_is_read_whole(
    server: RawServer, make_transport: MakeTransport
) -> None:
    server.answers = [[bytes([b]) for b in OK]]
    response = make_transport(server.path, 5).request("GET", "/v1/variables/k")
    assert (response.status, response.body, response.headers["x-cache"]) == (200, b"ok", "HIT")
    assert server.requests[0].startswith(b"GET /v1/variables/k HTTP/1.1\r\nHost: localhost")


def test_keep_alive_reuses_and_connection_close_reconnects(
    server: RawServer, make_transport: MakeTransport
) -> None:
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nc"
    server.answers = [[OK], [close], [OK]]
    transport = make_transport(server.path, 5)
    bodies = [transport.request("GET", "/x").body for _ in range(3)]
    assert bodies == [b"ok", b"c", b"ok"]
    assert server.connections == 2  # the first two shared one; "close" made the third new


def test_two_answers_in_one_packet_are_kept_apart(
    server: RawServer, make_transport: MakeTransport
) -> None:
    # The second answer arrives early, with the first: it must wait in the buffer.
    server.answers = [[OK + OK], None]
    transport = make_transport(server.path, 5)
    assert transport.request("GET", "/a").body == b"ok"
    assert transport.request("GET", "/b").body == b"ok"


def test_chunked_and_close_delimited_bodies(
    server: RawServer, make_transport: MakeTransport
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    by_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    server.answers = [[chunked], [by_close]]
    transport = make_transport(server.path, 5)
    assert transport.request("GET", "/c").body == b"abcde"
    assert transport.request("GET", "/d").body == b"until the end"


def test_a_dropped_kept_alive_connection_is_retried_once(
    server: RawServer, make_transport: MakeTransport
) -> None:
    server.answers = [[OK], None, [OK]]  # the agent "restarts" after the first answer
    transport = make_transport(server.path, 5)
    assert transport.request("GET", "/1").body == b"ok"
    assert transport.request("GET", "/2").body == b"ok"
    assert server.connections == 2


def test_an_agent_closing_an_idle_connection_costs_no_error(
    server: RawServer, make_transport: MakeTransport
) -> None:
    # The agent closes kept-alive connections that stay idle: the next request, whenever it
    # comes, is answered on a new connection (the first of them never fails nor hangs).
    server.answers = [[OK, HANG_UP], [OK, HANG_UP], [OK]]
    transport = make_transport(server.path, 5)
    assert [transport.request("GET", f"/{i}").body for i in range(3)] == [b"ok"] * 3
    assert server.connections == 3


def test_a_chunked_answer_cut_anywhere_is_read_whole(
    server: RawServer, make_transport: MakeTransport
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nwxyz\r\n10\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"
    )
    cuts = [5, 17, 44, 45, 46, 50, 52, 69, 70, len(answer) - 2]
    bounds = [0, *cuts, len(answer)]
    server.answers = [[answer[bounds[i] : bounds[i + 1]] for i in range(len(cuts) + 1)], [OK]]
    transport = make_transport(server.path, 5)
    assert transport.request("GET", "/c").body == b"wxyz" + b"a" * 16
    assert transport.request("GET", "/ok").body == b"ok"  # nothing of the first one left over
    assert server.connections == 1


class BodyServer:
    """Reads one request with a body of Content-Length bytes; answers with its length."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            text = str(len(body)).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
            conn.recv(1)  # until the client goes

    def close(self) -> None:
        self.sock.close()


def test_a_body_bigger_than_the_socket_takes_at_once_is_sent_whole(
    short_tmp: Path, make_transport: MakeTransport
) -> None:
    path = str(short_tmp / "body.sock")
    body_server = BodyServer(path)
    try:
        body = b"x" * (4 * 1024 * 1024)  # far more than a Unix socket's buffer
        answer = make_transport(path, 10).request("POST", "/v1/big", body)
        assert answer.body == str(len(body)).encode()
    finally:
        body_server.close()


def test_a_new_connection_that_breaks_is_not_retried(
    server: RawServer, make_transport: MakeTransport
) -> None:
    server.answers = [None, [OK]]
    with pytest.raises(AgentUnreachable):
        make_transport(server.path, 5).request("GET", "/x")
    assert server.connections == 1


@pytest.mark.parametrize(
    "garbage",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
)
def test_broken_http_is_a_clear_error(
    server: RawServer, garbage: bytes, make_transport: MakeTransport
) -> None:
    server.answers = [[garbage]]
    with pytest.raises(AgentUnreachable, match="broken HTTP"):
        make_transport(server.path, 5).request("GET", "/x")


def fill_backlog(path: str) -> list[socket.socket]:
    """Connect until the kernel refuses with EAGAIN: the listener's queue is full."""
    pending: list[socket.socket] = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return pending
        pending.append(sock)


@pytest.fixture
def full_listener(short_tmp: Path) -> Iterator[socket.socket]:
    """A listener that never accepts, with its backlog already full."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_tmp / "busy.sock"))
    listener.listen(0)
    pending = fill_backlog(str(short_tmp / "busy.sock"))
    yield listener
    for sock in pending:
        sock.close()
    listener.close()


def test_a_full_backlog_is_retried_within_the_timeout(
    full_listener: socket.socket, make_transport: MakeTransport
) -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        # The agent catches up while the client backs off: it accepts the queued connections
        # and answers the next one.
        slept.append(seconds)
        now[0] += seconds
        if len(slept) == 2:
            full_listener.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    full_listener.accept()[0].close()
            full_listener.setblocking(True)
            threading.Thread(target=answer_once, args=(full_listener,), daemon=True).start()

    path = full_listener.getsockname()
    transport = make_transport(path, 1.0, clock=lambda: now[0], sleep=sleep)
    assert transport.request("GET", "/x").body == b"ok"
    assert len(slept) == 2 and sum(slept) < 1.0  # backed off twice, inside the timeout
    assert all(0 < s <= 0.15 for s in slept)  # short, jittered pauses


def answer_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        conn.sendall(OK)


def test_a_backlog_that_stays_full_fails_at_the_timeout(
    full_listener: socket.socket, make_transport: MakeTransport
) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    transport = make_transport(full_listener.getsockname(), 0.5, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(AgentUnreachable, match="too busy"):
        transport.request("GET", "/x")
    assert now[0] == pytest.approx(0.5)  # it waited exactly its timeout, never longer


def test_an_agent_at_its_connection_cap_is_asked_again(
    server: RawServer, make_transport: MakeTransport
) -> None:
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nX-Agent-Busy: 1\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    server.answers = [[busy], [busy], [OK]]
    slept: list[float] = []
    response = make_transport(server.path, 5, sleep=slept.append).request("GET", "/v1/variables/k")
    assert (response.status, response.body) == (200, b"ok")
    assert len(slept) == 2 and server.connections == 3


def test_an_upstream_503_is_not_retried(server: RawServer, make_transport: MakeTransport) -> None:
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"
    server.answers = [[unavailable]]
    slept: list[float] = []
    response = make_transport(server.path, 5, sleep=slept.append).request("GET", "/v1/variables/k")
    assert response.status == 503 and slept == []


def test_busy_retries_stop_at_the_timeout(server: RawServer, make_transport: MakeTransport) -> None:
    busy = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nX-Agent-Busy: 1\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    server.answers = [[busy]] * 1000
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds  # time moves only by the client's own backoff

    transport = make_transport(server.path, 1.0, clock=lambda: now[0], sleep=sleep)
    try:
        response = transport.request("GET", "/v1/variables/k")
    except AgentUnreachable:  # the last try, with 50 ms of real time, may miss on a busy host
        pass
    else:
        assert response.status == 503 and response.headers["x-agent-busy"] == "1"
    assert 0.9 <= now[0] <= 1.0  # retried until the timeout, never past it
    assert server.connections > 5


def answering(answer: Callable[[bytes], bytes]) -> Callable[[socket.socket, int], None]:
    """A connection handler that answers each request with ``answer(last path segment)``."""

    def handle(conn: socket.socket, index: int) -> None:
        for head in request_heads(conn):
            conn.sendall(answer(head.split(b" ")[1].rsplit(b"/", 1)[-1]))

    return handle


def request_heads(conn: socket.socket) -> Iterator[bytes]:
    """Each request head the connection sends (without its blank line), until it closes."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        yield head


class Interrupted(Exception):
    """What a signal handler raises mid-lookup (Airflow's execution_timeout: SIGALRM)."""


def test_a_lookup_interrupted_mid_answer_never_hands_that_answer_to_the_next(
    short_tmp: Path,
) -> None:
    first_asked, answer_late = threading.Event(), threading.Event()

    def answer(name: bytes) -> bytes:  # each variable's value is its own name
        if name == b"first":
            first_asked.set()
            answer_late.wait(30)  # answered only once its caller has given up
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name)

    server = ThreadedUnixServer(str(short_tmp / "late.sock"), answering(answer))
    transport = UnixTransport(server.path, timeout=30)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        assert transport.request("GET", "/v1/variables/warm").body == b"warm"  # kept alive

        def alarm() -> None:  # once the server holds "first": the lookup is mid-answer
            if first_asked.wait(30):
                os.kill(os.getpid(), signal.SIGALRM)

        threading.Thread(target=alarm).start()
        with pytest.raises(Interrupted):
            transport.request("GET", "/v1/variables/first")
    finally:
        signal.signal(signal.SIGALRM, previous)
    answer_late.set()  # "first"'s answer now reaches the connection it was asked on
    assert transport.request("GET", "/v1/variables/second").body == b"second"
    server.close()


def slow_server(path: Path) -> tuple[ThreadedUnixServer, threading.Event, threading.Event]:
    """A server that answers ``ok`` at once, and ``slow`` only once released: it sets ``asked``
    when the slow request is in, and waits for ``release``."""
    asked, release = threading.Event(), threading.Event()

    def answer(name: bytes) -> bytes:
        if name == b"slow":
            asked.set()
            release.wait(30)
        return OK

    return ThreadedUnixServer(str(path), answering(answer)), asked, release


def test_a_child_forked_while_another_thread_waits_for_an_answer_can_still_look_up(
    short_tmp: Path,
) -> None:
    server, asked, release = slow_server(short_tmp / "fork.sock")
    transport = UnixTransport(server.path, timeout=10)
    waiting = threading.Thread(target=transport.request, args=("GET", "/v1/variables/slow"))
    waiting.start()
    assert asked.wait(30)  # the other thread holds the transport, mid-exchange
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            code = 0 if transport.request("GET", "/v1/variables/k").body == b"ok" else 1
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the child's exit, bounded
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    release.set()
    waiting.join(30)
    server.close()
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0  # not stuck on the lock


@pytest.mark.parametrize("make", [UnixTransport, AsyncUnixTransport])
@pytest.mark.parametrize("timeout", [-1.0, 0.0, float("nan"), float("inf"), 1e10])
def test_a_bad_timeout_is_refused_when_the_transport_is_built(
    short_tmp: Path, make: Callable[[str, float], object], timeout: float
) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        make(str(short_tmp / "agent.sock"), timeout)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000001\r\n",
    ],
)
def test_an_answer_over_the_limit_is_named_as_too_large_not_broken(
    server: RawServer, head: bytes, make_transport: MakeTransport
) -> None:
    """A value of many megabytes (text the agent escapes to 6 bytes a character) is not broken
    HTTP: the error says what the operator can act on."""
    server.answers = [[head + b"x" * 65536]]
    with pytest.raises(AgentUnreachable, match="more than the client takes \\(16 MiB\\)") as got:
        make_transport(server.path, 5).request("GET", "/x")
    assert "broken" not in str(got.value)


def test_an_answer_dribbled_in_past_the_timeout_is_not_waited_for(short_tmp: Path) -> None:
    """The timeout bounds the whole exchange, not each read: an agent sending its answer a
    piece at a time (stuck mid-answer) does not hold a worker for a timeout per piece."""
    now = [0.0]
    gone = threading.Event()

    def dribble(conn: socket.socket, index: int) -> None:
        next(request_heads(conn))
        now[0] = 100.0  # the request's time is up once its first piece arrives
        conn.settimeout(2)  # a client that waits on gets the rest (bounded: only if broken)
        try:
            conn.sendall(OK[:20])
            if conn.recv(1) == b"":
                gone.set()
                return
        except (BrokenPipeError, ConnectionResetError):
            # Closed before the piece came (the client polled for the answer in vain, then
            # saw its time up), or with the piece unread.
            gone.set()
            return
        except TimeoutError:
            pass
        conn.sendall(OK[20:])

    server = ThreadedUnixServer(str(short_tmp / "dribble.sock"), dribble)
    transport = UnixTransport(server.path, 30, clock=lambda: now[0])
    try:
        with pytest.raises(AgentUnreachable, match="did not answer in time"):
            transport.request("GET", "/v1/variables/k")
        assert gone.wait(30)  # the client gave up and closed the connection
    finally:
        server.close()


def test_an_interim_1xx_answer_is_skipped_never_taken_for_the_final_one(
    server: RawServer, make_transport: MakeTransport
) -> None:
    """RFC 9110 15.2: a client parses 1xx answers it did not ask for. Taken as final, the real
    answer would stay on the kept connection and be read by the next lookup as its own."""
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"
    server.answers = [
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nA: b\r\n\r\n" + first],
        [second],
    ]
    transport = make_transport(server.path, 5)
    assert transport.request("GET", "/v1/variables/first").body == b"first"
    assert transport.request("GET", "/v1/variables/second").body == b"second"


def test_a_switch_of_protocols_is_broken_http_not_an_answer(
    server: RawServer, make_transport: MakeTransport
) -> None:
    server.answers = [[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n" + OK]]
    with pytest.raises(AgentUnreachable, match="broken HTTP"):
        make_transport(server.path, 5).request("GET", "/x")


def test_close_from_another_thread_leaves_the_lookup_in_flight_its_answer(short_tmp: Path) -> None:
    """``close`` while another thread's lookup waits for its answer: close returns at once,
    without failing or pulling the connection (and its read buffer) from under the lookup,
    which gets its answer; the connection is closed when it ends."""
    server, asked, release = slow_server(short_tmp / "close.sock")
    transport = UnixTransport(server.path, timeout=30)
    got: list[object] = []

    def lookup() -> None:
        try:
            got.append(transport.request("GET", "/v1/variables/slow").body)
        except BaseException as exc:
            got.append(exc)

    closed: list[BaseException | None] = []

    def close() -> None:
        try:
            transport.close()
        except BaseException as exc:
            closed.append(exc)
        else:
            closed.append(None)

    waiting = threading.Thread(target=lookup)
    waiting.start()
    assert asked.wait(30)  # the lookup is mid-exchange
    closing = threading.Thread(target=close)
    closing.start()
    closing.join(30)  # close never waits for the lookup
    release.set()
    waiting.join(30)
    assert got == [b"ok"] and closed == [None]
    assert transport.request("GET", "/v1/variables/k").body == b"ok"
    assert server.connections == 2  # close did close the connection, once the lookup ended
    server.close()


def test_a_poll_for_the_answer_ends_when_the_lookups_time_is_up(
    short_tmp: Path, make_transport: MakeTransport
) -> None:
    """``timeout`` bounds the whole lookup, the polling for its answer included: a client
    allowed to poll far longer than its timeout (the transports take any budget) gives up on a
    silent agent at the timeout, not at the end of the budget."""
    server, _, release = slow_server(short_tmp / "silent.sock")
    transport = make_transport(server.path, 0.05, spin=5.0)
    started = time.monotonic()
    try:
        with pytest.raises(AgentUnreachable, match="did not answer in time"):
            transport.request("GET", "/v1/variables/slow")
        assert time.monotonic() - started < 2.5
    finally:
        release.set()
        server.close()
