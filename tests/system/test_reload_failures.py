"""A failed reload, of every kind, leaves the running configuration serving exactly as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.config.loader import load_config
from support.bao import BaoServer
from support.helpers import (
    FakeClock,
    RunningAgent,
    body_of,
    demo_files,
    raw_request,
    running_agent,
    write_config,
)

pytestmark = pytest.mark.integration

REQUESTS = (
    b"GET /v1/variables/greeting HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/variables/colour HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/variables/absent HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
)


def good(directory: Path) -> str:
    return f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
        [[backends]]
        name = "other"
        type = "file"
        variables_file = "other.json"
    """


def answers(agent: RunningAgent) -> list[tuple[int, str, Any]]:
    """Status, cache state and body of each request, after a warm-up."""
    result = []
    for request in REQUESTS:
        raw_request(agent.socket_path, request)  # warm: the second answer is the cached one
        answer = raw_request(agent.socket_path, request)
        head = answer.partition(b"\r\n\r\n")[0].decode()
        cache = next((h for h in head.split("\r\n") if h.startswith("X-Cache")), "")
        result.append((int(head.split(" ")[1]), cache, body_of(answer)))
    return result


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[BaoServer]:
    server = BaoServer(tmp_path / "bao")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config(short_tmp: Path) -> Path:
    demo_files(short_tmp)
    (short_tmp / "other.json").write_text(json.dumps({"colour": "blue"}))
    return write_config(short_tmp, good(short_tmp))


def bad_configs(directory: Path, bao: BaoServer) -> dict[str, str]:
    replaced_other = good(directory).replace('variables_file = "other.json"', "{}")
    return {
        "not TOML": good(directory) + "\n[cache\n",
        "invalid value": good(directory) + "\n[cache]\nmax_entries = -1\n",
        "backend cannot start": replaced_other.format(
            f'variables_file = "{directory}/missing.json"'  # absolute: named in the message
        ),
        "backend cannot authenticate": good(directory)
        + f"""
        [[backends]]
        name = "vault"
        type = "vault"
        url = "{bao.url}"
        auth_method = "token"
        timeout = 3
        [backends.token]
        token = "not-a-valid-token"
        """,
        # The changed backend is replaced by one that cannot log in: the old one must stay.
        "changed backend cannot authenticate": good(directory).replace(
            'name = "other"\n        type = "file"\n        variables_file = "other.json"',
            f'name = "other"\n        type = "vault"\n        url = "{bao.url}"\n'
            '        auth_method = "token"\n        [backends.token]\n        token = "nope"',
        ),
    }


def test_each_kind_of_failed_reload_changes_nothing(
    config: Path, bao: BaoServer, caplog: pytest.LogCaptureFixture
) -> None:
    with running_agent(load_config(config), FakeClock(), config_path=config) as agent:
        before = answers(agent)
        assert before[0][2] == {"kind": "variable", "id": "greeting", "value": "hello"}
        assert before[1][2]["value"] == "blue" and before[3][2]["ready"] is True
        failures = bad_configs(config.parent, bao)
        for count, (kind, text) in enumerate(failures.items(), start=1):
            assert "other" in text  # each bad config still names the backends that serve now
            config.write_text(text)
            assert agent.call(agent.agent.reload()) is False, kind
            assert answers(agent) == before, kind
            assert agent.metric("secrets_agent_config_reloads_total", result="failure") == count
            assert len(agent.agent.runtime.pool) == 2, (
                kind
            )  # what the failed reload built is closed
        assert "missing.json does not exist" in caplog.text
        assert "backend 'vault' is not ready" in caplog.text
        config.write_text(good(config.parent))
        assert agent.call(agent.agent.reload()) is True
        assert answers(agent) == before
