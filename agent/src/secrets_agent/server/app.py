"""The aiohttp application: peer check, error mapping and request metrics around thin handlers.

Reads that the lean path (``server.lean``) answers never get here; everything else does.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from secrets_agent.kinds import KIND_BY_SEGMENT, MAX_ID_LENGTH
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.context import ApiContext, Serving
from secrets_agent.server.errors import error_response, response_for, to_response
from secrets_agent.server.peers import peer_credentials, peer_groups
from secrets_agent.server.reads import KIND_LABELS, Caller, Reads

__all__ = ["CONTEXT", "MAX_BODY", "READS", "ApiContext", "Serving", "create_app", "metrics_app"]

CONTEXT = web.AppKey("context", ApiContext)
READS = web.AppKey("reads", Reads)
MAX_BODY = web.AppKey("max_body", int)  # bytes a request body may hold (listener.max_body_size)
CALLER_KEY = web.RequestKey("caller", Caller)
# What admin uids and listener.status_uids may read without being admitted as readers of
# secrets (allowed_uids / allowed_gids): counts and health, never an id or a value.
_VIEWS = frozenset({"/v1/status", "/metrics", "/healthz", "/readyz"})


def create_app(reads: Reads, max_body_size: int) -> web.Application:
    from secrets_agent.server import handlers

    app = web.Application(
        middlewares=[_metrics_middleware, _peer_middleware, _error_middleware],
        client_max_size=max_body_size,
    )
    app[CONTEXT] = reads.context
    app[READS] = reads
    app[MAX_BODY] = max_body_size
    handlers.add_routes(app)
    return app


def request_caller(request: web.Request) -> Caller:
    return request[CALLER_KEY]


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    kind = request.match_info.get("kind", "other")
    kind = KIND_LABELS.get(kind, kind)
    request.app[CONTEXT].metrics.answered(kind, response.status, time.perf_counter() - started)
    return response


@web.middleware
async def _peer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    context = request.app[CONTEXT]
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return error_response(403, "peer_denied", "peer credentials are unavailable")
    try:
        caller = Caller(peer_credentials(sock), peer_groups(sock))
    except OSError:  # a peer seen in fewer groups than it has could escape a deny by group
        return error_response(403, "peer_denied", "peer credentials are unavailable")
    policy = context.current().policy
    if not policy.allows(caller.peer, caller.groups) and not (
        request.path in _VIEWS
        and request.method in ("GET", "HEAD")
        and policy.may_view_status(caller.peer)
    ):
        segment = request.match_info.get("kind")
        secret_id = request.match_info.get("id", "")[:MAX_ID_LENGTH]
        kind = KIND_BY_SEGMENT.get(segment) if segment else None
        answer = request.app[READS].denied_peer(
            caller.peer, kind, secret_id, request.query.get("team")
        )
        return to_response(answer)
    request[CALLER_KEY] = caller
    return await handler(request)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:  # every failure must become a JSON answer, never a traceback
        return response_for(exc)


def metrics_app(metrics: Metrics) -> web.Application:
    """``/metrics`` alone, for the optional loopback TCP port."""
    from prometheus_client import CONTENT_TYPE_LATEST

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
