"""Both ways a Vault read is made — on the loop (``kv.KvReader``) and through hvac on a worker
thread (where the environment names a proxy) — answer and fail alike, against a real OpenBao
and a loopback front that misbehaves on cue."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault import kv
from secrets_agent.backends.vault.backend import VaultBackend
from secrets_agent.backends.vault.errors import translate
from secrets_agent.backends.vault.kv import KvReader, tls_context
from secrets_agent.backends.vault.options import TokenAuth, VaultOptions
from secrets_agent.errors import BackendError, ClosedError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.bao import BaoServer, free_port
from support.helpers import FakeClock
from support.tls import issued_by, self_signed

pytestmark = pytest.mark.integration

V, C = Kind.VARIABLE, Kind.CONNECTION
LIMITED = 'path "secret/data/variables/*" { capabilities = ["read"] }\n'
LIMITED += 'path "secret/data/variables/forbidden" { capabilities = ["deny"] }\n'


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path_factory.mktemp("bao-kv"))
    server.start()
    try:
        server.api("POST", "/v1/sys/mounts/kv1", {"type": "kv", "options": {"version": "1"}})
        server.api("PUT", "/v1/sys/policies/acl/limited", {"policy": LIMITED})
        server.kv_put("variables/greeting", {"value": "hello"})
        server.kv_put("variables/spaced%20name", {"value": "quoted"})
        server.kv_put("variables/forbidden", {"value": "never"})
        server.kv_put("variables/deleted", {"value": "gone"})
        server.api("DELETE", "/v1/secret/data/variables/deleted")  # its latest version deleted
        server.kv_put("connections/pg", {"conn_uri": "postgresql://u:s3cret@db/app"})
        server.kv_put("variables/old", {"value": "from-kv1"}, mount="kv1", version=1)
        yield server
    finally:
        server.stop()


class Front(ThreadingHTTPServer):
    """Forwards to OpenBao, except the reads whose last segment names a misbehaviour."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.upstream = upstream
        self.release = threading.Event()  # holds "slow" answers until the test ends
        self.arrived, self.hold = threading.Event(), threading.Event()  # for "held" reads

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrontHandler(BaseHTTPRequestHandler):
    server: Front

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        cue = self.path.rsplit("/", 1)[-1]
        if cue.startswith("status-"):
            self._answer(int(cue[7:]), b'{"errors": ["echoed s3cret-input"]}')
        elif cue == "not-json":
            self._answer(200, b"<html>a proxy's page</html>", "text/html")
        elif cue == "moved":
            self.send_response(307)
            location = f"{self.server.upstream}/v1/secret/data/variables/greeting"
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif cue.startswith("huge"):
            body = b'{"data": {"data": {"value": "' + b"x" * 4096 + b'"}}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if cue == "huge":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()  # huge-stream: no length, the body ends when the connection does
            self.wfile.write(body)
            self.close_connection = True
        elif cue == "slow":
            self.server.release.wait(30)
        else:
            path = self.path
            if cue == "held":  # answered as "greeting", once the test lets it go
                self.server.arrived.set()
                self.server.hold.wait(30)
                path = path.replace("/held", "/greeting")
            request = urllib.request.Request(
                self.server.upstream + path,
                headers={k: v for k, v in self.headers.items() if k.lower().startswith("x-vault")},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    self._answer(answer.status, answer.read())
            except urllib.error.HTTPError as exc:
                self._answer(exc.code, exc.read())

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def front(bao: BaoServer) -> Iterator[Front]:
    server = Front(bao.url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["loop", "hvac"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """How reads are made: on the loop where requests would go straight to Vault (the suite's
    ``no_proxy`` exempts loopback); through hvac where a netrc file has a login for its host
    (requests would send it; OpenBao ignores a Basic ``Authorization``)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    if request.param == "hvac":
        netrc = tmp_path / ".netrc"
        netrc.write_text("machine 127.0.0.1 login someone password unused\n")
        netrc.chmod(0o600)
    return str(request.param)


@pytest.fixture
async def started(way: str) -> AsyncIterator[Any]:
    backends: list[VaultBackend] = []

    async def start(url: str, token: str, **overrides: Any) -> VaultBackend:
        options = VaultOptions(
            url=url, auth_method="token", token=TokenAuth(token=token), **overrides
        )
        backend = VaultBackend("vault", options, BackendContext(Metrics(), FakeClock()))
        backends.append(backend)
        await backend.start()
        assert (backend._kv is not None) == (way == "loop")  # the way the test asked for
        return backend

    yield start
    for backend in backends:
        await backend.close()


async def test_reads_answer_alike(bao: BaoServer, started: Any) -> None:
    backend = await started(bao.url, bao.root_token)
    assert await backend.fetch(V, "greeting") == "hello"
    assert await backend.fetch(V, "spaced name") == "quoted"  # quoted in the URL as hvac does
    assert await backend.fetch(C, "pg") == "postgresql://u:s3cret@db/app"
    assert await backend.fetch(V, "absent") is None
    assert await backend.fetch(V, "deleted") is None  # latest version deleted: a miss
    kv1 = await started(bao.url, bao.root_token, mount_point="kv1", kv_engine_version=1)
    assert await kv1.fetch(V, "old") == "from-kv1"
    assert await kv1.fetch(V, "absent") is None


async def test_a_denied_read_and_a_revoked_token(bao: BaoServer, started: Any) -> None:
    token = bao.api("POST", "/v1/auth/token/create", {"policies": ["limited"]})["auth"]
    backend = await started(bao.url, token["client_token"])
    assert await backend.fetch(V, "greeting") == "hello"
    with pytest.raises(DeniedError) as info:
        await backend.fetch(V, "forbidden")
    assert "never" not in str(info.value)
    bao.api("POST", "/v1/auth/token/revoke", {"token": token["client_token"]})
    # 403 for a dead token: the backend asks whether the token lives, logs in again (the same
    # revoked token, so that fails) and says Vault cannot be used, not that the path is denied.
    with pytest.raises(TransientError):
        await backend.fetch(V, "greeting")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (400, BackendError),
        (412, TransientError),  # hvac: UnexpectedError
    ],
)
async def test_error_statuses_fail_as_hvac_would(
    front: Front, bao: BaoServer, started: Any, status: int, error: type[Exception]
) -> None:
    backend = await started(front.url, bao.root_token)
    with pytest.raises(error) as info:
        await backend.fetch(V, f"status-{status}")
    assert type(info.value) is error
    assert "s3cret" not in str(info.value)  # Vault's text never reaches our messages
    assert await backend.fetch(V, "greeting") == "hello"  # the connection is still good


async def test_a_redirect_is_followed(front: Front, bao: BaoServer, started: Any) -> None:
    backend = await started(front.url, bao.root_token)
    assert await backend.fetch(V, "moved") == "hello"  # a standby sends reads to the active


async def test_an_answer_that_is_not_json(front: Front, bao: BaoServer, started: Any) -> None:
    backend = await started(front.url, bao.root_token)
    with pytest.raises(BackendError) as info:
        await backend.fetch(V, "not-json")
    assert type(info.value) is BackendError
    assert "html" not in str(info.value)


@pytest.mark.parametrize("cue", ["huge", "huge-stream"])
async def test_an_answer_too_large_for_vault_is_refused_unread(
    front: Front, bao: BaoServer, started: Any, way: str, cue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv, "MAX_ANSWER", 1024)  # instead of Vault's 32 MiB
    backend = await started(front.url, bao.root_token)
    if way == "hvac":  # requests reads whatever comes
        assert await backend.fetch(V, cue) == "x" * 4096
        return
    with pytest.raises(BackendError, match="too large"):
        await backend.fetch(V, cue)
    assert await backend.fetch(V, "greeting") == "hello"


async def test_a_read_that_never_answers_times_out(
    front: Front, bao: BaoServer, started: Any
) -> None:
    backend = await started(front.url, bao.root_token, timeout=0.3)
    with pytest.raises(TransientError, match="timed out"):
        await backend.fetch(V, "slow")
    assert await backend.fetch(V, "greeting") == "hello"


async def test_vault_gone_after_start_is_transient(bao: BaoServer, started: Any) -> None:
    gone = Front(bao.url)
    threading.Thread(target=gone.serve_forever, daemon=True).start()
    try:
        backend = await started(gone.url, bao.root_token)
        assert await backend.fetch(V, "greeting") == "hello"  # a kept-alive connection now
    finally:
        gone.shutdown()
        gone.server_close()
    with pytest.raises(TransientError, match="cannot connect"):
        await backend.fetch(V, "greeting")


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path_factory.mktemp("bao-kv-tls"), tls=True)
    server.start()
    try:
        server.kv_put("variables/greeting", {"value": "over tls"})
        yield server
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # verify=False
async def test_tls_as_requests_would_verify_it(
    tls_bao: BaoServer, started: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = tls_bao.url, tls_bao.root_token
    with_ca = await started(url, token, ca_file=tls_bao.ca_file)
    assert await with_ca.fetch(V, "greeting") == "over tls"
    unverified = await started(url, token, verify=False)
    assert await unverified.fetch(V, "greeting") == "over tls"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_bao.ca_file)  # requests' own variable
    bundled = await started(url, token)
    assert await bundled.fetch(V, "greeting") == "over tls"


async def test_a_certificate_the_ca_does_not_sign_fails_the_read(
    tls_bao: BaoServer, tmp_path: Path
) -> None:
    # The backend's own login would fail first; the read itself, as the reader makes it.
    other = tmp_path / "other-ca.pem"
    other.write_bytes(self_signed()[1])
    reader = KvReader(tls_bao.url, None, tls_context(str(other), None), 5.0, 1)
    try:
        with pytest.raises(aiohttp.ClientSSLError) as info:
            await reader.get("/v1/secret/data/variables/greeting", tls_bao.root_token)
    finally:
        await reader.close()
    error = translate("vault", info.value, "read")
    assert type(error) is TransientError  # stale-on-error keeps serving what is cached
    assert "TLS handshake with Vault failed" in str(error)
    reader = KvReader(tls_bao.url, None, tls_context(tls_bao.ca_file, None), 5.0, 1)
    try:
        answer = await reader.get("/v1/secret/data/variables/greeting", tls_bao.root_token)
    finally:
        await reader.close()
    assert answer["data"]["data"] == {"value": "over tls"}


async def test_a_listener_that_requires_a_client_certificate(tmp_path: Path, started: Any) -> None:
    ca_key, ca_cert = self_signed()
    files = {"ca.pem": ca_cert}
    for who in ("server", "client"):
        key, cert = issued_by(ca_key, ca_cert, who)
        files[f"{who}.key"], files[f"{who}.pem"] = key, cert
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    port = free_port()
    listener = (
        f'listener "tcp" {{\n address = "127.0.0.1:{port}"\n'
        f' tls_cert_file = "{tmp_path}/server.pem"\n tls_key_file = "{tmp_path}/server.key"\n'
        f" tls_require_and_verify_client_cert = true\n"
        f' tls_client_ca_file = "{tmp_path}/ca.pem"\n}}\n'
    )
    server = BaoServer(tmp_path / "bao", extra_config=listener)
    server.start()
    try:
        server.kv_put("variables/greeting", {"value": "mutual"})
        url, token = f"https://127.0.0.1:{port}", server.root_token
        backend = await started(
            url,
            token,
            ca_file=str(tmp_path / "ca.pem"),
            client_cert=str(tmp_path / "client.pem"),
            client_key=str(tmp_path / "client.key"),
        )
        assert await backend.fetch(V, "greeting") == "mutual"
        # Without a certificate the listener refuses the handshake: the read says so.
        reader = KvReader(url, None, tls_context(str(tmp_path / "ca.pem"), None), 5.0, 1)
        try:
            with pytest.raises(aiohttp.ClientError) as info:
                await reader.get("/v1/secret/data/variables/greeting", token)
        finally:
            await reader.close()
        error = translate("vault", info.value, "read")
        assert type(error) is TransientError  # as a failed login: cached values still serve
        assert "TLS handshake with Vault failed" in str(error)
    finally:
        server.stop()


async def test_closing_lets_a_read_under_way_finish(
    front: Front, bao: BaoServer, started: Any
) -> None:
    # A reload closes the backends it drops while lookups may still wait on them.
    backend = await started(front.url, bao.root_token)
    front.arrived.clear()
    front.hold.clear()
    read = asyncio.create_task(backend.fetch(V, "held"))
    assert await asyncio.to_thread(front.arrived.wait, 30)
    closing = asyncio.create_task(backend.close())
    await asyncio.sleep(0)  # the close has begun
    front.hold.set()
    assert await read == "hello"
    await closing


async def test_a_read_after_close_is_transient(
    bao: BaoServer, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A lookup that reaches a backend a reload has just closed gets a 503's error, either way,
    # and the retired backend does not try to log in again for it.
    backend = await started(bao.url, bao.root_token)
    await backend.close()
    with pytest.raises(TransientError, match=r"backend closed \(read\)"):
        await backend.fetch(V, "greeting")
    assert "login" not in caplog.text


async def test_a_read_that_reaches_a_closed_reader_is_transient(
    bao: BaoServer, started: Any, way: str
) -> None:
    if way != "loop":
        pytest.skip("the reader on the loop only")
    backend = await started(bao.url, bao.root_token)
    await backend._kv.close()  # closed under a read already past the backend's own check
    with pytest.raises(TransientError, match=r"backend closed \(read\)"):
        await backend.fetch(V, "greeting")


async def test_a_cancelled_close_stays_cancelled(bao: BaoServer, started: Any) -> None:
    """Cancelled wherever it waits (a reload bounded by shutdown_timeout), close says so."""
    for turns in range(1, 12):  # from 1: a task cancelled before it runs never began to close
        backend = await started(bao.url, bao.root_token)
        closing = asyncio.create_task(backend.close())
        for _ in range(turns):
            await asyncio.sleep(0)
        if closing.done():
            break
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        # ... and what it holds is let go all the same: its threads take no more calls.
        with pytest.raises(ClosedError):
            await backend._workers.run(lambda: 1)
