"""Declarative helpers for config sections: a field carries its own validation rules."""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Check = Callable[[Any], str | None]


def setting(
    default: Any = dataclasses.MISSING,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
    path: bool = False,
    optional: bool = False,
) -> Any:
    """A dataclass field with rules for the loader; ``path`` resolves against the config dir
    (a file the agent reads, which must then be evidently a path: ``config.paths``);
    ``optional``: one that need not exist at load (the agent makes it, or waits for it)."""
    meta = {
        "min": min,
        "max": max,
        "choices": choices,
        "check": check,
        "path": path or optional,
        "optional": optional,
    }
    return dataclasses.field(default=default, metadata=meta)


def socket_path_problem(path: str) -> str | None:
    """A Unix socket path the kernel cannot bind: sun_path holds 108 bytes, its NUL included."""
    if len(os.fsencode(path)) >= 108:
        return "is longer than the 107 bytes a socket path allows"
    return None


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


def check_env_name(value: str) -> str | None:
    """The name of an environment variable ("" = none); never echoed: a key pasted here
    instead of the variable's name would otherwise be quoted back in the error."""
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return "must be an environment variable's name (letters, digits, _), not the key itself"
    return None


def check_credential_name(value: str) -> str | None:
    """A systemd credential's name ("" = none); never echoed: no Fernet key is one (its "="),
    nor a list of keys (",", spaces), so a key pasted here is refused, not quoted back."""
    if value and not re.fullmatch(r"(?!\.\.?$)[A-Za-z0-9_.@-]{1,255}", value):
        return "must be a systemd credential's name (letters, digits, _ . @ -), not the key itself"
    return None


def check_session_name(value: str) -> str | None:
    """An STS AssumeRole RoleSessionName (what AWS accepts, checked before AWS is asked)."""
    if not re.fullmatch(r"[\w+=,.@-]{2,64}", value, flags=re.ASCII):
        return "must be 2-64 letters, digits or + = , . @ _ -"
    return None


# A host name as resolvers and the SDKs' URL parsers take it: labels of letters (IDN too),
# digits, _ and -, dot-separated. No space, no empty label, nothing a URL would split on.
_HOST_NAME = re.compile(r"[\w-]+(?:\.[\w-]+)*\.?")


def url_problem(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why ``value`` is not a usable ``scheme://host[:port][/path]`` URL (None: it is).

    Every SDK would take such a URL and fail only at its first call, some with a traceback,
    some retrying forever; refused here, it is a config error naming the key instead.
    """
    wanted = " or ".join(f"{scheme}://" for scheme in schemes)
    if not value.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        return f"must start with {wanted}"
    if re.search(r"[\x00-\x20\x7f]", value):  # urlsplit would drop a tab or newline silently
        return "must not hold spaces or control characters"
    try:
        url = urlsplit(value)
    except ValueError:
        return "is not a valid URL (an IPv6 address goes in [ ], and only it)"
    if "@" in url.netloc:
        # A user:password@ would sit in the config file (migrate writes it 0640), and in every
        # SDK message, repr or proxy log line naming the endpoint.
        return "must not hold credentials (user:password@): the agent's auth options take them"
    host = url.hostname or ""
    if not host:
        return f"must name a host: {wanted}<host>[:<port>]"
    if not _valid_host(host, bracketed=url.netloc.rpartition("@")[2].startswith("[")):
        return "has an invalid host (a name of letters, digits, -, _ and dots; no spaces)"
    try:
        port = url.port  # ValueError when not a number in 0-65535
    except ValueError:
        port = 0
    if port == 0:
        return "must have a port in 1-65535 (or none, for the scheme's default)"
    return None


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed:
        try:
            return ipaddress.ip_address(host.partition("%")[0]).version == 6
        except ValueError:
            return False
    return bool(_HOST_NAME.fullmatch(host))


def check_http_url(value: str) -> str | None:
    """An endpoint's URL ("" = the SDK's default)."""
    return url_problem(value) if value else None


def check_https_url(value: str) -> str | None:
    """A URL that must use TLS (required: "" is refused)."""
    return url_problem(value, ("https",))


def check_host_port(value: str) -> str | None:
    """A gRPC endpoint, ``host[:port]`` ("" = the SDK's default)."""
    if not value:
        return None
    if "/" in value or "@" in value or "?" in value or "#" in value:
        return "must be host[:port], not a URL"
    reason = url_problem(f"https://{value}", ("https",))
    return reason and reason.replace("https://", "")


def check_authority(value: str) -> str | None:
    """An Entra ID authority: a host, or an https:// URL ("" = the SDK's default)."""
    if not value:
        return None
    return url_problem(value if "://" in value else f"https://{value}", ("https",))


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
    # What redis-py would read otherwise: a bad port as a traceback at start, a path it does
    # not understand as database 0 or a SELECT every connection fails, "unix://a/b" as /b.
    if value.startswith(("redis://", "rediss://")):
        problem = url_problem(value, ("redis", "rediss"))
        if problem is None and not re.fullmatch(r"/?|/\d{1,9}/?", urlsplit(value).path):
            problem = "must end in the database number (/N) or in the host[:port] (database 0)"
        return problem
    if value.startswith("unix://") and not value.startswith("unix:///"):
        return "must name an absolute socket path: unix:///path/to/redis.sock[?db=N]"
    if value.startswith(SENTINEL_SCHEMES):
        match = SENTINEL_URL.fullmatch(value)
        if match is None:
            return "must look like redis+sentinel://host:port[,host:port...]/master-name[/db]"
        return _hosts_problem(match["hosts"])
    if value.startswith(CLUSTER_SCHEMES):
        match = CLUSTER_URL.fullmatch(value)
        if match is None:
            return "must look like redis+cluster://host:port[,host:port...] (seed nodes)"
        if match["db"] not in (None, "0"):
            return "a cluster has only database 0 (it refuses SELECT): drop the /N"
        return _hosts_problem(match["hosts"])
    return None


def _hosts_problem(hosts: str) -> str | None:
    for host in hosts.split(","):
        problem = url_problem(f"redis://{host}", ("redis",))
        if problem is not None:
            return f"{host} {problem}"
    return None


# A set as fnmatch reads it: a ] first (after any !) is a member, so "[]" and "[!]" close
# nothing, while "[[]" is a set of one "[".
GLOB_SET = re.compile(r"\[!?+\]?+[^\]]*\]")
_GLOB_CHARS = re.compile(r"[\x21-\x7e\u00a0-\U0010ffff]+")  # no space, no control character


def check_glob(value: str) -> str | None:
    """An id pattern: shell-style, case-sensitive (``fnmatch.fnmatchcase``)."""
    if not value or len(value) > 500:
        return "patterns must be 1-500 characters"
    if not _GLOB_CHARS.fullmatch(value):
        return "patterns must not hold spaces or control characters"
    if "[" in GLOB_SET.sub("", value):  # fnmatch would read it literally: a typo, refused
        return "pattern has a [ without its ]"
    return None


MAX_ID = 2**32 - 2  # the largest uid or gid: uid_t is 32 bits and (uid_t)-1 means "none"


def numeric_id(text: str) -> bool:
    """Whether ``text`` is a uid or gid written in ASCII digits: ``str.isdigit`` also takes
    "²" (which ``int`` refuses) and "٣" (which ``int`` reads as 3)."""
    return text.isascii() and text.isdigit() and int(text) <= MAX_ID


def resolve_user(name: str) -> int | None:
    """A user name (or a numeric string) as a uid, or None when this machine has no such user."""
    if numeric_id(name):
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


def resolve_group(name: str) -> int | None:
    """A group name (or a numeric string) as a gid, or None when this machine has no such group."""
    if numeric_id(name):
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        return None
