"""google-api-core / google-auth exceptions become the agent's error types here only."""

from __future__ import annotations

from secrets_agent.errors import BackendError, DeniedError, TransientError


def translate(
    backend: str, exc: BaseException, operation: str, service: str = "Secret Manager"
) -> BackendError:
    """Map an upstream exception; messages are ours, never Google's text."""
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ax

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, gx.PermissionDenied):
        return DeniedError(backend, f"{service} denied {operation}")
    if isinstance(
        exc,
        gx.ServiceUnavailable
        | gx.DeadlineExceeded
        | gx.ResourceExhausted
        | gx.InternalServerError
        | gx.Aborted
        | gx.RetryError,
    ):
        return TransientError(
            backend, f"{service} {operation} failed transiently ({type(exc).__name__})"
        )
    if isinstance(exc, ax.TransportError | ax.RefreshError):
        return TransientError(backend, f"cannot refresh Google credentials for {operation}")
    if isinstance(exc, gx.Unauthenticated):
        return BackendError(backend, f"{service} rejected the credentials for {operation}")
    if isinstance(exc, gx.GoogleAPICallError):
        return BackendError(backend, f"{service} {operation} failed ({type(exc).__name__})")
    if isinstance(exc, ax.DefaultCredentialsError):
        return BackendError(backend, "no Google credentials (set credentials_file or ADC)")
    if isinstance(exc, OSError | ValueError):  # an unreadable or malformed key file
        return BackendError(backend, f"cannot load the credentials file ({type(exc).__name__})")
    return BackendError(backend, f"unexpected {type(exc).__name__} during {operation}")
