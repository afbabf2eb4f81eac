"""Every error the API returns is built here, as JSON {"error", "detail"} without any value."""

from __future__ import annotations

import logging

from aiohttp import web

from secrets_agent.errors import (
    AgentError,
    BackendError,
    DeniedError,
    InvalidIdError,
    TransientError,
)

log = logging.getLogger(__name__)


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def response_for(exc: BaseException) -> web.Response:
    """Map an exception to its HTTP answer; this is the only place that does."""
    if isinstance(exc, web.HTTPException):
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    if isinstance(exc, InvalidIdError):
        return error_response(400, "invalid_id", str(exc))
    if isinstance(exc, DeniedError):
        return error_response(403, "upstream_denied", str(exc))
    if isinstance(exc, TransientError):
        return error_response(503, "upstream_unavailable", f"{exc}; no usable cached value")
    if isinstance(exc, BackendError):
        return error_response(502, "upstream_error", str(exc))
    if isinstance(exc, AgentError):
        return error_response(500, "agent_error", str(exc))
    log.error("unhandled %s while serving a request", type(exc).__name__)
    return error_response(500, "internal_error", "unexpected error; see the agent's log")
