"""azure-core / azure-identity exceptions become the agent's error types here only.

The choices, beside the provider's (microsoft-azure), are in docs/backends/azure.md's errors
table: a 404 is a miss (as there); a disabled secret is a miss too (the provider raises; the
agent treats it as the GCP backend treats a disabled version: nothing to serve); any other 403
is a denial that stops the chain, team name or not (as the provider raises); a throttled or
failing service is transient once azure-core's retries are spent, so a cached value is served
stale (the provider raises).
"""

from __future__ import annotations

from typing import Any

from secrets_agent.errors import BackendError, DeniedError, TransientError


def _codes(exc: Any) -> set[str]:
    error = getattr(exc, "error", None)
    inner = getattr(error, "innererror", None) or {}
    codes = {getattr(error, "code", None), inner.get("code") if isinstance(inner, dict) else None}
    return {c for c in codes if isinstance(c, str)}


def is_not_found(exc: BaseException) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError)


def is_disabled(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError

    return (
        isinstance(exc, HttpResponseError)
        and exc.status_code == 403
        and "SecretDisabled" in _codes(exc)
    )


def translate(backend: str, exc: BaseException, operation: str) -> BackendError:
    """Map an upstream exception; messages are ours, never Azure's text."""
    from azure.core import exceptions as ax

    if isinstance(exc, BackendError):
        return exc
    status = getattr(exc, "status_code", None)
    if isinstance(exc, ax.ClientAuthenticationError) or status == 401:
        return BackendError(backend, f"Key Vault rejected the credentials for {operation}")
    if status == 403:
        return DeniedError(backend, f"Key Vault denied {operation}")
    if status == 429 or (isinstance(status, int) and status >= 500):
        return TransientError(backend, f"Key Vault {operation} failed transiently (HTTP {status})")
    if isinstance(exc, ax.ServiceRequestError | ax.ServiceResponseError | TimeoutError | OSError):
        return TransientError(
            backend, f"Key Vault {operation} failed transiently ({type(exc).__name__})"
        )
    if isinstance(exc, ValueError) and "challenge" in str(exc).lower():
        # The SDK refused to send a token: the vault's 401 challenge named a foreign resource.
        return BackendError(
            backend, f"refused Key Vault's challenge for {operation} (verify_challenge_resource)"
        )
    if isinstance(exc, ax.HttpResponseError):
        return BackendError(backend, f"Key Vault {operation} failed (HTTP {status})")
    return BackendError(backend, f"unexpected {type(exc).__name__} during {operation}")


def translate_token_error(backend: str, exc: BaseException) -> BackendError:
    """A failed token request: no credentials is permanent, the rest may pass."""
    from azure.identity import CredentialUnavailableError

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, CredentialUnavailableError):
        return BackendError(backend, "no Azure credentials (set a service principal or use ADC)")
    return TransientError(backend, f"cannot get an Azure token ({type(exc).__name__})")
