"""botocore exceptions become the agent's error types here, and nowhere else."""

from __future__ import annotations

from secrets_agent.errors import BackendError, DeniedError, TransientError

# Misses (negatively cached), as the provider reads them: InvalidRequestException is what
# Secrets Manager answers for a secret pending deletion, InvalidParameterException for a name
# it cannot hold.
NOT_FOUND = frozenset(
    {
        "ResourceNotFoundException",
        "ParameterNotFound",
        "ParameterVersionNotFound",
        "InvalidRequestException",
        "InvalidParameterException",
    }
)
# The provider reads DecryptionFailure (KMS refused the key) as a miss; for the agent it is a
# denial, so Airflow does not silently fall through to another backend's value.
_DENIED = frozenset(
    {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "DecryptionFailure"}
)
_TRANSIENT = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalServiceError",
        "InternalServiceErrorException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        # Credentials that just expired or are not yet recognised: a refresh usually fixes them.
        "ExpiredTokenException",
        "ExpiredToken",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "IDPCommunicationError",
    }
)


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def translate(backend: str, exc: BaseException, operation: str) -> BackendError:
    """Map an upstream exception; messages are ours, never AWS's text (it can echo input)."""
    import botocore.exceptions as bx

    if isinstance(exc, BackendError):
        return exc
    code = error_code(exc)
    if code in _DENIED:
        return DeniedError(backend, f"AWS denied {operation} ({code})")
    if code in _TRANSIENT:
        return TransientError(backend, f"AWS {operation} failed transiently ({code})")
    if isinstance(exc, bx.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if isinstance(status, int) and status >= 500:
            return TransientError(backend, f"AWS {operation} failed with HTTP {status}")
        return BackendError(backend, f"AWS {operation} failed ({code})")
    if isinstance(exc, bx.ProfileNotFound):
        profile = exc.kwargs.get("profile")
        return BackendError(
            backend, f"AWS profile {profile!r} is in no credentials or config file ({operation})"
        )
    if isinstance(exc, bx.ConfigParseError):  # its path, never its contents
        path = exc.kwargs.get("path", "an AWS credentials or config file")
        return BackendError(backend, f"cannot parse {path} ({operation})")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return BackendError(backend, f"no usable AWS credentials for {operation}")
    if isinstance(exc, bx.HTTPClientError | bx.ConnectionError):
        return TransientError(backend, f"cannot reach AWS for {operation} ({type(exc).__name__})")
    if isinstance(exc, TimeoutError):
        return TransientError(backend, f"AWS {operation} timed out")
    return BackendError(backend, f"unexpected {type(exc).__name__} during {operation}")
