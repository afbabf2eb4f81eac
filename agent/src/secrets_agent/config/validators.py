"""Declarative helpers for config sections: a field carries its own validation rules."""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import pwd
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], str | None]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
    path: bool = False,
) -> Any:
    """A dataclass field with rules for the loader; ``path`` resolves against the config dir."""
    meta = {"min": min, "max": max, "choices": choices, "check": check, "path": path}
    return dataclasses.field(default=default, metadata=meta)


def check_octal_mode(value: str) -> str | None:
    if not re.fullmatch(r"0?[0-7]{3}", value):
        return 'must be an octal file mode such as "0660"'
    return None


def check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def check_loopback(value: str) -> str | None:
    try:
        if ipaddress.ip_address(value).is_loopback:
            return None
    except ValueError:
        return "must be an IP address"
    return "must be a loopback address (127.0.0.0/8 or ::1): metrics are never exposed off-host"


def check_date(value: str) -> str | None:
    import datetime

    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return "must be a date such as 2026-12-04"
    return None


TEAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_team(value: str) -> str | None:
    if not TEAM_NAME.fullmatch(value):
        return "must be 1-64 letters, digits, - or _"
    return None


def check_name(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", value):
        return "must match [a-z0-9][a-z0-9_-]* (it becomes a metric label)"
    return None


def check_session_name(value: str) -> str | None:
    """An STS AssumeRole RoleSessionName (what AWS accepts, checked before AWS is asked)."""
    if not re.fullmatch(r"[\w+=,.@-]{2,64}", value, flags=re.ASCII):
        return "must be 2-64 letters, digits or + = , . @ _ -"
    return None


def check_http_url(value: str) -> str | None:
    """An endpoint's URL ("" = the SDK's default)."""
    if value and not value.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    return None


def check_header_value(value: str) -> str | None:
    """A value sent as an HTTP header: visible ASCII and spaces, nothing that ends a line."""
    if not re.fullmatch(r"[\x20-\x7e]{0,256}", value):
        return "must be at most 256 visible ASCII characters or spaces"
    return None


def check_key_prefix(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        return "must be 1-64 letters, digits, _ . : or -"
    return None


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_URL = re.compile(
    r"rediss?\+sentinel://(?P<hosts>[^/@]+:\d+(?:,[^/@]+:\d+)*)/(?P<master>[^/]+)(?:/(?P<db>\d+))?"
)
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
CLUSTER_URL = re.compile(
    r"rediss?\+cluster://(?P<hosts>[^/@]+:\d+(?:,[^/@]+:\d+)*)(?:/(?P<db>\d+))?/?"
)
TLS_SCHEMES = ("rediss://", "rediss+sentinel://", "rediss+cluster://")


_UNIX_DB = re.compile(r"db=\d+")


def check_store_url(value: str) -> str | None:
    schemes = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
    if value and not value.startswith(schemes):
        return (
            "must be a redis://, rediss:// (TLS), unix://, redis+sentinel:// or "
            "redis+cluster:// URL, or empty (tier off)"
        )
    if "@" in value.split("//", 1)[-1].split("/", 1)[0]:
        return "must not hold credentials: use username and password_file"
    # redis-py reads ?password=… (and the log line naming the store would show it): a query
    # carries options only, and the one a socket path needs is its database.
    query = value.partition("?")[2]
    if "#" in value or (query and not (value.startswith("unix://") and _UNIX_DB.fullmatch(query))):
        return (
            "must not hold a query string or fragment (but ?db=N after a unix:// path): "
            "credentials go in username and password_file, TLS in ca_file, timeouts in "
            "timeout and connect_timeout"
        )
    if value.startswith(SENTINEL_SCHEMES) and not SENTINEL_URL.fullmatch(value):
        return "must look like redis+sentinel://host:port[,host:port...]/master-name[/db]"
    if value.startswith(CLUSTER_SCHEMES):
        match = CLUSTER_URL.fullmatch(value)
        if match is None:
            return "must look like redis+cluster://host:port[,host:port...] (seed nodes)"
        if match["db"] not in (None, "0"):
            return "a cluster has only database 0 (it refuses SELECT): drop the /N"
    return None


_GLOB_CHARS = re.compile(r"[\x21-\x7e\u00a0-\U0010ffff]+")  # no space, no control character


def check_glob(value: str) -> str | None:
    """An id pattern: shell-style, case-sensitive (``fnmatch.fnmatchcase``)."""
    if not value or len(value) > 500:
        return "patterns must be 1-500 characters"
    if not _GLOB_CHARS.fullmatch(value):
        return "patterns must not hold spaces or control characters"
    depth = 0
    for char in value:  # fnmatch would read an unclosed [ literally: a typo, refused
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        return "pattern has a [ without its ]"
    return None


def resolve_user(name: str) -> int | None:
    """A user name (or a numeric string) as a uid, or None when this machine has no such user."""
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def resolve_group(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
