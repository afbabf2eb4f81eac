"""hvac, requests and aiohttp exceptions become the agent's error types here, and nowhere else."""

from __future__ import annotations

import ssl

from secrets_agent.errors import BackendError, DeniedError, TransientError


class TokenRejected(BackendError):
    """Vault refused the token itself (expired or revoked): log in again."""


class CredentialSourceError(BackendError):
    """A local credential source (token / secret_id / JWT file) is unusable: a config problem."""


def translate(backend: str, exc: BaseException, operation: str) -> BackendError:
    """Map an upstream exception; messages are ours, never Vault's text (it can echo input)."""
    import aiohttp
    import hvac.exceptions as hx
    import requests

    from secrets_agent.backends.vault.kv import NotJson, TooLarge

    if isinstance(exc, BackendError):
        return exc
    if (aws := _aws(backend, exc, operation)) is not None:
        return aws
    if isinstance(exc, hx.Unauthorized):
        return TokenRejected(backend, f"Vault rejected the token ({operation})")
    if isinstance(exc, hx.Forbidden):
        return DeniedError(backend, f"Vault denied access ({operation})")
    if isinstance(exc, hx.RateLimitExceeded | hx.VaultDown | hx.InternalServerError):
        return TransientError(backend, f"Vault unavailable ({type(exc).__name__}, {operation})")
    if isinstance(exc, hx.BadGateway | hx.UnexpectedError):
        return TransientError(backend, f"Vault unavailable ({type(exc).__name__}, {operation})")
    # requests' errors (hvac's calls) and aiohttp's (reads on the loop, ``kv``) alike.
    if isinstance(
        exc, requests.exceptions.SSLError | aiohttp.ClientSSLError | ssl.SSLError
    ) or isinstance(exc.__cause__, ssl.SSLError):
        # (aiohttp words a refusal after the handshake, no client certificate, as an OSError)
        # Transient, as the other backends' TLS failures and this backend's failed logins: a
        # certificate rotated on Vault's side must not cost the cached values (stale-on-error).
        return TransientError(backend, f"TLS handshake with Vault failed ({operation})")
    if isinstance(exc, requests.exceptions.InvalidHeader) or (
        type(exc) is ValueError and "header" in str(exc)  # aiohttp's own check, on reads
    ):
        # A token (or a file holding one) with a line break or another control character.
        return CredentialSourceError(
            backend, f"a credential holds a character no HTTP header can carry ({operation})"
        )
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return TransientError(backend, f"Vault timed out ({operation})")
    if isinstance(
        exc,
        requests.exceptions.ConnectionError | aiohttp.ClientConnectionError | ConnectionError,
    ):
        return TransientError(backend, f"cannot connect to Vault ({operation})")
    if isinstance(exc, TooLarge):
        return BackendError(backend, f"Vault's answer was too large ({exc}, {operation})")
    if isinstance(exc, NotJson):
        return BackendError(backend, f"Vault's answer was not a JSON object ({exc}, {operation})")
    if isinstance(exc, hx.VaultError):
        return BackendError(backend, f"Vault error ({type(exc).__name__}, {operation})")
    return BackendError(backend, f"unexpected {type(exc).__name__} ({operation})")


def _aws(backend: str, exc: BaseException, operation: str) -> BackendError | None:
    """botocore's, from the aws_iam login's credentials (never a key or AWS's message text)."""
    import botocore.exceptions as bx

    if not isinstance(exc, bx.BotoCoreError | bx.ClientError):
        return None
    if isinstance(exc, bx.ProfileNotFound | bx.PartialCredentialsError | bx.ConfigParseError):
        return CredentialSourceError(
            backend, f"AWS credentials: {type(exc).__name__} ({operation})"
        )
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "unknown")
        return BackendError(backend, f"AWS STS refused AssumeRole ({code}, {operation})")
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return TransientError(backend, f"cannot reach AWS STS ({operation})")
    return BackendError(backend, f"AWS credentials failed ({type(exc).__name__}, {operation})")
