"""azure-core / azure-identity exceptions become the agent's error types here only.

The choices, beside the provider's (microsoft-azure), are in docs/backends/azure.md's errors
table: a 404 is a miss (as there); a disabled secret is a miss too (the provider raises; the
agent treats it as the GCP backend treats a disabled version: nothing to serve); any other 403
is a denial that stops the chain, team name or not (as the provider raises); a throttled or
failing service is transient once azure-core's retries are spent, so a cached value is served
stale (the provider raises).
"""

from __future__ import annotations

import re
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


def storage_code(exc: BaseException) -> str | None:
    """Azure Storage's error code (``x-ms-error-code``, e.g. ``AuthorizationPermissionMismatch``):
    an identifier, safe to show; anything else it might hold is not shown."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    return code if isinstance(code, str) and re.fullmatch(r"[A-Za-z]{1,64}", code) else None


def translate(
    backend: str,
    exc: BaseException,
    operation: str,
    service: str = "Key Vault",
    code: str | None = None,
) -> BackendError:
    """Map an upstream exception; messages are ours, never Azure's text. ``code``: the
    service's error code (Storage's), added to the reasons in parentheses."""
    from azure.core import exceptions as ax

    if isinstance(exc, BackendError):
        return exc

    def says(error: type[BackendError], text: str, *why: str) -> BackendError:
        reasons = ", ".join((*why, code) if code else why)
        return error(backend, f"{text} ({reasons})" if reasons else text)

    status = getattr(exc, "status_code", None)
    if isinstance(exc, ax.ClientAuthenticationError) or status == 401:
        return says(BackendError, f"{service} rejected the credentials for {operation}")
    if status == 403:
        return says(DeniedError, f"{service} denied {operation}")
    if status == 429 or (isinstance(status, int) and status >= 500):
        return says(TransientError, f"{service} {operation} failed transiently", f"HTTP {status}")
    if isinstance(exc, ax.ServiceRequestError | ax.ServiceResponseError | TimeoutError | OSError):
        kind = type(exc).__name__
        return says(TransientError, f"{service} {operation} failed transiently", kind)
    if isinstance(exc, ValueError) and "challenge" in str(exc).lower():
        # The SDK refused to send a token: the vault's 401 challenge named a foreign resource.
        text = f"refused {service}'s challenge for {operation}"
        return says(BackendError, text, "verify_challenge_resource")
    if isinstance(exc, ax.HttpResponseError):
        return says(BackendError, f"{service} {operation} failed", f"HTTP {status}")
    return says(BackendError, f"unexpected {type(exc).__name__} during {operation}")


def translate_token_error(backend: str, exc: BaseException, scope: str = "") -> BackendError:
    """A failed token request: no credentials is permanent, the rest may pass.

    Entra's own text is not repeated (it is long and multi-line); its ``AADSTS`` code is, as
    it is what Microsoft's documentation is searched by."""
    from azure.identity import CredentialUnavailableError

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, CredentialUnavailableError):
        return BackendError(backend, "no Azure credentials (set a service principal or use ADC)")
    found = re.search(r"\bAADSTS\d{1,9}\b", str(exc))
    why = type(exc).__name__ + (f", {found.group()}" if found else "")
    where = f" for {scope}" if scope else ""
    return TransientError(backend, f"cannot get an Azure token{where} ({why})")
