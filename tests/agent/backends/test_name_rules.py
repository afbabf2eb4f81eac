"""No id yields a 5xx: every backend refuses, before any call, a name its upstream cannot hold.

A property test feeds generated ids (any text the id rules accept) to every backend, each
against its real loopback upstream; the answer is a value, a miss or a denial, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secrets_agent.backends.aws.names import PARAMETER_NAMES
from secrets_agent.backends.aws.names import SECRET_NAMES as AWS_SECRET_NAMES
from secrets_agent.backends.azure.names import SECRET_NAMES as AZURE_NAMES
from secrets_agent.backends.base import Backend, BackendContext
from secrets_agent.backends.gcp.names import SECRET_NAMES as GCP_NAMES
from secrets_agent.backends.names import NameRules
from secrets_agent.backends.registry import create_backend
from secrets_agent.backends.vault.names import SECRET_PATHS
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import BackendError, DeniedError, InvalidIdError
from secrets_agent.kinds import Kind, validate_id
from support.azure_server import Azure
from support.bao import BaoServer
from support.gcp_server import Gcp
from support.helpers import FakeClock, agent_config, raw_request, running_agent, status_of
from support.moto_aws import REGION, MotoServer

pytestmark = pytest.mark.integration

# Characters upstreams treat specially, plus any text at all.
SPECIAL = "ab/._-+=@ %#?&:;~*!$'()[]{}|^`\"<>,\u2028\u2029\u0085\u00e9\u4e2d\U0001f600"
ids = st.text(st.characters(codec=None), min_size=1, max_size=250) | st.text(
    st.sampled_from(SPECIAL), min_size=1, max_size=40
)


def _valid(raw: str) -> bool:
    try:
        validate_id(raw)
    except InvalidIdError:
        return False
    return True


class Upstreams:
    """Every backend type, started against its loopback upstream, on one event loop."""

    def __init__(self, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.loop = asyncio.new_event_loop()
        stack.callback(self.loop.close)
        bao = self.bao = BaoServer(workdir / "bao")
        bao.start()
        stack.callback(bao.stop)
        aws = MotoServer()
        aws.start()
        stack.callback(aws.stop)
        (workdir / "gcp").mkdir()
        gcp = Gcp(workdir / "gcp")
        stack.callback(gcp.close)
        (workdir / "azure").mkdir()
        azure = Azure(workdir / "azure")
        stack.callback(azure.close)
        aws_options = {"endpoint_url": aws.url, "region": REGION, "max_attempts": 1}
        gcp_options = {  # as TOML holds them: arrays for tuples, no key for None (no feed)
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(gcp.options()).items()
            if v is not None
        }
        configs: dict[str, tuple[str, dict[str, Any]]] = {
            "vault": ("vault", {"url": bao.url, "token": {"token": bao.root_token}}),
            "vault-team": (
                "vault",
                {"url": bao.url, "token": {"token": bao.root_token}, "team_layout": True},
            ),
            "vault-no-mount": (
                "vault",
                {"url": bao.url, "token": {"token": bao.root_token}, "mount_point": ""},
            ),
            "secrets-manager": ("aws_secrets_manager", aws_options),
            "secrets-manager-bare": (
                "aws_secrets_manager",
                aws_options | {"connections_prefix": "", "variables_prefix": ""},
            ),
            "ssm": ("aws_ssm", aws_options),
            "ssm-bare": ("aws_ssm", aws_options | {"variables_prefix": ""}),
            "gcp": ("gcp_secret_manager", gcp_options),
            "azure": ("azure_key_vault", azure.options() | {"retries": 0}),
            "azure-bare": (
                "azure_key_vault",
                azure.options() | {"retries": 0, "variables_prefix": "", "team_layout": True},
            ),
        }
        self.backends: dict[str, Backend] = {}
        tables = [{"name": n, "type": t, **raw} for n, (t, raw) in configs.items()]
        for config in parse_config({"backends": tables}, workdir).backends:
            name = config.common.name
            backend = create_backend(config, BackendContext(clock=FakeClock()))
            self.loop.run_until_complete(backend.start())
            stack.callback(self.loop.run_until_complete, backend.close())
            assert backend.health().ready, (name, backend.health().detail)
            self.backends[name] = backend

    def ask(self, backend: Backend, kind: Kind, secret_id: str, team: str | None) -> None:
        self.loop.run_until_complete(backend.fetch_for_team(kind, secret_id, team))


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    with contextlib.ExitStack() as stack:
        yield Upstreams(tmp_path_factory.mktemp("names"), stack)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(
    secret_id=ids.filter(_valid),
    kind=st.sampled_from(list(Kind)),
    team=st.sampled_from([None, "team_a"]),
)
def test_no_id_reaches_an_upstream_that_cannot_hold_it(
    upstreams: Upstreams, secret_id: str, kind: Kind, team: str | None
) -> None:
    failures = []
    for name, backend in upstreams.backends.items():
        try:
            upstreams.ask(backend, kind, secret_id, team)
        except DeniedError:
            pass  # a 403, the upstream's word on a name it holds
        except BackendError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, f"{kind} {secret_id!r} (team {team}): {failures}"


def test_names_vault_cannot_hold_are_404_through_the_agent(
    upstreams: Upstreams, short_tmp: Path
) -> None:
    """The fuzz run's case: ids with U+2028 / U+2029 came back as 502 from Vault's 400."""
    backend = f"""
[[backends]]
name = "vault"
type = "vault"
url = "{upstreams.bao.url}"
[backends.token]
token = "{upstreams.bao.root_token}"
"""
    with running_agent(agent_config(short_tmp, backends=backend)) as agent:
        for kind in ("variables", "connections", "config"):
            for raw in ("a%E2%80%A8b", "%E2%80%A9", "a%C2%A0b", "a%E3%80%80b"):
                request = f"GET /v1/{kind}/{raw} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                assert status_of(raw_request(agent.socket_path, request)) == 404, (kind, raw)


@pytest.mark.parametrize(
    ("rules", "good", "bad"),
    [
        (GCP_NAMES, "airflow-variables-a_b", "x" * 256),
        (GCP_NAMES, "-bare", "airflow-variables-a.b"),
        (AZURE_NAMES, "airflow-variables-a-b", "a_b"),
        (AZURE_NAMES, "a" * 127, "a" * 128),
        (AWS_SECRET_NAMES, "airflow/variables/a+b=c@d.e", "airflow/variables/a b"),
        (AWS_SECRET_NAMES, "x" * 512, "x" * 513),
        (PARAMETER_NAMES, "/airflow/variables/a_b.c-d", "/airflow/variables/a+b"),
        (PARAMETER_NAMES, "/a" * 15, "/a" * 16),
        (PARAMETER_NAMES, "/airflow/variables/x", "/airflow//x"),
        (SECRET_PATHS, "secret/variables/a b/\u00e9\u4e2d", "secret/variables/a\u2028b"),
        (SECRET_PATHS, "secret/variables/a", "secret/variables/a\u00a0b"),
    ],
)
def test_every_backend_has_name_rules(rules: NameRules, good: str, bad: str) -> None:
    """One contract for every implementation: a good name holds, a bad one says why not."""
    assert rules.holds(good) and rules.why_not(good) is None
    assert not rules.holds(bad) and rules.why_not(bad)
