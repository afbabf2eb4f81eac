"""Log setup: SDK loggers stay at WARNING at any agent level, at start and after a reload."""

from __future__ import annotations

import io
import json
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


def test_rate_limited_logs_once_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limited = logs.RateLimited(logging.getLogger("secrets_agent.test"), 60.0, lambda: now[0])
    caplog.set_level(logging.WARNING)
    assert [limited.log("k", logging.WARNING, "bad from %s", "peer") for _ in range(5)] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert limited.log("other", logging.WARNING, "another key") is True
    now[0] = 61.0
    assert limited.log("k", logging.WARNING, "bad from %s", "peer") is True
    assert [r.getMessage() for r in caplog.records] == [
        "bad from peer",
        "another key",
        "bad from peer (4 more like it in the last 61 s not logged)",
    ]


def test_accept_failures_are_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from secrets_agent.server.connections import accept_error_handler

    passed: list[dict[str, object]] = []
    handler = accept_error_handler(passed.append)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(10):
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                },
            )
        handler(loop, {"message": "something else"})
    finally:
        loop.close()
    lines = [r for r in caplog.records if "accept() failed" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info
    assert "Too many open files" in lines[0].getMessage()
    assert passed == [{"message": "something else"}]


def test_an_accept_retry_after_the_listener_closed_is_not_a_traceback() -> None:
    import asyncio
    import socket

    from secrets_agent.server.connections import accept_error_handler

    passed: list[dict[str, object]] = []
    handler = accept_error_handler(passed.append)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(handler)
    try:
        closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        closed.close()
        # What asyncio schedules after EMFILE, firing after shutdown closed the listener.
        retry = loop.call_later(0, loop._start_serving, object, closed)  # type: ignore[attr-defined]
        retry._run()  # runs the callback; asyncio hands its failure to the handler
        other = loop.call_later(0, int, "x")  # any other failing callback still reaches it
        other._run()
    finally:
        loop.set_exception_handler(None)
        loop.close()
    assert [type(c.get("exception")) for c in passed] == [ValueError]
    assert getattr(passed[0]["handle"], "_callback", None) is int


def test_json_lines_keep_the_traceback_on_the_same_line(
    root_restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure_logging("info", "json")
    log = logging.getLogger("secrets_agent.test")
    try:
        raise RuntimeError("first line\nsecond line é")
    except RuntimeError:
        log.exception("reload failed unexpectedly")
    log.warning("two\nlines, ünïcode")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "reload failed unexpectedly"
    assert first["level"] == "error"
    # What the text format prints after the line, the JSON one keeps: the type, the message and
    # the frames, escaped into the same object (a bug of ours must not lose its traceback).
    assert first["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: first line\nsecond line é" in first["exception"]
    assert "test_json_lines_keep_the_traceback_on_the_same_line" in first["exception"]
    assert second["message"] == "two\nlines, ünïcode" and "exception" not in second
