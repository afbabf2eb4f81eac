"""SIGHUP reload: a valid config is applied without a restart; an invalid one changes nothing."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from secrets_agent.config.loader import load_config
from support.helpers import (
    FakeClock,
    RunningAgent,
    agent_process,
    body_of,
    demo_files,
    raw_request,
    running_agent,
    write_config,
)

pytestmark = pytest.mark.integration


def body(directory: Path, other_file: str = "other.json", extra: str = "") -> str:
    return f"""
        [listener]
        socket_path = "{directory}/agent.sock"
        {extra}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
        [[backends]]
        name = "other"
        type = "file"
        variables_file = "{other_file}"
    """


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


@pytest.fixture
def setup(short_tmp: Path) -> Path:
    demo_files(short_tmp)
    (short_tmp / "other.json").write_text(json.dumps({"colour": "blue"}))
    (short_tmp / "other2.json").write_text(json.dumps({"colour": "green"}))
    return write_config(short_tmp, body(short_tmp))


def test_changed_backend_is_replaced_and_unchanged_cache_kept(setup: Path) -> None:
    directory = setup.parent
    with running_agent(load_config(setup), FakeClock(), config_path=setup) as agent:
        assert body_of(get(agent, "/v1/variables/greeting"))["value"] == "hello"
        assert body_of(get(agent, "/v1/variables/colour"))["value"] == "blue"
        setup.write_text(body(directory, "other2.json", extra="admin_uids = []"))
        assert agent.call(agent.agent.reload()) is True
        kept = get(agent, "/v1/variables/greeting")
        assert b"X-Cache: HIT" in kept  # its backend did not change: its cache entry stays
        replaced = get(agent, "/v1/variables/colour")
        assert b"X-Cache: MISS" in replaced and body_of(replaced)["value"] == "green"
        invalidate = raw_request(
            agent.socket_path,
            b"POST /v1/cache/invalidate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        assert body_of(invalidate)["error"] == "not_admin"  # the new access policy applies
        assert agent.metric("secrets_agent_config_reloads_total", result="success") == 1


def test_invalid_config_keeps_the_old_one_serving(
    setup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_agent(load_config(setup), FakeClock(), config_path=setup) as agent:
        setup.write_text("[cache]\nmax_entries = -1\n")
        assert agent.call(agent.agent.reload()) is False
        assert "cache.max_entries: must be >= 1" in caplog.text
        missing = setup.parent / "missing.json"  # absolute: named (config.paths)
        setup.write_text(body(setup.parent, str(missing)))
        assert agent.call(agent.agent.reload()) is False  # a backend that cannot start
        assert f"{missing} does not exist" in caplog.text
        setup.write_text(body(setup.parent, "hvs.CAESIpasted-secret-42"))  # not a file's path
        assert agent.call(agent.agent.reload()) is False
        assert "backends[1].variables_file: names no file in" in caplog.text
        assert "pasted-secret-42" not in caplog.text
        assert body_of(get(agent, "/v1/variables/colour"))["value"] == "blue"
        assert agent.metric("secrets_agent_config_reloads_total", result="failure") == 3
        assert body_of(get(agent, "/readyz"))["ready"] is True


def test_cache_settings_change_starts_a_new_cache_and_socket_changes_wait(
    setup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_agent(load_config(setup), FakeClock(), config_path=setup) as agent:
        get(agent, "/v1/variables/greeting")
        moved = body(setup.parent).replace("agent.sock", "moved.sock")
        setup.write_text(moved + "\n[cache]\nvariable_ttl = 5\n")
        assert agent.call(agent.agent.reload()) is True
        assert "listener.socket_path change only on restart" in caplog.text
        assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
        assert agent.agent.config.listener.socket_path == str(setup.parent / "agent.sock")
        assert not (setup.parent / "moved.sock").exists()


def test_cache_settings_that_shape_no_entry_keep_the_cached_values(setup: Path) -> None:
    """A new refresh-now budget, sweep or snapshot interval does not change what an entry
    means: dropping every value for it (stale-on-error's too) would cost a miss storm."""
    with running_agent(load_config(setup), FakeClock(), config_path=setup) as agent:
        get(agent, "/v1/variables/greeting")
        cache = agent.agent.service.cache
        settings = (
            "[cache]\nrefresh_now_per_peer = 5\nsweep_interval = 30\nrefresh_concurrency = 2\n"
        )
        setup.write_text(body(setup.parent) + settings)
        assert agent.call(agent.agent.reload()) is True
        assert agent.agent.service.cache is cache
        assert b"X-Cache: HIT" in get(agent, "/v1/variables/greeting")
        setup.write_text(body(setup.parent) + settings + "max_stale = 60\n")
        assert agent.call(agent.agent.reload()) is True
        assert agent.agent.service.cache is not cache  # one that does: a new cache


def test_sighup_reloads_a_running_process(setup: Path) -> None:
    with agent_process(setup) as process:
        sock = str(setup.parent / "agent.sock")

        def colour() -> str:
            answer = raw_request(sock, b"GET /v1/variables/colour HTTP/1.1\r\nHost: x\r\n\r\n")
            value: str = body_of(answer)["value"]
            return value

        assert colour() == "blue"
        setup.write_text(body(setup.parent, "other2.json"))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while colour() != "green":  # the reload runs asynchronously; poll, do not sleep
            assert time.monotonic() < deadline, "SIGHUP did not reload within 30 s"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
