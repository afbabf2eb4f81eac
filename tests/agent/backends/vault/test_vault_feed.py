"""The Vault change feed end to end: a real OpenBao, polled by the running agent."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.backends.vault.feed import version_state
from secrets_agent.kinds import Kind
from support.bao import BaoServer, vault_backend_toml
from support.feeds import eventually, feed_health, fresh, negative, value
from support.helpers import RunningAgent, agent_config, running_agent

pytestmark = pytest.mark.integration

C, V = Kind.CONNECTION, Kind.VARIABLE


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path_factory.mktemp("bao-feed"))
    server.start()
    yield server
    server.stop()


def feed_toml(bao: BaoServer, method: str, team_layout: bool = False) -> str:
    layout = "team_layout = true" if team_layout else ""
    return (
        vault_backend_toml(bao, extra=layout)
        + f"""
        [backends.feed]
        poll_interval = 0.2
        method = "{method}"
        key_interval = 0
    """
    )


def scans(agent: RunningAgent) -> float:
    """detailed-metadata calls so far: one per kind's path per poll (the first is the baseline)."""
    labels = {"backend": "vault", "operation": "detailed-metadata", "result": "ok"}
    return agent.metric("secrets_agent_upstream_api_calls_total", **labels)


def test_scan_sees_a_new_version_a_delete_and_a_team_secret(
    bao: BaoServer, short_tmp: Path
) -> None:
    bao.kv_put("variables/scan_v", {"value": "1"})
    bao.kv_put("connections/team_a/scan_c", {"conn_uri": "postgres://u:p@old/db"})
    config = agent_config(
        short_tmp,
        "[cache]\nvariable_ttl = 3600\nconnection_ttl = 3600\n",
        feed_toml(bao, "scan", True),
    )
    with running_agent(config) as agent:
        assert value(agent, V, "scan_v") == "1"
        assert agent.call(agent.agent.service.lookup(C, "scan_c", "team_a")).value == (
            "postgres://u:p@old/db"
        )
        # Two whole polls: the first (the baseline) has been applied.
        eventually(lambda: scans(agent) >= 2 * len(Kind))
        applied = "secrets_agent_feed_events_total"
        before = agent.metric(applied, feed="vault", result="applied")
        bao.kv_put("variables/scan_v", {"value": "2"})
        eventually(lambda: fresh(agent, V, "scan_v") == "2")
        bao.kv_put("connections/team_a/scan_c", {"conn_uri": "postgres://u:p@new/db"})
        eventually(lambda: fresh(agent, C, "scan_c", "team_a") == "postgres://u:p@new/db")
        bao.api("DELETE", "/v1/secret/metadata/variables/scan_v")
        eventually(lambda: negative(agent, V, "scan_v"))
        # Polls of an unchanged mount say nothing.
        assert agent.metric(applied, feed="vault", result="applied") - before == 3
        assert agent.metric("secrets_agent_feed_lag_seconds_count", feed="vault") >= 2


def test_scan_tells_apart_teams_that_share_an_id(bao: BaoServer, short_tmp: Path) -> None:
    # Three paths end in the same id: a rotation of any one of them is a change.
    for path in ("variables/shared", "variables/team_a/shared", "variables/team_b/shared"):
        bao.kv_put(path, {"value": path})
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", feed_toml(bao, "scan", True))
    with running_agent(config) as agent:
        for team in ("team_a", "team_b"):
            found = agent.call(agent.agent.service.lookup(V, "shared", team))
            assert found.value == f"variables/{team}/shared"
        eventually(lambda: scans(agent) >= 2 * len(Kind))  # whole polls: the baseline is taken
        for team in ("team_a", "team_b"):
            bao.kv_put(f"variables/{team}/shared", {"value": "rotated"})
            eventually(lambda: fresh(agent, V, "shared", team) == "rotated")  # noqa: B023


def test_a_first_poll_reports_what_changed_while_no_node_polled(
    bao: BaoServer, short_tmp: Path
) -> None:
    # A feed's first poll has nothing to compare with. When a node takes a fleet's feed over,
    # writes since the last holder's last poll are in that gap: what was written within it
    # (the lease's time and a poll) is reported, so the other nodes hear of it too.
    bao.kv_put("variables/gap_v", {"value": "1"})
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", feed_toml(bao, "scan"))
    with running_agent(config) as agent:
        received = "secrets_agent_feed_events_received_total"
        eventually(lambda: agent.metric(received, feed="vault") >= 1)  # gap_v, written just now
        # Not a late event: written maybe minutes ago, it must not mark the feed as lagging.
        assert agent.metric("secrets_agent_feed_lag_seconds_count", feed="vault") == 0


def test_metadata_polls_the_keys_held(bao: BaoServer, short_tmp: Path) -> None:
    bao.kv_put("variables/meta_v", {"value": "a"})
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", feed_toml(bao, "metadata"))
    with running_agent(config) as agent:
        assert value(agent, V, "meta_v") == "a"
        calls = "secrets_agent_upstream_api_calls_total"
        eventually(
            lambda: agent.metric(calls, backend="vault", operation="metadata", result="ok") >= 2
        )
        bao.kv_put("variables/meta_v", {"value": "b"})
        eventually(lambda: fresh(agent, V, "meta_v") == "b")
        bao.api("DELETE", "/v1/secret/metadata/variables/meta_v")
        eventually(lambda: negative(agent, V, "meta_v"))


def test_metadata_polls_the_path_a_team_key_was_read_from(bao: BaoServer, short_tmp: Path) -> None:
    bao.kv_put("connections/team_b/meta_c", {"conn_uri": "postgres://u:p@old/db"})
    bao.kv_put("connections/meta_c", {"conn_uri": "postgres://u:p@global/db"})
    config = agent_config(
        short_tmp, "[cache]\nconnection_ttl = 3600\n", feed_toml(bao, "metadata", True)
    )
    with running_agent(config) as agent:
        team = agent.call(agent.agent.service.lookup(C, "meta_c", "team_b"))
        assert team.value == "postgres://u:p@old/db"
        calls = "secrets_agent_upstream_api_calls_total"
        ok = {"backend": "vault", "operation": "metadata", "result": "ok"}
        eventually(lambda: agent.metric(calls, **ok) >= 4)  # two polls: the baseline is taken
        bao.kv_put("connections/team_b/meta_c", {"conn_uri": "postgres://u:p@new/db"})
        eventually(lambda: fresh(agent, C, "meta_c", "team_b") == "postgres://u:p@new/db")


def test_a_server_without_detailed_metadata_is_a_failing_feed_not_an_outage(
    bao: BaoServer, short_tmp: Path
) -> None:
    bao.kv_put("variables/plain", {"value": "p"})
    # No such mount: the server answers 404, as a Vault without detailed-metadata does.
    toml = vault_backend_toml(bao, extra='mount_point = "nosuch"')
    toml += "[backends.feed]\npoll_interval = 0.2\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"
    toml += vault_backend_toml(bao).replace('name = "vault"', 'name = "kv"')
    config = agent_config(short_tmp, "", toml)
    with running_agent(config) as agent:
        eventually(lambda: "detailed-metadata" in feed_health(agent, "vault"))
        assert agent.agent.runtime.readiness()["vault"].ready
        assert value(agent, V, "plain") == "p"  # the next backend in the chain serves it


@pytest.fixture
def root_level() -> Iterator[None]:
    """A reload applies ``[log] level`` to the root logger: give the next tests theirs back."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.mark.usefixtures("root_level")
def test_a_reload_replaces_the_feed_and_the_new_one_works(bao: BaoServer, short_tmp: Path) -> None:
    bao.kv_put("variables/reload_v", {"value": "1"})
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", feed_toml(bao, "scan"))
    path = short_tmp / "agent.toml"
    with running_agent(config, config_path=path) as agent:
        assert value(agent, V, "reload_v") == "1"
        eventually(lambda: feed_health(agent, "vault") == "ok")
        eventually(lambda: scans(agent) >= len(Kind))
        old = agent.agent.runtime.feeds
        path.write_text(path.read_text().replace("poll_interval = 0.2", "poll_interval = 0.3"))
        assert agent.call(agent.agent.reload())
        assert agent.agent.runtime.feeds is not old and not old._tasks  # the old one stopped
        baseline = scans(agent) + len(Kind)  # the new feed's first whole poll
        # A replaced backend's values do not carry over: the new one reads (and holds) anew.
        assert value(agent, V, "reload_v") == "1"
        eventually(lambda: scans(agent) >= baseline)
        bao.kv_put("variables/reload_v", {"value": "2"})
        eventually(lambda: fresh(agent, V, "reload_v") == "2")


def test_a_version_with_a_deletion_scheduled_is_not_gone_until_then(bao: BaoServer) -> None:
    # delete_version_after (on the key or the mount) gives every version a deletion_time an
    # hour ahead: each rotation was taken for a delete, the value dropped (no stale copy if
    # its re-read failed) and the version's own state said "gone" before it was.
    bao.api("POST", "/v1/secret/metadata/variables/later_v", {"delete_version_after": "1h"})
    bao.kv_put("variables/later_v", {"value": "1"})
    scan = bao.api("GET", "/v1/secret/detailed-metadata/variables?scan=true")
    info = scan["data"]["key_info"]["later_v"]
    assert info["versions"]["1"]["deletion_time"]  # set, an hour ahead
    now = time.time()
    assert version_state(info, now)[0] == (1, False)
    written = version_state(info, now)[1]
    assert written is not None and abs(written - now) < 60
    later = now + 2 * 3600
    assert version_state(info, later)[0] == (1, True)  # past it: gone
    # ... as of its deletion time, not its last write two hours before: a change the feed
    # sees within a poll is not "lagging" by the key's age.
    gone_at = version_state(info, later)[1]
    assert gone_at is not None and abs(gone_at - (now + 3600)) < 60
    bao.api("DELETE", "/v1/secret/data/variables/later_v")  # deleted now
    info = bao.api("GET", "/v1/secret/metadata/variables/later_v")["data"]
    assert version_state(info, time.time())[0] == (1, True)
