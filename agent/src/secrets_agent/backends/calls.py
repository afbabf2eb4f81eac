"""Every upstream API call goes through here: counted, timed, and its errors translated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from secrets_agent.errors import BackendError, ClosedError, DeniedError, TransientError
from secrets_agent.ops.metrics import Metrics

T = TypeVar("T")
Translate = Callable[[str, BaseException, str], BackendError]


def _never(exc: BaseException) -> bool:
    return False


class ApiCalls:
    """One backend's calls; ``is_missing`` says which upstream errors just mean "no such id"."""

    def __init__(
        self,
        backend: str,
        metrics: Metrics,
        translate: Translate,
        is_missing: Callable[[BaseException], bool] = _never,
    ) -> None:
        self.backend, self._metrics = backend, metrics
        self._translate, self._is_missing = translate, is_missing
        # Why the last call could not reach the upstream; None once any call got an answer.
        # Readiness reads it: a backend that cannot reach its upstream cannot serve fresh values.
        self.last_failure: str | None = None

    async def __call__(self, operation: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``call``; None when the upstream says the id does not exist."""
        started = time.perf_counter()
        result = "ok"
        try:
            answer = await call()
            self.last_failure = None
            return answer
        except asyncio.CancelledError:
            # No answer: the chain's deadline gave up on it (``upstream_gave_no_answer``), or
            # the agent is stopping. Not an "ok".
            result = "cancelled"
            raise
        except Exception as exc:  # the backend edge: no SDK exception gets past here
            if self._is_missing(exc):
                result = "not_found"
                self.last_failure = None
                return None
            error = (
                TransientError(self.backend, f"backend closed ({operation})")
                if isinstance(exc, ClosedError)  # a lookup that outlived its backend's reload
                else self._translate(self.backend, exc, operation)
            )
            # A denial or a bad answer still means the upstream answered.
            self.last_failure = str(error) if isinstance(error, TransientError) else None
            result = (
                "denied"
                if isinstance(error, DeniedError)
                else "transient"
                if isinstance(error, TransientError)
                else "error"
            )
            raise error from None
        finally:
            self._metrics.called(self.backend, operation, result, time.perf_counter() - started)

    def retried(self, operation: str, attempts: int) -> None:
        """The SDK sent ``operation`` ``attempts`` more times (throttled, a 5xx) before its
        answer: requests the manager saw, and may bill, beyond the call counted."""
        if attempts > 0:
            self._metrics.called_again(self.backend, operation, attempts)

    def gave_no_answer(self, reason: str) -> None:
        """The chain's deadline ended a call: the upstream is failing, as for readiness."""
        self.last_failure = reason

    async def required(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """As ``__call__``, for calls where "missing" cannot happen."""
        answer = await self(operation, call)
        if answer is None:
            raise BackendError(self.backend, f"{operation} returned nothing")
        return answer
