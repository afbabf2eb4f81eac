"""One aioboto3 client per backend, on the default credential chain (optionally AssumeRole).

The backend's API client and its change feed's SQS client are both made here, so both read
credentials the same way. botocore reads a shared credentials or config file once; keys
rotated in the file (by an operator, a sidecar, ``aws configure``) are read again when a call
fails after the file changed, and the call is made once more with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import Any

from secrets_agent.backends.aws.errors import NOT_FOUND, error_code, translate
from secrets_agent.backends.aws.options import AwsOptions
from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.calls import ApiCalls
from secrets_agent.backends.files import Stamp, read_local, stamp
from secrets_agent.errors import BackendError

log = logging.getLogger(__name__)
# No credentials in the chain at start (instance metadata or a web identity not there yet at
# boot): a failing call looks again, at most this often (botocore's client never does).
LOOK_AGAIN = 10.0


class AwsClient:
    """Owns the client's lifetime and runs every API call through metrics and translation."""

    def __init__(
        self,
        backend: str,
        service: str,
        options: AwsOptions,
        context: BackendContext,
        *,
        track_auth: bool = True,  # False: a second client of the backend (its change feed)
    ) -> None:
        self.backend, self.service, self.options = backend, service, options
        self._metrics = context.metrics
        self.calls = ApiCalls(
            backend, context.metrics, translate, lambda exc: error_code(exc) in NOT_FOUND
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._files: tuple[str, ...] = ()  # the shared credentials and config files
        self._stamp: tuple[Stamp, ...] = ()  # the files as last read
        self._clock = context.clock
        self._look_at = 0.0  # when a chain that had no credentials is looked at again
        self._reopening = asyncio.Lock()
        self._retired: contextlib.AsyncExitStack | None = None  # the client before a reopen
        self.credentials_error: str | None = "not started"
        self.authenticated = False
        if track_auth:
            context.metrics.authenticated.labels(backend).set_function(
                lambda: float(self.authenticated)
            )

    async def start(self) -> None:
        check_credentials_file(self.backend, self.options)
        await self._open(self._stack)

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """A session and client on ``stack``, reading the credential chain afresh."""
        import aioboto3
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        o = self.options
        try:
            base = AioSession(profile=o.profile or None)
            if o.credentials_file:
                # Before anything reads the profile map, which botocore builds once per session.
                base.set_config_variable("credentials_file", o.credentials_file)
            if o.region:
                base.set_config_variable("region", o.region)
            files = _credential_files(base)
            stamps = tuple(map(stamp, files))  # before reading them: a change after is seen
            if o.role_arn:
                await self._assume_role(base)
            config = AioConfig(
                connect_timeout=o.connect_timeout,
                read_timeout=o.read_timeout,
                # Tries in all: botocore's own "max_attempts" counts the retries alone.
                retries={"mode": "standard", "total_max_attempts": o.max_attempts},
            )
            session = aioboto3.Session(botocore_session=base)
            client = await stack.enter_async_context(
                session.client(self.service, endpoint_url=o.endpoint_url or None, config=config)
            )
            credentials = await base.get_credentials()
        except Exception as exc:  # the backend edge: a region or profile problem stops startup
            raise translate(self.backend, exc, "creating the AWS client") from None
        self._client, self._files, self._stamp = client, files, stamps
        self.credentials_error = (
            None if credentials is not None else ("no AWS credentials found in the default chain")
        )
        self.authenticated = credentials is not None

    async def _reopened(self) -> bool:
        """After a failed call: if a credential file changed since it was read, or the chain
        had no credentials (looked at again every ``LOOK_AGAIN``), a new client reads them (the
        old one closes later); True when the call is worth making again."""
        async with self._reopening:
            changed = bool(self._files) and tuple(map(stamp, self._files)) != self._stamp
            empty = self.credentials_error is not None and self._clock() >= self._look_at
            if not changed and not empty:
                return False
            self._look_at = self._clock() + LOOK_AGAIN
            old, self._stack = self._stack, contextlib.AsyncExitStack()
            try:
                await self._open(self._stack)
            except BackendError as exc:
                await self._stack.aclose()
                self._stack = old
                log.warning(
                    "backend %r: cannot read the changed AWS credentials: %s", self.backend, exc
                )
                return False
            if changed:
                log.info(
                    "backend %r: the AWS credentials file changed: read it again", self.backend
                )
            elif self.credentials_error is None:
                log.info("backend %r: AWS credentials found in the default chain", self.backend)
            # Calls still out on the old client finish on it; it closes at the next reopen
            # (the previous one's calls are long over by then) or with the backend.
            if self._retired is not None:
                await self._retired.aclose()
            self._retired = old
            return self.credentials_error is None

    async def _assume_role(self, base: Any) -> None:
        from aiobotocore.credentials import (
            AioAssumeRoleCredentialFetcher,
            AioDeferredRefreshableCredentials,
        )

        source = await base.get_credentials()
        if source is None:
            raise BackendError(self.backend, "role_arn is set but no source credentials exist")
        o = self.options
        create_sts = functools.partial(
            base.create_client,
            endpoint_url=o.sts_endpoint_url or None,
            region_name=o.region or None,
        )
        fetcher = AioAssumeRoleCredentialFetcher(
            create_sts, source, o.role_arn, extra_args={"RoleSessionName": o.role_session_name}
        )

        async def refresh() -> Any:
            # botocore calls this before the role's credentials expire, on demand.
            try:
                answer = await self.calls.required("AssumeRole", fetcher.fetch_credentials)
            except BackendError:
                self._metrics.auth_attempts.labels(self.backend, "failure").inc()
                self.authenticated = False
                raise
            self._metrics.auth_attempts.labels(self.backend, "success").inc()
            self.authenticated = True
            return answer

        # botocore has no public setter for a session's credentials; this is its own idiom.
        base._credentials = AioDeferredRefreshableCredentials(refresh, method="assume-role")

    @property
    def region(self) -> str:
        """The region the client signs for: the backend's, however it was configured."""
        return str(getattr(getattr(self._client, "meta", None), "region_name", None) or "")

    async def close(self) -> None:
        if self._retired is not None:
            await self._retired.aclose()
            self._retired = None
        await self._stack.aclose()
        self._client = None
        self.authenticated = False

    async def api(self, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        """Call ``operation`` (e.g. "GetSecretValue"); None when the name does not exist."""
        try:
            return await self._api(operation, kwargs)
        except BackendError:
            if not await self._reopened():  # a stat or two, only after a failure
                raise
        return await self._api(operation, kwargs)

    async def _api(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        method = getattr(self._client, _snake(operation))

        async def call() -> dict[str, Any]:
            # botocore's retries are requests AWS saw: each answer says how many it made.
            try:
                answer: dict[str, Any] = await method(**kwargs)
            except Exception as exc:
                self.calls.retried(operation, _retries(getattr(exc, "response", None)))
                raise
            self.calls.retried(operation, _retries(answer))
            return answer

        return await self.calls(operation, call)


def check_credentials_file(backend: str, options: AwsOptions) -> None:
    """botocore skips a shared-credentials file it cannot read; the agent refuses it."""
    if options.credentials_file:
        read_local(backend, options.credentials_file, "credentials")


def _credential_files(session: Any) -> tuple[str, ...]:
    """The shared credentials and config files ``session`` reads (absent ones too)."""
    return tuple(
        os.path.expanduser(str(session.get_config_variable(name) or ""))
        for name in ("credentials_file", "config_file")
    )


def _retries(answer: object) -> int:
    """``ResponseMetadata.RetryAttempts`` of a botocore answer or error response (0: none)."""
    meta = answer.get("ResponseMetadata") if isinstance(answer, dict) else None
    attempts = meta.get("RetryAttempts") if isinstance(meta, dict) else None
    return attempts if isinstance(attempts, int) else 0


@functools.cache
def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
