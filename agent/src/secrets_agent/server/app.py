"""The aiohttp application: peer check, error mapping and request metrics around thin handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from secrets_agent.backends.base import Health
from secrets_agent.kinds import KIND_BY_SEGMENT, MAX_ID_LENGTH, Kind
from secrets_agent.lookup.service import SecretService
from secrets_agent.ops.audit import AuditLog, Read
from secrets_agent.ops.logs import RateLimited
from secrets_agent.ops.metrics import Metrics
from secrets_agent.server.errors import error_response, response_for
from secrets_agent.server.peers import AccessPolicy, Peer, peer_credentials, peer_groups


class Serving(Protocol):
    """The part of the agent's runtime that requests use (``secrets_agent.runtime.Runtime``)."""

    @property
    def service(self) -> SecretService: ...
    @property
    def policy(self) -> AccessPolicy: ...
    def readiness(self) -> dict[str, Health]: ...


@dataclass(frozen=True)
class ApiContext:
    """What handlers need. ``current`` returns the runtime serving now: a reload swaps it."""

    current: Callable[[], Serving]
    metrics: Metrics
    audit: AuditLog | None = None


CONTEXT = web.AppKey("context", ApiContext)
# A denied peer can send requests as fast as it likes; the log hears of it once a minute.
DENIALS = web.AppKey("denials", RateLimited)
PEER_KEY = web.RequestKey("peer", Peer)
GROUPS_KEY = web.RequestKey("groups", frozenset[int])


def create_app(context: ApiContext, max_body_size: int) -> web.Application:
    from secrets_agent.server import handlers

    app = web.Application(
        middlewares=[_metrics_middleware, _peer_middleware, _error_middleware],
        client_max_size=max_body_size,
    )
    app[CONTEXT] = context
    app[DENIALS] = RateLimited(logging.getLogger(__name__))
    handlers.add_routes(app)
    return app


def request_peer(request: web.Request) -> Peer:
    return request[PEER_KEY]


def request_groups(request: web.Request) -> frozenset[int]:
    return request[GROUPS_KEY]


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[CONTEXT].metrics
    started = time.perf_counter()
    response = await handler(request)
    kind = request.match_info.get("kind", "other")
    kind = {"connections": "connection", "variables": "variable"}.get(kind, kind)
    metrics.requests.labels(kind, str(response.status)).inc()
    metrics.request_latency.labels(kind).observe(time.perf_counter() - started)
    return response


@web.middleware
async def _peer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    context = request.app[CONTEXT]
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return error_response(403, "peer_denied", "peer credentials are unavailable")
    peer, groups = peer_credentials(sock), peer_groups(sock)
    if not context.current().policy.allows(peer, groups):
        context.metrics.denied_peers.inc()
        segment = request.match_info.get("kind")
        if segment in KIND_BY_SEGMENT:  # a denied read: the audit's most interesting line
            secret_id = request.match_info.get("id", "")[:MAX_ID_LENGTH]
            team = request.query.get("team", "")[:64] or None
            audit_read(request, KIND_BY_SEGMENT[segment], secret_id, team, "denied", None, peer)
        request.app[DENIALS].log(
            "denied", logging.WARNING, "refused a peer: uid %d gid %d", peer.uid, peer.gid
        )
        return error_response(
            403, "peer_denied", f"uid {peer.uid} gid {peer.gid} may not use this agent"
        )
    request[PEER_KEY], request[GROUPS_KEY] = peer, groups
    return await handler(request)


def audit_read(
    request: web.Request,
    kind: Kind,
    secret_id: str,
    team: str | None,
    result: str,
    backend: str | None,
    peer: Peer | None = None,
) -> None:
    """Hand one read to the audit stream, if there is one (never the value)."""
    audit = request.app[CONTEXT].audit
    if audit is not None and audit.enabled:
        who = peer or request_peer(request)
        audit.record(Read(who.uid, who.gid, who.pid, kind.value, secret_id, team, result, backend))


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
