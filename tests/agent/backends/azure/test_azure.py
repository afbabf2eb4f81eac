"""The azure_key_vault backend against a loopback HTTPS Key Vault and token endpoint."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.azure.backend import AzureKeyVaultBackend
from secrets_agent.backends.azure.errors import translate
from secrets_agent.backends.azure.options import AzureOptions
from secrets_agent.backends.base import BackendContext
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind
from secrets_agent.ops.metrics import Metrics
from support.azure_server import CLIENT_ID, CLIENT_SECRET, TENANT, Azure
from support.helpers import (
    FakeClock,
    agent_config,
    agent_process,
    body_of,
    raw_request,
    running_agent,
    write_config,
)

pytestmark = pytest.mark.integration

C, V, CFG = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG
FAST = {"retries": 1, "backoff_initial": 0.0, "backoff_max": 0.05, "timeout": 5.0}


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Azure]:
    made = Azure(tmp_path)
    yield made
    made.close()


class Started:
    def __init__(self, azure: Azure) -> None:
        self.azure = azure
        self.metrics = Metrics()
        self.backends: list[AzureKeyVaultBackend] = []

    async def __call__(self, **overrides: Any) -> AzureKeyVaultBackend:
        options = AzureOptions(**(self.azure.options() | FAST | overrides))
        backend = AzureKeyVaultBackend("az", options, BackendContext(self.metrics, FakeClock()))
        self.backends.append(backend)
        await backend.start()
        return backend

    def calls(self, result: str) -> float:
        labels = {"backend": "az", "operation": "GetSecret", "result": result}
        value = self.metrics.registry.get_sample_value(
            "secrets_agent_upstream_api_calls_total", labels
        )
        return value or 0.0


@pytest.fixture
async def started(azure: Azure) -> AsyncIterator[Started]:
    made = Started(azure)
    yield made
    for backend in made.backends:
        await backend.close()


async def test_connections_variables_and_config(azure: Azure, started: Started) -> None:
    azure.store.put("airflow-connections-pg-main", "postgresql://u:s3cret@db:5432/app")
    azure.store.put("airflow-connections-http", json.dumps({"conn_type": "http", "host": "api"}))
    azure.store.put("airflow-variables-greeting", "hello")
    azure.store.put("airflow-config-sql-alchemy-conn", "sqlite:////tmp/x.db")
    backend = await started()
    assert backend.health().ready
    # The provider's naming: every "_" becomes the separator.
    assert await backend.fetch(C, "pg_main") == "postgresql://u:s3cret@db:5432/app"
    assert json.loads(await backend.fetch(C, "http") or "") == {"conn_type": "http", "host": "api"}
    assert await backend.fetch(V, "greeting") == "hello"
    assert await backend.fetch(CFG, "sql_alchemy_conn") == "sqlite:////tmp/x.db"
    assert await backend.fetch(V, "absent") is None
    assert started.calls("not_found") == 1 and started.calls("ok") == 4
    # Every token the vault saw came from the token endpoint, for the service principal.
    assert azure.store.tokens_seen and all(
        t.removeprefix("Bearer ") in azure.store.issued for t in azure.store.tokens_seen
    )
    auth = {"backend": "az"}
    assert started.metrics.registry.get_sample_value("secrets_agent_authenticated", auth) == 1


async def test_new_version_is_seen_and_version_recorded(azure: Azure, started: Started) -> None:
    azure.store.put("airflow-variables-rotating", "v1")
    backend = await started()
    first = await backend.fetch_versioned(V, "rotating")
    latest = azure.store.put("airflow-variables-rotating", "v2")
    second = await backend.fetch_versioned(V, "rotating")
    assert first is not None and second is not None
    assert (first.value, second.value, second.version) == ("v1", "v2", latest)


async def test_prefixes_sep_and_impossible_names(azure: Azure, started: Started) -> None:
    azure.store.put("team--vars--greeting--word", "hi")
    azure.store.put("airflow-variablesgreetingword", "no sep")
    backend = await started(variables_prefix="team_vars", sep="--", kinds=("variables",))
    assert await backend.fetch(V, "greeting_word") == "hi"
    assert not backend.supports(C) and await backend.fetch(C, "x") is None
    dropped = await started(sep="")  # sep "" drops underscores, as the provider's replace does
    assert await dropped.fetch(V, "greeting_word") == "no sep"
    before = sum(azure.store.calls.values())
    for impossible in ("has.dot", "has/slash", "x" * 200):
        assert await backend.fetch(V, impossible) is None
    assert sum(azure.store.calls.values()) == before  # no upstream call for those


async def test_empty_and_trailing_prefixes_read_as_the_provider(
    azure: Azure, started: Started
) -> None:
    azure.store.put("hello-there", "bare id")
    azure.store.put("airflow-connections-c-uri", "mysql://trailing")
    azure.store.put("vars-x", "trailing separators")
    backend = await started(
        variables_prefix="", connections_prefix="airflow-connections-", config_prefix="vars---"
    )
    assert backend.supports(V) and await backend.fetch(V, "hello_there") == "bare id"
    assert await backend.fetch(C, "c_uri") == "mysql://trailing"  # not ...connections--c-uri
    assert await backend.fetch(CFG, "x") == "trailing separators"


async def test_one_token_for_start_and_reads(azure: Azure, started: Started) -> None:
    """The start-up token is asked as the challenge policy asks, so the SDK reuses it."""
    azure.store.put("airflow-variables-greeting", "hello")
    backend = await started()
    assert backend.health().ready and azure.store.grants == 1
    assert await backend.fetch(V, "greeting") == "hello"
    assert await backend.fetch(V, "absent") is None
    assert azure.store.grants == 1


async def test_disabled_secret_is_a_miss_and_logged(
    azure: Azure, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    azure.store.put("airflow-variables-old", "s3cret-old")
    azure.store.disable_latest("airflow-variables-old")
    backend = await started()
    assert await backend.fetch(V, "old") is None
    assert "disabled" in caplog.text and "s3cret" not in caplog.text


async def test_forbidden_is_a_denial(azure: Azure, started: Started) -> None:
    azure.store.put("airflow-variables-locked", "s3cret")
    azure.store.denied.add("airflow-variables-locked")
    backend = await started()
    with pytest.raises(DeniedError) as info:
        await backend.fetch(V, "locked")
    assert "s3cret" not in str(info.value)
    assert started.calls("denied") == 1


async def test_throttling_is_retried_then_transient(azure: Azure, started: Started) -> None:
    azure.store.put("airflow-variables-busy", "finally")
    backend = await started(retries=2)
    azure.store.throttle = 2  # azure-core honours Retry-After and tries again
    assert await backend.fetch(V, "busy") == "finally"
    azure.store.throttle = 10
    with pytest.raises(TransientError, match="HTTP 429"):
        await backend.fetch(V, "busy")
    assert azure.store.calls["airflow-variables-busy"] == 3 + 3
    # Each request azure-core sent is a transaction: the retries count as calls made.
    metrics = started.metrics
    assert metrics.calls_made("az") == 3 + 3
    retried = {"backend": "az", "operation": "GetSecret", "result": "retried"}
    assert metrics.registry.get_sample_value("secrets_agent_upstream_api_calls_total", retried) == 4


async def test_rejected_client_secret_is_not_ready(
    azure: Azure, started: Started, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret")
    backend = await started(client_secret_file=str(wrong))
    assert not backend.health().ready
    with pytest.raises(TransientError, match="Azure token"):
        await backend.fetch(V, "x")
    assert azure.store.grants == 0
    for _ in range(3):  # every lookup asks for a token: the log hears once a minute
        with pytest.raises(TransientError):
            await backend.fetch(V, "x")
    assert caplog.text.count("cannot get an Azure token") == 1
    assert "not-the-secret" not in caplog.text
    failures = {"backend": "az", "result": "failure"}
    auth = started.metrics.registry.get_sample_value("secrets_agent_auth_attempts_total", failures)
    assert auth is not None and auth >= 1


async def test_unreadable_client_secret_file_stops_the_start(
    started: Started, tmp_path: Path
) -> None:
    """As the AWS and GCP backends' credential files: ``run`` exits 78, check-config says so."""
    absent = str(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (absent, str(empty)):
        with pytest.raises(BackendError, match="client_secret_file") as info:
            await started(client_secret_file=path)
        assert path in str(info.value)
        backend = started.backends[-1]
        assert not backend.health().ready
        with pytest.raises(BackendError, match="client_secret_file"):
            await backend.check_local()  # check-config
    failures = {"backend": "az", "result": "failure"}
    auth = started.metrics.registry.get_sample_value("secrets_agent_auth_attempts_total", failures)
    assert auth == 2


async def test_untrusted_certificate_is_transient(
    azure: Azure, started: Started, tmp_path: Path
) -> None:
    other = Azure(tmp_path / "..")  # another self-signed CA
    try:
        backend = await started(ca_file=str(other.ca_file))
        assert not backend.health().ready
        with pytest.raises(TransientError):
            await backend.fetch(V, "x")
    finally:
        other.close()


async def test_challenge_resource_is_verified_by_default(azure: Azure, started: Started) -> None:
    """A vault whose challenge names another resource gets no token: loopback needs the opt-out."""
    azure.store.put("airflow-variables-greeting", "hello")
    backend = await started(verify_challenge_resource=True)
    with pytest.raises(BackendError, match="verify_challenge_resource"):
        await backend.fetch(V, "greeting")
    assert azure.store.tokens_seen == set()  # the 401 challenge was refused, no token sent
    assert azure.store.calls["airflow-variables-greeting"] == 0


async def test_default_credential_from_the_environment(
    azure: Azure, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DefaultAzureCredential's first link, the environment, with the authority from it too."""
    for key, value in {
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
        "AZURE_AUTHORITY_HOST": azure.tokens.url,
    }.items():
        monkeypatch.setenv(key, value)
    azure.store.put("airflow-variables-greeting", "via the environment")
    backend = await started(tenant_id="", client_id="", client_secret_file="", authority_host="")
    assert await backend.fetch(V, "greeting") == "via the environment"
    assert azure.store.grants >= 1


async def test_team_layout_two_teams_and_fallback(azure: Azure, started: Started) -> None:
    azure.store.put("airflow-connections-team-a--pg", "postgresql://a")
    azure.store.put("airflow-connections-team-b--pg", "postgresql://b")
    azure.store.put("airflow-connections-pg", "postgresql://global")
    azure.store.put("airflow-variables-team-a--greeting", "hello a")
    azure.store.put("airflow-variables-greeting", "hello everyone")
    azure.store.put("airflow-config-team-a--parallelism", "no team for config")
    azure.store.put("airflow-config-parallelism", "8")
    backend = await started(team_layout=True)

    async def get(kind: Kind, secret_id: str, team: str | None) -> str | None:
        found = await backend.fetch_for_team(kind, secret_id, team)
        return None if found is None else found.value

    assert await get(C, "pg", "team_a") == "postgresql://a"  # "_" -> "-" in the team, too
    assert await get(C, "pg", "team_b") == "postgresql://b"
    assert await get(C, "pg", None) == "postgresql://global"
    assert await get(V, "greeting", "team_b") == "hello everyone"  # no team secret: global
    assert await get(V, "greeting", "team_a") == "hello a"
    assert await get(CFG, "parallelism", "team_a") == "8"
    # Config keys spelling the team separator are refused too, as the provider refuses them.
    azure.store.put("airflow-config-a--b", "ambiguous")
    assert await get(CFG, "a--b", None) is None and await get(CFG, "a__b", None) is None
    # An id spelling the team separator is ambiguous: refused for every lookup, no call made.
    before = sum(azure.store.calls.values())
    assert await get(V, "team-a--greeting", None) is None
    assert await get(V, "a__b", "team_b") is None
    assert sum(azure.store.calls.values()) == before
    # A denied team secret stops there, as the provider does: the global name is not tried.
    azure.store.denied.add("airflow-variables-team-b--greeting")
    with pytest.raises(DeniedError):
        await get(V, "greeting", "team_b")
    # Without the option the team is ignored and "--" ids are ordinary.
    plain = await started()
    assert await plain.fetch_for_team(C, "pg", "team_a") is not None
    assert await plain.fetch(V, "team_a--greeting") == "hello a"


def _backend_toml(azure: Azure, **extra: Any) -> str:
    lines = ["[[backends]]", 'name = "az"', 'type = "azure_key_vault"']
    for key, value in (azure.options() | FAST | extra).items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _get(socket_path: str, path: str) -> bytes:
    return raw_request(socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_team_layout_through_the_agent(azure: Azure, short_tmp: Path) -> None:
    """A team's lookup (?team=, as the client sends Airflow 3's team_name) reaches the layout."""
    azure.store.put("airflow-variables-team-a--greeting", "hello a")
    azure.store.put("airflow-variables-greeting", "hello everyone")
    config = agent_config(short_tmp, backends=_backend_toml(azure, team_layout=True))
    with running_agent(config) as agent:

        def value(path: str) -> str:
            return str(body_of(_get(agent.socket_path, path))["value"])

        assert value("/v1/variables/greeting?team=team_a") == "hello a"
        assert value("/v1/variables/greeting?team=team_b") == "hello everyone"
        assert value("/v1/variables/greeting") == "hello everyone"


def test_killed_vault_serves_stale_then_recovers(azure: Azure, short_tmp: Path) -> None:
    azure.store.put("airflow-variables-greeting", "before")
    clock = FakeClock()
    config = agent_config(
        short_tmp, extra="[cache]\nvariable_ttl = 60\n", backends=_backend_toml(azure)
    )
    with running_agent(config, clock) as agent:
        assert body_of(_get(agent.socket_path, "/v1/variables/greeting"))["value"] == "before"
        azure.store.put("airflow-variables-greeting", "newer")
        clock.advance(61)
        assert body_of(_get(agent.socket_path, "/v1/variables/greeting"))["value"] == "newer"
        azure.stop_vault()  # listener gone and every kept-alive connection cut
        clock.advance(61)
        stale = _get(agent.socket_path, "/v1/variables/greeting")
        assert b"X-Cache: STALE" in stale and body_of(stale)["value"] == "newer"
        azure.start_vault()  # same port, same storage
        azure.store.put("airflow-variables-greeting", "after")
        deadline = time.monotonic() + 30
        while b"X-Cache: STALE" in (fresh := _get(agent.socket_path, "/v1/variables/greeting")):
            assert time.monotonic() < deadline, "no recovery within 30 s of the restart"
            # Once failing, the value is retried in the background after a backoff (<= 10 s).
            agent.call(agent.agent.service.idle())
            clock.advance(10)
        assert b"X-Cache: HIT" in fresh and body_of(fresh)["value"] == "after"  # the retry's


def test_debug_log_has_no_secret_values(azure: Azure, short_tmp: Path) -> None:
    """The agent at debug level, SDK loggers included, never writes a value or credential."""
    canary = "canary-s3cret-value-7f3a"
    azure.store.put("airflow-variables-canary", canary)
    azure.store.put("airflow-connections-db", f"postgresql://u:{canary}@db/app")
    config_path = write_config(
        short_tmp,
        f"""
        [listener]
        socket_path = "{short_tmp}/agent.sock"
        [log]
        level = "debug"
        """
        + _backend_toml(azure),
    )
    with agent_process(config_path) as process:
        sock = f"{short_tmp}/agent.sock"
        assert body_of(_get(sock, "/v1/variables/canary"))["value"] == canary
        assert canary in body_of(_get(sock, "/v1/connections/db"))["value"]
        assert body_of(_get(sock, "/v1/variables/absent"))["error"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert "DEBUG" in stderr  # the level took effect, so the check below means something
    for leaked in (canary, CLIENT_SECRET, *azure.store.issued):
        assert leaked not in stderr


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (403, "Forbidden", DeniedError),
        (429, "Throttled", TransientError),
        (503, "ServiceUnavailable", TransientError),
        (401, "Unauthorized", BackendError),
        (400, "BadParameter", BackendError),
    ],
)
def test_error_translation(status: int, code: str, kind: type[BackendError]) -> None:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    cls = ClientAuthenticationError if status == 401 else HttpResponseError
    exc = cls(message=f"{code}: echoes s3cret input")
    exc.status_code = status
    error = translate("az", exc, "GetSecret")
    assert type(error) is kind
    assert "s3cret" not in str(error)


def test_config_rejects_bad_values() -> None:
    problems = dict(
        AzureOptions(
            vault_url="http://vault",
            sep="_",
            tenant_id="t",
            backoff_initial=5,
            backoff_max=1,
        ).validate()
    )
    assert set(problems) == {"vault_url", "sep", "client_secret_file", "backoff_initial"}


async def test_a_client_secret_rotated_in_its_file_is_read_again(
    azure: Azure, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret file was read once: after a rotation every token request failed until a
    restart (a reload keeps the unchanged backend). Now a changed file is read again."""
    azure.store.lifetime = 0  # tokens that are stale at once: asked for at every request
    azure.store.put("airflow-variables-greeting", "hello")
    backend = await started()
    assert await backend.fetch(V, "greeting") == "hello"
    azure.store.client_secret = "rotated-s3cret"  # Entra now takes only the new secret
    with pytest.raises(TransientError, match="AADSTS7000215"):
        await backend.fetch(V, "greeting")
    caplog.set_level(logging.INFO)
    azure.secret_file.write_text("not-it\n")  # a wrong one: refused, as before
    with pytest.raises(TransientError):
        await backend.fetch(V, "greeting")
    azure.secret_file.write_text("")  # unusable: the one read before stays
    with pytest.raises(TransientError):
        await backend.fetch(V, "greeting")
    assert "the changed client_secret_file is unusable" in caplog.text
    azure.secret_file.write_text("rotated-s3cret\n")
    assert await backend.fetch(V, "greeting") == "hello"
    assert backend.health().ready
    assert caplog.text.count("the client_secret_file changed: read it again") == 2
    assert "s3cret" not in caplog.text
