"""IAM auth tokens for ElastiCache and MemoryDB: the store's password, made per connection.

A token is a SigV4-presigned ``connect`` URL for the cache (without its scheme), valid 15
minutes; a connection authenticated with one stays authenticated (ElastiCache ends it after 12
hours, and the client reconnects with a new token). redis-py asks the provider at every new
connection; a token is made again once it is ``REFRESH`` old, on a worker thread (the AWS chain
may read files or ask the instance's metadata service), so connections made meanwhile reuse it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlencode

from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError

from secrets_agent.backends.aws_chain import NoCredentials, aws_keys
from secrets_agent.config.schema import StoreIamConfig

EXPIRES = 900  # seconds: the longest ElastiCache and MemoryDB accept
REFRESH = 600.0  # a token this old is replaced: a connection never presents one near expiry


class IamTokens(CredentialProvider):
    """``(user, token)`` for redis-py, for the IAM-enabled ``user`` of ``iam.cache_name``."""

    def __init__(
        self, user: str, iam: StoreIamConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._user, self._iam, self._clock = user, iam, clock
        self._made: tuple[str, float] | None = None  # (token, made at), replaced whole
        self._lock = asyncio.Lock()

    def get_credentials(self) -> tuple[str, str]:
        """For a blocking client (the agent's is asynchronous: ``get_credentials_async``)."""
        return self._user, self._fresh() or self._renew()

    async def get_credentials_async(self) -> tuple[str, str]:
        token = self._fresh()
        if token is None:
            async with self._lock:  # one token made for the connections that wait for it
                token = self._fresh()
                if token is None:
                    token = await asyncio.to_thread(self._renew)
        return self._user, token

    def _fresh(self) -> str | None:
        made = self._made
        return made[0] if made is not None and self._clock() - made[1] < REFRESH else None

    def _renew(self) -> str:
        # Kept by the thread itself: a connection that stopped waiting (the store call's
        # timeout) still leaves the token for the next one.
        token = self.token()
        self._made = (token, self._clock())
        return token

    def token(self) -> str:
        """A new token (blocking); ``AuthenticationError``, a store error, when none can be made."""
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
        return url.removeprefix("https://")
