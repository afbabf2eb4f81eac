"""The credential the vault client uses, built from options and watched for readiness."""

from __future__ import annotations

import logging
from typing import Any

from secrets_agent.backends.azure.errors import translate_token_error
from secrets_agent.backends.azure.options import AzureOptions
from secrets_agent.backends.files import read_local, stamp
from secrets_agent.errors import BackendError
from secrets_agent.ops.logs import RateLimited
from secrets_agent.ops.metrics import Metrics

log = logging.getLogger(__name__)


def transport_kwargs(options: AzureOptions) -> dict[str, Any]:
    """What both pipelines (vault and token endpoint) share: TLS roots, timeouts, retries."""
    kwargs: dict[str, Any] = {
        "connection_timeout": options.connect_timeout,
        "read_timeout": options.timeout,
        "retry_total": options.retries,
        "retry_backoff_factor": options.backoff_initial,
        "retry_backoff_max": options.backoff_max,
        # HTTP logging stays off whatever the log level: bodies carry secret values.
        "logging_enable": False,
    }
    if options.ca_file:
        kwargs["connection_verify"] = options.ca_file
    return kwargs


def read_client_secret(backend: str, options: AzureOptions) -> str:
    """The service principal's secret, or ``BackendError`` naming the file (never its text):
    an unusable one stops the start, as the AWS and GCP backends' credential files do."""
    data = read_local(backend, options.client_secret_file, "client_secret_file")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        secret = None
    if not secret:
        path = options.client_secret_file
        raise BackendError(backend, f"the client_secret_file {path} is empty or not UTF-8 text")
    return secret


def build_credential(backend: str, options: AzureOptions) -> Any:
    """A service principal when configured, else DefaultAzureCredential, as the provider does."""
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    kwargs = transport_kwargs(options)
    if options.authority_host:
        kwargs["authority"] = options.authority_host
    if options.disable_instance_discovery:
        kwargs["disable_instance_discovery"] = True
    if options.client_secret_file:

        def principal() -> Any:
            secret = read_client_secret(backend, options)
            return ClientSecretCredential(options.tenant_id, options.client_id, secret, **kwargs)

        return RotatingSecret(backend, options.client_secret_file, principal)
    if options.managed_identity_client_id:
        kwargs["managed_identity_client_id"] = options.managed_identity_client_id
    if options.workload_identity_tenant_id:
        kwargs["workload_identity_tenant_id"] = options.workload_identity_tenant_id
    return DefaultAzureCredential(**kwargs)


class RotatingSecret:
    """The service principal's credential, built again when its ``client_secret_file``
    changes (a rotated secret: the old one soon stops working), checked at each token
    request (about one an hour: a stat each)."""

    def __init__(self, backend: str, path: str, build: Any) -> None:
        self._backend, self._path, self._build = backend, path, build
        self._stamp = stamp(path)  # before reading it: a change from here on is seen
        self._inner = build()
        self._retired: Any = None  # the previous one, closed at the next change or close

    async def _current(self) -> Any:
        now = stamp(self._path)
        if now != self._stamp:
            self._stamp = now  # one attempt (and one log line) per change
            try:
                fresh = self._build()
            except (BackendError, ValueError) as exc:  # ValueError: azure-identity's refusal
                why = exc if isinstance(exc, BackendError) else type(exc).__name__
                log.warning(
                    "backend %r: the changed client_secret_file is unusable (%s); still using "
                    "the secret read before",
                    self._backend,
                    why,
                )
                return self._inner
            if self._retired is not None:
                await self._retired.close()
            self._retired, self._inner = self._inner, fresh
            log.info("backend %r: the client_secret_file changed: read it again", self._backend)
        return self._inner

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return await (await self._current()).get_token(*scopes, **kwargs)

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return await (await self._current()).get_token_info(*scopes, options=options)

    async def close(self) -> None:
        if self._retired is not None:
            await self._retired.close()
        await self._inner.close()


class WatchedCredential:
    """Delegates to the real credential; counts token requests and remembers the last failure."""

    def __init__(
        self, backend: str, inner: Any, metrics: Metrics, scope: str = "", *, owner: bool = True
    ) -> None:
        self.backend, self._inner, self._metrics = backend, inner, metrics
        self._scope, self._owner = scope, owner
        self.error: BackendError | None = None
        # Each lookup without a token asks for one: an Entra outage would be a line a lookup.
        self._failures = RateLimited(log)

    def sharing(self, scope: str) -> WatchedCredential:
        """The same credential for another service's scope (the feed's Storage queue): one
        token cache, one CA, one set of options. Its failures are its user's to report (the
        feed's health and throttled log), so they leave this one's health and log alone."""
        return WatchedCredential(self.backend, self._inner, self._metrics, scope, owner=False)

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return await self._watch(self._inner.get_token(*scopes, **kwargs))

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        if hasattr(self._inner, "get_token_info"):
            return await self._watch(self._inner.get_token_info(*scopes, options=options))
        return await self.get_token(*scopes, **(options or {}))

    async def _watch(self, request: Any) -> Any:
        try:
            token = await request
        except Exception as exc:  # the backend edge: azure-identity errors stop here
            self.error = translate_token_error(self.backend, exc, self._scope)
            self._metrics.auth_attempts.labels(self.backend, "failure").inc()
            if self._owner:
                self._failures.log("token", logging.WARNING, "%s", self.error)
            raise self.error from None
        if self.error is not None and self._owner:
            log.info("backend %r: got an Azure token again", self.backend)
        self.error = None
        self._metrics.auth_attempts.labels(self.backend, "success").inc()
        return token

    async def close(self) -> None:
        if self._owner:  # a sharer's credential is closed by the backend that made it
            await self._inner.close()

    async def __aenter__(self) -> WatchedCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
