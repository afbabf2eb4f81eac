"""``type = "vault"``: KV v1/v2 reads laid out as Airflow's VaultBackend expects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from secrets_agent.backends.base import Backend, BackendContext, Health, Versioned
from secrets_agent.backends.calls import ApiCalls
from secrets_agent.backends.connections import ConnectionFormatError, connection_value
from secrets_agent.backends.feeds import Feed
from secrets_agent.backends.threads import Workers
from secrets_agent.backends.vault.auth import AuthMethod, Lease, auth_method, check_local_files
from secrets_agent.backends.vault.environment import ca_bundle, direct, inert
from secrets_agent.backends.vault.errors import TokenRejected, translate
from secrets_agent.backends.vault.kv import KvReader, tls_context
from secrets_agent.backends.vault.options import VaultOptions
from secrets_agent.backends.vault.session import VaultSession
from secrets_agent.errors import BackendError, DeniedError, TransientError
from secrets_agent.kinds import Kind

log = logging.getLogger(__name__)
T = TypeVar("T")


class VaultBackend(Backend):
    type_name = "vault"
    Options = VaultOptions
    options: VaultOptions
    manages_auth = True

    def __init__(
        self, name: str, options: VaultOptions, context: BackendContext | None = None
    ) -> None:
        super().__init__(name, options, context)
        self._auth: AuthMethod = auth_method(name, options)
        self._workers: Workers | None = None
        self._client: Any = None
        self._kv: KvReader | None = None  # reads on the loop (None: through hvac, see kv.py)
        self.session = VaultSession(name, self, options, self.context)
        self.calls = ApiCalls(name, self.context.metrics, translate)
        self._maintainer: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the client and try to log in; an unreachable Vault does not stop the agent."""
        import hvac

        o = self.options
        self._workers = Workers(o.max_workers, f"vault-{self.name}")
        self._client = hvac.Client(
            url=o.url,
            namespace=o.namespace or None,
            verify=o.ca_file or ca_bundle(o.verify),
            cert=(o.client_cert, o.client_key) if o.client_cert else None,
            timeout=o.timeout,
        )
        # The environment read once (see environment.py), not on every read.
        self._client.adapter.session.trust_env = not inert()
        await self.session.login(force=True, strict=True)  # a failure: the pool closes us
        self._kv = self._kv_reader() if direct(o.url) else None
        self._maintainer = asyncio.create_task(self.session.run_forever())

    async def check_local(self) -> None:
        check_local_files(self.name, self.options)

    async def close(self) -> None:
        self._closed = True  # lookups from here on: "backend closed", no login
        try:
            if self._kv is not None:  # first: its reads under way finish, token still valid
                await self._kv.close()
            if self._maintainer is not None:
                self._maintainer.cancel()
                # Waited for, not awaited: a cancellation of close itself (a bounded reload or
                # shutdown) must still reach the caller, not be taken for the maintainer's.
                await asyncio.wait({self._maintainer})
            if self.session.authenticated and self._auth.name != "token":
                # Tokens we minted are revoked on the way out; a given token is not ours.
                with contextlib.suppress(BackendError, TimeoutError):
                    async with asyncio.timeout(2):
                        await self._run("revoke-self", self._client.auth.token.revoke_self)
        finally:  # a cancelled close still lets go of threads, sockets and the token
            if self._maintainer is not None:
                self._maintainer.cancel()
            if self._kv is not None and not self._kv.closed:
                _finish_later(self._kv.close())
            self.session.close()
            if self._workers is not None:
                self._workers.close()
            if self._client is not None:
                self._client.adapter.close()

    def health(self) -> Health:
        if self.session.authenticated:
            return Health(ready=True)
        return Health(ready=False, detail=self.session.last_error)

    def supports(self, kind: Kind) -> bool:
        return self.options.serves(kind)

    # -- TokenOps, for the session -----------------------------------------------------------

    async def login(self) -> Lease:
        lease = await self._run("login", lambda: self._auth.login(self._client))
        self._client.token = lease.token
        return lease

    async def renew(self) -> Lease:
        response = await self._run("renew-self", self._client.auth.token.renew_self)
        auth = response["auth"]
        return Lease(self._client.token, float(auth["lease_duration"]), bool(auth["renewable"]))

    # -- reads -------------------------------------------------------------------------------

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        found = await self.fetch_for_team(kind, secret_id, None)
        return None if found is None else found.value

    async def fetch_for_team(
        self, kind: Kind, secret_id: str, team: str | None
    ) -> Versioned | None:
        """The team's path first (with ``team_layout``), then the global one."""
        scoped = self._location(kind, secret_id, team) if team else None
        data = await self._read(*scoped, kind) if scoped else None
        if data is None:
            location = self._location(kind, secret_id)
            if location is None:
                return None
            data = await self._read(*location, kind)
        value = None if data is None else self._value(kind, secret_id, data)
        return None if value is None else Versioned(value)

    async def _read(self, mount: str, path: str, kind: Kind) -> dict[str, Any] | None:
        if self._closed:  # a lookup that outlived a reload: no login for a retired backend
            raise TransientError(self.name, "backend closed (read)")
        return await self._with_token(lambda: self._read_once(mount, path))

    async def _with_token(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``call`` (a read, or the change feed's metadata poll) with a live token: logged in
        first if due, and once more if Vault refused the token the call was sent with."""
        await self.session.ensure_token()
        token = self._client.token  # the one this call is sent with
        try:
            return await call()
        except DeniedError:
            # Vault answers 403 both for a denied path and for a dead token: tell them apart.
            # A concurrent call may have logged in again meanwhile: then this one is retried
            # with the new token, not taken for a denial (lookup-self checked the new one).
            if self._client.token == token and await self._token_alive(token):
                raise
        except TokenRejected:
            pass
        if self._client.token == token:  # else another call already logged in again
            await self.session.token_rejected()
        return await call()

    async def _read_once(self, mount: str, path: str) -> dict[str, Any] | None:
        if self._kv is not None:
            return await self.calls("read", lambda: self._read_on_loop(mount, path))
        return await self.calls("read", lambda: self._in_pool(lambda: self._read_sync(mount, path)))

    async def _read_on_loop(self, mount: str, path: str) -> dict[str, Any] | None:
        """``_read_sync``'s read, made by ``kv.KvReader`` (same URL, answers and errors)."""
        import hvac.exceptions
        from hvac import utils

        assert self._kv is not None
        v1 = self.options.kv_engine_version == 1
        template = "/v1/{mount_point}/{path}" if v1 else "/v1/{mount_point}/data/{path}"
        try:
            answer = await self._kv.get(
                utils.format_url(template, mount_point=mount, path=path), self._client.token
            )
        except hvac.exceptions.InvalidPath:
            return None  # missing, or a deleted/destroyed latest version: a miss
        data: dict[str, Any] = answer["data"] if v1 else answer["data"]["data"]
        return data

    def _read_sync(self, mount: str, path: str) -> dict[str, Any] | None:
        import hvac.exceptions

        kv = self._client.secrets.kv
        try:
            if self.options.kv_engine_version == 1:
                data: dict[str, Any] = kv.v1.read_secret(path=path, mount_point=mount)["data"]
                return data
            response = kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            )
            data = response["data"]["data"]
            return data
        except hvac.exceptions.InvalidPath:
            return None  # missing, or a deleted/destroyed latest version: a miss

    def _kv_reader(self) -> KvReader | None:
        o = self.options
        tls = None
        if o.url.lower().startswith("https:"):
            cert = (o.client_cert, o.client_key) if o.client_cert else None
            try:
                tls = tls_context(o.ca_file or ca_bundle(o.verify), cert)
            except (OSError, ValueError):  # ssl.SSLError is an OSError
                return None  # hvac's reads (and its login) report the files as they always have
        return KvReader(o.url, o.namespace or None, tls, o.timeout, o.max_workers)

    async def _token_alive(self, token: str) -> bool:
        """Whether ``token`` still works; False too once another read replaced it."""
        try:
            await self._run("lookup-self", self._client.auth.token.lookup_self)
        except (DeniedError, TokenRejected):
            return False
        except TransientError:
            return True  # cannot tell; do not throw away a token that may be fine
        return bool(self._client.token == token)  # lookup-self may have used a newer one

    async def _run(self, operation: str, call: Callable[[], T]) -> T:
        """A blocking hvac call, in this backend's pool, counted and translated."""
        return await self.calls.required(operation, lambda: self._in_pool(call))

    async def _in_pool(self, call: Callable[[], T]) -> T:
        if self._workers is None:
            raise RuntimeError(f"backend {self.name!r} is not started")
        return await self._workers.run(call)

    def _location(
        self, kind: Kind, secret_id: str, team: str | None = None
    ) -> tuple[str, str] | None:
        return self.options.location(kind, secret_id, team)

    def _value(self, kind: Kind, secret_id: str, data: object) -> str | None:
        if not isinstance(data, dict):  # written through the raw API: a list, a string...
            shape = type(data).__name__
            raise BackendError(self.name, f"{kind} {secret_id!r} is not a key/value map ({shape})")
        if kind is Kind.CONNECTION:
            uri = data.get("conn_uri")
            if uri and isinstance(uri, str):
                return uri  # as the provider: a non-empty conn_uri wins over every field
            try:
                # An empty or null conn_uri is none (the provider's ``if uri``); one that is
                # not text is refused, never turned into the URI "None" or "5".
                return connection_value(data)
            except ConnectionFormatError as exc:
                raise BackendError(self.name, f"connection {secret_id!r} {exc}") from None
        value = data.get("value")
        if value is None:
            log.warning("backend %r: the %s %r has no 'value' key", self.name, kind, secret_id)
            return None
        return value if isinstance(value, str) else json.dumps(value)

    # -- change feed -------------------------------------------------------------------------

    def change_feed(self) -> Feed | None:
        if self.options.feed is None:
            return None
        from secrets_agent.backends.vault.feed import VaultPollFeed

        return VaultPollFeed(self, self.options.feed)

    def location(
        self, kind: Kind, secret_id: str, team: str | None = None
    ) -> tuple[str, str] | None:
        """(mount, path) a lookup of ``secret_id`` reads (for the feed's reverse naming)."""
        return self._location(kind, secret_id, team)

    async def detailed_metadata(self, mount: str, path: str) -> dict[str, Any]:
        """Every key under ``path`` with its KV v2 metadata, in one call (OpenBao >= 2.2)."""
        url = f"/v1/{mount}/detailed-metadata/{path}".rstrip("/")
        answer = await self._metadata_call("detailed-metadata", url, {"scan": "true"})
        if answer is None:
            # OpenBao answers an empty path with no keys; a 404 is a server without the call.
            raise BackendError(
                self.name,
                "no detailed-metadata on this server (OpenBao >= 2.2 has it; on Vault, "
                'use the feed\'s method = "metadata")',
            )
        info = (answer or {}).get("data", {}).get("key_info") or {}
        return {k: v for k, v in info.items() if isinstance(v, dict) and not k.endswith("/")}

    async def metadata(self, mount: str, path: str) -> dict[str, Any] | None:
        """One key's KV v2 metadata; None when it has none (deleted for good, or never was)."""
        answer = await self._metadata_call("metadata", f"/v1/{mount}/metadata/{path}", None)
        data = (answer or {}).get("data")
        return data if isinstance(data, dict) else None

    async def _metadata_call(
        self, operation: str, url: str, params: dict[str, str] | None
    ) -> dict[str, Any] | None:
        import hvac.exceptions

        def call() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = self._client.adapter.get(url, params=params)
                return answer
            except hvac.exceptions.InvalidPath:
                return None

        if self._closed:  # a feed that outlived a reload: no login for a retired backend
            raise TransientError(self.name, f"backend closed ({operation})")
        return await self._with_token(lambda: self.calls(operation, lambda: self._in_pool(call)))


_FINISHING: set[asyncio.Task[None]] = set()  # closes left to run after a cancelled close


def _finish_later(closing: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(closing)
    _FINISHING.add(task)
    task.add_done_callback(_FINISHING.discard)
