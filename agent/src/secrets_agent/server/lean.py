"""The lean HTTP/1.1 read: parse a plain ``GET /v1/<kind>/<id>`` head, render its answer.

Only heads with nothing unusual are taken (HTTP/1.1, visible-ASCII target without a fragment,
well-formed header lines, no body, no upgrade); ``parse_head`` returns None for anything else
and the connection goes to aiohttp, which answers exactly as it always has. The target is
decoded with the very yarl calls aiohttp's parser and router make, so both read the same id.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from yarl import URL

from secrets_agent.server.errors import JSON_TYPE, Answer, Headers
from secrets_agent.server.memo import Generations
from secrets_agent.server.reads import KIND_LABELS, PATTERN, Prepared, ReadQuery

START = b"GET /v1/"
_SUFFIX = b" HTTP/1.1"
# RFC 3986's characters for a path and query (no fragment): what the client sends, quoting
# every other byte; a target with anything else goes to aiohttp and its parser's rules.
_TARGET = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]+")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e]*)")
# Headers that change how the request is framed or what the connection becomes: aiohttp's.
_NOT_LEAN = frozenset({b"transfer-encoding", b"upgrade", b"expect", b"trailer", b"te"})
_ONCE = frozenset({b"host", b"content-length", b"connection"})  # twice: aiohttp's call
_MAX_FIELDS = 100
_MEMO_HEAD = 512  # heads remembered are at most this long (the client's are ~60 bytes)
_UNSEEN: object = object()


@dataclass(frozen=True, slots=True)
class LeanHead:
    query: ReadQuery
    keep_alive: bool
    kind_label: str  # the kind as the request metrics name it


@dataclass(frozen=True, slots=True)
class LeanRead:
    """A lean request as the connection answers it: the read worked out, and the framing."""

    read: Prepared
    keep_alive: bool
    kind_label: str
    # The memo's own key for it (None: not memoized). The compiled read path remembers what it
    # answered under this very object, so a request's bytes are held once.
    request: bytes | None = None


def could_be_lean(start: bytes | bytearray) -> bool:
    """Whether bytes that begin a request may still turn out to be a lean read."""
    size = min(len(start), len(START))
    return start[:size] == START[:size]


class HeadParser:
    """``parse_head`` and ``Reads.prepare`` with a memo keyed by the request's bytes: a worker
    asks for the same few keys with the same bytes, a fleet for thousands (``size`` bounds it,
    and heads still asked for stay in it however many others come and go)."""

    def __init__(
        self,
        max_line: int,
        max_field: int,
        prepare: Callable[[ReadQuery], Prepared],
        size: int = 8192,
    ) -> None:
        self._max_line, self._max_field = max_line, max_field
        self._prepare = prepare
        # The caller looks in ``memo.young`` first (one dict lookup), then calls ``parse``.
        self.memo: Generations[bytes, LeanRead | None] = Generations(size)

    def parse(self, request: bytes) -> LeanRead | None:
        """The read a whole request head asks for (with its blank line), or None: not lean."""
        known = self.memo.get(request, _UNSEEN)
        if known is not _UNSEEN:
            return known  # type: ignore[return-value]  # a LeanRead or None, as put
        head = request[:-4] if request.endswith(b"\r\n\r\n") else request
        lean = parse_head(head, self._max_line, self._max_field)
        held = len(request) <= _MEMO_HEAD  # a big head is no worker's: do not hold on to it
        parsed = (
            None
            if lean is None
            else LeanRead(
                self._prepare(lean.query),
                lean.keep_alive,
                lean.kind_label,
                request if held else None,
            )
        )
        if held:
            self.memo.put(request, parsed)
        return parsed


def parse_head(head: bytes, max_line: int, max_field: int) -> LeanHead | None:
    """The read a complete head (without its blank line) asks for, or None: not lean."""
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) > max_line or not line.startswith(START) or not line.endswith(_SUFFIX):
        return None
    target = line[4 : -len(_SUFFIX)]
    if not _TARGET.fullmatch(target) or len(lines) > _MAX_FIELDS:
        return None
    keep_alive, cache_control, seen = True, None, set()
    for raw in lines[1:]:
        field = _FIELD.fullmatch(raw)
        if field is None or len(raw) > max_field:
            return None
        name, value = field[1].lower(), field[2].strip(b" \t")
        if name in _NOT_LEAN:
            return None
        if name in _ONCE:
            if name in seen:
                return None
            seen.add(name)
            if name == b"content-length" and value != b"0":
                return None
            if name == b"connection":
                token = value.lower()
                if token not in (b"close", b"keep-alive"):
                    return None
                keep_alive = token == b"keep-alive"
        elif name == b"cache-control" and cache_control is None:  # aiohttp reads the first
            cache_control = value.lower()
    if b"host" not in seen:  # HTTP/1.1 requires it; aiohttp refuses a request without one
        return None
    query = _query(target.decode("ascii"), cache_control)
    return None if query is None else LeanHead(query, keep_alive, KIND_LABELS[query.segment])


def _query(target: str, cache_control: bytes | None) -> ReadQuery | None:
    path, _, query_string = target.partition("?")
    try:  # as aiohttp's parser builds the URL, and its router matches and unquotes
        url = URL.build(path=path, query_string=query_string, encoded=True)
        match = PATTERN.fullmatch(url.path_safe)
    except (ValueError, TypeError):
        return None
    if match is None:
        return None
    raw_id = match["id"]
    if "%" in raw_id:
        raw_id = raw_id.replace("%2F", "/").replace("%25", "%")
    team, refresh = None, "false"
    if query_string:
        params = url.query
        team, refresh = params.get("team"), params.get("refresh", "false")
    no_cache = cache_control is not None and b"no-cache" in cache_control
    return ReadQuery(match["kind"], raw_id, team, refresh, no_cache)


_REASONS = {s.value: s.phrase for s in HTTPStatus}
# What follows a head: its length, the date, ``Connection: close`` or nothing, the body.
_ANSWER = b"%sContent-Length: %d\r\nDate: %s\r\n%s\r\n%s"
_AGED = b"%sAge: %d\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n%s"
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Renderer:
    """Answers as HTTP/1.1 bytes. The head up to ``Age`` is built once per status and header
    set (``reads`` hands out the same few tuples); ``Date`` once a second."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self._second = -1
        self._date = b""
        # Bounded (ages make new tuples); the ones still in use stay.
        self._heads: Generations[tuple[int, Headers], bytes] = Generations(8192)

    def render(self, answer: Answer, keep_alive: bool) -> bytes:
        return self.parts(answer.status, answer.headers, answer.age, answer.body, keep_alive)

    def parts(
        self, status: int, headers: Headers, age: int | None, body: bytes, keep_alive: bool
    ) -> bytes:
        """``render`` from an answer's parts: a cached read is answered without an ``Answer``."""
        key = (status, headers)
        heads = self._heads
        head = heads.young.get(key) or heads.get(key) or self._head(key)
        second = int(self.wall())
        if second != self._second:
            self._date, self._second = http_date(second), second
        close = b"" if keep_alive else b"Connection: close\r\n"
        if age is None:
            return _ANSWER % (head, len(body), self._date, close, body)
        return _AGED % (head, age, len(body), self._date, close, body)

    def head(self, status: int, headers: Headers) -> bytes:
        """An answer's bytes up to ``Age`` for a status and its headers (``parts`` writes them)."""
        key = (status, headers)
        return self._heads.get(key) or self._head(key)

    def _head(self, key: tuple[int, Headers]) -> bytes:
        status, headers = key
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {JSON_TYPE}\r\n{extra}"
        ).encode("latin-1")
        self._heads.put(key, head)
        return head


def http_date(second: int) -> bytes:
    t = time.gmtime(second)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode("ascii")
