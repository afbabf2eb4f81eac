"""``AgentSecretsBackend``: Airflow's secrets-backend interface on top of the agent's socket API."""

from __future__ import annotations

import os

from secrets_agent_client import DEFAULT_SOCKET_PATH
from secrets_agent_client.spin import SPIN_US, spin_seconds
from secrets_agent_client.transport import UnixTransport
from secrets_agent_client.wire import (
    AgentIdentityError,
    AgentUnreachable,
    Response,
    error_detail,
    lookup_path,
    seconds,
)

# Kept off the import path (typing, json and logging cost more to import than the rest of the
# client): Airflow has them loaded anyway, and a bare import stays a few milliseconds.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from secrets_agent_client.aio import AsyncUnixTransport

ON_UNAVAILABLE = ("fallthrough", "raise")

if TYPE_CHECKING:
    _Base = object
else:
    try:  # Airflow 3.x: the task SDK's base, used by workers
        from airflow.sdk.bases.secrets_backend import BaseSecretsBackend as _Base
    except ImportError:
        try:  # Airflow 2.x
            from airflow.secrets.base_secrets import BaseSecretsBackend as _Base
        except ImportError:  # no Airflow: the client still works on its own
            _Base = object


class AgentUnavailableError(ConnectionError):
    """The agent could not answer and the backend is configured not to fall through."""


def _airflow_denied() -> type[Exception] | None:
    """Airflow's authoritative-deny error, where this Airflow has it (task SDK >= 1.2.2)."""
    try:
        from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
    except ImportError:
        return None
    denied: type[Exception] = AirflowSecretsBackendAccessDenied
    return denied


def _access_denied(message: str) -> Exception:
    denied = _airflow_denied()
    return PermissionError(message) if denied is None else denied(message)


_STRICT: list[type[AgentUnavailableError]] = []  # built once, on the first strict failure


def _strict_unavailable() -> type[AgentUnavailableError]:
    """Airflow 3 swallows every backend error except an authoritative deny and falls through;
    a strict policy must stop the lookup, so its error is also that deny where it exists."""
    if not _STRICT:
        denied = _airflow_denied()
        _STRICT.append(
            AgentUnavailableError
            if denied is None
            else type("AgentUnavailableError", (AgentUnavailableError, denied), {})
        )
    return _STRICT[0]


_MAX_WARNED = 256  # distinct "unavailable" reasons remembered per process (each logged once)


class AgentSecretsBackend(_Base):
    """Ask the local agent; a 404 returns None so Airflow falls through to env vars / metastore.

    Every lookup has a coroutine twin (``aget_connection``, ``aget_variable``, ...) that Airflow's
    task SDK awaits in async tasks and the triggerer: same answers and errors, over asyncio
    connections kept per event loop, so a slow agent never blocks the loop.

    :param socket_path: the agent's socket (default ``$SECRETS_AGENT_SOCKET`` or the system path)
    :param timeout: seconds to wait for the agent on connect and per request (> 0, at most a
        day; anything else is refused here, not at the first lookup)
    :param on_unavailable: ``fallthrough`` (log once, return None) or ``raise`` when the agent
        is down or cannot answer a connection or variable lookup (a config option always
        raises: Airflow would take the option's default)
    :param expected_agent_uid: when set, the process serving the socket must run as this uid
        (checked with SO_PEERCRED on each new connection); anyone else is refused with an
        access-denied error, never fallen through
    :param spin_us: microseconds a lookup polls its socket for the answer before it sleeps
        (yielding its CPU between polls; default 100, 0: always sleep). A cached answer from an
        agent on another CPU comes within it and skips the wake-up: about half the latency,
        less agent CPU, no more worker CPU. A connection whose last answer took longer (a miss)
        sleeps at once until an answer comes in time again.
    """

    _warned: ClassVar[set[str]] = (
        set()
    )  # per process: an unreachable agent is logged once, not per lookup

    def __init__(
        self,
        socket_path: str | None = None,
        timeout: float | str = 2.0,
        on_unavailable: str = "fallthrough",
        expected_agent_uid: int | str | None = None,
        spin_us: float | str = SPIN_US,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"AgentSecretsBackend: unknown options {', '.join(sorted(kwargs))}")
        super().__init__()
        if on_unavailable not in ON_UNAVAILABLE:
            raise ValueError(f"on_unavailable must be one of {', '.join(ON_UNAVAILABLE)}")
        path = socket_path or os.environ.get("SECRETS_AGENT_SOCKET") or DEFAULT_SOCKET_PATH
        if "\0" in path:
            # The kernel would read a path up to its NUL, or one starting with it as an abstract
            # name: neither is the agent's socket file. Refused here, not at the first lookup.
            raise ValueError(f"socket_path must be a file's path, without NUL bytes: {path!r}")
        # Airflow's per-kwarg environment form passes every value as a string.
        uid = None if expected_agent_uid in (None, "") else int(expected_agent_uid)
        self._transport = UnixTransport(
            path, seconds(timeout), expected_uid=uid, spin=spin_seconds(spin_us)
        )
        self._async: AsyncUnixTransport | None = None  # built (and asyncio imported) when awaited
        self.on_unavailable = on_unavailable

    @property
    def socket_path(self) -> str:
        return self._transport.socket_path

    def close(self) -> None:
        """Close the kept-alive connections (new ones open on the next lookup)."""
        self._transport.close()
        if self._async is not None:
            self._async.close()

    async def aclose(self) -> None:
        """Close the idle connections kept for the running event loop."""
        if self._async is not None:
            await self._async.aclose()

    # ``refresh=True`` asks the agent to read the upstream now (the value is known to be
    # outdated); the agent coalesces such requests and rate-limits them per key.
    def get_conn_value(
        self, conn_id: str, team_name: str | None = None, *, refresh: bool = False
    ) -> str | None:
        return self._lookup("connections", conn_id, team_name, refresh)

    def get_variable(
        self, key: str, team_name: str | None = None, *, refresh: bool = False
    ) -> str | None:
        return self._lookup("variables", key, team_name, refresh)

    def get_config(self, key: str, *, refresh: bool = False) -> str | None:
        return self._lookup("config", key, None, refresh)

    # The task SDK awaits these where a backend has them (Airflow 3.3: connections; 3.4:
    # variables), instead of running the blocking lookup on a thread.
    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """The Connection, built by Airflow's own ``deserialize_connection``, or None."""
        value = await self.aget_conn_value(conn_id, team_name)
        if not value:
            return None
        deserialize = getattr(self, "deserialize_connection", None)
        if deserialize is None:
            raise TypeError("aget_connection needs Airflow; use aget_conn_value without it")
        return deserialize(conn_id=conn_id, value=value)

    async def aget_conn_value(
        self, conn_id: str, team_name: str | None = None, *, refresh: bool = False
    ) -> str | None:
        return await self._alookup("connections", conn_id, team_name, refresh)

    async def aget_variable(
        self, key: str, team_name: str | None = None, *, refresh: bool = False
    ) -> str | None:
        return await self._alookup("variables", key, team_name, refresh)

    async def aget_config(self, key: str, *, refresh: bool = False) -> str | None:
        return await self._alookup("config", key, None, refresh)

    def _lookup(
        self, segment: str, secret_id: str, team: str | None = None, refresh: bool = False
    ) -> str | None:
        path = lookup_path(segment, secret_id, team, refresh)
        if path is None:
            return None  # as for the agent's 400: an id no backend can hold
        try:
            response = self._transport.request("GET", path)
        except (AgentUnreachable, AgentIdentityError) as exc:
            self._failed(segment, exc)
            return None
        return self._answer(segment, response)

    async def _alookup(
        self, segment: str, secret_id: str, team: str | None, refresh: bool
    ) -> str | None:
        transport = self._async
        if transport is None:
            from secrets_agent_client.aio import AsyncUnixTransport

            sync = self._transport
            transport = self._async = AsyncUnixTransport(
                sync.socket_path, sync.timeout, expected_uid=sync.expected_uid, spin=sync.spin
            )
        path = lookup_path(segment, secret_id, team, refresh)
        if path is None:
            return None
        try:
            response = await transport.request("GET", path)
        except (AgentUnreachable, AgentIdentityError) as exc:
            self._failed(segment, exc)
            return None
        return self._answer(segment, response)

    def _failed(self, segment: str, exc: AgentUnreachable | AgentIdentityError) -> None:
        if isinstance(exc, AgentIdentityError):
            raise _access_denied(f"secrets agent refused: {exc}") from None
        self._unavailable(segment, str(exc))

    def _answer(self, segment: str, response: Response) -> str | None:
        """What an agent's answer means to Airflow, for both the blocking and async lookups."""
        if response.status == 200:
            import json

            value = json.loads(response.body)["value"]
            return str(value)
        if response.status == 404:
            return None
        if response.status == 400:
            return None  # an id no backend can hold: let Airflow try its other sources
        detail = error_detail(response)
        if response.status == 403:
            raise _access_denied(f"secrets agent denied {segment} lookup: {detail}")
        self._unavailable(segment, f"agent answered {response.status}: {detail}")
        return None

    def _unavailable(self, segment: str, reason: str) -> None:
        if segment == "config":
            # Airflow asks for config only for ``*_secret`` options, and after the backend has
            # nothing but the option's default (sql_alchemy_conn: a new SQLite file). The
            # providers' errors stop it there ("Cannot retrieve config from alternative
            # secrets backend"), so this one does too, whatever the policy.
            raise _strict_unavailable()(
                f"secrets agent unavailable for a config option (never falls through to the "
                f"option's default): {reason}"
            )
        if self.on_unavailable == "raise":
            raise _strict_unavailable()(
                f"secrets agent unavailable (on_unavailable=raise): {reason}"
            )
        if reason not in self._warned:
            import logging

            if len(self._warned) >= _MAX_WARNED:  # reasons can name ids: bounded, not a leak
                self._warned.clear()
            self._warned.add(reason)
            logging.getLogger(__name__).warning(
                "secrets agent unavailable, falling through to other sources: %s", reason
            )


def _forget_warned() -> None:
    AgentSecretsBackend._warned.clear()


if hasattr(os, "register_at_fork"):
    # A forked child (a worker's task) writes a log of its own: why its lookups fall through
    # belongs there too, though the parent said so already.
    os.register_at_fork(after_in_child=_forget_warned)
