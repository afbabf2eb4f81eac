"""Access rules against a real OpenBao: a refused read never reaches it (its audit device says
so), and a refused existing id is answered exactly as a refused missing one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from secrets_agent_client.transport import UnixTransport
from support.bao import BaoServer, audit_device, vault_backend_toml
from support.bao import audited_reads as kv_reads
from support.helpers import agent_config, running_agent
from support.users import as_other_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid"),
]

ALICE, BOB = 4021, 4022


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    log = tmp_path / "audit.log"
    server = BaoServer(tmp_path / "bao", extra_config=audit_device(log))
    try:
        server.start()
        server.kv_put("variables/team_a_token", {"value": "s3cret-a"})
        server.kv_put("variables/team_b_token", {"value": "s3cret-b"})
        yield server
    finally:
        server.stop()


def audited_reads(bao: BaoServer, secret_id: str) -> int:
    return kv_reads(bao.workdir.parent / "audit.log", f"secret/data/variables/{secret_id}")


RULES = f"""
[[access]]
uid = {ALICE}
variables = ["team_a_*"]
[[access]]
uid = {BOB}
variables = ["team_b_*"]
"""


def read_as(socket_path: str, uid: int, secret_id: str, refresh: bool = False) -> str:
    def call() -> str:
        client = AgentSecretsBackend(socket_path=socket_path)
        try:
            if refresh:  # the refresh-now a task asks for after a failed login
                transport = UnixTransport(socket_path, 5)
                response = transport.request("GET", f"/v1/variables/{secret_id}?refresh=true")
                return f"{response.status} {response.body.decode()}"
            return f"VALUE {client.get_variable(secret_id)}"
        except Exception as exc:
            return f"{type(exc).__name__} {exc}"

    return as_other_user(uid, uid, [], call)


def test_refused_reads_never_reach_openbao_and_reveal_nothing(
    bao: BaoServer, short_tmp: Path
) -> None:
    listener = f'socket_mode = "0666"\nallowed_uids = [{ALICE}, {BOB}]\n'
    config = agent_config(short_tmp, extra=listener, backends=vault_backend_toml(bao) + RULES)
    with running_agent(config) as agent:
        sock = agent.socket_path
        assert read_as(sock, ALICE, "team_a_token") == "VALUE s3cret-a"
        existing = read_as(sock, ALICE, "team_b_token")
        missing = read_as(sock, ALICE, "team_b_missing")
        assert existing.startswith("PermissionError secrets agent denied variables lookup")
        assert existing == missing
        forced = read_as(sock, ALICE, "team_b_token", refresh=True)
        assert forced.startswith('403 {"error": "access_denied"')
        assert (audited_reads(bao, "team_b_token"), audited_reads(bao, "team_b_missing")) == (0, 0)
        assert read_as(sock, BOB, "team_b_token") == "VALUE s3cret-b"
        assert read_as(sock, ALICE, "team_b_token") == existing  # now cached: still the same
        assert audited_reads(bao, "team_b_token") == 1 and audited_reads(bao, "team_a_token") == 1
        assert agent.metric("secrets_agent_access_denied_total", kind="variable") == 4
