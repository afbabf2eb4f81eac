"""Team binding: with ``team_uids`` / ``team_gids`` a peer may only name the teams bound to it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from secrets_agent_client import AgentSecretsBackend
from support.helpers import agent_config, running_agent
from support.users import as_other_user

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid"),
]

ALICE, BOB, CAROL, TEAM_B_GID = 4001, 4002, 4003, 4100


def ask(socket_path: str, uid: int, team: str | None, gid: int | None = None) -> str:
    def call() -> str:
        try:
            value = AgentSecretsBackend(socket_path=socket_path).get_variable("token", team)
        except PermissionError as exc:
            return f"DENIED {exc}"
        return f"VALUE {value}"

    return as_other_user(uid, uid if gid is None else gid, [], call)


def team_backends(directory: Path) -> str:
    for team in ("a", "b"):
        (directory / f"team_{team}.json").write_text(json.dumps({"token": f"s3cret-{team}"}))
    return "".join(
        f"""
        [[backends]]
        name = "team-{team}"
        type = "file"
        variables_file = "team_{team}.json"
        teams = ["team_{team}"]
        """
        for team in ("a", "b")
    )


def config_text(bound: bool) -> str:
    listener = f'socket_mode = "0666"\nallowed_uids = [{ALICE}, {BOB}, {CAROL}]\n'
    if bound:
        listener += f'team_uids = {{ "{ALICE}" = ["team_a"] }}\n'
        listener += f'team_gids = {{ "{TEAM_B_GID}" = ["team_b"] }}\n'
    return listener


def test_a_peer_reads_only_the_teams_bound_to_it(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = agent_config(short_tmp, extra=config_text(True), backends=team_backends(short_tmp))
    with running_agent(config) as agent:
        sock = agent.socket_path
        assert ask(sock, ALICE, "team_a") == "VALUE s3cret-a"
        denied = ask(sock, ALICE, "team_b")
        assert denied.startswith("DENIED") and "team_denied" in denied
        assert "s3cret" not in denied
        assert ask(sock, BOB, "team_b", gid=TEAM_B_GID) == "VALUE s3cret-b"  # bound by gid
        assert ask(sock, BOB, "team_a", gid=TEAM_B_GID).startswith("DENIED")
        assert ask(sock, CAROL, "team_a").startswith("DENIED")  # bound to nothing
        assert ask(sock, CAROL, None) == "VALUE None"  # no team: team backends stay out of reach
        # An operator sees the refusals: counted by kind, one log line a minute per peer.
        assert agent.metric("secrets_agent_team_denied_total", kind="variable") == 3
    lines = [r.getMessage() for r in caplog.records if "team not bound" in r.getMessage()]
    assert len(lines) == 3  # ALICE, BOB and CAROL: one each
    assert f"uid {ALICE} " in lines[0] and "variable of team_b" in lines[0]
    assert "s3cret" not in caplog.text and "token" not in "".join(lines)  # never the id


def test_without_a_binding_team_only_selects_backends(short_tmp: Path) -> None:
    config = agent_config(short_tmp, extra=config_text(False), backends=team_backends(short_tmp))
    with running_agent(config) as agent:
        assert ask(agent.socket_path, ALICE, "team_b") == "VALUE s3cret-b"  # documented


def test_binding_keys_and_teams_are_validated(short_tmp: Path) -> None:
    from secrets_agent.config.loader import parse_config
    from secrets_agent.errors import ConfigError

    listener = {
        "team_uids": {"alice": ["team_a"], "\u00b2": ["team_a"], "\u0663": ["team_a"]},
        "team_gids": {"4100": ["no spaces"], "4294967295": ["team_a"]},
    }
    with pytest.raises(ConfigError) as info:
        parse_config({"listener": listener}, short_tmp)
    assert info.value.problems == [
        "listener.team_uids.alice: keys must be numeric ids",
        "listener.team_uids.\u00b2: keys must be numeric ids",  # not int(): no traceback
        "listener.team_uids.\u0663: keys must be numeric ids",  # not uid 3
        "listener.team_gids.4100: teams must be 1-64 letters, digits, - or _",
        "listener.team_gids.4294967295: keys must be numeric ids",  # past what gid_t holds
    ]


def test_a_denied_peer_is_logged_once_per_interval(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = agent_config(short_tmp, extra='socket_mode = "0666"\n')
    with running_agent(config) as agent:

        def hammer() -> str:
            answers = [ask_raw(agent.socket_path) for _ in range(50)]
            return ",".join(sorted(set(answers)))

        assert as_other_user(ALICE, ALICE, [], hammer) == "403"
        assert agent.metric("secrets_agent_denied_peers_total") == 50
    lines = [r for r in caplog.records if "refused a peer" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info


def ask_raw(socket_path: str) -> str:
    from secrets_agent_client.transport import UnixTransport

    return str(UnixTransport(socket_path, 5).request("GET", "/v1/variables/token").status)
