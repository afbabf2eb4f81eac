"""Turn a connection stored as fields into what Airflow's ``deserialize_connection`` accepts."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from secrets_agent.backends.connection_uri import UriFormatError, uri_fields

# Connection.__init__ parameters (Airflow 2.7+ and 3.x) that the task SDK's Connection also has.
_FIELDS = {"conn_type", "description", "host", "login", "password", "schema", "port", "extra"}
# Accepted as Airflow 3's Connection accepts it, then dropped: the task SDK's has no such field,
# and the team is the lookup's, never the value's.
_DROPPED = {"team_name"}


class ConnectionFormatError(ValueError):
    """The stored connection cannot be understood; the message never includes a value."""


def connection_value(value: Any, conn_id: str | None = None) -> str:
    """Return a URI string as-is, or a field mapping as Airflow connection JSON."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ConnectionFormatError(
            f"must be a URI string or a table of fields, not {_kind(value)}"
        )
    fields = {k: v for k, v in value.items() if k not in _DROPPED}
    stored_id = fields.pop("conn_id", None)
    if conn_id is not None and stored_id is not None and stored_id != conn_id:
        raise ConnectionFormatError("has a conn_id that differs from its key")
    if "extra_dejson" in fields:
        if "extra" in fields:
            raise ConnectionFormatError("has both 'extra' and 'extra_dejson'")
        fields["extra"] = fields.pop("extra_dejson")
    uri = fields.pop("uri", None) or fields.pop("conn_uri", None)
    if uri is not None:
        return _with_uri(uri, fields)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConnectionFormatError(f"has unknown fields: {', '.join(unknown)}")
    return to_json(fields)


def _with_uri(uri: Any, fields: dict[str, Any]) -> str:
    if not isinstance(uri, str):
        raise ConnectionFormatError("has a URI that is not a string")
    if set(fields) - {"description"}:
        raise ConnectionFormatError("has a URI and separate fields; use one or the other")
    if not fields.get("description"):
        return uri
    # A URI cannot carry a description, so both go out as fields, split as Airflow splits them.
    try:
        parsed = uri_fields(uri)
    except UriFormatError as exc:
        raise ConnectionFormatError(str(exc)) from None
    return to_json({**parsed, "description": fields["description"]})


def to_json(value: Any) -> str:
    """JSON text for any value a JSON or YAML file can hold (dates as ISO 8601 text)."""
    try:
        return json.dumps(value, default=_plain)
    except (TypeError, ValueError, RecursionError):
        raise ConnectionFormatError("holds a value that cannot be written as JSON") from None


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(_kind(value))


def _kind(value: Any) -> str:
    return type(value).__name__
