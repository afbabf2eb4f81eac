"""The Vault token's life: log in once, renew ahead of expiry, log in again, back off on failure."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.vault.auth import Lease
from secrets_agent.backends.vault.errors import CredentialSourceError, TokenRejected
from secrets_agent.backends.vault.options import VaultOptions
from secrets_agent.errors import BackendError, DeniedError, TransientError

log = logging.getLogger(__name__)

IDLE = 300.0  # how long the maintenance loop sleeps when nothing is scheduled
CAPPED = 0.9  # a renewal granting less than this share of the login TTL means max TTL is near


class TokenOps(Protocol):
    """What the session needs from Vault; the backend implements it with hvac."""

    async def login(self) -> Lease: ...

    async def renew(self) -> Lease: ...


class VaultSession:
    def __init__(
        self,
        backend: str,
        ops: TokenOps,
        options: VaultOptions,
        context: BackendContext,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backend, self._ops, self._options = backend, ops, options
        self._clock, self._metrics, self._rng = context.clock, context.metrics, rng
        self._lease: Lease | None = None
        self._login_ttl = 0.0
        self._expires_at: float | None = None
        self._due_at: float | None = None  # when to renew (or log in again, if _relogin_due)
        self._relogin_due = False
        self._retry_at = 0.0
        self._failures = 0
        self.last_error = "not logged in yet"
        self._last_reason = self.last_error  # the same, without the backend's name (for errors)
        self._lock = asyncio.Lock()
        self._step_lock = asyncio.Lock()
        self._metrics.authenticated.labels(backend).set_function(
            lambda: float(self._lease is not None)
        )
        self._metrics.token_ttl.labels(backend).set_function(self._ttl_left)

    @property
    def authenticated(self) -> bool:
        return self._lease is not None

    async def ensure_token(self) -> None:
        """Before a read: log in if due; raise ``TransientError`` while Vault cannot be reached."""
        if self._lease is not None and not self._expired():
            return
        await self.login()
        if self._lease is None:
            raise TransientError(self.backend, f"not authenticated to Vault ({self._last_reason})")

    async def token_rejected(self) -> None:
        """Vault refused our token mid-read (e.g. revoked): drop it and log in at once."""
        self._drop()
        await self.login(force=True)
        if self._lease is None:
            raise TransientError(self.backend, f"cannot log in again ({self._last_reason})")

    async def step(self) -> float:
        """Do whatever is due now; return the seconds until something is due again."""
        async with self._step_lock:  # one renewal at a time, whoever calls
            return await self._step()

    async def _step(self) -> float:
        now = self._clock()
        if self._lease is not None and self._expired():
            self._drop()
        if self._lease is None:
            await self.login()
        elif self._due_at is not None and now >= self._due_at:
            if self._lease.renewable and not self._relogin_due:
                await self._renew()
            else:
                await self.login()
        return self._until_next()

    async def run_forever(self) -> None:
        while True:
            delay = await self.step()
            await asyncio.sleep(delay)

    async def login(self, *, force: bool = False, strict: bool = False) -> None:
        """Log in unless a good token is held or the backoff says wait (``force`` skips that).

        ``strict`` re-raises a broken local credential source, so startup can fail loudly.
        """
        async with self._lock:
            if self._lease is not None and not self._due() and not self._expired():
                return  # someone else just logged in while we waited for the lock
            if self._lease is None and not force and self._clock() < self._retry_at:
                return
            try:
                lease = await self._ops.login()
            except BackendError as exc:
                self._failed("login", exc)
                if strict and isinstance(exc, CredentialSourceError):
                    raise
                return
            self._accept(lease, fresh_login=True)
            self._metrics.auth_attempts.labels(self.backend, "success").inc()
            log.info("backend %r: logged in to Vault (token ttl %.0fs)", self.backend, lease.ttl)

    async def _renew(self) -> None:
        try:
            lease = await self._ops.renew()
        except (TokenRejected, DeniedError):
            self._drop()
            await self.login(force=True)
            return
        except BackendError as exc:
            self._failed("renew", exc)
            return
        self._accept(lease, fresh_login=False)
        self._metrics.auth_attempts.labels(self.backend, "renewed").inc()

    def _accept(self, lease: Lease, *, fresh_login: bool) -> None:
        now = self._clock()
        if fresh_login:
            self._login_ttl = lease.ttl
        self._lease, self._failures, self.last_error = lease, 0, "ok"
        # A renewal that grants less than asked means the max TTL is near: log in next time.
        self._relogin_due = not fresh_login and lease.ttl < self._login_ttl * CAPPED
        if lease.ttl > 0:
            self._expires_at = now + lease.ttl
            self._due_at = now + lease.ttl * self._options.renew_fraction
        else:
            self._expires_at = self._due_at = None  # a non-expiring token (e.g. root)

    def _failed(self, action: str, exc: BackendError) -> None:
        self._failures += 1
        delay = self._backoff()
        self.last_error, self._last_reason = str(exc), exc.reason
        self._metrics.auth_attempts.labels(self.backend, "failure").inc()
        log.warning(
            "backend %r: %s failed (%s); retrying in %.2fs", self.backend, action, exc.reason, delay
        )
        if self._lease is not None and not self._expired():
            self._due_at = self._clock() + delay  # the current token still works meanwhile
        else:
            self._drop()
            self._retry_at = self._clock() + delay

    def _backoff(self) -> float:
        base = min(
            self._options.backoff_max, self._options.backoff_initial * 2.0 ** (self._failures - 1)
        )
        return base * (0.5 + 0.5 * self._rng())  # jitter: never in lockstep with other agents

    def _drop(self) -> None:
        self._lease = None
        self._expires_at = self._due_at = None

    def close(self) -> None:
        self._drop()

    def _expired(self) -> bool:
        return self._expires_at is not None and self._clock() >= self._expires_at

    def _due(self) -> bool:
        return self._due_at is not None and self._clock() >= self._due_at

    def _until_next(self) -> float:
        now = self._clock()
        if self._lease is None:
            return max(0.0, self._retry_at - now)
        return IDLE if self._due_at is None else max(0.0, min(IDLE, self._due_at - now))

    def _ttl_left(self) -> float:
        return 0.0 if self._expires_at is None else max(0.0, self._expires_at - self._clock())
