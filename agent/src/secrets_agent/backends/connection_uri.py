"""Split an Airflow connection URI into fields, as ``Connection._parse_from_uri`` does.

Needed only where a stored connection has a URI *and* fields a URI cannot carry (a
``description``): the task SDK's ``Connection.from_json`` takes fields, never a ``uri``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

_EXTRA_KEY = "__extra__"


class UriFormatError(ValueError):
    """The URI is not one Airflow can parse; the message never quotes it."""


def normalize_conn_type(conn_type: str) -> str:
    if conn_type == "postgresql":
        return "postgres"
    return conn_type.replace("-", "_")


def uri_fields(uri: str) -> dict[str, Any]:
    """The non-empty fields of the Connection Airflow builds from ``uri``."""
    schemes = uri.count("://")
    if schemes > 2:
        raise UriFormatError("is not a valid connection URI")
    with_protocol = schemes == 2
    scheme = urlsplit(uri).scheme
    rest = uri.replace(f"{scheme}://", "" if with_protocol else "//")
    if with_protocol:
        head = rest.split("://", 1)[0]
        if "@" in head or ":" in head:
            raise UriFormatError("is not a valid connection URI")
    parts = urlsplit(rest)
    try:
        port = parts.port
    except ValueError:
        raise UriFormatError("has a port that is not a number") from None
    host = _hostname(parts)
    if host and with_protocol:
        host = f"{parts.scheme}://{host}"
    fields: dict[str, Any] = {
        "conn_type": normalize_conn_type(scheme),
        "host": host,
        "schema": unquote(parts.path[1:]) if parts.path[1:] else None,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "port": port,
        "extra": _extra(parts.query) if parts.query else None,
    }
    return {k: v for k, v in fields.items() if v not in (None, "")}


def _hostname(parts: SplitResult) -> str:
    hostname = unquote(parts.hostname or "")
    if "/" in hostname:  # a path-like host (a socket directory) keeps its case, as in Airflow
        hostname = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
        hostname = unquote(hostname)
    return hostname


def _extra(query: str) -> str:
    pairs = dict(parse_qsl(query, keep_blank_values=True))
    if _EXTRA_KEY in pairs:
        return pairs[_EXTRA_KEY]
    decoded: dict[str, Any] = {}
    for key, value in pairs.items():
        try:
            decoded[key] = json.loads(value) if value else value
        except json.JSONDecodeError:
            decoded[key] = value
    return json.dumps(decoded)
