"""The fence on the real agent, with the env backend (whose prefixes can nest): with rules a
connection id that names a variable's environment variable is not found there, on the lean
path and aiohttp's; without rules it reads as Airflow's backend would; a reload that brings
rules drops what was read before."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from secrets_agent.config.loader import load_config
from secrets_agent.kinds import Kind
from secrets_agent.lookup.fence import FencedLink
from support.helpers import RunningAgent, body_of, read_over, running_agent, status_of
from support.helpers import write_config as write

SECRET = "s3cret-of-a-variable"
BACKENDS = """
[[backends]]
name = "env"
type = "env"
connections_prefix = "AIRFLOW_FENCE_"
variables_prefix = "AIRFLOW_FENCE_VAR_"

[[backends]]
name = "files"
type = "file"
connections_file = "connections.json"
"""
RULES = f"""
[[access]]
uid = {os.getuid()}
connections = ["*"]
variables = ["public_*"]
"""


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_FENCE_VAR_ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("AIRFLOW_FENCE_VAR_PUBLIC_NAME", "public")
    monkeypatch.setenv("AIRFLOW_FENCE_DB", "postgres://u:p@h/db")


def config_file(directory: Path, rules: bool, extra: str = "") -> Path:
    (directory / "connections.json").write_text('{"var_other": "mysql://u:p@files/db"}')
    head = f'[listener]\nsocket_path = "{directory}/agent.sock"\n{extra}'
    return write(directory, head + BACKENDS + (RULES if rules else ""))


@pytest.fixture
def agent(short_tmp: Path) -> Iterator[RunningAgent]:
    path = config_file(short_tmp, rules=True)
    with running_agent(load_config(path), config_path=path) as running:
        yield running


def get(agent: RunningAgent, path: str, version: str = "1.1") -> tuple[int, dict[str, str]]:
    answer = read_over(agent.socket_path, path, version)
    return status_of(answer), body_of(answer)


@pytest.mark.parametrize("version", ["1.1", "1.0"], ids=["lean", "aiohttp"])
def test_with_rules_a_connection_id_cannot_read_a_variables_secret(
    agent: RunningAgent, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    links = agent.agent.service.chain.links
    assert [type(link) for link in links] == [FencedLink, type(links[1])]
    assert not isinstance(links[1], FencedLink)  # the file backend keeps kinds apart
    assert get(agent, "/v1/variables/admin_token", version)[0] == 403  # the rule
    status, body = get(agent, "/v1/connections/var_admin_token", version)  # around it
    assert (status, body["error"]) == (404, "not_found")
    assert SECRET not in str(body)
    assert get(agent, "/v1/connections/var_admin_token", version)[0] == 404  # cached: the same
    # Its own ids, and the next backend's, are read as ever.
    assert get(agent, "/v1/connections/db", version)[1]["value"] == "postgres://u:p@h/db"
    assert get(agent, "/v1/connections/var_other", version)[1]["value"] == "mysql://u:p@files/db"
    assert get(agent, "/v1/variables/public_name", version)[1]["value"] == "public"
    fenced = [r for r in caplog.records if "name variables' secrets" in r.getMessage()]
    assert len(fenced) == 1 and SECRET not in fenced[0].getMessage()
    assert "var_admin_token" not in fenced[0].getMessage()


def test_without_rules_the_agent_reads_as_airflow_does_and_a_reload_with_rules_drops_it(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(short_tmp, rules=False)
    config = load_config(path)
    assert any("lies inside connections_prefix" in w for w in config.warnings)
    with running_agent(config, config_path=path) as agent:
        assert get(agent, "/v1/connections/var_admin_token")[1]["value"] == SECRET  # parity
        assert get(agent, "/v1/variables/admin_token")[1]["value"] == SECRET
        config_file(short_tmp, rules=True)
        caplog.set_level(logging.WARNING)
        assert agent.call(agent.agent.reload())
        said = [
            r.getMessage()
            for r in caplog.records
            if "lies inside connections_prefix" in r.getMessage()
        ]
        assert len(said) == 1 and "answers such connection ids as not found" in said[0]
        # The value read before the rules came in is gone from the cache, not served as a hit.
        assert get(agent, "/v1/connections/var_admin_token")[0] == 404
        assert get(agent, "/v1/variables/admin_token")[0] == 403
        config_file(short_tmp, rules=False)
        assert agent.call(agent.agent.reload())
        assert get(agent, "/v1/connections/var_admin_token")[1]["value"] == SECRET


def test_a_snapshot_saved_without_rules_brings_nothing_fenced_into_an_agent_with_rules(
    short_tmp: Path,
) -> None:
    (short_tmp / "fernet.key").write_text(Fernet.generate_key().decode())
    warm = f'[cache]\nsnapshot_file = "{short_tmp}/cache.snapshot"\n'
    warm += '[encryption]\nkey_file = "fernet.key"\n'
    path = config_file(short_tmp, rules=False, extra=warm)
    with running_agent(load_config(path)) as agent:
        assert get(agent, "/v1/connections/var_admin_token")[1]["value"] == SECRET
        assert get(agent, "/v1/connections/db")[1]["value"] == "postgres://u:p@h/db"
        assert agent.call(agent.agent.save_snapshot())
    path = config_file(short_tmp, rules=True, extra=warm)
    with running_agent(load_config(path)) as agent:
        cache = agent.agent.service.cache
        assert cache.get(Kind.CONNECTION, "var_admin_token") is None
        assert cache.get(Kind.CONNECTION, "db") is not None  # the rest warms the start
