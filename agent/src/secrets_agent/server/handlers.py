"""Route handlers: parse the request, call the service, shape the answer. Nothing else."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from secrets_agent.errors import AccessDeniedError
from secrets_agent.kinds import Kind, validate_id
from secrets_agent.ops.audit import Invalidation
from secrets_agent.server.app import CONTEXT, MAX_BODY, READS, request_caller
from secrets_agent.server.errors import error_response, response_for, to_response
from secrets_agent.server.reads import ROUTE, ReadQuery
from secrets_agent.server.status import status_report

_KINDS = frozenset(kind.value for kind in Kind)
log = logging.getLogger(__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_get(ROUTE, get_secret)
    app.router.add_post("/v1/cache/invalidate", invalidate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)


async def get_secret(request: web.Request) -> web.Response:
    """A read on a connection the lean path handed over (see ``server.reads``)."""
    query = ReadQuery(
        request.match_info["kind"],
        request.match_info["id"],
        request.query.get("team"),
        request.query.get("refresh", "false"),
        "no-cache" in request.headers.get("Cache-Control", "").lower(),
    )
    return to_response(await request.app[READS].answer(request_caller(request), query))


async def invalidate(request: web.Request) -> web.Response:
    runtime = request.app[CONTEXT].current()
    if not runtime.policy.is_admin(request_caller(request).peer):
        _audit_invalidation(request, None, None, None)
        return error_response(403, "not_admin", "only admin uids may invalidate the cache")
    body = await _json_body(request, runtime.config.listener.header_timeout)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body, dict) or set(body) - {"kind", "id"}:
        return error_response(
            400, "invalid_body", 'expected {"kind": ..., "id": ...}, both optional'
        )
    kind_name, secret_id = body.get("kind"), body.get("id")
    if kind_name is not None and (not isinstance(kind_name, str) or kind_name not in _KINDS):
        return error_response(400, "invalid_body", "kind must be connection, variable or config")
    if secret_id is not None and (kind_name is None or not isinstance(secret_id, str)):
        return error_response(400, "invalid_body", "id must be a string and needs a kind")
    kind = Kind(kind_name) if kind_name is not None else None
    if secret_id is not None:
        validate_id(secret_id)
    runtime = request.app[CONTEXT].current()
    if runtime.access is not None:  # an admin may drop only what it may read
        caller = request_caller(request)
        rules = runtime.access.for_peer(caller.peer, caller.groups)
        if secret_id is not None and kind is not None:
            allowed = rules.may_touch(kind, secret_id)
        else:
            allowed = all(rules.covers(k) for k in ([kind] if kind is not None else Kind))
        if not allowed:
            _audit_invalidation(request, kind, secret_id, None)
            detail = "access rules let this peer invalidate only what it may read"
            return response_for(AccessDeniedError(detail))
    count = runtime.service.invalidate(kind, secret_id)
    _audit_invalidation(request, kind, secret_id, count)
    return web.json_response({"invalidated": count})


def _audit_invalidation(
    request: web.Request, kind: Kind | None, secret_id: str | None, count: int | None
) -> None:
    """An invalidation sends what it drops back to the upstream: who asked is on record, and a
    log line says what was dropped (the kind, never the id)."""
    peer = request_caller(request).peer
    if count is not None:
        which = "every" if secret_id is None else "one"
        scope = "everything" if kind is None else f"{which} {kind.value}"
        message = "cache invalidated by uid %d (pid %d): %s, %d entries"
        log.info(message, peer.uid, peer.pid, scope, count)
    audit = request.app[CONTEXT].audit
    if audit is not None and audit.enabled:
        result = "denied" if count is None else "invalidated"
        kind_name = None if kind is None else kind.value
        audit.record(
            Invalidation(peer.uid, peer.gid, peer.pid, kind_name, secret_id, result, count)
        )


async def _json_body(request: web.Request, deadline: float) -> object:
    """The request's JSON body ({} without one), or the error answer: too big (refused before
    reading a byte), not JSON, or not all sent within ``deadline`` (a client that announces a
    body and never sends it must not hold its connection: the answer closes it)."""
    if not request.can_read_body:
        return {}
    limit = request.app[MAX_BODY]  # aiohttp enforces it too, but only once that much came
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "body_too_large", f"the body may be at most {limit} bytes")
    try:
        async with asyncio.timeout(deadline):
            return await request.json()
    except TimeoutError:
        response = error_response(408, "body_timeout", f"the body did not arrive in {deadline} s")
        response.force_close()
        return response
    except (ValueError, LookupError, RecursionError):  # not JSON, bad encoding, too deep
        return error_response(400, "invalid_body", "body must be JSON")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[CONTEXT].current().readiness()
    ready = bool(health) and all(h.ready for h in health.values())
    body = {
        "ready": ready,
        "backends": {name: {"ready": h.ready, "detail": h.detail} for name, h in health.items()},
    }
    return web.json_response(body, status=200 if ready else 503)


async def status(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    serving = context.current()
    if not serving.policy.may_view_status(request_caller(request).peer):
        return error_response(
            403, "not_admin", "only admin uids and listener.status_uids may read the status"
        )
    return web.json_response(status_report(serving, context.metrics))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
