"""``secrets-agent status``: ask a running agent for ``/v1/status`` and print it for people (a
table) or scripts (``--json``). Standard library and the client's transport only, like ``get``."""

from __future__ import annotations

import json
import sys
from typing import Any

from secrets_agent.exits import EX_PROTOCOL, EX_UNAVAILABLE, NOT_FOUND, for_answer

REFUSED = NOT_FOUND

_COLUMNS = (
    ("BACKEND", "name"),
    ("TYPE", "type"),
    ("READY", "ready"),
    ("AUTH", "authenticated"),
    ("TOKEN EXPIRES", "token_expires_in_seconds"),
    ("CALLS", "upstream_calls"),
    ("AVOIDED", "calls_avoided"),
    ("PER 10K", "price_per_10k_usd"),
    ("COST", "cost_usd"),
    ("SAVED", "saved_usd"),
    ("LAST ERROR", "last_error"),
)


def run(path: str, timeout: float, as_json: bool) -> int:
    """``secrets-agent status`` against the agent on ``path``."""
    from secrets_agent_client.transport import AgentUnreachable, UnixTransport

    try:
        response = UnixTransport(path, timeout).request("GET", "/v1/status")
    except AgentUnreachable as exc:
        print(f"secrets-agent: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        body = json.loads(response.body)
    except ValueError:
        body = None
    if response.status != 200:
        detail = body.get("detail") if isinstance(body, dict) else None
        print(f"secrets-agent: status refused ({response.status}): {detail}", file=sys.stderr)
        # A refusal has exited 1 since the first release: scripts test for it.
        return REFUSED if response.status == 403 else for_answer(response.status)
    if as_json and isinstance(body, dict):
        print(json.dumps(body, indent=2))  # as the agent wrote it, whichever version it is
        return 0
    try:
        text = render(body) if isinstance(body, dict) else None
    except (KeyError, TypeError, ValueError, AttributeError):
        text = None  # fields missing or of other types: not an agent's status
    if text is None:  # something else listens on the socket
        print(
            f"secrets-agent: the answer from {path} is not an agent's /v1/status", file=sys.stderr
        )
        return EX_PROTOCOL
    print(text)
    return 0


def render(status: dict[str, Any]) -> str:
    """The status as a short text report with one table row per backend."""
    state = "ready" if status["ready"] else "NOT READY"
    lines = [
        f"airflow-secrets-agent {status['version']}: {state}, up "
        f"{_duration(status['uptime_seconds'])} (since {status['started_at']})",
        "",
    ]
    rows = [[title for title, _ in _COLUMNS]]
    rows += [
        [_cell(key, backend.get(key)) for _, key in _COLUMNS] for backend in status["backends"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    cache = status["cache"]
    ratio = "n/a" if cache["hit_ratio"] is None else f"{cache['hit_ratio']:.1%}"
    lines += [
        "",
        f"cache: {cache['entries']:,} of {cache['max_entries']:,} entries "
        f"({cache['negative_entries']:,} negative); {cache['lookups']:,} lookups, hit ratio "
        f"{ratio}; {cache['stale_served']:,} stale served, {cache['negative_hits']:,} negative "
        f"hits, {cache['coalesced']:,} coalesced"
        + (f"; {cache['read_path']} read path" if "read_path" in cache else ""),
    ]
    shared = status.get("shared_cache")
    if shared is not None:
        lines.append(
            f"shared cache: {'available' if shared['available'] else 'UNAVAILABLE'} "
            f"({shared['detail']}); {shared['hits']:,} hits, {shared['misses']:,} misses, "
            f"{shared['errors']:,} errors"
        )
    upstream = status["upstream"]
    lines.append(
        f"upstream: {upstream['calls']:,} API calls made ({_usd(upstream['cost_usd'])}), "
        f"{upstream['calls_avoided']:,} avoided ({_usd(upstream['saved_usd'])} saved), "
        f"at list prices taken {upstream['prices_taken']}"
    )
    access = status.get("access")  # an agent older than this command has none
    if access is not None:
        rules = access["rules"]
        held = f"{rules:,} rules" if rules else "no rules (every admitted peer reads every id)"
        lines.append(
            f"access: {held}; {access['reads_refused']:,} reads refused by them, "
            f"{access['peers_refused']:,} requests from peers not allowed"
        )
    lines += [_feed(feed) for feed in status.get("feeds", [])]
    return "\n".join(lines)


def _feed(feed: dict[str, Any]) -> str:
    consumer = feed["consumer"]
    role = "" if consumer is None else ", consumes it" if consumer else ", standby"
    counts = ", ".join(f"{n:,} {result}" for result, n in feed["events"].items())
    return (
        f"feed {feed['name']}: {feed['detail']} ({'up' if feed['up'] else 'DOWN'}{role}); "
        f"last received {feed['last_received_at'] or 'never'}; {feed['received']:,} events: "
        f"{counts}"
    )


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key == "token_expires_in_seconds":
        return _duration(value)
    if key.endswith("_usd"):
        return _usd(value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _usd(amount: float) -> str:
    if amount == 0:
        return "$0"
    if amount >= 1:
        return f"${amount:,.2f}"
    if amount < 0.000001:
        return "<$0.000001"
    return "$" + f"{amount:.6f}".rstrip("0")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"
