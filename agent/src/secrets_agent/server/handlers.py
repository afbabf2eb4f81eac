"""Route handlers: parse the request, call the service, shape the answer. Nothing else."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from secrets_agent.config.validators import TEAM_NAME
from secrets_agent.errors import BackendError, DeniedError
from secrets_agent.kinds import KIND_BY_SEGMENT, Kind, validate_id
from secrets_agent.server.app import CONTEXT, audit_read, request_groups, request_peer
from secrets_agent.server.errors import error_response

_NO_STORE = {"Cache-Control": "no-store"}


def add_routes(app: web.Application) -> None:
    kinds = "|".join(KIND_BY_SEGMENT)
    app.router.add_get(f"/v1/{{kind:{kinds}}}/{{id:.*}}", get_secret)
    app.router.add_post("/v1/cache/invalidate", invalidate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def get_secret(request: web.Request) -> web.Response:
    kind = KIND_BY_SEGMENT[request.match_info["kind"]]
    secret_id = validate_id(request.match_info["id"])
    team = request.query.get("team")
    if team is not None and not TEAM_NAME.fullmatch(team):
        return error_response(400, "invalid_team", "team must be 1-64 letters, digits, - or _")
    refresh = request.query.get("refresh", "false")
    if refresh not in ("true", "false"):
        return error_response(400, "invalid_refresh", "refresh must be true or false")
    # The peer says its copy is outdated (a rotated password, a failed login): ask upstream.
    forced = refresh == "true" or "no-cache" in request.headers.get("Cache-Control", "").lower()
    runtime = request.app[CONTEXT].current()
    if team is not None and not runtime.policy.may_ask_for(
        request_peer(request), request_groups(request), team
    ):
        audit_read(request, kind, secret_id, team, "denied", None)
        return error_response(403, "team_denied", "this peer is not bound to the team it names")
    try:
        result = await runtime.service.lookup(kind, secret_id, team, refresh=forced)
    except Exception as exc:
        backend = exc.backend if isinstance(exc, BackendError) else None
        audit_read(request, kind, secret_id, team, _failure(exc), backend)
        raise
    outcome = "negative" if result.value is None else result.state.lower()
    audit_read(request, kind, secret_id, team, outcome, result.source)
    headers = {"X-Cache": result.state.value, "Age": str(int(result.age)), **_NO_STORE}
    if result.value is None:
        return error_response(404, "not_found", f"no backend has this {kind}", headers)
    return web.json_response(
        {"kind": kind.value, "id": secret_id, "value": result.value}, headers=headers
    )


def _failure(exc: Exception) -> str:
    return "denied" if isinstance(exc, DeniedError) else "error"


async def invalidate(request: web.Request) -> web.Response:
    if not request.app[CONTEXT].current().policy.is_admin(request_peer(request)):
        return error_response(403, "not_admin", "only admin uids may invalidate the cache")
    try:
        body = await request.json() if request.can_read_body else {}
    except (ValueError, LookupError, RecursionError):  # not JSON, bad encoding, too deep
        return error_response(400, "invalid_body", "body must be JSON")
    if not isinstance(body, dict) or set(body) - {"kind", "id"}:
        return error_response(
            400, "invalid_body", 'expected {"kind": ..., "id": ...}, both optional'
        )
    kind_name, secret_id = body.get("kind"), body.get("id")
    if kind_name is not None and kind_name not in {k.value for k in Kind}:
        return error_response(400, "invalid_body", "kind must be connection, variable or config")
    if secret_id is not None and (kind_name is None or not isinstance(secret_id, str)):
        return error_response(400, "invalid_body", "id must be a string and needs a kind")
    kind = Kind(kind_name) if kind_name is not None else None
    if secret_id is not None:
        validate_id(secret_id)
    count = request.app[CONTEXT].current().service.invalidate(kind, secret_id)
    return web.json_response({"invalidated": count})


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


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CONTEXT].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
