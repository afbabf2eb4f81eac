"""The real agent on a temporary socket, asked through the real client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.backends import registry
from secrets_agent.config.loader import load_config
from secrets_agent.errors import BackendError, StartupError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent_client import AgentSecretsBackend
from support.helpers import (
    FakeClock,
    RunningAgent,
    Script,
    ScriptedBackend,
    agent_config,
    body_of,
    demo_files,
    raw_request,
    running_agent,
    status_of,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent(short_tmp: Path, clock: FakeClock) -> Iterator[RunningAgent]:
    with running_agent(agent_config(short_tmp), clock) as running:
        yield running


def get(agent: RunningAgent, path: str, headers: str = "") -> bytes:
    return raw_request(
        agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
    )


def test_client_gets_connections_variables_and_config(agent: RunningAgent) -> None:
    client = AgentSecretsBackend(socket_path=agent.socket_path)
    assert client.get_conn_value("pg") == "postgresql://user:s3cret-pg@db.local:5432/app"
    assert json.loads(client.get_conn_value("http_api") or "") == {
        "conn_type": "http",
        "host": "api.local",
        "password": "s3cret-http",
        "extra": {"verify": False},
    }
    assert client.get_variable("greeting") == "hello"
    assert json.loads(client.get_variable("settings") or "") == {"retries": 3}
    assert client.get_config("sql_alchemy_conn") == "sqlite:////tmp/s3cret.db"
    assert client.get_variable("absent") is None
    assert client.get_conn_value("pg", team_name="team_a") is not None


def test_cache_headers_hit_miss_negative_and_age(agent: RunningAgent, clock: FakeClock) -> None:
    first = get(agent, "/v1/variables/greeting")
    clock.advance(42)
    second = get(agent, "/v1/variables/greeting")
    assert b"X-Cache: MISS" in first and b"Age: 0" in first
    assert b"X-Cache: HIT" in second and b"Age: 42" in second
    assert body_of(second) == {"kind": "variable", "id": "greeting", "value": "hello"}
    for segment, kind in (("variables", "variable"), ("connections", "connection")):
        miss = get(agent, f"/v1/{segment}/absent")
        negative = get(agent, f"/v1/{segment}/absent")
        assert status_of(negative) == 404 and b"X-Cache: NEGATIVE" in negative
        # The miss's answer and the cached negative's are the same document.
        expected = {"error": "not_found", "detail": f"no backend has this {kind}"}
        assert body_of(miss) == body_of(negative) == expected
    assert (
        agent.metric(
            "secrets_agent_upstream_requests_total",
            backend="local",
            kind="variable",
            result="missing",
        )
        == 1
    )


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/v1/variables/", "id is empty"),
        ("/v1/variables/" + "a" * 251, "longer than 250"),
        ("/v1/variables/a%01b", "control characters"),
        ("/v1/connections/..%2Fetc%2Fpasswd", "path traversal"),
        ("/v1/config/a%2F..%2Fb", "path traversal"),
        ("/v1/variables/a%5Cb", "path separator"),
    ],
)
def test_invalid_ids_get_400(agent: RunningAgent, path: str, detail: str) -> None:
    response = get(agent, path)
    assert status_of(response) == 400
    assert body_of(response)["error"] == "invalid_id"
    assert detail in body_of(response)["detail"]


def test_oversized_request_line_and_headers_are_refused_and_agent_stays_up(
    agent: RunningAgent,
) -> None:
    assert status_of(get(agent, "/v1/variables/" + "a" * 9000)) == 400
    assert status_of(get(agent, "/healthz", headers="X-Big: " + "b" * 9000 + "\r\n")) in (400, 431)
    assert status_of(get(agent, "/healthz")) == 200
    huge = b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    assert status_of(raw_request(agent.socket_path, huge + b"{" * 200000)) == 413
    assert AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting") == "hello"


def test_unknown_route_and_method_are_json_errors(agent: RunningAgent) -> None:
    response = get(agent, "/v2/anything")
    assert status_of(response) == 404 and body_of(response)["error"] == "not_found"
    post = raw_request(
        agent.socket_path, b"POST /v1/variables/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert status_of(post) == 405 and "error" in body_of(post)


def test_invalidate_all_kind_and_id(agent: RunningAgent) -> None:
    for key in ("greeting", "settings"):
        get(agent, f"/v1/variables/{key}")
    get(agent, "/v1/connections/pg")

    def invalidate(body: object) -> bytes:
        data = json.dumps(body).encode()
        return raw_request(
            agent.socket_path,
            b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data,
        )

    assert body_of(invalidate({"kind": "variable", "id": "greeting"})) == {"invalidated": 1}
    assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
    assert body_of(invalidate({"kind": "variable"})) == {"invalidated": 2}
    assert body_of(invalidate({})) == {"invalidated": 1}
    assert status_of(invalidate({"id": "x"})) == 400
    assert status_of(invalidate({"kind": "secret"})) == 400
    assert status_of(invalidate([1])) == 400


def test_health_readiness_and_metrics(agent: RunningAgent) -> None:
    assert body_of(get(agent, "/healthz")) == {"status": "ok"}
    ready = body_of(get(agent, "/readyz"))
    assert ready == {"ready": True, "backends": {"local": {"ready": True, "detail": "ok"}}}
    AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting")
    metrics = get(agent, "/metrics").decode()
    assert 'secrets_agent_requests_total{kind="variable",status="200"} 1.0' in metrics
    assert "secrets_agent_cache_entries 1.0" in metrics
    assert 'secrets_agent_backend_ready{backend="local"} 1.0' in metrics
    assert 'secrets_agent_authenticated{backend="local"} 1.0' in metrics
    assert "secrets_agent_build_info{" in metrics
    assert "greeting" not in metrics and "hello" not in metrics


def test_metrics_on_an_optional_loopback_port(short_tmp: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = agent_config(short_tmp, extra=f"[metrics]\nport = {port}\n")
    with running_agent(config) as agent:
        AgentSecretsBackend(socket_path=agent.socket_path).get_variable("greeting")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert 'secrets_agent_cache_results_total{kind="variable",result="miss"} 1.0' in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/variables/greeting", timeout=5)


def test_stale_value_served_when_upstream_fails_then_503_past_max_stale(
    short_tmp: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    script = Script(values={(Kind.VARIABLE, "k"): "v"})
    ScriptedBackend.scripts = {"flaky": script}
    config = agent_config(
        short_tmp,
        extra="[cache]\nvariable_ttl = 10\nmax_stale = 50\n",
        backends='[[backends]]\nname = "flaky"\ntype = "scripted"\n',
    )
    with running_agent(config, clock) as agent:
        assert b"X-Cache: MISS" in get(agent, "/v1/variables/k")
        script.error = TransientError("flaky", "connection refused")
        clock.advance(30)
        stale = get(agent, "/v1/variables/k")
        assert status_of(stale) == 200 and b"X-Cache: STALE" in stale and b"Age: 30" in stale
        clock.advance(40)
        down = get(agent, "/v1/variables/k")
        assert status_of(down) == 503
        assert body_of(down)["error"] == "upstream_unavailable"
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        assert client.get_variable("k") is None  # default policy: fall through
        script.error = None
        assert client.get_variable("k") == "v"


def test_socket_file_mode_dir_and_removal(short_tmp: Path) -> None:
    demo_files(short_tmp)
    path = short_tmp / "run" / "agent.sock"
    config = load_config(
        write_config(
            short_tmp,
            f"""
        [listener]
        socket_path = "{path}"
        socket_mode = "0600"
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
    """,
        )
    )
    with running_agent(config):
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_socket_group_is_applied(short_tmp: Path) -> None:
    config = agent_config(short_tmp, extra='socket_group = "4242"\n')
    with running_agent(config) as agent:
        assert Path(agent.socket_path).stat().st_gid == 4242


def test_unknown_socket_group_stops_startup(short_tmp: Path) -> None:
    config = agent_config(short_tmp, extra='socket_group = "no-such-group-here"\n')
    with pytest.raises(StartupError, match="no such group"), running_agent(config):
        pass
    assert not Path(config.listener.socket_path).exists()


def test_stale_socket_is_replaced_but_a_live_agent_is_not(short_tmp: Path) -> None:
    config = agent_config(short_tmp)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(config.listener.socket_path)
    dead.close()  # the file stays, nobody listens: what a killed agent leaves behind
    with running_agent(config) as first:
        with pytest.raises(StartupError, match="already listening"), running_agent(config):
            pass
        assert (
            AgentSecretsBackend(socket_path=first.socket_path).get_variable("greeting") == "hello"
        )


def test_refuses_to_replace_a_regular_file(short_tmp: Path) -> None:
    config = agent_config(short_tmp)
    Path(config.listener.socket_path).write_text("not a socket")
    with pytest.raises(StartupError, match="is not a socket"), running_agent(config):
        pass
    assert Path(config.listener.socket_path).read_text() == "not a socket"


@pytest.fixture
def debug_logging() -> Iterator[None]:
    """The agent's own log setup at level debug (SDK loggers pinned), undone afterwards."""
    from secrets_agent.ops import logs

    saved = {name: logging.getLogger(name).level for name in logs.PINNED}
    root = logging.getLogger().level
    logs.set_level("debug")
    yield
    logging.getLogger().setLevel(root)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_no_secret_value_reaches_logs_or_errors(
    short_tmp: Path, caplog: pytest.LogCaptureFixture, debug_logging: None
) -> None:
    from support.moto_aws import REGION, MotoServer

    aws = MotoServer()
    aws.start()
    try:
        aws.reset()
        aws.put_secret("airflow/variables/cloud", "s3cret-aws")
        backends = f"""
            [[backends]]
            name = "sm"
            type = "aws_secrets_manager"
            endpoint_url = "{aws.url}"
            region = "{REGION}"
            max_attempts = 1
            [[backends]]
            name = "down"
            type = "aws_secrets_manager"
            endpoint_url = "http://127.0.0.1:9"
            region = "{REGION}"
            max_attempts = 1
            connect_timeout = 1
            variables_lookup_pattern = "^down_"
        """
        config = agent_config(short_tmp, backends=backends)
        with running_agent(config) as agent, caplog.at_level(logging.DEBUG):
            client = AgentSecretsBackend(socket_path=agent.socket_path)
            assert client.get_variable("cloud") == "s3cret-aws"
            answers = [
                get(agent, path)
                for path in (
                    "/v1/variables/down_x",  # an upstream that cannot be reached: 503
                    "/v1/variables/absent",
                    "/v1/variables/a%01b",
                    "/nope",
                )
            ]
    finally:
        aws.stop()
    assert [status_of(a) for a in answers] == [503, 404, 400, 404]
    for answer in answers:
        assert b"s3cret" not in answer
    assert any(r.name.startswith("secrets_agent") for r in caplog.records)  # we did log
    assert "s3cret" not in caplog.text


def test_client_reconnects_once_after_agent_restart(short_tmp: Path) -> None:
    config = agent_config(short_tmp)
    client = AgentSecretsBackend(socket_path=config.listener.socket_path)
    with running_agent(config):
        assert client.get_variable("greeting") == "hello"
    with running_agent(config):
        assert client.get_variable("greeting") == "hello"  # kept-alive connection was dead
    assert client.get_variable("greeting") is None  # agent gone: default policy falls through


def test_team_scoped_backends(short_tmp: Path) -> None:
    (short_tmp / "team_a.json").write_text(json.dumps({"greeting": "hello team a"}))
    backends = """
        [[backends]]
        name = "team_a"
        type = "file"
        variables_file = "team_a.json"
        teams = ["team_a"]
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
    """
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        assert client.get_variable("greeting", team_name="team_a") == "hello team a"
        assert client.get_variable("greeting", team_name="team_b") == "hello"
        assert client.get_variable("greeting") == "hello"
        # Cached per team: team a's value never answers another team's lookup.
        assert client.get_variable("greeting", team_name="team_a") == "hello team a"
        assert client.get_variable("greeting") == "hello"
        assert status_of(get(agent, "/v1/variables/greeting?team=bad%20team")) == 400


def test_shutdown_refuses_new_connections_and_finishes_in_flight_requests(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import concurrent.futures
    import time

    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    script = Script(values={(Kind.VARIABLE, "slow"): "worth the wait"}, gate=asyncio.Event())
    ScriptedBackend.scripts = {"slow": script}
    config = agent_config(
        short_tmp,
        extra="shutdown_timeout = 30\n",
        backends='[[backends]]\nname = "slow"\ntype = "scripted"\n',
    )
    with running_agent(config) as agent, concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = AgentSecretsBackend(socket_path=agent.socket_path, timeout=30)
        in_flight = pool.submit(client.get_variable, "slow")
        deadline = time.monotonic() + 30
        while not script.calls:  # the request has reached the backend and waits on the gate
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopping = asyncio.run_coroutine_threadsafe(agent.agent.shutdown(), agent.loop)
        while not _refused(agent.socket_path):
            assert time.monotonic() < deadline, "still accepting during shutdown"
            time.sleep(0.01)
        assert not stopping.done()  # draining: the in-flight request holds shutdown open
        agent.loop.call_soon_threadsafe(script.gate.set)  # type: ignore[union-attr]
        assert in_flight.result(timeout=30) == "worth the wait"
        stopping.result(timeout=30)


def _refused(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return True
    return False


class StuckOnClose(ScriptedBackend):
    """A backend whose client library never returns from its close."""

    async def close(self) -> None:
        await asyncio.Event().wait()


def test_shutdown_is_bounded_when_a_backend_never_closes(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", StuckOnClose)
    ScriptedBackend.scripts = {"stuck": Script(values={(Kind.VARIABLE, "k"): "v"})}
    config = agent_config(
        short_tmp,
        extra="shutdown_timeout = 0.5\n",
        backends='[[backends]]\nname = "stuck"\ntype = "scripted"\n',
    )
    with running_agent(config) as agent:
        assert AgentSecretsBackend(socket_path=agent.socket_path).get_variable("k") == "v"
        with caplog.at_level(logging.WARNING):
            # A hang guard, not a timing claim: unbounded, the close would wait forever.
            asyncio.run_coroutine_threadsafe(agent.agent.shutdown(), agent.loop).result(60)
    assert "closing the backends took over" in caplog.text
    assert not os.path.exists(agent.socket_path)


def test_a_reload_is_bounded_when_a_replaced_backend_never_closes(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", StuckOnClose)
    ScriptedBackend.scripts = {
        "stuck": Script(values={(Kind.VARIABLE, "k"): "old"}),
        "next": Script(values={(Kind.VARIABLE, "k"): "new"}),
    }
    head = f'[listener]\nsocket_path = "{short_tmp}/agent.sock"\nshutdown_timeout = 0.5\n'
    backend = '[[backends]]\nname = "{}"\ntype = "scripted"\n'
    path = write_config(short_tmp, head + backend.format("stuck"))
    with running_agent(load_config(path), config_path=path) as agent:
        client = AgentSecretsBackend(socket_path=agent.socket_path)
        assert client.get_variable("k") == "old"
        path.write_text(head + backend.format("next"))
        with caplog.at_level(logging.WARNING):
            # A hang guard, not a timing claim: unbounded, the reload would wait forever.
            reloaded = asyncio.run_coroutine_threadsafe(agent.agent.reload(), agent.loop)
            assert reloaded.result(60)
        assert "reload: closing the previous configuration's backends took over" in caplog.text
        assert client.get_variable("k") == "new"
        assert agent.call(agent.agent.reload())  # the reload lock was let go


class FailsToStart(ScriptedBackend):
    """A backend whose start opens something, then fails (a credential file it cannot use)."""

    opened = closed = 0

    async def start(self) -> None:
        FailsToStart.opened += 1
        raise BackendError(self.name, "cannot read the token file")

    async def close(self) -> None:
        FailsToStart.closed += 1


def test_a_backend_whose_start_fails_is_closed(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", FailsToStart)
    monkeypatch.setattr(FailsToStart, "opened", 0)
    monkeypatch.setattr(FailsToStart, "closed", 0)
    config = agent_config(short_tmp, backends='[[backends]]\nname = "bad"\ntype = "scripted"\n')
    with pytest.raises(StartupError, match="cannot read the token file"), running_agent(config):
        pass
    assert (FailsToStart.opened, FailsToStart.closed) == (1, 1)
