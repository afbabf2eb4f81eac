"""The gcp_secret_manager backend against a real gRPC server over TLS, on loopback."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from secrets_agent.backends.base import BackendContext, Versioned
from secrets_agent.backends.gcp.backend import GcpSecretManagerBackend
from secrets_agent.backends.gcp.errors import translate
from secrets_agent.backends.gcp.options import GcpOptions
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.gcp_server import Gcp, tls_material
from support.helpers import FakeClock, agent_config, body_of, raw_request, running_agent

pytestmark = pytest.mark.integration

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG


@pytest.fixture
def gcp(tmp_path: Path) -> Iterator[Gcp]:
    made = Gcp(tmp_path)
    yield made
    made.close()


class Started:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.backends: list[GcpSecretManagerBackend] = []

    async def __call__(self, options: GcpOptions) -> GcpSecretManagerBackend:
        backend = GcpSecretManagerBackend("gcp", options, BackendContext(self.metrics, FakeClock()))
        self.backends.append(backend)
        await backend.start()
        return backend

    def calls(self, result: str) -> float:
        labels = {"backend": "gcp", "operation": "AccessSecretVersion", "result": result}
        return (
            self.metrics.registry.get_sample_value("secrets_agent_upstream_api_calls_total", labels)
            or 0.0
        )


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    made = Started()
    yield made
    for backend in made.backends:
        await backend.close()


async def test_connections_variables_and_config(gcp: Gcp, started: Started) -> None:
    gcp.put("airflow-connections-pg", "postgresql://u:s3cret@db:5432/app")
    gcp.put(
        "airflow-connections-http",
        json.dumps({"conn_type": "http", "host": "api", "extra": {"a": 1}}),
    )
    gcp.put("airflow-variables-greeting", "hello")
    gcp.put("airflow-config-sql_alchemy_conn", "sqlite:////tmp/x.db")
    backend = await started(gcp.options())
    assert await backend.fetch(C, "pg") == "postgresql://u:s3cret@db:5432/app"
    assert json.loads(await backend.fetch(C, "http") or "") == {
        "conn_type": "http",
        "host": "api",
        "extra": {"a": 1},
    }
    assert await backend.fetch(V, "greeting") == "hello"
    assert await backend.fetch(CFG, "sql_alchemy_conn") == "sqlite:////tmp/x.db"
    assert await backend.fetch(V, "absent") is None
    assert started.calls("not_found") == 1
    assert gcp.store.tokens_seen == {"Bearer test-access-token"}
    assert gcp.tokens.grants == 2  # one for the operator, one for the agent
    assert backend.health().ready


async def test_new_version_is_seen_and_version_pinning(gcp: Gcp, started: Started) -> None:
    gcp.put("airflow-variables-rotating", "v1")
    backend = await started(gcp.options())
    assert await backend.fetch(V, "rotating") == "v1"
    gcp.put("airflow-variables-rotating", "v2")
    assert await backend.fetch(V, "rotating") == "v2"
    pinned = await started(gcp.options(version="1"))
    assert await pinned.fetch(V, "rotating") == "v1"


async def test_naming_prefixes_sep_and_invalid_names(gcp: Gcp, started: Started) -> None:
    gcp.put("team_vars__greeting", "hi")
    gcp.put("-bare", "empty prefix")
    backend = await started(
        gcp.options(
            variables_prefix="team_vars", sep="__", config_prefix="", kinds=("variables", "config")
        )
    )
    assert await backend.fetch(V, "greeting") == "hi"
    assert not backend.supports(C) and await backend.fetch(C, "greeting") is None
    # "" is the provider's build_path("", id, sep): the separator stays, "{sep}{id}".
    dashed = await started(gcp.options(connections_prefix=""))
    assert await dashed.fetch(C, "bare") == "empty prefix"
    before = gcp.store.calls["AccessSecretVersion"]
    assert await backend.fetch(V, "has.dot") is None
    assert await backend.fetch(V, "has/slash") is None
    # Secret Manager holds ids of at most 255 characters; a longer name is a miss, no call.
    assert await backend.fetch(V, "x" * 245) is None
    assert gcp.store.calls["AccessSecretVersion"] == before  # no upstream call for those


async def test_disabled_version_is_a_miss_and_logged(
    gcp: Gcp, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's included, at its most verbose
    gcp.put("airflow-variables-old", "s3cret-old")
    gcp.disable_latest("airflow-variables-old")
    gcp.server.put("airflow-variables-binary", b"s3cret-\xff")  # not UTF-8: we log that
    backend = await started(gcp.options())
    assert await backend.fetch(V, "old") is None
    assert await backend.fetch(V, "binary") is None
    assert "the variable 'binary' is not UTF-8 text" in caplog.text  # the capture works
    assert "s3cret" not in caplog.text


async def test_permission_denied_is_a_denial(gcp: Gcp, started: Started) -> None:
    gcp.put("airflow-variables-locked", "s3cret")
    gcp.store.denied.add("airflow-variables-locked")
    backend = await started(gcp.options())
    with pytest.raises(DeniedError) as info:
        await backend.fetch(V, "locked")
    assert "s3cret" not in str(info.value)


async def test_wrong_ca_and_missing_credentials(gcp: Gcp, started: Started, tmp_path: Path) -> None:
    _, _, other_ca = tls_material(tmp_path / "..")
    untrusted = await started(gcp.options(ca_file=str(other_ca)))
    with pytest.raises(TransientError):
        await untrusted.fetch(V, "x")
    no_file = await started(gcp.options(credentials_file=str(tmp_path / "missing.json")))
    assert not no_file.health().ready
    with pytest.raises(BackendError):
        await no_file.fetch(V, "x")


async def test_adc_from_google_application_credentials(
    gcp: Gcp, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(gcp.key_file))
    gcp.put("airflow-variables-greeting", "via ADC")
    backend = await started(gcp.options(credentials_file=""))
    assert await backend.fetch(V, "greeting") == "via ADC"


async def test_team_layout_two_teams_and_fallback(gcp: Gcp, started: Started) -> None:
    gcp.put("airflow-connections-team_a--pg", "postgresql://a")
    gcp.put("airflow-connections-team_b--pg", "postgresql://b")
    gcp.put("airflow-connections-pg", "postgresql://global")
    gcp.put("airflow-variables-team_a--greeting", "hello a")
    gcp.put("airflow-variables-greeting", "hello everyone")
    gcp.put("airflow-config-team_a--parallelism", "no team for config")
    gcp.put("airflow-config-parallelism", "8")
    backend = await started(gcp.options(team_layout=True))

    async def get(kind: Kind, secret_id: str, team: str | None) -> str | None:
        found = await backend.fetch_for_team(kind, secret_id, team)
        return None if found is None else found.value

    assert await get(C, "pg", "team_a") == "postgresql://a"
    assert await get(C, "pg", "team_b") == "postgresql://b"
    assert await get(C, "pg", None) == "postgresql://global"
    assert await get(V, "greeting", "team_b") == "hello everyone"  # no team secret: global
    assert await get(V, "greeting", "team_a") == "hello a"
    assert await get(CFG, "parallelism", "team_a") == "8"
    # An id spelling the team separator is ambiguous: refused for every lookup, no call made.
    before = gcp.store.calls["AccessSecretVersion"]
    assert await get(V, "team_a--greeting", None) is None
    assert await get(V, "x--greeting", "team_a") is None
    assert gcp.store.calls["AccessSecretVersion"] == before
    # A denied team secret stops there, as the provider does: the global name is not tried.
    gcp.store.denied.add("airflow-variables-team_b--greeting")
    with pytest.raises(DeniedError):
        await get(V, "greeting", "team_b")
    # Without the option the team is ignored and "--" ids are ordinary.
    plain = await started(gcp.options())
    assert await plain.fetch_for_team(C, "pg", "team_a") is not None
    assert await plain.fetch(V, "team_a--greeting") == "hello a"
    assert (await plain.fetch_for_team(C, "pg", "team_b") or Versioned("")).value == (
        "postgresql://global"
    )


def test_team_layout_through_the_agent(gcp: Gcp, short_tmp: Path) -> None:
    """A team's lookup (?team=, as the client sends Airflow 3's team_name) reaches the layout."""
    gcp.put("airflow-variables-team_a--greeting", "hello a")
    gcp.put("airflow-variables-greeting", "hello everyone")
    o = gcp.options()
    backends = f"""
        [[backends]]
        name = "gcp"
        type = "gcp_secret_manager"
        team_layout = true
        credentials_file = "{o.credentials_file}"
        api_endpoint = "{o.api_endpoint}"
        ca_file = "{o.ca_file}"
    """
    with running_agent(agent_config(short_tmp, backends=backends)) as agent:

        def value(path: str) -> str:
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            return str(body_of(raw_request(agent.socket_path, request))["value"])

        assert value("/v1/variables/greeting?team=team_a") == "hello a"
        assert value("/v1/variables/greeting?team=team_b") == "hello everyone"
        assert value("/v1/variables/greeting") == "hello everyone"


def test_stopped_server_serves_stale_then_recovers(gcp: Gcp, short_tmp: Path) -> None:
    gcp.put("airflow-variables-greeting", "before")
    o = gcp.options()
    backends = f"""
        [[backends]]
        name = "gcp"
        type = "gcp_secret_manager"
        credentials_file = "{o.credentials_file}"
        api_endpoint = "{o.api_endpoint}"
        ca_file = "{o.ca_file}"
        backoff_initial = 0.01
        backoff_max = 0.05
        retry_deadline = 0.5
        timeout = 2
    """
    clock = FakeClock()
    config = agent_config(short_tmp, extra="[cache]\nvariable_ttl = 60\n", backends=backends)
    with running_agent(config, clock) as agent:

        def get(path: str) -> bytes:
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            return raw_request(agent.socket_path, request)

        assert body_of(get("/v1/variables/greeting"))["value"] == "before"
        gcp.put("airflow-variables-greeting", "newer")
        clock.advance(59)
        assert body_of(get("/v1/variables/greeting"))["value"] == "before"  # cached, fresh
        clock.advance(2)
        assert body_of(get("/v1/variables/greeting"))["value"] == "newer"  # new version, after TTL
        gcp.server.stop()
        clock.advance(61)
        stale = get("/v1/variables/greeting")
        assert b"X-Cache: STALE" in stale and body_of(stale)["value"] == "newer"
        assert body_of(get("/readyz"))["backends"]["gcp"]["ready"] is False  # cannot refresh
        gcp.server.start()  # same port, same storage
        gcp.put("airflow-variables-greeting", "after")
        deadline = time.monotonic() + 30
        while b"X-Cache: STALE" in (fresh := get("/v1/variables/greeting")):
            assert time.monotonic() < deadline, "no recovery within 30 s of the restart"
            # Once failing, the value is retried in the background after a backoff (at most
            # 10 s); the channel reconnects on its own backoff, which each retry waits for.
            agent.call(agent.agent.service.idle())
            clock.advance(10)
        # The retry stored it: a hit.
        assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "after"
        assert body_of(get("/readyz"))["ready"] is True


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("PermissionDenied", DeniedError),
        ("ServiceUnavailable", TransientError),
        ("DeadlineExceeded", TransientError),
        ("ResourceExhausted", TransientError),
        ("Unauthenticated", BackendError),
        ("InvalidArgument", BackendError),
    ],
)
def test_error_translation(name: str, kind: type[BackendError]) -> None:
    from google.api_core import exceptions as gx

    error = translate("gcp", getattr(gx, name)("echoes s3cret input"), "AccessSecretVersion")
    assert type(error) is kind
    assert "s3cret" not in str(error)


async def test_a_key_rotated_in_the_credentials_file_is_read_again(
    gcp: Gcp, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    """google-auth reads the key file once: after a rotation (the old key deleted) every call
    failed until a restart (a reload keeps the unchanged backend). Now a call that fails after
    the file changed reads it again and is made once more."""
    gcp.put("airflow-variables-greeting", "hello")
    gcp.tokens.lifetime = 60  # google-auth refreshes such a token before every call
    backend = await started(gcp.options())
    assert await backend.fetch(V, "greeting") == "hello"
    gcp.tokens.keys = {"k2"}  # the old key deleted
    with pytest.raises(TransientError):  # the file unchanged: not read again
        await backend.fetch(V, "greeting")
    caplog.set_level(logging.INFO)
    gcp.tokens.key_file(gcp.workdir, key_id="k2")  # the new key, where the old one was
    assert await backend.fetch(V, "greeting") == "hello"
    assert await backend.fetch(V, "greeting") == "hello"
    assert caplog.text.count("the credentials file changed: read it again") == 1
    assert started.calls("transient") == 2 and started.calls("ok") == 3


async def test_credentials_missing_at_start_are_loaded_by_a_later_lookup(
    gcp: Gcp, started: Started, tmp_path: Path
) -> None:
    """At a node's boot the metadata server (or a key file a sidecar writes) may not be there
    yet: the backend started not ready used to stay so until a restart."""
    gcp.put("airflow-variables-greeting", "hello")
    late = tmp_path / "late.json"
    backend = await started(gcp.options(credentials_file=str(late)))
    assert not backend.health().ready
    late.write_bytes(gcp.key_file.read_bytes())
    clock = backend.context.clock
    assert isinstance(clock, FakeClock)
    clock.advance(9)
    with pytest.raises(BackendError, match="cannot read the credentials file"):
        await backend.fetch(V, "greeting")  # not tried again yet: at most every 10 s
    clock.advance(1)
    assert await backend.fetch(V, "greeting") == "hello"
    assert backend.health().ready


async def test_retried_accesses_count_as_calls_made(gcp: Gcp, started: Started) -> None:
    gcp.put("airflow-variables-busy", "finally")
    backend = await started(gcp.options(retry_deadline=30.0))
    gcp.store.unavailable = 2  # the retry policy tries again: three accesses, three calls
    assert await backend.fetch(V, "busy") == "finally"
    assert (started.calls("ok"), started.calls("retried")) == (1, 2)
    backend = await started(gcp.options(retry_deadline=0.05))
    gcp.store.unavailable = 1000  # until the deadline ends the retries: the last is the call
    with pytest.raises(TransientError):
        await backend.fetch(V, "busy")
    # Every access the server saw is a call made, once: the retries and the call itself.
    assert started.metrics.calls_made("gcp") == gcp.store.calls["AccessSecretVersion"] > 3
    assert started.calls("transient") == 1
