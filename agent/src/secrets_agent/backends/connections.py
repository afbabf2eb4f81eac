"""Turn a connection stored as fields into what Airflow's ``deserialize_connection`` accepts."""

from __future__ import annotations

import json
from typing import Any

# Connection.__init__ parameters (Airflow 2.7+ and 3.x), plus LocalFilesystemBackend's extra_dejson.
_FIELDS = {"conn_type", "description", "host", "login", "password", "schema", "port", "extra"}


class ConnectionFormatError(ValueError):
    """The stored connection cannot be understood; the message never includes a value."""


def connection_value(value: Any) -> str:
    """Return a URI string as-is, or a field mapping as Airflow connection JSON."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ConnectionFormatError(
            f"must be a URI string or a table of fields, not {_kind(value)}"
        )
    fields = dict(value)
    fields.pop("conn_id", None)  # the id comes from the lookup key, never from the value
    if "extra_dejson" in fields:
        if "extra" in fields:
            raise ConnectionFormatError("has both 'extra' and 'extra_dejson'")
        fields["extra"] = fields.pop("extra_dejson")
    uri = fields.pop("uri", None) or fields.pop("conn_uri", None)
    if uri is not None:
        if fields:
            raise ConnectionFormatError("has a URI and separate fields; use one or the other")
        if not isinstance(uri, str):
            raise ConnectionFormatError("has a URI that is not a string")
        return uri
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConnectionFormatError(f"has unknown fields: {', '.join(unknown)}")
    return json.dumps(fields, sort_keys=True)


def _kind(value: Any) -> str:
    return type(value).__name__
