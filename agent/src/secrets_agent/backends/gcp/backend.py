"""``type = "gcp_secret_manager"``: AccessSecretVersion named as Airflow's google provider does."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from secrets_agent.backends.base import Backend, BackendContext, Health, Versioned
from secrets_agent.backends.calls import ApiCalls
from secrets_agent.backends.feeds import Feed
from secrets_agent.backends.files import stamp
from secrets_agent.backends.gcp.channel import SCOPES, secure_channel
from secrets_agent.backends.gcp.errors import translate
from secrets_agent.backends.gcp.options import GcpOptions
from secrets_agent.errors import BackendError
from secrets_agent.kinds import Kind

log = logging.getLogger(__name__)
# Credentials that could not be loaded (the metadata server not up yet at boot, a key file not
# yet written) are tried again by a lookup, at most this often.
LOAD_RETRY = 10.0


def _is_missing(exc: BaseException) -> bool:
    from google.api_core import exceptions as gx

    # FailedPrecondition: the version exists but is disabled or destroyed — nothing to serve.
    return isinstance(exc, gx.NotFound | gx.FailedPrecondition)


class GcpSecretManagerBackend(Backend):
    type_name = "gcp_secret_manager"
    Options = GcpOptions
    options: GcpOptions
    manages_auth = True

    def __init__(
        self, name: str, options: GcpOptions, context: BackendContext | None = None
    ) -> None:
        super().__init__(name, options, context)
        self.calls = ApiCalls(name, self.context.metrics, translate, _is_missing)
        self._client: Any = None
        self._project = ""
        # Secret Manager's answers name the project by number, as its change notifications
        # do: the feed tells our notifications from another project's by it.
        self.project_number = ""
        self._retry: Any = None
        self._error: BackendError | None = BackendError(name, "not started")
        self._stamp: Any = None  # the credentials file as read (``files.stamp``)
        self._reloading = asyncio.Lock()
        self._retired: Any = None  # the client before the key file changed
        self._load_at = 0.0  # when credentials that failed to load may be tried again

    async def start(self) -> None:
        """Load credentials (ADC or a file) and build one client; no credentials: not ready."""
        metrics = self.context.metrics
        metrics.authenticated.labels(self.name).set_function(
            lambda: float(self._error is None and self._client is not None)
        )
        await self._load()

    async def _load(self) -> bool:
        """Credentials and the client (True once made); on failure the backend is not ready,
        and a lookup ``LOAD_RETRY`` later tries again (``_loaded``)."""
        from google.api_core import exceptions as gx
        from google.api_core.retry import AsyncRetry, if_exception_type

        metrics = self.context.metrics
        try:
            self._stamp = self._key_stamp()  # before reading it: a change after is seen
            credentials, project = await asyncio.to_thread(self._credentials)
        except Exception as exc:  # the backend edge: google.auth errors stop here
            self._error = translate(self.name, exc, "loading credentials")
            self._load_at = self.context.clock() + LOAD_RETRY
            metrics.auth_attempts.labels(self.name, "failure").inc()
            log.warning("%s; trying again in %.0f s at the earliest", self._error, LOAD_RETRY)
            return False
        self._project = self.options.project_id or project or ""
        if not self._project:
            raise BackendError(
                self.name, "no project_id: set it, or use credentials that carry one"
            )
        self._client = self._make_client(credentials)
        # One per call, with the call's own ``on_error`` (``_access_once``).
        self._retry = functools.partial(
            AsyncRetry,
            predicate=if_exception_type(
                gx.ServiceUnavailable, gx.DeadlineExceeded, gx.ResourceExhausted
            ),
            initial=self.options.backoff_initial,
            maximum=self.options.backoff_max,
            multiplier=2.0,
            timeout=self.options.retry_deadline,
        )
        self._error = None
        metrics.auth_attempts.labels(self.name, "success").inc()
        return True

    async def check_local(self) -> None:
        """Load ``credentials_file`` as ``start`` would (ADC is left alone: it may ask the
        network, and a node's ADC is often only there at run time)."""
        if not self.options.credentials_file:
            return
        try:
            await asyncio.to_thread(self._credentials)
        except Exception as exc:  # the backend edge, as in start
            raise translate(self.name, exc, "loading credentials") from None

    def credentials(self) -> tuple[Any, str | None]:
        """Fresh credentials and their project, as ``start`` loads them (the feed's too)."""
        return self._credentials()

    def change_feed(self) -> Feed | None:
        if self.options.feed is None:
            return None
        from secrets_agent.backends.gcp.feed import PubSubFeed

        return PubSubFeed(self, self.options.feed)

    def _credentials(self) -> tuple[Any, str | None]:
        import google.auth
        from google.auth import impersonated_credentials

        if self.options.credentials_file:
            # A service-account key, as the provider's gcp_key_path; other credential types
            # (workload identity federation, ...) come through ADC.
            credentials = self._key_file()
            project = credentials.project_id
        else:
            credentials, project = google.auth.default(scopes=SCOPES)
        chain = self.options.impersonation_chain
        if chain:
            credentials = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                source_credentials=credentials,
                target_principal=chain[-1],
                delegates=list(chain[:-1]),
                target_scopes=SCOPES,
            )
        return credentials, project

    def _key_file(self) -> Any:
        """``credentials_file`` as service-account credentials; what is wrong with it, in our
        words (google-auth's may quote the file)."""
        from google.auth.exceptions import GoogleAuthError
        from google.oauth2 import service_account

        path = self.options.credentials_file
        try:
            return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                path, scopes=SCOPES
            )
        except OSError as exc:
            raise BackendError(
                self.name, f"cannot read the credentials file {path}: {exc.strerror}"
            ) from None
        except (ValueError, GoogleAuthError):
            raise BackendError(
                self.name, f"the credentials file {path} is not a service-account key (JSON)"
            ) from None

    def _make_client(self, credentials: Any) -> Any:
        from google.cloud.secretmanager_v1 import SecretManagerServiceAsyncClient
        from google.cloud.secretmanager_v1.services.secret_manager_service.transports import (
            SecretManagerServiceGrpcAsyncIOTransport as Transport,
        )

        o = self.options
        host = o.api_endpoint or "secretmanager.googleapis.com"
        channel = secure_channel(Transport, host, credentials, o.ca_file, o.backoff_max)
        transport = Transport(host=host, channel=channel)
        return SecretManagerServiceAsyncClient(transport=transport)

    async def close(self) -> None:
        if self._retired is not None:
            await self._retired.transport.close()
            self._retired = None
        if self._client is not None:
            await self._client.transport.close()
            self._client = None

    def _key_stamp(self) -> Any:
        path = self.options.credentials_file
        return stamp(path) if path else None

    async def _loaded(self) -> None:
        """Credentials that failed to load at start (or since) are tried again, then raise
        why they are still missing."""
        async with self._reloading:
            due = self._client is None and self.context.clock() >= self._load_at
            if due and await self._load():
                log.info("backend %r: credentials loaded", self.name)
        if self._client is None:
            raise self._error or BackendError(self.name, "not started")

    async def _reloaded(self) -> bool:
        """After a failed call: a ``credentials_file`` rewritten since it was read (a rotated
        key: the old one is soon deleted) is loaded again into a new client; True when the
        call is worth making again. google-auth reads the file once."""
        async with self._reloading:
            now = self._key_stamp()
            if self._client is None or now == self._stamp:
                return False
            self._stamp = now  # one attempt (and one log line) per change
            try:
                credentials, _ = await asyncio.to_thread(self._credentials)
            except BackendError as exc:
                log.warning("%s; still using the key read before", exc)
                return False
            if self._retired is not None:  # calls on it ended a change ago
                await self._retired.transport.close()
            # Calls still out on the old client finish on it; it closes at the next change.
            self._retired, self._client = self._client, self._make_client(credentials)
            log.info("backend %r: the credentials file changed: read it again", self.name)
            return True

    def health(self) -> Health:
        return Health(ready=self._error is None, detail=str(self._error or "ok"))

    def supports(self, kind: Kind) -> bool:
        return self.options.serves(kind)

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        found = await self.fetch_for_team(kind, secret_id, None)
        return None if found is None else found.value

    async def fetch_for_team(
        self, kind: Kind, secret_id: str, team: str | None
    ) -> Versioned | None:
        """The team's name first (with ``team_layout``), then the global one."""
        name = self.options.secret_name(kind, secret_id)
        if name is None:
            return None  # no such secret can exist: spare the upstream call
        team_name = self.options.team_secret_name(kind, secret_id, team) if team else None
        if team_name is not None:
            found = await self._access(kind, secret_id, team_name)
            if found is not None:
                return found
        return await self._access(kind, secret_id, name)

    async def _access(self, kind: Kind, secret_id: str, name: str) -> Versioned | None:
        if self._client is None:
            await self._loaded()
        path = f"projects/{self._project}/secrets/{name}/versions/{self.options.version}"
        try:
            response = await self._access_once(path)
        except BackendError:
            if not await self._reloaded():  # a stat, only after a failure
                raise
            response = await self._access_once(path)
        if response is None:
            return None
        number = str(response.name).split("/")[1:2]
        if number and number[0].isdigit():
            self.project_number = number[0]
        data: bytes = response.payload.data
        return self._text(kind, secret_id, data)

    async def _access_once(self, path: str) -> Any:
        from google.api_core.exceptions import RetryError

        failed: list[Exception] = []  # every attempt the retry policy saw fail (retryable)
        retry = None if self._retry is None else self._retry(on_error=failed.append)

        async def access() -> Any:
            try:
                return await self._client.access_secret_version(
                    name=path, retry=retry, timeout=self.options.timeout
                )
            except RetryError:
                # The deadline ended the retries: the last failed attempt is the call itself.
                if failed:
                    failed.pop()
                raise

        try:
            return await self.calls("AccessSecretVersion", access)
        finally:
            # Access operations Google saw (and bills) before the call's own answer.
            self.calls.retried("AccessSecretVersion", len(failed))

    def _text(self, kind: Kind, secret_id: str, data: bytes) -> Versioned | None:
        try:
            return Versioned(data.decode("utf-8"))
        except UnicodeDecodeError:
            log.warning("backend %r: the %s %r is not UTF-8 text", self.name, kind, secret_id)
            return None
