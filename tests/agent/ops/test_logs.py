"""Log setup: SDK loggers stay at WARNING at any agent level, at start and after a reload."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from secrets_agent.ops import logs


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_debug_level_keeps_sdk_loggers_at_warning(
    root_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure_logging("info", "text")
    logs.set_level("debug")  # what a SIGHUP reload to level = "debug" does
    for name in ("botocore.parsers", "aiobotocore.parsers", "hvac.adapters", "urllib3", "grpc"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
    # A logger nobody pinned still cannot write below WARNING through the agent's handler.
    logging.getLogger("some_sdk.wire").setLevel(logging.DEBUG)
    logging.getLogger("some_sdk.wire").debug("Response body: s3cret")
    logging.getLogger("secrets_agent.test").debug("ours at debug")
    logging.getLogger("some_sdk.wire").warning("a warning gets through")
    text = stream.getvalue()
    assert "s3cret" not in text
    assert "ours at debug" in text and "a warning gets through" in text
