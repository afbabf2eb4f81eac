"""IAM auth tokens for the store: its password, made per connection.

ElastiCache and MemoryDB take a SigV4-presigned ``connect`` URL for the cache (without its
scheme), valid 15 minutes, with the IAM-enabled user's name; Memorystore takes a Google OAuth2
access token (an hour) alone. A connection authenticated with one stays authenticated (or is
closed by the service, and the client reconnects with a new token). redis-py asks the provider
at every new connection; a token is renewed ``MARGIN`` before it expires, on a worker thread
(the credentials may read files or ask a metadata server or token endpoint) while the current
one still serves new connections; only once none is usable does a connection wait for one.
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
MARGIN = 300.0  # a token this close to its end is renewed, in the background
LAST_USE = 60.0  # ... and this close, no longer presented: a connection waits for the new one
REFRESH = EXPIRES - MARGIN  # an AWS token's age when its renewal starts
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
NO_CREDENTIALS_RETRY = 60.0  # seconds before Google credentials not found are looked for again


class IamTokens(CredentialProvider):
    """``(user, token)`` for redis-py (``(token,)`` for Memorystore, which has no user)."""

    def __init__(
        self, user: str, iam: StoreIamConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._user, self._iam, self._clock = user, iam, clock
        # (token, renew after, usable until), replaced whole (by a worker thread).
        self._made: tuple[str, float, float] | None = None
        self._renewing: asyncio.Task[str] | None = None  # the one renewal under way
        self._google: Any = None  # Memorystore: google-auth's credentials, kept to refresh
        self._missing: tuple[str, float] | None = None  # (why none, until when it is said)

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        """For a blocking client (the agent's is asynchronous: ``get_credentials_async``)."""
        made = self._made
        fresh = made is not None and self._clock() < made[1]
        return self._pair(made[0] if made is not None and fresh else self._renew())

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        made, now = self._made, self._clock()
        if made is not None and now < made[2]:
            if now >= made[1]:  # due: renewed in the background, the current one still serves
                self._renewal()
            return self._pair(made[0])
        # None usable: wait for the one renewal (shielded: a connection that stops waiting,
        # at the store call's timeout, leaves it running for the next).
        return self._pair(await asyncio.shield(self._renewal()))

    def _renewal(self) -> asyncio.Task[str]:
        task = self._renewing
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._renew))
            task.add_done_callback(_retrieved)
            self._renewing = task
        return task

    def _pair(self, token: str) -> tuple[str] | tuple[str, str]:
        return (self._user, token) if self._iam.aws else (token,)

    def _renew(self) -> str:
        token, lifetime = self.token()
        now = self._clock()
        self._made = (token, now + lifetime - MARGIN, now + lifetime - LAST_USE)
        return token

    def token(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds (blocking); ``AuthenticationError``, a
        store error (the tier goes upstream), when none can be made."""
        try:
            return self._aws_token() if self._iam.aws else self._google_token()
        except AuthenticationError:
            raise
        except Exception as exc:  # an SDK's surprise must not escape the store's guard
            reason = type(exc).__name__
            raise AuthenticationError(f"shared_cache.iam: cannot make a token ({reason})") from None

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


def _retrieved(task: asyncio.Task[str]) -> None:
    """A background renewal's failure is the next waiting connection's to report."""
    if not task.cancelled():
        task.exception()


def _utc_naive_now() -> float:
    import datetime

    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None).timestamp()
