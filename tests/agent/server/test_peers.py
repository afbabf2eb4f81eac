"""Peer credentials: a client under another uid/gid is refused unless the allow-list names it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from secrets_agent.config.schema import AgentConfig
from secrets_agent_client import AgentSecretsBackend
from secrets_agent_client.transport import UnixTransport
from support.helpers import agent_config, running_agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid"),
]

NOBODY = 65534


def as_other_user(uid: int, gid: int, groups: list[int], call: Callable[[], str]) -> str:
    """Run ``call`` in a forked child that dropped to uid/gid, and return what it answered.

    A fork rather than a new interpreter: the venv's python lives under /root, which another
    uid cannot even execute. The child only touches the stdlib client, then ``_exit``s.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            answer = call()
        except BaseException as exc:  # report anything to the parent
            answer = f"ERROR {type(exc).__name__}: {exc}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def ask_as(socket_path: str, uid: int, gid: int, extra_groups: list[int] | None = None) -> str:
    def call() -> str:
        try:
            value = AgentSecretsBackend(socket_path=socket_path).get_variable("greeting")
        except PermissionError as exc:
            return f"DENIED {exc}"
        return f"VALUE {value}"

    return as_other_user(uid, gid, extra_groups or [], call)


def config_for(directory: Path, listener: str) -> AgentConfig:
    # 0666 so the kernel lets the peer connect; the agent's own check is what is under test.
    return agent_config(directory, extra=f'socket_mode = "0666"\n{listener}')


def test_default_allows_only_the_agents_own_uid(short_tmp: Path) -> None:
    with running_agent(config_for(short_tmp, "")) as agent:
        answer = ask_as(agent.socket_path, NOBODY, NOBODY)
        assert answer.startswith("DENIED")
        assert f"uid {NOBODY}" in answer
        assert agent.metric("secrets_agent_denied_peers_total") == 1
        assert ask_as(agent.socket_path, 0, 0) == "VALUE hello"


def test_allowed_by_uid_by_primary_gid_and_by_supplementary_gid(short_tmp: Path) -> None:
    listener = f"allowed_uids = [{NOBODY}]\nallowed_gids = [4242]\n"
    with running_agent(config_for(short_tmp, listener)) as agent:
        assert ask_as(agent.socket_path, NOBODY, NOBODY) == "VALUE hello"
        assert ask_as(agent.socket_path, 4000, 4242) == "VALUE hello"
        assert ask_as(agent.socket_path, 4000, 4000, extra_groups=[4242]) == "VALUE hello"
        assert ask_as(agent.socket_path, 4000, 4000).startswith("DENIED")
        assert ask_as(agent.socket_path, 0, 0).startswith("DENIED")  # lists replace the default


def test_invalidate_needs_an_admin_uid(short_tmp: Path) -> None:
    listener = f"allowed_uids = [0, {NOBODY}]\nadmin_uids = [0]\n"
    with running_agent(config_for(short_tmp, listener)) as agent:

        def invalidate() -> str:
            transport = UnixTransport(agent.socket_path, 5)
            return str(transport.request("POST", "/v1/cache/invalidate", b"{}").status)

        assert as_other_user(NOBODY, NOBODY, [], invalidate) == "403"
        assert invalidate() == "200"
