"""A reload that changes the encryption keys (a key file rewritten in place) takes effect: the
node cache is re-sealed under the new key, the snapshot rewritten, the shared tier rebuilt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from secrets_agent.lookup.snapshot import MAGIC
from support.helpers import FakeClock, RunningAgent, agent_config, raw_request, running_agent
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def get(agent: RunningAgent, path: str) -> bytes:
    return raw_request(agent.socket_path, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_a_rewritten_key_file_reseals_everything_on_reload(
    store: RedisServer, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    key_file = short_tmp / "fernet.key"
    key_file.write_bytes(old_key)
    snapshot = short_tmp / "cache.snapshot"
    extra = f"""
        [cache]
        snapshot_file = "{snapshot}"
        [encryption]
        key_file = "{key_file}"
        [shared_cache]
        url = "{store.url}"
    """
    config = agent_config(short_tmp, extra=extra)
    with running_agent(config, FakeClock(), config_path=short_tmp / "agent.toml") as agent:
        assert b"X-Cache: MISS" in get(agent, "/v1/variables/greeting")
        tier, cipher = agent.agent.service.shared, agent.agent.service.cache.cipher
        assert agent.call(agent.agent.save_snapshot())
        key_file.write_bytes(new_key)  # same path, new contents (e.g. the old key leaked)
        with caplog.at_level(logging.INFO, logger="secrets_agent"):
            assert agent.call(agent.agent.reload())
        assert "the encryption keys changed" in caplog.text
        assert agent.agent.service.cache.cipher is not cipher
        assert agent.agent.service.shared is not tier  # reconnected under the new keys
        assert b"X-Cache: HIT" in get(agent, "/v1/variables/greeting")  # re-sealed, kept
        labels = {"backend": "local", "kind": "variable", "result": "found"}
        assert agent.metric("secrets_agent_upstream_requests_total", **labels) == 1
        token = snapshot.read_bytes().removeprefix(MAGIC)
        assert Fernet(new_key).decrypt(token)  # rewritten under the new key ...
        with pytest.raises(InvalidToken):
            Fernet(old_key).decrypt(token)  # ... and no longer under the removed one
        tier = agent.agent.service.shared
        assert agent.call(agent.agent.reload())  # unchanged keys: nothing rebuilt
        assert agent.agent.service.shared is tier
