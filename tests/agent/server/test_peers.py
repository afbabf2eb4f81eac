"""Peer credentials: a client under another uid/gid is refused unless the allow-list names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from secrets_agent.config.schema import AgentConfig
from secrets_agent_client import AgentSecretsBackend
from secrets_agent_client.transport import UnixTransport
from support.helpers import DEMO_BACKEND, agent_config, running_agent
from support.users import as_other_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid"),
]

NOBODY = 65534


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


def test_status_uids_and_admins_see_the_operator_views_without_reading_secrets(
    short_tmp: Path,
) -> None:
    """A monitoring user in ``status_uids`` (or an admin) need not be admitted as a reader:
    listing it in ``allowed_uids`` would let it read every secret."""
    listener = "allowed_uids = [4000]\nadmin_uids = [4001]\nstatus_uids = [4002]\n"
    with running_agent(config_for(short_tmp, listener)) as agent:

        def views() -> str:
            transport = UnixTransport(agent.socket_path, 5)
            paths = ("/v1/status", "/metrics", "/healthz", "/readyz", "/v1/variables/greeting")
            return " ".join(str(transport.request("GET", path).status) for path in paths)

        def invalidate() -> str:
            transport = UnixTransport(agent.socket_path, 5)
            return str(transport.request("POST", "/v1/cache/invalidate", b"{}").status)

        for viewer in (4001, 4002):
            assert as_other_user(viewer, viewer, [], views) == "200 200 200 200 403", viewer
            assert ask_as(agent.socket_path, viewer, viewer).startswith("DENIED")
        assert as_other_user(4001, 4001, [], invalidate) == "403"  # a reader's right, not a view
        assert as_other_user(4003, 4003, [], views) == "403 403 403 403 403"  # neither
        assert as_other_user(4000, 4000, [], views) == "403 200 200 200 200"  # a reader only


def test_a_peer_in_more_groups_than_one_kilobyte_holds_is_seen_in_all_of_them(
    short_tmp: Path,
) -> None:
    """Python's getsockopt reads at most 1 KiB (256 groups); a peer in more must neither lose
    the group that admits it nor escape a deny rule on one of the others."""
    many = list(range(5000, 5300))  # the kernel sorts them: 5299 comes last, past 256
    listener = "allowed_uids = []\nallowed_gids = [5299]\n"
    with running_agent(config_for(short_tmp, listener)) as agent:
        assert ask_as(agent.socket_path, 4000, 4000, extra_groups=many) == "VALUE hello"
        assert ask_as(agent.socket_path, 4000, 4000, extra_groups=many[:-1]).startswith("DENIED")
    rules = (
        '[[access]]\neveryone = true\nvariables = ["*"]\n'
        '[[access]]\ngid = 5299\neffect = "deny"\nvariables = ["greeting"]\n'
    )
    listener = 'socket_mode = "0666"\nallowed_uids = [4000]\n'
    with running_agent(agent_config(short_tmp, listener, DEMO_BACKEND + rules)) as agent:
        assert ask_as(agent.socket_path, 4000, 4000, extra_groups=many[:-1]) == "VALUE hello"
        assert ask_as(agent.socket_path, 4000, 4000, extra_groups=many).startswith("DENIED")


def test_uids_and_gids_past_two_to_the_31_are_the_ones_the_config_names(short_tmp: Path) -> None:
    """uid_t and gid_t are unsigned: a peer running as uid 3,000,000,000 (which the config
    accepts) must match its own allow-list entry, access rules and audit lines, never a
    negative number that no rule names (a deny by uid or gid would not hold)."""
    big_uid, big_gid = 3_000_000_000, 3_000_000_002
    audit = short_tmp / "audit.log"
    listener = f'socket_mode = "0666"\nallowed_uids = [{big_uid}]\nallowed_gids = [4000]\n'
    rules = (
        f'[audit]\noutput = "file"\nfile = "{audit}"\n'
        '[[access]]\neveryone = true\nvariables = ["*"]\n'
        f'[[access]]\nuid = {big_uid}\neffect = "deny"\nvariables = ["greeting"]\n'
        f'[[access]]\ngid = {big_gid}\neffect = "deny"\nvariables = ["greeting"]\n'
    )
    with running_agent(agent_config(short_tmp, listener, rules + DEMO_BACKEND)) as agent:
        assert ask_as(agent.socket_path, 4000, 4000) == "VALUE hello"
        refused = ask_as(agent.socket_path, 4000, big_gid)  # in no allowed group
        assert refused.startswith("DENIED") and f"uid 4000 gid {big_gid} may not" in refused
        by_rules = "access rules do not let this peer read this variable"
        assert ask_as(agent.socket_path, big_uid, 4000).endswith(by_rules)  # the deny by uid
        assert ask_as(agent.socket_path, 4001, big_gid, [4000]).endswith(by_rules)  # by gid
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["uid"], e["gid"], e["result"]) for e in lines] == [
        (4000, 4000, "miss"),
        (4000, big_gid, "denied"),
        (big_uid, 4000, "denied"),
        (4001, big_gid, "denied"),
    ]
