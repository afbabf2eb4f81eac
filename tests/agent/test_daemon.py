"""The daemon's lifecycle: a shutdown during a reload leaves nothing started, open or pending."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path

import pytest

from secrets_agent import daemon
from secrets_agent.backends import registry
from secrets_agent.config.loader import load_config
from secrets_agent.config.schema import AgentConfig
from support.helpers import (
    DEMO_BACKEND,
    FakeClock,
    Script,
    ScriptedBackend,
    SlowToPrefetch,
    agent_config,
    running_agent,
    write_config,
)


@pytest.fixture
def slow_prefetch(monkeypatch: pytest.MonkeyPatch) -> type[SlowToPrefetch]:
    return SlowToPrefetch.installed(monkeypatch)


SLOW = '[[backends]]\nname = "slow"\ntype = "scripted"\n'


def listening_on(directory: Path, backends: str) -> Path:
    agent_config(directory)  # the demo files
    return write_config(
        directory, f'[listener]\nsocket_path = "{directory}/agent.sock"\n' + backends
    )


async def _others() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_a_shutdown_during_a_reload_closes_what_the_reload_started(
    short_tmp: Path, slow_prefetch: type[SlowToPrefetch]
) -> None:
    path = listening_on(short_tmp, DEMO_BACKEND)
    with running_agent(load_config(path), FakeClock(), config_path=path) as running:
        agent = running.agent
        path.write_text(path.read_text() + SLOW)

        async def hup_then_stop() -> list[asyncio.Task[object]]:
            agent.request_reload()  # as SIGHUP does
            await slow_prefetch.prefetching.wait()  # the new backend is started, warming up
            await agent.shutdown()
            return await _others()

        pending = running.call(hup_then_stop())
        assert pending == []  # the reload did not outlive the shutdown
        assert slow_prefetch.closed == 1
        assert len(agent._pool) == 0


class SlowToClose(ScriptedBackend):
    """A backend whose close waits until the test lets it end."""

    closing = asyncio.Event()
    may_close = asyncio.Event()
    closed = 0

    async def close(self) -> None:
        SlowToClose.closing.set()
        await SlowToClose.may_close.wait()
        SlowToClose.closed += 1


def test_a_shutdown_while_a_reload_retires_the_old_backends_lets_them_close(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", SlowToClose)
    monkeypatch.setattr(SlowToClose, "scripts", {"slow": Script()})
    monkeypatch.setattr(SlowToClose, "closed", 0)
    path = listening_on(short_tmp, SLOW)
    with running_agent(load_config(path), FakeClock(), config_path=path) as running:
        agent = running.agent
        path.write_text(path.read_text().replace(SLOW, DEMO_BACKEND))

        async def hup_then_stop() -> list[asyncio.Task[object]]:
            SlowToClose.closing, SlowToClose.may_close = asyncio.Event(), asyncio.Event()
            agent.request_reload()
            await SlowToClose.closing.wait()  # swapped: the dropped backend is closing
            stopping = asyncio.create_task(agent.shutdown())
            await asyncio.sleep(0)  # the shutdown has cancelled the reload
            SlowToClose.may_close.set()
            await stopping
            return await _others()

        assert running.call(hup_then_stop()) == []
        assert SlowToClose.closed == 1  # its close was not cut short by the cancellation
        assert len(agent._pool) == 0


class NeverCloses(ScriptedBackend):
    """A backend whose client library never returns from its close."""

    async def close(self) -> None:
        await asyncio.Event().wait()


class Closes(ScriptedBackend):
    closed = 0

    async def close(self) -> None:
        Closes.closed += 1


def test_what_a_bounded_reload_left_open_is_closed_at_shutdown(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "never", NeverCloses)
    monkeypatch.setitem(registry.BACKEND_TYPES, "closes", Closes)
    monkeypatch.setattr(ScriptedBackend, "scripts", {"hung": Script(), "later": Script()})
    monkeypatch.setattr(Closes, "closed", 0)
    dropped = (
        '[[backends]]\nname = "hung"\ntype = "never"\n'
        '[[backends]]\nname = "later"\ntype = "closes"\n'
    )
    path = listening_on(short_tmp, dropped)
    path.write_text(
        path.read_text().replace("[listener]\n", "[listener]\nshutdown_timeout = 0.1\n")
    )
    with running_agent(load_config(path), FakeClock(), config_path=path) as running:
        agent = running.agent
        path.write_text(path.read_text().replace(dropped, DEMO_BACKEND))
        assert running.call(agent.reload()) is True  # "hung" kept it from closing "later"
        assert Closes.closed == 0 and len(agent._pool) == 2  # "later", and the file backend
        running.call(agent.shutdown())
        assert Closes.closed == 1
        assert len(agent._pool) == 0


def test_a_shutdown_ends_the_lookups_still_waiting_on_the_upstream(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.BACKEND_TYPES, "scripted", ScriptedBackend)
    monkeypatch.setattr(ScriptedBackend, "scripts", {})
    path = listening_on(short_tmp, '[[backends]]\nname = "hanging"\ntype = "scripted"\n')
    path.write_text(
        path.read_text().replace("[listener]\n", "[listener]\nshutdown_timeout = 0.1\n")
    )
    with running_agent(load_config(path), FakeClock(), config_path=path) as running:

        async def hanging() -> Script:
            script = ScriptedBackend.scripts["hanging"] = Script(gate=asyncio.Event())  # shut
            return script

        script = running.call(hanging())

        async def asked() -> None:
            await script.called.wait()
            script.called.clear()

        clients = []
        # The lean path (HTTP/1.1) and aiohttp's (HTTP/1.0); the first client goes away.
        for request in (b"GET /v1/variables/a HTTP/1.1", b"GET /v1/variables/b HTTP/1.0"):
            client = socket.socket(socket.AF_UNIX)
            client.connect(running.socket_path)
            client.sendall(request + b"\r\nHost: x\r\n\r\n")
            clients.append(client)
            running.call(asked())
        clients[0].close()

        async def stop() -> list[asyncio.Task[object]]:
            await running.agent.shutdown()
            return await _others()

        assert running.call(stop()) == []  # nothing left waiting on a closed backend
        clients[1].close()


def test_a_rejected_reload_is_one_log_line_naming_every_problem(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = listening_on(short_tmp, DEMO_BACKEND)
    with running_agent(load_config(path), FakeClock(), config_path=path) as running:
        path.write_text(path.read_text() + "[cache]\nmax_entries = -1\nbogus = 1\n")
        with caplog.at_level(logging.ERROR, logger="secrets_agent.daemon"):
            assert running.call(running.agent.reload()) is False
    (record,) = [r for r in caplog.records if r.name == "secrets_agent.daemon"]
    message = record.getMessage()
    assert "\n" not in message  # a text log (and the journal) keeps a record to one line
    assert "cache.max_entries: must be >= 1" in message and "cache.bogus: unknown key" in message


def test_a_reload_reads_its_config_off_the_event_loop(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the file and resolving ``[[access]]`` user and group names (NSS: LDAP, sssd)
    can block: a reload does both on a thread, so lookups are answered meanwhile."""
    path = listening_on(short_tmp, DEMO_BACKEND)
    read_on: list[threading.Thread] = []

    def spied(config_path: str | Path) -> AgentConfig:
        read_on.append(threading.current_thread())
        return load_config(config_path)

    async def loop_thread() -> threading.Thread:
        return threading.current_thread()

    with running_agent(load_config(path), FakeClock(), config_path=path) as running:
        monkeypatch.setattr(daemon, "load_config", spied)
        assert running.call(running.agent.reload()) is True
        on_loop = running.call(loop_thread())
    assert len(read_on) == 1 and read_on[0] is not on_loop
