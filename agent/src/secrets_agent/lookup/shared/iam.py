"""IAM auth tokens for the store: its password, made per connection.

ElastiCache and MemoryDB take a SigV4-presigned ``connect`` URL for the cache (without its
scheme), valid 15 minutes, with the IAM-enabled user's name; Memorystore takes a Google OAuth2
access token (an hour) alone. A connection authenticated with one stays authenticated (or is
closed by the service, and the client reconnects with a new token). redis-py asks the provider
at every new connection; a token is made again ``MARGIN`` before it expires, on a worker thread
(the credentials may read files or ask a metadata server or token endpoint), and connections
made meanwhile reuse it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

from secrets_agent.backends.aws_chain import NoCredentials, aws_keys
from secrets_agent.config.schema import StoreIamConfig

EXPIRES = 900  # seconds: the longest ElastiCache and MemoryDB accept
MARGIN = 300.0  # a token this close to its end is replaced: no connection presents a stale one
REFRESH = EXPIRES - MARGIN  # an AWS token's useful age
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
NO_CREDENTIALS_RETRY = 60.0  # seconds before Google credentials not found are looked for again


class IamTokens(CredentialProvider):
    """``(user, token)`` for redis-py (``(token,)`` for Memorystore, which has no user)."""

    def __init__(
        self, user: str, iam: StoreIamConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._user, self._iam, self._clock = user, iam, clock
        self._made: tuple[str, float] | None = None  # (token, replace after), replaced whole
        self._lock = asyncio.Lock()
        self._google: Any = None  # Memorystore: google-auth's credentials, kept to refresh
        self._missing: tuple[str, float] | None = None  # (why none, until when it is said)

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        """For a blocking client (the agent's is asynchronous: ``get_credentials_async``)."""
        return self._pair(self._fresh() or self._renew())

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        token = self._fresh()
        if token is None:
            async with self._lock:  # one token made for the connections that wait for it
                token = self._fresh()
                if token is None:
                    token = await asyncio.to_thread(self._renew)
        return self._pair(token)

    def _pair(self, token: str) -> tuple[str] | tuple[str, str]:
        return (self._user, token) if self._iam.aws else (token,)

    def _fresh(self) -> str | None:
        made = self._made
        return made[0] if made is not None and self._clock() < made[1] else None

    def _renew(self) -> str:
        # Kept by the thread itself: a connection that stopped waiting (the store call's
        # timeout) still leaves the token for the next one.
        token, lifetime = self.token()
        self._made = (token, self._clock() + lifetime - MARGIN)
        return token

    def token(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds (blocking); ``AuthenticationError``, a
        store error, when none can be made."""
        return self._aws_token() if self._iam.aws else self._google_token()

    def _aws_token(self) -> tuple[str, float]:
        from botocore.auth import SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        from botocore.exceptions import BotoCoreError, ClientError

        iam = self._iam
        try:
            keys = aws_keys(iam)
        except NoCredentials as exc:
            raise AuthenticationError(f"shared_cache.iam: {exc}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise AuthenticationError(
                f"shared_cache.iam: AWS STS refused AssumeRole ({code})"
            ) from None
        except BotoCoreError as exc:
            reason = type(exc).__name__
            raise AuthenticationError(f"shared_cache.iam: no AWS credentials ({reason})") from None
        query = {"Action": "connect", "User": self._user}
        if iam.serverless:
            query["ResourceType"] = "ServerlessCache"
        request = AWSRequest(method="GET", url=f"https://{iam.cache_name}/?{urlencode(query)}")
        credentials = Credentials(keys.access_key, keys.secret_key, keys.session_token)
        SigV4QueryAuth(credentials, iam.service, keys.region, expires=EXPIRES).add_auth(request)
        url: str = request.prepare().url
        return url.removeprefix("https://"), float(EXPIRES)

    def _google_token(self) -> tuple[str, float]:
        from google.auth import exceptions
        from google.auth.transport.requests import Request

        credentials = self._google_credentials()
        try:
            credentials.refresh(Request())
        except exceptions.GoogleAuthError as exc:  # the token endpoint refused, or is down
            reason = type(exc).__name__
            raise AuthenticationError(f"shared_cache.iam: no Google token ({reason})") from None
        expiry = credentials.expiry  # naive UTC, google-auth's convention
        left = 3600.0 if expiry is None else expiry.timestamp() - _utc_naive_now()
        return str(credentials.token), max(left, MARGIN + 1.0)

    def _google_credentials(self) -> Any:
        """Found once and kept (they refresh themselves); a failure to find them is remembered
        for ``NO_CREDENTIALS_RETRY``: ADC probes the metadata server, slowly and with warnings."""
        import google.auth
        from google.auth import exceptions
        from google.oauth2 import service_account

        if self._google is not None:
            return self._google
        if self._missing is not None and self._clock() < self._missing[1]:
            raise AuthenticationError(self._missing[0])
        path = self._iam.credentials_file
        try:
            if path:
                self._google = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    path, scopes=SCOPES
                )
            else:
                self._google, _ = google.auth.default(scopes=SCOPES)
        except (OSError, ValueError, exceptions.GoogleAuthError) as exc:
            if isinstance(exc, OSError):
                reason = f"shared_cache.iam: cannot read the credentials file {path}"
            elif path:  # not a key (google-auth's words may quote it: not repeated)
                why = f"the credentials file {path} is not a service-account key"
                reason = f"shared_cache.iam: {why} ({type(exc).__name__})"
            else:
                reason = "shared_cache.iam: no Google credentials (set credentials_file or use ADC)"
            self._missing = (reason, self._clock() + NO_CREDENTIALS_RETRY)
            raise AuthenticationError(reason) from None
        return self._google


def _utc_naive_now() -> float:
    import datetime

    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None).timestamp()
