"""Every error the API returns is built here, as JSON {"error", "detail"} without any value."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from secrets_agent.errors import (
    AccessDeniedError,
    AgentError,
    BackendError,
    DeniedError,
    InvalidIdError,
    TransientError,
)

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)  # not frozen: one per request, and frozen costs 3x to build
class Answer:
    """A JSON answer as either HTTP layer sends it (aiohttp or the lean read path)."""

    status: int
    body: bytes
    headers: Headers = ()  # one of a few shared tuples (the lean path renders each once)
    age: int | None = None  # the ``Age`` header, after ``headers``: it differs from read to read


def error_answer(status: int, error: str, detail: str, headers: Headers = ()) -> Answer:
    return Answer(status, json.dumps({"error": error, "detail": detail}).encode(), headers)


def answer_for(exc: BaseException) -> Answer:
    """Map an exception to its HTTP answer; this is the only place that does."""
    if isinstance(exc, web.HTTPException):
        return error_answer(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    if isinstance(exc, InvalidIdError):
        return error_answer(400, "invalid_id", str(exc))
    if isinstance(exc, AccessDeniedError):
        return error_answer(403, "access_denied", str(exc))
    if isinstance(exc, DeniedError):
        return error_answer(403, "upstream_denied", str(exc))
    if isinstance(exc, TransientError):
        return error_answer(503, "upstream_unavailable", f"{exc}; no usable cached value")
    if isinstance(exc, BackendError):
        return error_answer(502, "upstream_error", str(exc))
    if isinstance(exc, AgentError):
        return error_answer(500, "agent_error", str(exc))
    if isinstance(exc, ConnectionResetError):  # the client left mid-request: nobody to answer
        log.debug("a client closed its connection before its request was read whole")
        return error_answer(400, "client_gone", "the connection closed mid-request")
    log.error("unhandled %s while serving a request", type(exc).__name__)
    return error_answer(500, "internal_error", "unexpected error; see the agent's log")


def to_response(answer: Answer) -> web.Response:
    headers = dict(answer.headers)
    if answer.age is not None:
        headers["Age"] = str(answer.age)
    return web.Response(
        body=answer.body,
        status=answer.status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return to_response(error_answer(status, error, detail, tuple((headers or {}).items())))


def response_for(exc: BaseException) -> web.Response:
    return to_response(answer_for(exc))
