"""``type = "azure_key_vault"``: GetSecret named as Airflow's microsoft-azure provider does."""

from __future__ import annotations

import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from secrets_agent.backends.azure.credentials import (
    WatchedCredential,
    build_credential,
    read_client_secret,
    transport_kwargs,
)
from secrets_agent.backends.azure.errors import is_disabled, is_not_found, translate
from secrets_agent.backends.azure.options import AzureOptions
from secrets_agent.backends.base import Backend, BackendContext, Health, Versioned
from secrets_agent.backends.calls import ApiCalls
from secrets_agent.backends.feeds import Feed
from secrets_agent.errors import BackendError
from secrets_agent.kinds import Kind

log = logging.getLogger(__name__)

# Token requests and vault responses are logged by these at DEBUG/INFO; our handler must
# never see their request details, so they stay at WARNING whatever the agent's level.
SDK_LOGGERS = ("azure", "msal", "urllib3")


def vault_scope(vault_url: str) -> str:
    """The scope Key Vault's challenge names (``https://vault.azure.net/.default`` in Azure)."""
    host = urlsplit(vault_url).hostname or ""
    _, _, domain = host.partition(".")
    if domain.startswith(("vault.", "managedhsm.")):
        return f"https://{domain}/.default"
    return "https://vault.azure.net/.default"


class AzureKeyVaultBackend(Backend):
    type_name = "azure_key_vault"
    Options = AzureOptions
    options: AzureOptions
    manages_auth = True

    def __init__(
        self, name: str, options: AzureOptions, context: BackendContext | None = None
    ) -> None:
        super().__init__(name, options, context)
        self.calls = ApiCalls(name, self.context.metrics, translate, self._is_missing)
        self._client: Any = None
        self._credential: WatchedCredential | None = None
        self._error: BackendError | None = BackendError(name, "not started")

    def _is_missing(self, exc: BaseException) -> bool:
        if is_disabled(exc):
            log.warning("backend %r: a disabled Key Vault secret is treated as missing", self.name)
            return True
        return is_not_found(exc)

    async def start(self) -> None:
        """Build the credential and client, then get a first token; no token: not ready.
        An unreadable client_secret_file stops the start (``BackendError``), as a bad
        credentials file does for the AWS and GCP backends."""
        from azure.keyvault.secrets.aio import SecretClient

        for name in SDK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # azure-identity logs each failed token request at WARNING with Entra's multi-line
        # text; WatchedCredential reports it already, as one line with the AADSTS code.
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
        metrics = self.context.metrics
        metrics.authenticated.labels(self.name).set_function(
            lambda: float(self._credential is not None and self._credential.error is None)
        )
        o = self.options
        try:
            inner = build_credential(self.name, o)
        except (BackendError, ValueError) as exc:
            # azure-identity's ValueError: settings it refuses; its text is not ours to echo.
            self._error = (
                exc
                if isinstance(exc, BackendError)
                else BackendError(
                    self.name,
                    f"azure-identity refused the credential's settings ({type(exc).__name__})",
                )
            )
            metrics.auth_attempts.labels(self.name, "failure").inc()
            raise self._error from None
        self._credential = WatchedCredential(self.name, inner, metrics)
        kwargs = transport_kwargs(o) | {"verify_challenge_resource": o.verify_challenge_resource}
        if o.api_version:
            kwargs["api_version"] = o.api_version
        self._client = SecretClient(o.vault_url, self._credential, **kwargs)
        self._error = None
        # A failure is logged and shown by health(); the next lookup asks for a token again.
        # Asked as the SDK's challenge policy asks (continuous access evaluation on), so
        # azure-identity's cache serves that first request with this token: one grant, not two.
        with contextlib.suppress(BackendError):
            await self._credential.get_token_info(
                vault_scope(o.vault_url), options={"enable_cae": True}
            )

    async def check_local(self) -> None:
        if self.options.client_secret_file:
            read_client_secret(self.name, self.options)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._credential is not None:
            await self._credential.close()

    def credential(self, scope: str) -> WatchedCredential:
        """This backend's credential, for another service's scope (its change feed's queue)."""
        if self._credential is None:
            raise self._error or BackendError(self.name, "not started")
        return self._credential.sharing(scope)

    def health(self) -> Health:
        error = self._error or (self._credential.error if self._credential else None)
        return Health(ready=error is None, detail=str(error or "ok"))

    def supports(self, kind: Kind) -> bool:
        return self.options.supports(kind)

    async def fetch(self, kind: Kind, secret_id: str) -> str | None:
        found = await self.fetch_for_team(kind, secret_id, None)
        return None if found is None else found.value

    async def fetch_versioned(self, kind: Kind, secret_id: str) -> Versioned | None:
        return await self.fetch_for_team(kind, secret_id, None)

    async def fetch_for_team(
        self, kind: Kind, secret_id: str, team: str | None
    ) -> Versioned | None:
        """The team's name first (with ``team_layout``), then the global one."""
        name = self.options.secret_name(kind, secret_id)
        if name is None:
            return None  # no such secret can exist: spare the upstream call
        if team:
            team_name = self.options.team_secret_name(kind, secret_id, team)
            found = await self._get(team_name) if team_name else None
            if found is not None:
                return found
        return await self._get(name)

    def change_feed(self) -> Feed | None:
        if self.options.feed is None:
            return None
        from secrets_agent.backends.azure.feed import StorageQueueFeed

        return StorageQueueFeed(self, self.options.feed)

    async def revalidate(self, kind: Kind, secret_id: str, version: str) -> bool:
        return False  # a Key Vault GET costs what a version check would: fetch again

    async def _get(self, name: str) -> Versioned | None:
        if self._client is None:
            raise self._error or BackendError(self.name, "not started")
        answers: list[int] = []  # one per request azure-core sent: its retries are transactions

        def answered(response: Any) -> None:
            if response.http_response.status_code != 401:  # the challenge: no token, no bill
                answers.append(1)

        try:
            secret = await self.calls(
                "GetSecret", lambda: self._client.get_secret(name, raw_response_hook=answered)
            )
        finally:
            self.calls.retried("GetSecret", len(answers) - 1)
        if secret is None or secret.value is None:
            return None
        return Versioned(secret.value, secret.properties.version)
